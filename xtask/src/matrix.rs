//! The kernel matrix of `cargo xtask test`: each of Debian's kernels (`kernels.rs`) booted in
//! qemu (`guest.rs`) with the privileged tests that prove what runs there:
//!
//! - `kernel_features`: every program of the build the kernel calls for verifies and loads,
//!   `check` names the features the kernel lacks, the bounded-loop build refuses a policy;
//! - `datapath`, `datapath_truncation`: the BPF_PROG_TEST_RUN tests of counting and parsing;
//! - `policy_rules`: the policy through BPF_PROG_TEST_RUN, where the kernel runs the policy;
//! - `end_to_end`: the release agent over a veth into a namespace, exact counts, for every hook
//!   mode the kernel has (clsact and XDP everywhere, TCX from 6.6);
//! - `restart`: agents stopped, killed and restarted over pinned maps and links, where TC links
//!   can be pinned (TCX, 6.6);
//! - `restart_config`: a killed and a stopped agent's clsact filters taken over in place by the
//!   next agent, counts exact (every kernel: restarts lose nothing without TCX too). Its other
//!   tests (refusals, ownership, policies across restarts) run on the host only: under emulation
//!   each of their many agent starts costs up to half a minute;
//! - `kernel_drops`: the kernel's own drops (nftables rules in the guest, a closed port, a TCP
//!   stream cut mid-transfer) as exact REJECT records, where the kernel names its drops (5.17);
//!   the one that runs flowlog's policy too where the kernel runs the policy.
//!
//! What each kernel supports is the table below, the same as the README's and the agent's
//! (`flowlog-agent/src/datapath/kernel.rs`): a test that needs a feature the kernel lacks is
//! skipped by name, visibly, in the guest's command line.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd,
    guest::{self, GuestOutcome, GuestRun, Timeouts},
    kernels::{self, Kernel, KernelSpec},
};

/// What `--kernels` selects: the machine's own kernel (the ordinary test run) and VMs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub host: bool,
    pub kernels: Vec<KernelSpec>,
}

impl Selection {
    /// `None` (no `--kernels`): the host and every kernel of the matrix. Otherwise a
    /// comma-separated list of `host` and matrix names (`5.10,6.1`).
    pub fn parse(list: Option<&str>) -> Result<Self> {
        let Some(list) = list else {
            return Ok(Self {
                host: true,
                kernels: kernels::MATRIX.to_vec(),
            });
        };
        let host = list.split(',').any(|name| name.trim() == "host");
        let rest: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|name| *name != "host")
            .collect();
        Ok(Self {
            host,
            kernels: kernels::parse_list(&rest.join(","))?,
        })
    }
}

/// First kernels with what the tests need (see the module documentation).
const POLICY: (u32, u32) = (6, 5);
const TCX: (u32, u32) = (6, 6);
/// `skb:kfree_skb` carries a drop reason (the kernel-drop tests).
const DROP_REASONS: (u32, u32) = (5, 17);
/// The first kernel of the matrix whose BPF_PROG_TEST_RUN refuses XDP input shorter than an
/// Ethernet header (5.10 runs it, and the program counts it as malformed).
const SHORT_XDP_REFUSED: (u32, u32) = (6, 1);

/// Tests of `end_to_end` that attach with TCX.
const TCX_TESTS: &[&str] = &[
    "tc_records_add_up_to_the_traffic_exactly",
    "xdp_records_add_up_to_the_traffic_exactly",
];
/// The restart test every kernel runs (clsact filters kept across agents).
const CLSACT_RESTART_TEST: &str = "clsact_filters_are_taken_over_in_place_after_a_kill_and_a_stop";
/// The kernel-drop test that runs flowlog's own policy (6.5).
const POLICY_DROP_TEST: &str = "flowlogs_own_policy_drops_are_counted_once";
/// A test of the kernel's BPF_PROG_TEST_RUN rather than of flowlog.
const SHORT_XDP_TEST: &str = "frames_shorter_than_an_ethernet_header_are_refused_by_the_kernel";

