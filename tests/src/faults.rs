//! Real faults for the fault-injection suite: a small tmpfs filled to its last byte, bind
//! mounts made read-only, and what a process holds (descriptors, CPU time) read from /proc.
//! Every mount is undone when its guard drops, also while a test panics.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::{ErrorKind, Write},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A scratch directory under /tmp named after the test and the process; removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!("/tmp/flowlog-faults-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A mount at `path`, unmounted (lazily, so a busy one goes too) on drop.
pub struct Mount(pub PathBuf);

impl Mount {
    /// A tmpfs of `bytes` at `path` (created if missing).
    pub fn tmpfs(path: &Path, bytes: u64) -> Self {
        fs::create_dir_all(path).expect("mount point");
        mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0755"),
                "tmpfs",
            ],
            path,
        );
        Mount(path.to_owned())
    }

    /// `path` bind-mounted onto itself read-only in the mount namespace of process `pid` (the
    /// agent runs under `ip netns exec`, which gives it a mount namespace of its own): opening
    /// or creating files there fails with EROFS, while descriptors opened before go on writing
    /// (root ignores permission bits; a read-only mount it does not).
    pub fn read_only_for(pid: u32, path: &Path) -> ReadOnly {
        let target = pid.to_string();
        let nsenter = ["nsenter", "--target", &target, "--mount", "--", "mount"];
        let path_text = path.to_str().expect("UTF-8 path");
        run(&[&nsenter[..], &["--bind", path_text, path_text]].concat());
        let guard = ReadOnly {
            pid,
            path: path.to_owned(),
        };
        run(&[&nsenter[..], &["-o", "remount,bind,ro", path_text]].concat());
        guard
    }
}

/// A read-only bind mount in another process's mount namespace, removed on drop.
pub struct ReadOnly {
    pid: u32,
    path: PathBuf,
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .args(["--target", &self.pid.to_string(), "--mount", "--", "umount"])
            .arg(&self.path)
            .status();
    }
}

fn run(command: &[&str]) {
    let output = Command::new(command[0])
        .args(&command[1..])
        .output()
        .expect("spawn");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn mount(options: &[&str], path: &Path) {
    let output = Command::new("mount")
        .args(options)
        .arg(path)
        .output()
        .expect("mount");
    assert!(
        output.status.success(),
        "mount {options:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `directory` to its last byte with `directory/filler`: big
/// writes first, then single bytes until even one does not fit. Returns the file's path.
pub fn fill(directory: &Path) -> PathBuf {
    let path = directory.join("filler");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("filler");
    for chunk in [1 << 16, 4096, 1] {
        let data = vec![0u8; chunk];
        // Bounded: a tmpfs of a few MiB takes a few hundred chunks.
        for _ in 0..100_000 {
            match file.write(&data) {
                Ok(n) if n == chunk => continue,
                Ok(_) => continue,
                Err(error) if error.kind() == ErrorKind::StorageFull => break,
                Err(error) => panic!("filling {}: {error}", path.display()),
            }
        }
    }
    assert_eq!(
        file.write(b"x").map_err(|e| e.kind()),
        Err(ErrorKind::StorageFull),
        "not full"
    );
    path
}

/// Every line of every file under `directory` (recursively), each file's lines whole: the file
/// ends with a newline.
pub fn lines_under(directory: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for file in files_under(directory) {
        let text = fs::read_to_string(&file).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{}: the last line is cut",
            file.display()
        );
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

/// Every file under `directory`, recursively.
pub fn files_under(directory: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    collect(directory, &mut files);
    files
}

fn collect(directory: &Path, files: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(directory).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// How many times each line occurs.
pub fn counted(lines: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        *counts.entry(line.as_str()).or_insert(0) += 1;
    }
    counts
}

/// The `records=` and `lost=` of the agent's `sink finished` line for `sink`.
pub fn sink_totals(log: &str, sink: &str) -> (u64, u64) {
    let needle = format!("sink finished sink={sink} ");
    let line = log
        .lines()
        .find(|line| line.contains(&needle))
        .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"));
    let value = |name: &str| -> u64 {
        let start = line.find(&format!(" {name}=")).expect(name) + name.len() + 2;
        line[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (value("records"), value("lost"))
}

/// Descriptors `pid` holds, and how many of them are files under `directory`.
pub fn descriptors(pid: u32, directory: &Path) -> (usize, usize) {
    let mut total = 0;
    let mut under = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        total += 1;
        if fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(directory)) {
            under += 1;
        }
    }
    (total, under)
}

/// CPU time `pid` has used (user and system), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here), in ticks.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant; it touches no memory of ours.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

/// Sleeps until the wall clock is half-way between two whole seconds, where an agent with 1 s
/// intervals is not writing.
pub fn wait_for_mid_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = u64::from(now.subsec_millis());
    let wait = if into < 500 { 500 - into } else { 1500 - into };
    thread::sleep(Duration::from_millis(wait));
}

/// Raises this process's soft limit on open files to `wanted`, within its hard limit (the
/// metrics test holds thousands of connections; raising a hard limit needs CAP_SYS_RESOURCE).
pub fn raise_open_files_limit(wanted: u64) {
    let mut rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into ours.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) },
        0
    );
    rlimit.rlim_cur = rlimit.rlim_cur.max(wanted.min(rlimit.rlim_max));
    // SAFETY: setrlimit(2) reads one initialized rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// The soft limit on open files of process `pid`.
pub fn open_files_limit(pid: u32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}
