//! The libpcap flow exporters flowlog is compared with, each on the receiving interface with its
//! flow cache sized for the figure's 100k flows, and each read back from a collector:
//!
//! - softflowd exports NetFlow v9 at shutdown to `nfcapd`, read back with `nfdump`. Its
//!   shutdown sends every flow at once, more than a socket buffer holds, so the export goes
//!   through a relay with a large buffer that passes it on to nfcapd at a pace nfcapd keeps up
//!   with; UDP's receive-buffer errors in the namespace show that no export was lost.
//! - pmacctd aggregates by 5-tuple in its `print` plugin and writes CSV when it stops.
//!
//! Both keep libpcap's default capture buffer (2 MiB). pmacct's core-to-plugin queue is set to
//! the size its documentation suggests for heavy traffic (10 MB in 10 KB buffers).

mod nfcapd;
mod pmacct;
mod softflowd;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use ::tests::netns::NetNs;

use crate::{
    rate::coverage::Reported,
    support::{Context, Result, process_cpu_ticks, process_state},
};
use pmacct::Pmacctd;
use softflowd::Softflowd;

/// How long a daemon may take to start, to finish what it captured, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The exporters compared with flowlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exporter {
    Softflowd,
    Pmacct,
}

impl Exporter {
    pub const ALL: [Exporter; 2] = [Exporter::Softflowd, Exporter::Pmacct];

    pub fn name(self) -> &'static str {
        match self {
            Exporter::Softflowd => "softflowd",
            Exporter::Pmacct => "pmacct",
        }
    }

    /// The programs a round with this exporter runs: the exporter and its collector.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Exporter::Softflowd => &["softflowd", "softflowctl", "nfcapd", "nfdump"],
            Exporter::Pmacct => &["pmacctd"],
        }
    }

    /// Why this exporter cannot be measured here, if a program it needs is not on PATH.
    pub fn missing(self) -> Option<String> {
        self.missing_on(&std::env::var_os("PATH").unwrap_or_default())
    }

    fn missing_on(self, path: &std::ffi::OsStr) -> Option<String> {
        let missing: Vec<&str> = self
            .programs()
            .iter()
            .copied()
            .filter(|program| !std::env::split_paths(path).any(|dir| dir.join(program).is_file()))
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "{} not installed (`cargo xtask bench` installs softflowd, pmacct and nfdump \
                 from Debian when it can)",
                missing.join(", ")
            )
        })
    }

    /// Starts the exporter on `ifname` in `ns`, keeping its files under `dir`.
    pub fn start<'a>(self, ns: &'a NetNs, ifname: &str, dir: &Path) -> Result<Running<'a>> {
        let running = match self {
            Exporter::Softflowd => Running::Softflowd(Softflowd::start(ns, ifname, dir)?),
            Exporter::Pmacct => Running::Pmacct(Pmacctd::start(ns, ifname, dir)?),
        };
        Ok(running)
    }
}

/// A started exporter.
pub enum Running<'a> {
    Softflowd(Softflowd<'a>),
    Pmacct(Pmacctd),
}

/// What an exporter reported, with its own account of what it captured.
pub struct Outcome {
    pub reported: Reported,
    /// Its capture statistics and export path, as sentences.
    pub details: Vec<String>,
}

impl Running<'_> {
    /// Waits until the exporter has processed everything it captured (its processes stop using
    /// CPU), then stops it, collects its export and returns it.
    pub fn finish(self) -> Result<Outcome> {
        match self {
            Running::Softflowd(softflowd) => softflowd.finish(),
            Running::Pmacct(pmacctd) => pmacctd.finish(),
        }
    }
}

/// A child process with its output in a log file, killed if still running when dropped.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Result<Self> {
        let file = fs::File::create(&log).context(format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("duplicating a log file")?)
            .stderr(file)
            .spawn()
            .context(format!(
                "starting {name} (`cargo xtask bench` installs it from Debian)"
            ))?;
        Ok(Self { name, child, log })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until its log contains `needle`, failing if it exits or takes too long.
    fn wait_for_log(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().context("waiting for a daemon")? {
                return Err(format!("{} exited ({status}): {}", self.name, self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not log {needle:?} within {START_TIMEOUT:?}: {}",
                    self.name,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet waited for (so its pid is not reused); it
        // touches no memory.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits for the process to exit by itself (after a signal or a command). Its exit status
    /// is not judged: softflowd exits with 1 after a requested shutdown; what each daemon wrote
    /// is checked instead.
    fn wait_exit(&mut self) -> Result<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self
            .child
            .try_wait()
            .context("waiting for a daemon")?
            .is_none()
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not exit within {STOP_TIMEOUT:?}",
                    self.name
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the processes `pids` have been idle for a second: at most one clock tick of CPU
/// (a timer) and never seen runnable (on a busy machine a process with work left may be waiting
/// for a CPU rather than using one). Whatever they had captured is then processed.
fn wait_until_idle(name: &str, pids: &[u32]) -> Result<()> {
    const POLL: Duration = Duration::from_millis(100);
    const QUIET: usize = 10;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let ticks = || -> u64 { pids.iter().filter_map(|&pid| process_cpu_ticks(pid)).sum() };
    let runnable = || pids.iter().any(|&pid| process_state(pid) == Some('R'));
    let mut window_start = ticks();
    let mut quiet_polls = 0;
    while Instant::now() < deadline {
        thread::sleep(POLL);
        if runnable() || ticks() > window_start + 1 {
            quiet_polls = 0;
            window_start = ticks();
            continue;
        }
        quiet_polls += 1;
        if quiet_polls >= QUIET {
            return Ok(());
        }
    }
    Err(format!(
        "{name} was still busy {SETTLE_TIMEOUT:?} after the traffic stopped"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_programs_missing_from_path() {
        let empty = tempfile_dir();
        let mut reason = Exporter::Softflowd.missing_on(empty.as_os_str()).unwrap();
        assert!(reason.starts_with("softflowd, softflowctl, nfcapd, nfdump not installed"));
        fs::write(empty.join("pmacctd"), "").unwrap();
        assert_eq!(Exporter::Pmacct.missing_on(empty.as_os_str()), None);
        reason = Exporter::Softflowd.missing_on(empty.as_os_str()).unwrap();
        assert!(reason.starts_with("softflowd,"));
        fs::remove_dir_all(&empty).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flowlog-bench-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        dir
    }
}
