//! The real `flowlog-agent` binary as a child process inside a test namespace.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::netns::NetNs;

/// Multiplies how long the harness waits for the agent to start and stop: the kernel matrix
/// sets it in its VMs, where software emulation verifies the programs several times slower
/// (waits end as soon as the agent is ready; only the bound moves).
pub const TIME_SCALE_ENV: &str = "FLOWLOG_TEST_TIME_SCALE";

fn time_scale() -> u32 {
    std::env::var(TIME_SCALE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// Where the agent binary is: `FLOWLOG_AGENT_BIN` (set by `cargo xtask test`), else the release
/// build next to the test executable's target directory.
pub fn agent_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("FLOWLOG_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/release/deps/<test> -> target/release/flowlog-agent
    let release = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    release.join("flowlog-agent")
}

/// A running agent. Stop it with [`Agent::stop`]; dropping it kills it.
pub struct Agent {
    child: Option<Child>,
    stdout: Option<thread::JoinHandle<String>>,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What a stopped agent left.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The agent binary as a command inside `ns`, started through `wrapper` (a program and its
/// arguments, e.g. `setpriv` with a capability set) if there is one.
pub fn agent_command(ns: &NetNs, wrapper: &[&str]) -> std::process::Command {
    let binary = agent_binary();
    match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = ns.command(program);
            command.args(rest).arg(&binary);
            command
        }
        None => ns.command(binary.to_str().expect("UTF-8 path")),
    }
}

/// The sum of `field` (`excluded_packets`, ...) over the `interval written` lines of `logs`.
pub fn interval_total<S: AsRef<str>>(logs: &[S], field: &str) -> u64 {
    let key = format!("{field}=");
    logs.iter()
        .flat_map(|log| log.as_ref().lines())
        .filter(|line| line.contains("interval written"))
        .filter_map(|line| {
            line.split(key.as_str())
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Runs `command` to completion with its output captured, killing it (and failing the test) if
/// it has not exited within `timeout`: a start that should be refused must not hang a test.
pub fn output_within(command: &mut std::process::Command, timeout: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the agent");
    let (mut out, mut err) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let stdout = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = out.read_to_end(&mut bytes);
        bytes
    });
    let stderr = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = err.read_to_end(&mut bytes);
        bytes
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let said = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("the agent did not exit within {timeout:?}; it said:\n{said}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

impl Agent {
    /// Starts `flowlog-agent run ARGS` inside `ns` and waits until it has attached to
    /// `attachments` interfaces (or fails, printing what it said).
    pub fn start(ns: &NetNs, args: &[&str], attachments: usize) -> Self {
        Self::start_full(ns, &[], args, &[], attachments)
    }

    /// [`Agent::start`] with extra environment variables (credentials, for instance).
    pub fn start_with_env(
        ns: &NetNs,
        args: &[&str],
        env: &[(&str, &str)],
        attachments: usize,
    ) -> Self {
        Self::start_full(ns, &[], args, env, attachments)
    }

    /// As [`Agent::start`], with the agent started through `wrapper` (a program and its
    /// arguments, e.g. `setpriv` with a capability set).
    pub fn start_wrapped(ns: &NetNs, wrapper: &[&str], args: &[&str], attachments: usize) -> Self {
        Self::start_full(ns, wrapper, args, &[], attachments)
    }

    /// As [`Agent::start`], with the agent's standard output a pipe whose reader is closed at
    /// once: every write to it fails with EPIPE.
    pub fn start_with_stdout_closed(ns: &NetNs, args: &[&str], attachments: usize) -> Self {
        Self::start_inner(ns, &[], args, &[], attachments, false)
    }

    fn start_full(
        ns: &NetNs,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        attachments: usize,
    ) -> Self {
        Self::start_inner(ns, wrapper, args, env, attachments, true)
    }

    fn start_inner(
        ns: &NetNs,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        attachments: usize,
        read_stdout: bool,
    ) -> Self {
        let mut child = agent_command(ns, wrapper)
            .arg("run")
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", agent_binary().display()));
        let mut out = child.stdout.take().expect("piped");
        let stdout = if read_stdout {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text);
                text
            })
        } else {
            drop(out);
            thread::spawn(String::new)
        };
        let err = child.stderr.take().expect("piped");
        let (send, stderr_lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let mut agent = Agent {
            child: Some(child),
            stdout: Some(stdout),
            stderr_lines,
            stderr_seen: Vec::new(),
        };
        agent.wait_for_log("attached", attachments, Duration::from_secs(20));
        agent
    }

    /// Waits until `count` log lines containing `needle` have been seen in total, for at most
    /// `timeout` (times [`TIME_SCALE_ENV`]).
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout * time_scale();
        while self
            .stderr_seen
            .iter()
            .filter(|l| l.contains(needle))
            .count()
            < count
        {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => self.stderr_seen.push(line),
                Err(_) => {
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    panic!(
                        "agent did not log {count} x {needle:?} (exit: {status:?}); it said:\n{}",
                        self.stderr_seen.join("\n")
                    );
                }
            }
        }
    }

    /// Whether a log line containing `needle` has been seen within `timeout` (waiting no
    /// longer than that; never panics).
    pub fn logged_within(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr_seen.iter().any(|l| l.contains(needle)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => self.stderr_seen.push(line),
                Err(_) => return false,
            }
        }
    }

    /// The log lines seen so far.
    pub fn log(&self) -> String {
        self.stderr_seen.join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (SIGTERM, SIGHUP, ...) to the agent.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; it touches no memory.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// Sends SIGTERM and waits for the agent to finish its final drain and exit.
    pub fn stop(self) -> Stopped {
        self.signal(libc::SIGTERM);
        self.wait_for_exit(Duration::from_secs(30))
    }

    /// Waits until the agent exits (it was told to stop); panics after `timeout`.
    pub fn wait_for_exit(mut self, timeout: Duration) -> Stopped {
        let mut child = self.child.take().expect("running");
        let timeout = timeout * time_scale();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waitpid") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.stdout.take().expect("once").join().unwrap_or_default();
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr_seen.push(line);
        }
        Stopped {
            status,
            stdout,
            stderr: self.stderr_seen.join("\n"),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
