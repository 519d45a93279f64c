//! `flowlog-agent check [run flags]`: whether this configuration can run here, and why not.
//! It loads (verifies) the programs but attaches nothing, writes no record and starts no sink.
//! One line per finding: `ok`, `warn` (runs, but look) or `FAIL` (cannot run); the exit status
//! is non-zero when anything failed.

use std::{fmt, path::Path};

use aya::util::KernelVersion;

use crate::{
    config::{FlowLogConfig, RunConfig},
    datapath::{Datapath, DatapathConfig, HookChoice, TcMode, has_tcx, hook, why_no_policy},
    interfaces::{self, Interface},
    kernel_drops::KernelDropsMode,
    privileges,
    sink::SinkSpec,
    sys,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One finding.
#[derive(Debug)]
pub struct Finding {
    pub level: Level,
    pub subject: String,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        write!(f, "{level}  {}: {}", self.subject, self.detail)
    }
}

#[derive(Default)]
pub struct Report(pub Vec<Finding>);

impl Report {
    fn add(&mut self, level: Level, subject: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Finding {
            level,
            subject: subject.into(),
            detail: detail.into(),
        });
    }

    pub fn failed(&self) -> bool {
        self.0.iter().any(|f| f.level == Level::Fail)
    }
}

/// Checks everything `run` would need, in the order it needs it.
pub async fn check(config: &RunConfig) -> Report {
    let mut report = Report::default();
    let names: Vec<&str> = config.flow_logs.iter().map(|f| f.name()).collect();
    let source = match &config.config_file {
        Some(path) => format!("{} and the flags", path.display()),
        None => "the flags".to_owned(),
    };
    report.add(
        Level::Ok,
        "configuration",
        format!(
            "{source}: {} flow log{} ({}), drained every {}s; formats, policy and sinks parse",
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", "),
            config.tick().as_secs()
        ),
    );
    for warning in config.file_warnings() {
        report.add(Level::Warn, "file permissions", warning);
    }
    kernel(&mut report, config);
    match privileges::check() {
        Ok(()) => report.add(
            Level::Ok,
            "privileges",
            "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN",
        ),
        Err(error) => report.add(Level::Fail, "privileges", error.to_string()),
    }
    bpffs(&mut report, config);
    let drops = kernel_drops(&mut report, config.kernel_drops);
    let programs = Datapath::load_full(
        DatapathConfig {
            max_flows: config.max_flows,
        },
        None,
        drops.as_ref(),
    );
    match programs {
        Ok(datapath) => report.add(
            Level::Ok,
            "programs",
            format!(
                "the kernel verified and loaded every program (the {} build)",
                datapath.programs()
            ),
        ),
        Err(error) => report.add(Level::Fail, "programs", error.to_string()),
    }
    interfaces_found(&mut report, config);
    ownership(&mut report, config);
    for flow_log in &config.flow_logs {
        for spec in &flow_log.sinks {
            sink(&mut report, flow_log, spec).await;
        }
    }
    if let Some(address) = config.metrics {
        match std::net::TcpListener::bind(address) {
            Ok(_) => report.add(Level::Ok, "metrics", format!("{address} can be served")),
            Err(error) => report.add(
                Level::Warn,
                "metrics",
                format!("{address}: {error} (the agent runs without metrics)"),
            ),
        }
    }
    report
}

/// Whether the kernel's own drops can be REJECT records here (`--kernel-drops`); the setup, for
/// the programs check to verify the drop program too.
fn kernel_drops(report: &mut Report, mode: KernelDropsMode) -> Option<crate::kernel_drops::Setup> {
    match crate::kernel_drops::probe(mode) {
        Ok(Some(setup)) => {
            report.add(
                Level::Ok,
                "kernel drops",
                format!(
                    "--kernel-drops {mode}: the kernel names its drops ({} reasons, {} counted); skb:kfree_skb carries them",
                    setup.reasons.iter().count(),
                    setup.counted_slots().len()
                ),
            );
            Some(setup)
        }
        Ok(None) => {
            report.add(
                Level::Ok,
                "kernel drops",
                "--kernel-drops off: packets the host drops are recorded as flowlog's programs see them",
            );
            None
        }
        Err(unavailable) => {
            report.add(
                Level::Warn,
                "kernel drops",
                format!("{unavailable}; the agent runs without them"),
            );
            None
        }
    }
}

