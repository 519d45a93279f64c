//! A real CloudWatch Logs API for the CloudWatch sink's tests: moto's standalone server (as
//! strict as CloudWatch on PutLogEvents' limits, `scripts/cloudwatch_server.py`) on the loopback
//! of a test namespace, from the Python environment `cargo xtask test` installs, and boto3 as
//! the independent reference client (`scripts/cloudwatch.py`).

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::{NetNs, in_netns},
    s3::{python, run_script, script},
};

/// A running server; killed on drop. What it stored goes with it (moto keeps it in memory).
pub struct CloudWatchServer {
    child: Option<Child>,
    port: u16,
    logs: PathBuf,
}

/// One PutLogEvents call the server accepted, or refused on purpose (`FLOWLOG_FAIL_EVERY`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub group: String,
    pub stream: String,
    pub events: usize,
    /// Message bytes plus 26 per event, as CloudWatch counts them.
    pub bytes: usize,
    /// The error code of a call refused on purpose (nothing stored).
    pub refused: Option<String>,
}

impl CloudWatchServer {
    /// Starts the server on `127.0.0.1:port` inside `ns`, appending the calls and events it
    /// accepts to files in `logs` (kept across restarts of the server on the same directory),
    /// and waits until it accepts connections.
    pub fn start(ns: &NetNs, port: u16, logs: &Path) -> Self {
        Self::start_with(ns, port, logs, &[])
    }

    /// [`CloudWatchServer::start`] with more environment (`FLOWLOG_FAIL_EVERY`).
    pub fn start_with(ns: &NetNs, port: u16, logs: &Path, env: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(logs).expect("the server's log directory");
        let python = python();
        let mut command = ns.command(python.to_str().expect("UTF-8 path"));
        command
            .arg(script("cloudwatch_server.py"))
            .args(["127.0.0.1", &port.to_string()])
            .env("FLOWLOG_CALLS_LOG", logs.join("calls"))
            .env("FLOWLOG_EVENTS_LOG", logs.join("events"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().expect("starting the CloudWatch server");
        let mut server = CloudWatchServer {
            child: Some(child),
            port,
            logs: logs.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = in_netns(ns, || {
                TcpStream::connect_timeout(
                    &([127, 0, 0, 1], port).into(),
                    Duration::from_millis(200),
                )
            })
            .expect("enter namespace")
            .is_ok();
            if up {
                return server;
            }
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the CloudWatch server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the CloudWatch server did not start in 30 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The PutLogEvents calls it accepted so far.
    pub fn calls(&self) -> Vec<Call> {
        calls(&self.logs)
    }

    /// Every event it accepted so far.
    pub fn accepted(&self) -> Vec<Accepted> {
        accepted(&self.logs)
    }

    /// Freezes the server (SIGUSR1, see `cloudwatch_server.py`): every PutLogEvents call from
    /// then on hangs, unanswered and unstored. (SIGSTOP would freeze it too, but could catch a
    /// call stored and not yet answered: a duplicate the agent cannot avoid and the test could
    /// not tell from a bug.)
    pub fn freeze(&self) {
        self.signal(libc::SIGUSR1);
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid; it touches no memory.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// Kills the server: an outage, which forgets everything it stored.
    pub fn stop(mut self) {
        self.kill();
    }

    /// SIGKILL, also when frozen: a request it holds unanswered is never processed.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for CloudWatchServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The calls a server logging to `logs` accepted over its life.
pub fn calls(logs: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(logs.join("calls")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.split(' ');
            let mut next = || parts.next().expect("four fields").to_owned();
            let (group, stream, events, last) = (next(), next(), next(), next());
            match events.as_str() {
                "refused" => Call {
                    group,
                    stream,
                    events: 0,
                    bytes: 0,
                    refused: Some(last),
                },
                _ => Call {
                    group,
                    stream,
                    events: events.parse().expect("events"),
                    bytes: last.parse().expect("bytes"),
                    refused: None,
                },
            }
        })
        .collect()
}

/// One event a server accepted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Accepted {
    pub group: String,
    pub stream: String,
    pub timestamp: i64,
    pub message: String,
}

/// The events a server logging to `logs` accepted over its life, in order.
pub fn accepted(logs: &Path) -> Vec<Accepted> {
    let text = std::fs::read_to_string(logs.join("events")).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, '\t');
            let mut next = || parts.next().expect("four fields").to_owned();
            Accepted {
                group: next(),
                stream: next(),
                timestamp: next().parse().expect("timestamp"),
                message: next(),
            }
        })
        .collect()
}

/// The environment the agent needs to reach the server: test credentials, a region, the
/// endpoint, and no instance metadata service.
pub fn agent_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "flowlog-test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "flowlog-test-secret".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", endpoint.to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

/// The log group's stream names, sorted.
pub fn streams(ns: &NetNs, endpoint: &str, group: &str) -> Vec<String> {
    let output = run_script(ns, "cloudwatch.py", &["streams", endpoint, group]);
    let mut streams: Vec<String> = String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(str::to_owned)
        .collect();
    streams.sort();
    streams
}

/// Every event of a stream, in its order: (timestamp in ms, message).
pub fn events(ns: &NetNs, endpoint: &str, group: &str, stream: &str) -> Vec<(i64, String)> {
    let output = run_script(ns, "cloudwatch.py", &["events", endpoint, group, stream]);
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| {
            let (timestamp, message) = line.split_once(' ').expect("timestamp and message");
            (timestamp.parse().expect("timestamp"), message.to_owned())
        })
        .collect()
}

pub fn delete_group(ns: &NetNs, endpoint: &str, group: &str) {
    run_script(ns, "cloudwatch.py", &["delete-group", endpoint, group]);
}

pub fn delete_stream(ns: &NetNs, endpoint: &str, group: &str, stream: &str) {
    run_script(
        ns,
        "cloudwatch.py",
        &["delete-stream", endpoint, group, stream],
    );
}

/// An IAM user of a server started with `INITIAL_NO_AUTH_ACTION_COUNT` (three unauthenticated
/// actions per user), allowed `actions`: its (access key id, secret access key).
pub fn iam_user(ns: &NetNs, endpoint: &str, user: &str, actions: &[&str]) -> (String, String) {
    let mut args = vec!["iam-user", endpoint, user];
    args.extend_from_slice(actions);
    let output = run_script(ns, "cloudwatch.py", &args);
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (id, secret) = text.trim().split_once(' ').expect("key id and secret");
    (id.to_owned(), secret.to_owned())
}