/// The runs for a kernel of version `version`, from the test binaries by name; `extra` goes to
/// every test harness.
pub fn guest_runs(
    version: (u32, u32),
    binaries: &[(String, PathBuf)],
    extra: &[String],
) -> Result<Vec<GuestRun>> {
    let binary = |name: &str| {
        binaries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, path)| path.clone())
            .with_context(|| format!("no test binary {name}"))
    };
    let mut runs = Vec::new();
    // A test binary, with harness arguments that select its tests (`--skip NAME`, `--exact`).
    let mut add = |name: &str, select: &[&str]| -> Result<()> {
        let args = ["--test-threads=1"]
            .iter()
            .chain(select)
            .map(|s| s.to_string())
            .chain(extra.iter().cloned())
            .collect();
        runs.push(GuestRun {
            name: name.to_owned(),
            binary: binary(name)?,
            args,
        });
        Ok(())
    };
    let skip = |tests: &[&'static str]| -> Vec<&'static str> {
        tests.iter().flat_map(|test| ["--skip", test]).collect()
    };
    add("kernel_features", &[])?;
    add("datapath", &[])?;
    if version >= SHORT_XDP_REFUSED {
        add("datapath_truncation", &[])?;
    } else {
        add("datapath_truncation", &skip(&[SHORT_XDP_TEST]))?;
    }
    if version >= POLICY {
        add("policy_rules", &[])?;
    }
    if version >= TCX {
        add("end_to_end", &[])?;
        // Pinned links (TCX and XDP) keep the programs attached while no agent runs.
        add("restart", &[])?;
    } else {
        add("end_to_end", &skip(TCX_TESTS))?;
    }
    add("restart_config", &["--exact", CLSACT_RESTART_TEST])?;
    // Before 5.17 the kernel names no drop: the feature is unavailable (`kernel_features` and
    // `end_to_end` check that the agent and `check` say so once), and these tests do not run.
    if version >= POLICY {
        add("kernel_drops", &[])?;
    } else if version >= DROP_REASONS {
        add("kernel_drops", &skip(&[POLICY_DROP_TEST]))?;
    }
    Ok(runs)
}

/// The integration-test binaries of the `tests` package, by target name, built in release.
pub fn test_binaries() -> Result<Vec<(String, PathBuf)>> {
    let mut cargo = cmd::cargo();
    cargo.args([
        "test",
        "--release",
        "-p",
        "tests",
        "--no-run",
        "--message-format=json",
    ]);
    eprintln!("+ {}", cmd::display(&cargo));
    let output = cargo
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot start cargo")?;
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // With JSON messages, warnings and errors come on stdout: show them as cargo would.
        if let Some(rendered) = message["message"]["rendered"].as_str() {
            eprint!("{rendered}");
        }
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(executable)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            binaries.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    if !output.status.success() {
        bail!("building the test binaries failed: {}", output.status);
    }
    Ok(binaries)
}

/// One kernel's result for the summary.
pub struct KernelResult {
    pub name: &'static str,
    pub release: Option<String>,
    pub outcome: Result<GuestOutcome>,
}

impl KernelResult {
    pub fn passed(&self) -> bool {
        self.outcome.as_ref().is_ok_and(GuestOutcome::passed)
    }

    /// The summary line.
    pub fn summary(&self) -> String {
        let release = self.release.as_deref().unwrap_or("not resolved");
        match &self.outcome {
            Err(error) => format!("FAILED  kernel {} ({release}): {error:#}", self.name),
            Ok(outcome) => {
                let runs: Vec<String> = outcome
                    .runs
                    .iter()
                    .map(|(name, status)| match status {
                        Some(0) => format!("{name} ok"),
                        Some(code) => format!("{name} FAILED (exit {code})"),
                        None => format!("{name} did not finish"),
                    })
                    .collect();
                let booted = outcome.booted_in.map_or("no boot".to_owned(), |t| {
                    format!("booted in {:.1} s", t.as_secs_f64())
                });
                let mut line = format!(
                    "{}  kernel {} ({release}): {}; {booted}, {:.1} s in all; console: {}",
                    if outcome.passed() { "passed" } else { "FAILED" },
                    self.name,
                    runs.join(", "),
                    outcome.took.as_secs_f64(),
                    outcome.log.display()
                );
                if let Some(failure) = &outcome.failure {
                    line.push_str(&format!("\n    {failure}"));
                }
                line
            }
        }
    }
}

/// Guests running at once: each is one emulated CPU, i.e. one host core at most.
const PARALLEL_GUESTS: usize = 2;

