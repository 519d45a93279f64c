//! `cargo xtask bench [-- ARGS...]`: set up, make sure the tools the figures compare with or
//! drive are there (iperf3; softflowd, pmacct and nfdump for the packet-rate figure), build,
//! then exec `cargo run --release -p tests --bin flowlog-bench -- ARGS...` (see `run.rs` for why
//! exec).
use anyhow::Result;

use crate::{agent, cmd, setup};

/// (binary, Debian package) pairs the bench needs.
const PACKAGES: [(&str, &str); 4] = [
    ("iperf3", "iperf3"),
    ("softflowd", "softflowd"),
    ("pmacctd", "pmacct"),
    ("nfcapd", "nfdump"),
];

pub fn bench(args: &[String]) -> Result<()> {
    setup::setup()?;
    for (binary, package) in PACKAGES {
        setup::ensure_debian_package(binary, package)?;
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
