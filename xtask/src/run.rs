//! `cargo xtask run [-- AGENT_ARGS...]`: set up, build, then `flowlog-agent run AGENT_ARGS...`.
//!
//! xtask does not wait for the agent: it execs it. The agent then is this very process, in the
//! terminal's foreground process group, so Ctrl-C reaches only the agent (which drains and flushes
//! before it exits) and its exit status, or the signal that ended it, is what the shell sees.
//! (`cargo run` itself execs xtask on Unix, so no cargo process is left in between either.)
use anyhow::Result;

use crate::{agent, cmd, setup};

pub fn run(agent_args: &[String]) -> Result<()> {
    setup::setup()?;
    agent::build()?;
    let mut agent = cmd::command(agent::binary());
    agent.arg("run").args(agent_args);
    Err(cmd::exec(&mut agent))
}