fn kernel(report: &mut Report, config: &RunConfig) {
    let version = match KernelVersion::current() {
        Ok(version) => version,
        Err(error) => {
            report.add(Level::Warn, "kernel", format!("version unknown: {error}"));
            return;
        }
    };
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let (level, support) = if version >= KernelVersion::new(5, 10, 0) {
        (Level::Ok, "")
    } else {
        (
            Level::Warn,
            "; older than 5.10, the oldest kernel flowlog is tested on",
        )
    };
    report.add(
        level,
        "kernel",
        format!(
            "{} ({version}; BTF: {}){support}",
            sys::kernel_release(),
            if btf { "yes" } else { "no" }
        ),
    );
    features(report, config, version);
}

/// One line per feature this kernel lacks, with what flowlog does instead; one `ok` line when
/// it lacks none. The README's kernel table says the same.
fn features(report: &mut Report, config: &RunConfig, version: KernelVersion) {
    let mut missing = 0;
    if let Some(why) = why_no_policy() {
        missing += 1;
        let policy = config.policy.is_some();
        report.add(
            if policy { Level::Fail } else { Level::Warn },
            "feature policy",
            format!(
                "unavailable: {why}; the programs count and apply exclusions with bounded loops \
                 instead{}",
                if policy {
                    ", and a configured policy is refused"
                } else {
                    ""
                }
            ),
        );
    }
    if !has_tcx() {
        missing += 1;
        report.add(
            Level::Warn,
            "feature TCX",
            "unavailable: TCX links need Linux 6.6; TC programs attach as clsact filters, which \
             stay attached across a restart like pinned links (their programs are pinned, and the \
             next agent replaces them in place)",
        );
    }
    if version < KernelVersion::new(6, 3, 0) {
        missing += 1;
        report.add(
            Level::Warn,
            "feature XDP query",
            "unavailable: drivers declare native XDP support through netdev netlink from Linux \
             6.3; `--hook auto` still chooses by driver name",
        );
    }
    if missing == 0 {
        report.add(
            Level::Ok,
            "features",
            "every feature is available: policy, TCX, XDP feature query",
        );
    }
}

fn bpffs(report: &mut Report, config: &RunConfig) {
    let Some(dir) = &config.pin_dir else {
        report.add(
            Level::Ok,
            "pinning",
            "off (--no-pin): programs and counts go with the agent",
        );
        return;
    };
    let root = Path::new("/sys/fs/bpf");
    let mounted = if dir.starts_with(root) {
        sys::is_bpffs(root).unwrap_or(false)
    } else {
        dir.ancestors()
            .find(|p| p.exists())
            .is_some_and(|p| sys::is_bpffs(p).unwrap_or(false))
    };
    match (mounted, dir.starts_with(root)) {
        (true, _) => report.add(
            Level::Ok,
            "pinning",
            format!("{} is on a BPF filesystem", dir.display()),
        ),
        (false, true) => report.add(
            Level::Warn,
            "pinning",
            "no BPF filesystem on /sys/fs/bpf: the agent mounts one (needs CAP_SYS_ADMIN)",
        ),
        (false, false) => report.add(
            Level::Fail,
            "pinning",
            format!("{} is not on a BPF filesystem", dir.display()),
        ),
    }
}

