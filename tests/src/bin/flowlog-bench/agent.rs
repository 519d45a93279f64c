//! The real `flowlog-agent` binary, run inside a benchmark namespace.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use ::tests::netns::NetNs;

use crate::support::{Context, Result};

/// How long the agent may take to load and attach its programs.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it may take for its final drain and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `FLOWLOG_AGENT_BIN` (set by `cargo xtask bench`), else `flowlog-agent` next to this binary
/// (both are in `target/release`).
pub fn binary() -> Result<PathBuf> {
    let path = match std::env::var_os("FLOWLOG_AGENT_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .context("locating flowlog-bench")?
            .with_file_name("flowlog-agent"),
    };
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
pub struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far, colour codes removed.
    log: Vec<String>,
}

impl Agent {
    /// Starts `flowlog-agent run ARGS` inside `ns` and waits until it says it attached.
    pub fn start(ns: &NetNs, args: &[&str]) -> Result<Self> {
        let binary = binary()?;
        let program = binary.to_str().context("the agent's path is not UTF-8")?;
        let mut child = ns
            .command(program)
            .arg("run")
            .args(args)
            .env("NO_COLOR", "1")
            .env("FLOWLOG_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context(format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().context("the agent's stderr")?;
        let (send, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|line| line.ok()) {
                if send.send(strip_ansi(&line)).is_err() {
                    return;
                }
            }
        });
        let mut agent = Agent {
            child,
            lines,
            log: Vec::new(),
        };
        agent.wait_for(|line| line.contains("attached"), ATTACH_TIMEOUT)?;
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
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a log line (seen before or arriving within `timeout`) satisfies `matches`.
    pub fn wait_for(&mut self, matches: impl Fn(&str) -> bool, timeout: Duration) -> Result<()> {
        if self.log.iter().any(|line| matches(line)) {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = matches(&line);
                    self.log.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(_) => {
                    let exit = self.child.try_wait().ok().flatten();
                    return Err(format!(
                        "the agent did not log what was expected within {timeout:?} (exit: \
                         {exit:?}); it said:\n{}",
                        self.log.join("\n")
                    ));
                }
            }
        }
    }

    /// Every line logged so far.
    pub fn log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    /// Sends SIGTERM and waits for the agent's final drain and exit.
    pub fn stop(mut self) -> Result<ExitStatus> {
        // SAFETY: kill(2) on our own child, which has not been waited for (so its pid is not
        // reused); it touches no memory.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the agent")? {
                if !status.success() {
                    let log = self.log().join("\n");
                    return Err(format!("the agent exited with {status}; it said:\n{log}"));
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("the agent did not stop within {STOP_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
