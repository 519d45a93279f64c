//! A real S3-compatible server for the object-storage tests: moto's standalone server, from
//! the Python environment `cargo xtask test` installs, started inside a test namespace on its
//! loopback (where the agent under test runs), and boto3 as the independent reference client.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
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
