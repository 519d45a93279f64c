//! One kernel of the matrix in qemu: an initramfs holding busybox, the host's iproute2, the
//! release agent and test binaries (each with the shared libraries `ldd` lists, at the paths
//! the host has them, so they run unchanged), and an init script that loads the modules, runs
//! the tests one after the other and powers off.
//!
//! Why an initramfs rather than sharing the host's root (virtme-ng, 9p or virtiofs): the guest
//! sees exactly the files the tests need and can write nothing on the host; it needs no 9p or
//! virtio module (each kernel's would have to be loaded first), no daemon on the host and no
//! PyPI package; and booting it is one qemu command.
//!
//! Results come back over the serial console: the init script brackets each test run with
//! `FLOWLOG-BEGIN name` and `FLOWLOG-END name STATUS` lines, and ends with `FLOWLOG-DONE`. A
//! guest that does not boot, stops writing or outlives its time is killed and reported with the
//! end of its console output.
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{cmd, initramfs::Initramfs, kernels::Kernel};

/// One command the guest runs, reported under `name`.
#[derive(Clone, Debug)]
pub struct GuestRun {
    pub name: String,
    /// A host binary, copied into the guest.
    pub binary: PathBuf,
    pub args: Vec<String>,
}

/// What came back from a guest.
#[derive(Debug)]
pub struct GuestOutcome {
    /// Each run with its exit status (`None`: it never ended).
    pub runs: Vec<(String, Option<i32>)>,
    /// Why the guest as a whole failed (no boot, a hang, a crash), if it did.
    pub failure: Option<String>,
    pub booted_in: Option<Duration>,
    pub took: Duration,
    pub log: PathBuf,
}

impl GuestOutcome {
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.runs.iter().all(|(_, status)| *status == Some(0))
    }
}

/// Limits on a guest: booting, silence (a hung test), and the whole run.
pub struct Timeouts {
    pub boot: Duration,
    pub silence: Duration,
    pub total: Duration,
}

/// Where the guest finds the copied binaries, and the agent.
const GUEST_BIN: &str = "/flowlog/bin";
pub const GUEST_AGENT: &str = "/flowlog/bin/flowlog-agent";

/// Builds the guest's initramfs for `kernel` into `out`.
pub fn build_initramfs(
    kernel: &Kernel,
    agent: &Path,
    runs: &[GuestRun],
    env: &[(&str, &str)],
    out: &Path,
) -> Result<()> {
    let mut archive = Initramfs::default();
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/tmp",
        "/run",
        "/root",
        "/etc",
        "/flowlog/modules",
    ] {
        archive.dir(dir);
    }
    archive.symlink("/var/run", "../run");
    archive.bytes("/etc/passwd", "root:x:0:0:root:/root:/busybox/sh\n", 0o644);
    archive.bytes("/etc/group", "root:x:0:\n", 0o644);
    archive.bytes("/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);

    let busybox = cmd::which("busybox").context("busybox (Debian package busybox-static)")?;
    archive.file("/busybox/busybox", &busybox)?;
    let applets = cmd::probe(Command::new(&busybox).arg("--list"))?;
    for applet in applets.lines().filter(|a| *a != "busybox" && !a.is_empty()) {
        archive.symlink(&format!("/busybox/{applet}"), "busybox");
    }
    // The tests drive iproute2 (`ip netns`, veth peers, `tc filter show`), which busybox's
    // applets of the same names do not replace.
    // The kernel-drop tests write their drop rules with nftables' `nft`.
    for tool in ["ip", "tc", "nft"] {
        let path = cmd::which(tool)
            .with_context(|| format!("{tool} (Debian packages iproute2, nftables)"))?;
        let real = fs::canonicalize(&path)?;
        let guest = format!("/usr/sbin/{tool}");
        archive.file(&guest, &real)?;
        add_libraries(&mut archive, &real)?;
    }
    archive.file(GUEST_AGENT, agent)?;
    add_libraries(&mut archive, agent)?;
    for run in runs {
        let guest = guest_path(&run.binary);
        if !archive.contains(&guest) {
            archive.file(&guest, &run.binary)?;
            add_libraries(&mut archive, &run.binary)?;
        }
    }
    let mut order = String::new();
    for module in &kernel.modules {
        let name = module.file_name().unwrap_or_default().to_string_lossy();
        archive.file(&format!("/flowlog/modules/{name}"), module)?;
        writeln!(order, "{name}")?;
    }
    archive.bytes("/flowlog/modules.order", order, 0o644);
    archive.bytes("/init", init_script(runs, env), 0o755);
    archive.write(out)
}

