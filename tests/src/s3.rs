//! A real S3-compatible server for the object-storage tests: moto's standalone server, from
//! the Python environment `cargo xtask test` installs, started inside a test namespace on its
//! loopback (where the agent under test runs), and boto3 as the independent reference client.

use std::{
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::netns::{NetNs, in_netns};

/// Where `cargo xtask test` put the environment (`FLOWLOG_TEST_VENV`; its directory is named
/// after a hash of its requirements).
pub fn venv() -> PathBuf {
    std::env::var_os("FLOWLOG_TEST_VENV")
        .map(PathBuf::from)
        .expect("FLOWLOG_TEST_VENV is unset: run the tests with `cargo xtask test`, which installs the Python environment and sets it")
}

pub fn python() -> PathBuf {
    let python = venv().join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the tests with `cargo xtask test`, which installs it",
        python.display()
    );
    python
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// A running moto server; killed on drop.
pub struct S3Server {
    child: Option<Child>,
    port: u16,
}

impl S3Server {
    /// Starts the server on `127.0.0.1:port` inside `ns` with extra environment `env`, and
    /// waits until it accepts connections.
    pub fn start(ns: &NetNs, port: u16, env: &[(&str, &str)]) -> Self {
        let server = venv().join("bin/moto_server");
        let mut command = ns.command(server.to_str().expect("UTF-8 path"));
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", server.display()));
        let mut s3 = S3Server {
            child: Some(child),
            port,
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
                return s3;
            }
            if let Some(status) = s3.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("the S3 server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the S3 server did not start in 30 s"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server: an outage. What it stored is gone with it (moto keeps objects in
    /// memory), so a test reads what it needs first.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a test script with the environment's Python inside `ns`; fails unless it succeeds.
pub fn run_script(ns: &NetNs, name: &str, args: &[&str]) -> Output {
    let python = python();
    let output = ns
        .command(python.to_str().expect("UTF-8 path"))
        .arg(script(name))
        .args(args)
        .output()
        .expect("spawn python");
    assert!(
        output.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn create_bucket(ns: &NetNs, endpoint: &str, bucket: &str) {
    run_script(ns, "s3.py", &["create-bucket", endpoint, bucket]);
}

/// Downloads every object of `bucket` into `directory/<key>`; returns the keys.
pub fn download_all(ns: &NetNs, endpoint: &str, bucket: &str, directory: &Path) -> Vec<String> {
    let output = run_script(
        ns,
        "s3.py",
        &[
            "download",
            endpoint,
            bucket,
            directory.to_str().expect("UTF-8 path"),
        ],
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 keys")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `gzip -dc`: the object as any reader would see it.
pub fn gunzip(path: &Path) -> String {
    let output = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("spawn gzip");
    assert!(output.status.success(), "gzip -dc {}", path.display());
    String::from_utf8(output.stdout).expect("UTF-8 text object")
}

/// A TCP relay inside a namespace from `127.0.0.1:port` to a server at `127.0.0.1:upstream`:
/// an outage the test switches on and off ([`Relay::down`]: the port refuses connections and
/// open ones are cut) while the server behind it, and what it stored, stays. A test reads the
/// server directly, so nothing can arrive between its last read and the outage.
pub struct Relay {
    port: u16,
    upstream: u16,
    running: Option<RelayRunning>,
}

struct RelayRunning {
    stop: Arc<AtomicBool>,
    acceptor: thread::JoinHandle<()>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    /// Starts relaying `port` to `upstream` in `ns`.
    pub fn start(ns: &NetNs, port: u16, upstream: u16) -> Self {
        let mut relay = Relay {
            port,
            upstream,
            running: None,
        };
        relay.up(ns);
        relay
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Ends the outage: the port accepts and relays again.
    pub fn up(&mut self, ns: &NetNs) {
        assert!(self.running.is_none(), "the relay is already up");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let upstream = self.upstream;
        // The listener, and every thread the acceptor spawns, live in `ns`.
        let acceptor = in_netns(ns, || {
            let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay port");
            listener.set_nonblocking(true).expect("nonblocking");
            let (stop, connections) = (stop.clone(), connections.clone());
            thread::spawn(move || accept_loop(listener, upstream, &stop, &connections))
        })
        .expect("enter namespace");
        self.running = Some(RelayRunning {
            stop,
            acceptor,
            connections,
        });
    }

    /// Starts an outage: the port is closed (connections are refused) and every relayed
    /// connection is cut.
    pub fn down(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.store(true, Ordering::Relaxed);
        let _ = running.acceptor.join();
        for stream in running.connections.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.down();
    }
}

fn accept_loop(
    listener: TcpListener,
    upstream: u16,
    stop: &AtomicBool,
    connections: &Mutex<Vec<TcpStream>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
            continue;
        };
        let mut live = connections.lock().expect("lock");
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(Shutdown::Write);
            });
        }
        live.extend([client, server]);
    }
}
