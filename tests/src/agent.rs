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
    /// Where it said it was ready; kept open while it runs.
    notify: Option<NotifySocket>,
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

/// How to start the agent: inside a namespace, with its arguments, environment and wrapper.
/// [`AgentBuilder::start`] waits until the agent says it is ready (`READY=1` on the socket
/// `NOTIFY_SOCKET` names, as systemd's `Type=notify` reads it: every selected interface attached
/// and the sinks running), or fails printing what it said.
pub struct AgentBuilder<'n> {
    ns: &'n NetNs,
    wrapper: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdout: StdoutUse,
    timeout: Duration,
}

/// What becomes of the agent's standard output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StdoutUse {
    /// Read and returned by [`Agent::stop`].
    Read,
    /// A pipe whose reader is closed at once.
    Closed,
    /// `/dev/null` (benchmarks: records nobody reads).
    Discarded,
}

impl<'n> AgentBuilder<'n> {
    pub fn new(ns: &'n NetNs) -> Self {
        Self {
            ns,
            wrapper: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            stdout: StdoutUse::Read,
            timeout: Duration::from_secs(20),
        }
    }

    /// Arguments of `flowlog-agent run`.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// Environment variables of the agent (credentials, for instance).
    pub fn envs(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        self
    }

    /// Starts the agent through `wrapper` (a program and its arguments, e.g. `setpriv` with a
    /// capability set).
    pub fn wrapper(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The agent's standard output is a pipe whose reader is closed at once: every write to it
    /// fails with EPIPE.
    pub fn stdout_closed(mut self) -> Self {
        self.stdout = StdoutUse::Closed;
        self
    }

    /// The agent's standard output goes to /dev/null.
    pub fn stdout_discarded(mut self) -> Self {
        self.stdout = StdoutUse::Discarded;
        self
    }

    /// How long it may take to be ready (times [`TIME_SCALE_ENV`]); 20 s by default.
    pub fn ready_within(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the agent and waits until it is ready; panics with what it said if it is not.
    pub fn start(self) -> Agent {
        self.try_start().unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`AgentBuilder::start`], returning why the agent did not become ready.
    pub fn try_start(self) -> Result<Agent, String> {
        let wrapper: Vec<&str> = self.wrapper.iter().map(String::as_str).collect();
        let notify = NotifySocket::new();
        let mut child = agent_command(self.ns, &wrapper)
            .arg("run")
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .env("NOTIFY_SOCKET", notify.path())
            .stdout(match self.stdout {
                StdoutUse::Discarded => Stdio::null(),
                _ => Stdio::piped(),
            })
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", agent_binary().display()))?;
        let stdout = match (self.stdout, child.stdout.take()) {
            (StdoutUse::Read, Some(mut out)) => thread::spawn(move || {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text);
                text
            }),
            _ => thread::spawn(String::new),
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
            notify: Some(notify),
        };
        agent.wait_for_ready(self.timeout * time_scale())?;
        Ok(agent)
    }
}

/// The socket a started agent says `READY=1` on.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("flowlog-notify-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("a notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        Self { socket, path }
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The states received so far (`READY=1`, ...), without waiting longer than the socket's
    /// read timeout.
    fn receive(&self) -> Vec<String> {
        let mut states = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buffer) {
            states.extend(
                String::from_utf8_lossy(&buffer[..n])
                    .lines()
                    .map(str::to_owned),
            );
        }
        states
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Agent {
    /// Starts `flowlog-agent run ARGS` inside `ns` and waits until it is ready.
    pub fn start(ns: &NetNs, args: &[&str]) -> Self {
        AgentBuilder::new(ns).args(args).start()
    }

    /// Waits for `READY=1`; fails (with what the agent said) if it exits or the time is up.
    fn wait_for_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let notify = self.notify.as_ref().expect("started with a notify socket");
        loop {
            if notify.receive().iter().any(|state| state == "READY=1") {
                return Ok(());
            }
            while let Ok(line) = self.stderr_lines.try_recv() {
                self.stderr_seen.push(line);
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                // What it said last, too.
                while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                    self.stderr_seen.push(line);
                }
                return Err(format!(
                    "the agent was not ready within {timeout:?} (exit: {exited:?}); it said:\n{}",
                    self.stderr_seen.join("\n")
                ));
            }
        }
    }

    /// Waits until `count` log lines containing `needle` have been seen in total, for at most
    /// `timeout` (times [`TIME_SCALE_ENV`]).
    pub fn wait_for_log(&mut self, needle: &str, count: usize, timeout: Duration) {
        let seen = |lines: &[String]| lines.iter().filter(|l| l.contains(needle)).count();
        if let Err(error) = self.wait_until(|lines| seen(lines) >= count, timeout) {
            panic!("agent did not log {count} x {needle:?}: {error}");
        }
    }

    /// Waits until the log lines seen so far satisfy `done`, for at most `timeout` (times
    /// [`TIME_SCALE_ENV`]); says why not, with what the agent said.
    pub fn wait_until(
        &mut self,
        done: impl Fn(&[String]) -> bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout * time_scale();
        while !done(&self.stderr_seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => self.stderr_seen.push(line),
                Err(_) => {
                    let status = self
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    return Err(format!(
                        "not within {timeout:?} (exit: {status:?}); it said:\n{}",
                        self.stderr_seen.join("\n")
                    ));
                }
            }
        }
        Ok(())
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

    /// The log lines seen so far and those waiting to be read.
    pub fn log_now(&mut self) -> String {
        while let Ok(line) = self.stderr_lines.try_recv() {
            self.stderr_seen.push(line);
        }
        self.log()
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
                let _ = child.wait();
                while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(1)) {
                    self.stderr_seen.push(line);
                }
                panic!(
                    "agent did not stop within {timeout:?}; its log:\n{}",
                    self.log()
                );
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
