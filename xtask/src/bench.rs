//! `cargo xtask bench [-- ARGS...]`: set up, make sure the tools the figures compare with or
//! drive are there (iperf3; softflowd, pmacct and nfdump for the packet-rate figure), build,
//! then exec `cargo run --release -p tests --bin flowlog-bench -- ARGS...` (see `run.rs` for why
//! exec).
use anyhow::Result;

use crate::{agent, cmd, setup};

/// (binary, Debian package) pairs the bench needs.
const PACKAGES: [(&str, &str); 1] = [("iperf3", "iperf3")];

/// (binary, Debian package) pairs of the exporters the packet-rate figure compares with: without
/// one, that comparison is skipped with one line and every other figure is still measured.
const EXPORTER_PACKAGES: [(&str, &str); 3] = [
    ("softflowd", "softflowd"),
    ("pmacctd", "pmacct"),
    ("nfcapd", "nfdump"),
];

pub fn bench(args: &[String]) -> Result<()> {
    setup::setup()?;
    for (binary, package) in PACKAGES {
        setup::ensure_debian_package(binary, package)?;
    }
    for (binary, package) in EXPORTER_PACKAGES {
        if let Err(error) = setup::ensure_debian_package(binary, package) {
            let why = format!("{error:#}").replace('\n', " ");
            setup::step(
                &format!("{binary} (Debian package {package})"),
                format!("not installed, the packet-rate figure skips it ({why})"),
            );
        }
    }
    agent::build()?;
    let mut cargo = cmd::cargo();
    cargo
        .args([
            "run",
            "--release",
            "-p",
            "tests",
            "--bin",
            "flowlog-bench",
            "--",
        ])
        .args(args)
        .env(agent::BIN_ENV, agent::binary());
    Err(cmd::exec(&mut cargo))
}
