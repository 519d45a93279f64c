//! `cargo xtask test [--kernels LIST] [-- HARNESS_ARGS...]`: set up, build the agent, then run
//! every test in the release profile on the machine's kernel (`host`), in four cargo
//! invocations:
//! - the unit tests of the host packages, with the default number of threads;
//! - the host unit tests of the eBPF crate's library (the crate is not a default member);
//! - the privileged integration tests of the `tests` package one at a time, since they create
//!   network namespaces and send time-sensitive traffic;
//! - the BPF_PROG_TEST_RUN datapath tests again on the bounded-loop programs older kernels get;
//!
//! then the kernel matrix (`matrix.rs`): the privileged tests in qemu on each of Debian's
//! kernels. Everything runs even when something fails; a summary closes the output, one line
//! per run and per kernel.
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{agent, cmd, matrix, setup, test_deps};

/// One `cargo test` invocation: what it covers, its arguments and environment.
struct TestRun {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

/// The `cargo test` invocations, with `extra` passed to every test harness.
fn test_runs(extra: &[String]) -> Vec<TestRun> {
    let run = |name, cargo_args: &[&str], harness_args: &[&str]| TestRun {
        name,
        args: ["test", "--release", "--no-fail-fast"]
            .iter()
            .chain(cargo_args)
            .chain(&["--"])
            .chain(harness_args)
            .map(|s| s.to_string())
            .chain(extra.iter().cloned())
            .collect(),
        env: Vec::new(),
    };
    vec![
        run(
            "unit tests of the host packages",
            &[
                "--workspace",
                "--exclude",
                "tests",
                "--exclude",
                "flowlog-ebpf",
            ],
            &[],
        ),
        run(
            "host tests of flowlog-ebpf's library",
            &["-p", "flowlog-ebpf", "--lib"],
            &[],
        ),
        run(
            "integration tests (package tests, one thread)",
            &["-p", "tests"],
            &["--test-threads=1"],
        ),
        TestRun {
            env: vec![("FLOWLOG_TEST_PROGRAMS", "bounded-loops")],
            ..run(
                "datapath tests on the bounded-loop programs",
                &[
                    "-p",
                    "tests",
                    "--test",
                    "datapath",
                    "--test",
                    "datapath_truncation",
                ],
                &["--test-threads=1"],
            )
        },
    ]
}

pub fn test(kernels: Option<&str>, extra: &[String]) -> Result<()> {
    let selection = matrix::Selection::parse(kernels)?;
    setup::setup()?;
    let venv = test_deps::ensure()?;
    // The IPFIX tests export to a real collector and read its files back, and decode the raw
    // stream with a second, independent IPFIX reader.
    setup::ensure_debian_package("nfcapd", "nfdump")?;
    setup::ensure_debian_package("ipfixDump", "libfixbuf-tools")?;
    // The service test checks contrib/flowlog-agent.service with `systemd-analyze verify` and
    // runs the agent under `setpriv` with the unit's capabilities.
    setup::ensure_debian_package("systemd-analyze", "systemd")?;
    setup::ensure_debian_package("setpriv", "util-linux")?;
    // The kernel-drop tests drop packets with real nftables and iptables rules (inside their
    // namespaces only).
    setup::ensure_debian_package("nft", "nftables")?;
    setup::ensure_debian_package("iptables-nft", "iptables")?;
    if !selection.kernels.is_empty() {
        // The kernel matrix: qemu, the guest's busybox, Debian's kernels and their modules.
        setup::ensure_debian_package("qemu-system-x86_64", "qemu-system-x86")?;
        setup::ensure_debian_package("busybox", "busybox-static")?;
        setup::ensure_debian_package("modinfo", "kmod")?;
        setup::ensure_debian_package("xz", "xz-utils")?;
        setup::ensure_debian_package("zstd", "zstd")?;
        setup::ensure_debian_package("dpkg-deb", "dpkg")?;
        setup::ensure_debian_file(
            "/usr/share/keyrings/debian-archive-keyring.gpg",
            "debian-archive-keyring",
        )?;
    }
    agent::build()?;
    let agent_bin = agent::binary();

    let mut outcomes = Vec::new();
    if selection.host {
        for run in test_runs(extra) {
            let started = Instant::now();
            let mut cargo = cmd::cargo();
            cargo
                .args(&run.args)
                .env(agent::BIN_ENV, &agent_bin)
                .env(test_deps::VENV_ENV, &venv)
                .envs(run.env.iter().copied());
            let passed = cmd::status(&mut cargo)?.success();
            outcomes.push((run.name.to_owned(), passed, started.elapsed()));
        }
    }
    let mut kernel_results = Vec::new();
    let matrix_started = Instant::now();
    if !selection.kernels.is_empty() {
        let binaries = matrix::test_binaries()?;
        kernel_results = matrix::run(&selection.kernels, &agent_bin, &binaries, extra);
    }

    eprintln!("\ntest summary:");
    for (name, passed, took) in &outcomes {
        let verdict = if *passed { "passed" } else { "FAILED" };
        eprintln!("  {verdict}  {name} ({})", seconds(*took));
    }
    for result in &kernel_results {
        eprintln!("  {}", result.summary());
    }
    if !kernel_results.is_empty() {
        eprintln!(
            "  kernel matrix: {} kernels in {}",
            kernel_results.len(),
            seconds(matrix_started.elapsed())
        );
    }
    let failed = outcomes.iter().filter(|(_, passed, _)| !passed).count()
        + kernel_results.iter().filter(|r| !r.passed()).count();
    let total = outcomes.len() + kernel_results.len();
    if failed > 0 {
        bail!("{failed} of {total} test runs failed");
    }
    eprintln!("all {total} test runs passed");
    Ok(())
}

fn seconds(took: Duration) -> String {
    format!("{:.1} s", took.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integration_tests_run_one_at_a_time_and_all_get_the_extra_args() {
        let runs = test_runs(&["--nocapture".into(), "flow".into()]);
        let args: Vec<String> = runs.iter().map(|r| r.args.join(" ")).collect();
        assert_eq!(
            args,
            [
                "test --release --no-fail-fast --workspace --exclude tests --exclude flowlog-ebpf \
                 -- --nocapture flow",
                "test --release --no-fail-fast -p flowlog-ebpf --lib -- --nocapture flow",
                "test --release --no-fail-fast -p tests -- --test-threads=1 --nocapture flow",
                "test --release --no-fail-fast -p tests --test datapath --test datapath_truncation \
                 -- --test-threads=1 --nocapture flow",
            ]
        );
    }

    #[test]
    fn without_extra_args_the_harness_gets_only_the_thread_limit() {
        let runs = test_runs(&[]);
        assert!(
            runs[0]
                .args
                .ends_with(&["flowlog-ebpf".into(), "--".into()])
        );
        assert!(
            runs[2]
                .args
                .ends_with(&["--".into(), "--test-threads=1".into()])
        );
    }
}