/// Boots every selected kernel with its runs, [`PARALLEL_GUESTS`] at a time, the newest (the
/// slowest to emulate) first. Results come back in the order of `specs`.
pub fn run(
    specs: &[KernelSpec],
    agent: &Path,
    binaries: &[(String, PathBuf)],
    extra: &[String],
) -> Vec<KernelResult> {
    let dir = cmd::target_dir().join("kernel-matrix");
    let _ = std::fs::create_dir_all(&dir);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let workers = PARALLEL_GUESTS.min(std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::thread::scope(|scope| {
        for _ in 0..workers.min(specs.len()).max(1) {
            scope.spawn(|| {
                loop {
                    let taken = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(index) = specs.len().checked_sub(taken + 1) else {
                        return;
                    };
                    let result = run_kernel(specs[index], agent, binaries, extra, &dir);
                    results
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push((index, result));
                }
            });
        }
    });
    let mut results = results
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

fn run_kernel(
    spec: KernelSpec,
    agent: &Path,
    binaries: &[(String, PathBuf)],
    extra: &[String],
    dir: &Path,
) -> KernelResult {
    let kernel = match kernels::ensure(spec) {
        Ok(kernel) => kernel,
        Err(error) => {
            return KernelResult {
                name: spec.name,
                release: None,
                outcome: Err(error),
            };
        }
    };
    KernelResult {
        name: spec.name,
        release: Some(kernel.release.clone()),
        outcome: run_one(&kernel, agent, binaries, extra, dir),
    }
}

fn run_one(
    kernel: &Kernel,
    agent: &Path,
    binaries: &[(String, PathBuf)],
    extra: &[String],
    dir: &Path,
) -> Result<GuestOutcome> {
    let runs = guest_runs(kernel.version(), binaries, extra)?;
    let initramfs = dir.join(format!("{}.cpio", kernel.spec.name));
    // Under TCG programs verify up to 30 times slower than on the host (7.x): the harness
    // waits longer for the agent to be ready, never a fixed time.
    let env = [("NO_COLOR", "1"), ("FLOWLOG_TEST_TIME_SCALE", "8")];
    guest::build_initramfs(kernel, agent, &runs, &env, &initramfs)?;
    let timeouts = Timeouts {
        boot: Duration::from_secs(120),
        silence: Duration::from_secs(600),
        total: Duration::from_secs(40 * 60),
    };
    let log = dir.join(format!("{}.log", kernel.spec.name));
    guest::boot(kernel, &initramfs, &runs, &timeouts, &log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binaries() -> Vec<(String, PathBuf)> {
        [
            "kernel_features",
            "datapath",
            "datapath_truncation",
            "policy_rules",
            "end_to_end",
            "restart",
            "restart_config",
            "kernel_drops",
        ]
        .iter()
        .map(|n| (n.to_string(), PathBuf::from(format!("/t/{n}"))))
        .collect()
    }

    fn names_and_args(version: (u32, u32)) -> Vec<String> {
        guest_runs(version, &binaries(), &[])
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r.name, r.args.join(" ")))
            .collect()
    }

    #[test]
    fn each_kernel_runs_what_it_supports() {
        assert_eq!(
            names_and_args((5, 10)),
            [
                "kernel_features --test-threads=1",
                "datapath --test-threads=1",
                "datapath_truncation --test-threads=1 --skip \
                 frames_shorter_than_an_ethernet_header_are_refused_by_the_kernel",
                "end_to_end --test-threads=1 --skip tc_records_add_up_to_the_traffic_exactly \
                 --skip xdp_records_add_up_to_the_traffic_exactly",
                "restart_config --test-threads=1 --exact \
                 clsact_filters_are_taken_over_in_place_after_a_kill_and_a_stop",
            ]
        );
        assert_eq!(
            names_and_args((6, 1)),
            [
                "kernel_features --test-threads=1",
                "datapath --test-threads=1",
                "datapath_truncation --test-threads=1",
                "end_to_end --test-threads=1 --skip tc_records_add_up_to_the_traffic_exactly \
                 --skip xdp_records_add_up_to_the_traffic_exactly",
                "restart_config --test-threads=1 --exact \
                 clsact_filters_are_taken_over_in_place_after_a_kill_and_a_stop",
                "kernel_drops --test-threads=1 --skip flowlogs_own_policy_drops_are_counted_once",
            ]
        );
        assert_eq!(
            names_and_args((6, 12)),
            [
                "kernel_features --test-threads=1",
                "datapath --test-threads=1",
                "datapath_truncation --test-threads=1",
                "policy_rules --test-threads=1",
                "end_to_end --test-threads=1",
                "restart --test-threads=1",
                "restart_config --test-threads=1 --exact \
                 clsact_filters_are_taken_over_in_place_after_a_kill_and_a_stop",
                "kernel_drops --test-threads=1",
            ]
        );
    }

    #[test]
    fn kernels_select_host_and_vms() {
        let all = Selection::parse(None).unwrap();
        assert!(all.host);
        assert_eq!(all.kernels.len(), kernels::MATRIX.len());
        let host = Selection::parse(Some("host")).unwrap();
        assert!(host.host && host.kernels.is_empty());
        let two = Selection::parse(Some("5.10,6.1")).unwrap();
        assert!(!two.host);
        assert_eq!(
            two.kernels.iter().map(|k| k.name).collect::<Vec<_>>(),
            ["5.10", "6.1"]
        );
        assert!(Selection::parse(Some("2.6")).is_err());
    }
}