fn guest_path(binary: &Path) -> String {
    format!(
        "{GUEST_BIN}/{}",
        binary.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Adds the dynamic loader and the libraries `ldd` lists for `binary`, at their host paths.
fn add_libraries(archive: &mut Initramfs, binary: &Path) -> Result<()> {
    let mut ldd = cmd::command("ldd");
    ldd.arg(binary);
    let listing = cmd::probe(&mut ldd)?;
    for line in listing.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        if !archive.contains(path) {
            archive.file(path, &fs::canonicalize(path)?)?;
        }
    }
    Ok(())
}

/// The guest's `/init`: mounts, modules, then each run between markers, then power off.
fn init_script(runs: &[GuestRun], env: &[(&str, &str)]) -> String {
    let mut script = String::from(
        "#!/busybox/sh\n\
         export PATH=/usr/sbin:/usr/bin:/busybox HOME=/root RUST_BACKTRACE=1\n",
    );
    let _ = writeln!(script, "export FLOWLOG_AGENT_BIN={GUEST_AGENT}");
    for (key, value) in env {
        let _ = writeln!(script, "export {key}={}", shell_quote(value));
    }
    script.push_str(
        "mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t tmpfs tmpfs /run\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null\n\
         for module in $(cat /flowlog/modules.order); do\n\
         \x20   insmod /flowlog/modules/$module || echo \"FLOWLOG-MODULE-FAILED $module\"\n\
         done\n\
         /usr/sbin/ip link set lo up\n\
         echo \"FLOWLOG-READY $(uname -r)\"\n\
         cd /tmp\n",
    );
    for run in runs {
        let _ = write!(
            script,
            "echo 'FLOWLOG-BEGIN {}'\n{}",
            run.name,
            shell_quote(&guest_path(&run.binary))
        );
        for arg in &run.args {
            let _ = write!(script, " {}", shell_quote(arg));
        }
        let _ = writeln!(
            script,
            " </dev/null 2>&1\necho \"FLOWLOG-END {} $?\"",
            run.name
        );
    }
    script.push_str("echo FLOWLOG-DONE\npoweroff -f\n");
    script
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Boots `kernel` with `initramfs` and collects the runs' results, echoing the console to
/// stderr (each line prefixed with the kernel's name) and saving it to `log`.
pub fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    expected: &[GuestRun],
    timeouts: &Timeouts,
    log: &Path,
) -> Result<GuestOutcome> {
    let started = Instant::now();
    let mut qemu = cmd::command("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-smp", "1", "-m", "2G", "-cpu", "max"])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .args(["-monitor", "none", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("+ {}", cmd::display(&qemu));
    let mut child = qemu.spawn().context("cannot start qemu-system-x86_64")?;
    let (lines, received) = mpsc::channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let lines = lines.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buffer = Vec::new();
            while reader.read_until(b'\n', &mut buffer).unwrap_or(0) > 0 {
                let line = String::from_utf8_lossy(&buffer)
                    .trim_end()
                    .replace('\r', "");
                if lines.send(line).is_err() {
                    break;
                }
                buffer.clear();
            }
        });
    }
    drop(lines);

    let mut log_file =
        fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut runs: Vec<(String, Option<i32>)> =
        expected.iter().map(|r| (r.name.clone(), None)).collect();
    let mut tail: Vec<String> = Vec::new();
    let mut booted_in = None;
    let mut done = false;
    let mut failure = None;
    let mut last_line = Instant::now();
    loop {
        let deadline = match booted_in {
            None => timeouts.boot.saturating_sub(started.elapsed()),
            Some(_) => timeouts
                .silence
                .saturating_sub(last_line.elapsed())
                .min(timeouts.total.saturating_sub(started.elapsed())),
        };
        match received.recv_timeout(deadline) {
            Ok(line) => {
                last_line = Instant::now();
                let _ = writeln!(log_file, "{line}");
                eprintln!("[{}] {line}", kernel.spec.name);
                tail.push(line.clone());
                if tail.len() > 60 {
                    tail.remove(0);
                }
                if line.starts_with("FLOWLOG-READY") {
                    booted_in = Some(started.elapsed());
                } else if let Some((name, status)) = line
                    .strip_prefix("FLOWLOG-END ")
                    .and_then(|rest| rest.rsplit_once(' '))
                {
                    if let Some(run) = runs.iter_mut().find(|(n, _)| n == name) {
                        run.1 = status.parse().ok();
                    }
                } else if line.starts_with("FLOWLOG-MODULE-FAILED") {
                    failure.get_or_insert_with(|| line.clone());
                } else if line == "FLOWLOG-DONE" {
                    done = true;
                } else if line.contains("Kernel panic") {
                    failure.get_or_insert_with(|| format!("kernel panic: {line}"));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let why = match booted_in {
                    None => format!("did not boot within {} s", timeouts.boot.as_secs()),
                    Some(_) if started.elapsed() >= timeouts.total => {
                        format!("still running after {} s", timeouts.total.as_secs())
                    }
                    Some(_) => format!("silent for {} s (hung)", timeouts.silence.as_secs()),
                };
                failure.get_or_insert(why);
                let _ = child.kill();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    if failure.is_none() && !done {
        failure = Some(format!("the guest stopped before finishing ({status})"));
    }
    if let Some(why) = &mut failure {
        let _ = write!(why, "; last console lines:\n    {}", tail.join("\n    "));
    }
    log_file.flush()?;
    Ok(GuestOutcome {
        runs,
        failure,
        booted_in,
        took: started.elapsed(),
        log: log.to_owned(),
    })
}
