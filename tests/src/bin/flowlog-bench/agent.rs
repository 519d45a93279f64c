//! The real `flowlog-agent` binary, run inside a benchmark namespace: the test harness's agent
//! ([`tests::agent::AgentBuilder`]), with its records discarded and its errors returned.

use std::{fs, time::Duration};

use ::tests::{
    agent::{Agent as Running, AgentBuilder, agent_binary},
    netns::NetNs,
};

use crate::support::Result;

/// How long the agent may take to load and attach its programs.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The agent binary the benchmark runs, if it exists.
pub fn binary() -> Result<std::path::PathBuf> {
    let path = agent_binary();
    if !path.is_file() {
        return Err(format!(
            "no agent binary at {} (build it with `cargo build --release -p flowlog-agent`, \
             or set FLOWLOG_AGENT_BIN)",
            path.display()
        ));
    }
    Ok(path)
}

/// A running agent. [`Agent::stop`] ends it with SIGTERM; dropping it kills it.
pub struct Agent(Running);

impl Agent {
    /// Starts `flowlog-agent run ARGS` inside `ns` and waits until it is ready.
    pub fn start(ns: &NetNs, args: &[&str]) -> Result<Self> {
        binary()?;
        let agent = AgentBuilder::new(ns)
            .args(args)
            .envs(&[("FLOWLOG_LOG", "info")])
            .stdout_discarded()
            .ready_within(ATTACH_TIMEOUT)
            .try_start()?;
        // `ip netns exec` execs the program in place, so the child is the agent itself: its
        // /proc entry is the agent's, memory included.
        let comm = fs::read_to_string(format!("/proc/{}/comm", agent.pid())).unwrap_or_default();
        if comm.trim() != "flowlog-agent" {
            return Err(format!(
                "process {} is {:?}, not flowlog-agent",
                agent.pid(),
                comm.trim()
            ));
        }
        Ok(Self(agent))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Waits until a log line (seen before or arriving within `timeout`) satisfies `matches`.
    pub fn wait_for(&mut self, matches: impl Fn(&str) -> bool, timeout: Duration) -> Result<()> {
        self.0.wait_until(
            |lines| lines.iter().any(|line| matches(&strip_ansi(line))),
            timeout,
        )
    }

    /// Every line logged so far, colour codes removed.
    pub fn log(&mut self) -> Vec<String> {
        self.0.log_now().lines().map(strip_ansi).collect()
    }

    /// Sends SIGTERM and waits for the agent's final drain and exit; returns its whole log
    /// (the final drains included), colour codes removed.
    pub fn stop(self) -> Result<Vec<String>> {
        let stopped = self.0.stop();
        if !stopped.status.success() {
            return Err(format!(
                "the agent exited with {}; it said:\n{}",
                stopped.status, stopped.stderr
            ));
        }
        Ok(stopped.stderr.lines().map(strip_ansi).collect())
    }
}

/// The value of `key=` in a tracing log line, if it is a number.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .and_then(|value| value.parse().ok())
}

/// Removes terminal colour sequences (`ESC [ ... letter`), in case the log is coloured anyway.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_of_a_log_line() {
        let line = "2025-01-01T00:00:00Z  INFO flowlog_agent::agent: interval written start=10 \
                    end=12 records=100003 flows=100002 idle_interfaces=0";
        assert_eq!(field(line, "flows"), Some(100_002));
        assert_eq!(field(line, "end"), Some(12));
        assert_eq!(field(line, "records"), Some(100_003));
        assert_eq!(field(line, "missing"), None);
    }

    #[test]
    fn strips_colour() {
        assert_eq!(
            strip_ansi("\u{1b}[32m INFO\u{1b}[0m a=\u{1b}[2m1"),
            " INFO a=1"
        );
    }
}