fn interfaces_found(report: &mut Report, config: &RunConfig) {
    let available = match interfaces::list() {
        Ok(available) => available,
        Err(error) => {
            report.add(Level::Fail, "interfaces", format!("cannot list: {error}"));
            return;
        }
    };
    let tc_mode = config.tc_mode.resolve();
    let several = config.flow_logs.len() > 1;
    for interface in available.iter().filter(|i| config.covers(i)) {
        let mut detail = describe(interface, config.hook, tc_mode);
        if several {
            let logs: Vec<&str> = config
                .flow_logs
                .iter()
                .filter(|f| f.scope.matches(interface))
                .map(|f| f.name())
                .collect();
            detail.push_str(&format!("; flow logs {}", logs.join(", ")));
        }
        report.add(Level::Ok, format!("interface {}", interface.name), detail);
    }
    for flow_log in &config.flow_logs {
        let selection = flow_log.scope.select(&available);
        let whose = if several {
            format!(" (flow log {})", flow_log.name())
        } else {
            String::new()
        };
        for name in &selection.missing {
            report.add(
                Level::Fail,
                format!("interface {name}"),
                format!("no such interface{whose}"),
            );
        }
        for glob in &selection.unmatched_globs {
            report.add(
                Level::Warn,
                format!("interface glob {glob}"),
                format!("matches nothing yet (interfaces that appear later are attached){whose}"),
            );
        }
        if selection.matched.is_empty() && selection.unmatched_globs.is_empty() {
            report.add(
                Level::Warn,
                format!("flow log {}", flow_log.name()),
                "its scope selects no interface yet (it follows interfaces as they appear)",
            );
        }
    }
}

/// flowlog programs another owner left on the interfaces `run` would attach to (it refuses
/// them unless told to take them over), and whether an agent runs with the pin directory now.
fn ownership(report: &mut Report, config: &RunConfig) {
    let (in_use, own) = match &config.pin_dir {
        Some(dir) => crate::datapath::inspect_pins(dir),
        None => (false, Vec::new()),
    };
    if in_use {
        report.add(
            Level::Warn,
            "pinning",
            "a running agent holds the pin directory: `run` is refused until it stops",
        );
    }
    let Ok(available) = interfaces::list() else {
        return;
    };
    let covered: Vec<Interface> = available.into_iter().filter(|i| config.covers(i)).collect();
    match crate::datapath::owner::find(&covered, &own) {
        Ok(foreign) => {
            for program in foreign {
                let (level, consequence) = if config.take_over {
                    (Level::Warn, "--take-over replaces it")
                } else {
                    (
                        Level::Fail,
                        "run refuses to stack on it: `flowlog-agent detach --pin-dir DIR` for its pin directory, or --take-over",
                    )
                };
                report.add(
                    level,
                    format!("interface {}", program.interface),
                    format!("{program} is not this pin directory's; {consequence}"),
                );
            }
        }
        Err(error) => report.add(
            Level::Warn,
            "ownership",
            format!("cannot list attached programs: {error}"),
        ),
    }
}

fn describe(interface: &Interface, choice: HookChoice, tc_mode: TcMode) -> String {
    let driver = std::fs::read_link(format!("/sys/class/net/{}/device/driver", interface.name))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "virtual".to_owned());
    let hook = hook::for_interface(choice, interface);
    let native_xdp = hook::native_xdp(interface.ifindex);
    format!(
        "ifindex {}, driver {driver}, {native_xdp}; hook: {hook} ingress, TC egress ({tc_mode})",
        interface.ifindex
    )
}

async fn sink(report: &mut Report, flow_log: &FlowLogConfig, spec: &SinkSpec) {
    let subject = match &flow_log.id {
        Some(id) => format!("flow log {id} sink {spec}"),
        None => format!("sink {spec}"),
    };
    match spec.health_check(&flow_log.sink_context()).await {
        Ok(detail) => report.add(Level::Ok, subject, detail),
        Err(detail) => report.add(Level::Fail, subject, detail),
    }
}
