//! Building the agent, which `run`, `test` and `bench` share: one release profile for
//! everything, so they reuse each other's artifacts (including the eBPF object).
use std::path::PathBuf;

use anyhow::Result;

use crate::cmd;

/// Tells the end-to-end tests and the benchmark which agent binary to spawn.
pub const BIN_ENV: &str = "FLOWLOG_AGENT_BIN";

/// `cargo build --release -p flowlog-agent`; its build.rs builds the eBPF crate with aya-build.
pub fn build() -> Result<()> {
    cmd::run(cmd::cargo().args(["build", "--release", "-p", "flowlog-agent"]))
}

/// The absolute path of the binary [`build`] makes.
pub fn binary() -> PathBuf {
    cmd::target_dir().join("release/flowlog-agent")
}
