//! `cargo xtask bench [-- ARGS...]`: set up, make sure iperf3 is there, build, then exec
//! `cargo run --release -p tests --bin flowlog-bench -- ARGS...` (see `run.rs` for why exec).
use anyhow::Result;

use crate::{agent, cmd, setup};

pub fn bench(args: &[String]) -> Result<()> {
    setup::setup()?;
    setup::ensure_debian_package("iperf3", "iperf3")?;
    // The drop flood drops with a real nftables rule (in its namespace only).
    setup::ensure_debian_package("nft", "nftables")?;
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
