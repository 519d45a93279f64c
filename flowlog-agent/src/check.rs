//! `flowlog-agent check [run flags]`: whether this configuration can run here, and why not.
//! It loads (verifies) the programs but attaches nothing, writes no record and starts no sink.
//! One line per finding: `ok`, `warn` (runs, but look) or `FAIL` (cannot run); the exit status
//! is non-zero when anything failed.

use std::{fmt, path::Path};

use aya::util::KernelVersion;

use crate::{
    config::RunConfig,
    datapath::{Datapath, DatapathConfig, HookChoice, TcMode},
    interfaces::{self, Interface},
    privileges,
    sink::{ObjectStoreSink, SinkSpec, ipfix},
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
    report.add(
        Level::Ok,
        "configuration",
        "flags, format, policy and sinks parse",
    );
    kernel(&mut report);
    match privileges::check() {
        Ok(()) => report.add(
            Level::Ok,
            "privileges",
            "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN",
        ),
        Err(error) => report.add(Level::Fail, "privileges", error.to_string()),
    }
    bpffs(&mut report, config);
    let programs = Datapath::load(DatapathConfig {
        max_flows: config.max_flows,
    });
    match programs {
        Ok(_) => report.add(
            Level::Ok,
            "programs",
            "the kernel verified and loaded every program",
        ),
        Err(error) => report.add(Level::Fail, "programs", error.to_string()),
    }
    interfaces_found(&mut report, config);
    for spec in &config.sinks {
        sink(&mut report, config, spec).await;
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

fn kernel(report: &mut Report) {
    match KernelVersion::current() {
        Ok(version) => {
            let tcx = version >= KernelVersion::new(6, 6, 0);
            let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
            let level = if version >= KernelVersion::new(5, 17, 0) {
                Level::Ok
            } else {
                // bpf_loop (the policy's rule scans) came in 5.17.
                Level::Fail
            };
            report.add(
                level,
                "kernel",
                format!(
                    "{version} (TCX: {}, BTF: {}; flowlog needs 5.17 or later)",
                    if tcx { "yes" } else { "no, clsact is used" },
                    if btf { "yes" } else { "no" }
                ),
            );
        }
        Err(error) => report.add(Level::Warn, "kernel", format!("version unknown: {error}")),
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
    let selection = config.interfaces.select(&available);
    for name in &selection.missing {
        report.add(
            Level::Fail,
            format!("interface {name}"),
            "no such interface",
        );
    }
    for glob in &selection.unmatched_globs {
        report.add(
            Level::Warn,
            format!("interface glob {glob}"),
            "matches nothing yet (interfaces that appear later are attached)",
        );
    }
    let tc_mode = config.tc_mode.resolve();
    for interface in &selection.matched {
        report.add(
            Level::Ok,
            format!("interface {}", interface.name),
            describe(interface, config.hook, tc_mode),
        );
    }
}

fn describe(interface: &Interface, choice: HookChoice, tc_mode: TcMode) -> String {
    let driver = std::fs::read_link(format!("/sys/class/net/{}/device/driver", interface.name))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "virtual".to_owned());
    let hook = interfaces::hook_for(choice, interface);
    format!(
        "ifindex {}, driver {driver}: {hook} ingress, TC egress ({tc_mode})",
        interface.ifindex
    )
}

async fn sink(report: &mut Report, config: &RunConfig, spec: &SinkSpec) {
    let subject = format!("sink {spec}");
    match spec {
        SinkSpec::Stdout | SinkSpec::JsonStdout(_) => {
            report.add(Level::Ok, subject, "standard output")
        }
        SinkSpec::LogStreams(dir) | SinkSpec::JsonLogStreams(_, dir) => {
            let existing = dir.ancestors().find(|p| p.exists());
            let writable = existing.is_some_and(|p| {
                let probe = p.join(format!(".flowlog-check-{}", std::process::id()));
                let ok = std::fs::write(&probe, b"").is_ok();
                let _ = std::fs::remove_file(&probe);
                ok
            });
            if writable {
                report.add(
                    Level::Ok,
                    subject,
                    format!("{} can be written", dir.display()),
                );
            } else {
                report.add(
                    Level::Fail,
                    subject,
                    format!("{} cannot be created or written", dir.display()),
                );
            }
        }
        SinkSpec::ObjectStore(url) => {
            match ObjectStoreSink::check(url, &config.key_layout(url)).await {
                Ok(()) => report.add(
                    Level::Ok,
                    subject,
                    "configured, and the destination answered (or spooling covers it)",
                ),
                Err(error) => report.add(Level::Fail, subject, error.to_string()),
            }
        }
        SinkSpec::Ipfix(spec) => match ipfix::probe(spec).await {
            Ok(detail) => report.add(Level::Ok, subject, detail),
            Err(detail) => report.add(Level::Fail, subject, detail),
        },
    }
}
