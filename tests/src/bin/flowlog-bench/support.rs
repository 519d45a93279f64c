//! What every figure needs: errors with context, medians, a pinned thread, a temporary
//! directory that removes itself, the clock aligned to the agent's intervals.

use std::{
    fmt::Display,
    fs, io, mem,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ::tests::netns::{NetNs, veth_pair};

/// A measurement that could not be made, with what was being done.
pub type Result<T> = std::result::Result<T, String>;

/// Adds what was being done to an error, so a failed figure says why it failed.
pub trait Context<T>: Sized {
    fn context(self, doing: impl Display) -> Result<T>;

    /// [`Context::context`] with a message built only on failure.
    fn with_context<D: Display>(self, doing: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, doing: impl Display) -> Result<T> {
        self.map_err(|error| format!("{doing}: {error}"))
    }

    fn with_context<D: Display>(self, doing: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|error| format!("{}: {error}", doing()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, doing: impl Display) -> Result<T> {
        self.ok_or_else(|| doing.to_string())
    }

    fn with_context<D: Display>(self, doing: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| doing().to_string())
    }
}

/// The median (the mean of the middle two for an even count); NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Keeps the calling thread on one CPU until dropped, then gives it back its former CPU set.
///
/// BPF_PROG_TEST_RUN runs the program on the calling thread's CPU: pinned, every run of a
/// comparison (and every flow of a fill) happens on the same CPU and its caches. Children must
/// not be spawned while pinned: they would inherit the single CPU.
pub struct CpuPin {
    pub cpu: usize,
    original: libc::cpu_set_t,
}

impl CpuPin {
    /// Pins to the highest CPU the thread may run on (CPU 0 usually takes most interrupts).
    pub fn highest_allowed() -> Result<Self> {
        let cpu = *allowed_cpus()?
            .last()
            .context("the thread may run on no CPU")?;
        Self::to(cpu)
    }

    /// Pins to `cpu`, which must be one the thread may run on.
    pub fn to(cpu: usize) -> Result<Self> {
        let original = current_affinity()?;
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(format!("no CPU {cpu}"));
        }
        // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
        let mut only: libc::cpu_set_t = unsafe { mem::zeroed() };
        // SAFETY: CPU_SET writes one bit, below CPU_SETSIZE (checked above), of a set we own.
        unsafe { libc::CPU_SET(cpu, &mut only) };
        set_affinity(&only).context(format!("pinning the thread to CPU {cpu}"))?;
        Ok(Self { cpu, original })
    }
}

/// The CPUs the calling thread may run on, in ascending order.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = current_affinity()?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET only reads the set, and `cpu` is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

fn current_affinity() -> Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most `size_of` bytes into
    // `set`, which lives across the call.
    let rc = unsafe { libc::sched_getaffinity(0, mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(format!("sched_getaffinity: {}", io::Error::last_os_error()));
    }
    Ok(set)
}

impl Drop for CpuPin {
    fn drop(&mut self) {
        if let Err(error) = set_affinity(&self.original) {
            eprintln!("flowlog-bench: restoring the thread's CPU set: {error}");
        }
    }
}

fn set_affinity(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: pid 0 is the calling thread; the kernel only reads `set`, a valid cpu_set_t.
    let rc = unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const TEMP_PREFIX: &str = "/tmp/flowlog-bench-";

/// One end of a [`veth_topology`]: the interface's name and its /24 addresses.
pub struct VethEnd<'a> {
    pub ifname: &'a str,
    pub addresses: &'a [[u8; 4]],
}

/// Two namespaces joined by a veth pair, each end with its addresses and IPv6 off (so only the
/// benchmark's own traffic crosses), both ends up. Dropping a namespace removes everything in it.
pub fn veth_topology(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<(NetNs, NetNs)> {
    let a_ns = NetNs::new().context("creating a namespace")?;
    let b_ns = NetNs::new().context("creating a namespace")?;
    veth_pair(&a_ns, a.ifname, &b_ns, b.ifname).context("creating the veth pair")?;
    for (ns, end) in [(&a_ns, &a), (&b_ns, &b)] {
        ns.disable_ipv6(end.ifname).context("turning IPv6 off")?;
        for &address in end.addresses {
            ns.add_address(end.ifname, Ipv4Addr::from(address), 24)
                .context("adding an address")?;
        }
        ns.link_up(end.ifname).context("bringing the veth up")?;
    }
    Ok((a_ns, b_ns))
}

/// `/tmp/flowlog-bench-<pid>-<label>`, removed with its contents when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<Self> {
        let path = PathBuf::from(format!("{TEMP_PREFIX}{}-{label}", std::process::id()));
        // A directory left by an earlier process with the same pid holds nothing of ours.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).context(format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directories of runs whose process is gone (a run ended by a signal cannot
    /// clean up; its namespaces are swept by the harness the same way).
    pub fn sweep_stale() {
        let Ok(entries) = fs::read_dir("/tmp") else {
            return;
        };
        let prefix = TEMP_PREFIX.trim_start_matches("/tmp/");
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|name| name.strip_prefix(prefix))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("flowlog-bench: removing {}: {error}", self.path.display());
        }
    }
}

/// CPU time the calling thread has spent in user space and in the kernel, separately: the drain's
/// kernel share is the batch system calls, its user share the merging.
pub fn thread_user_system_time() -> (Duration, Duration) {
    user_system_time(libc::RUSAGE_THREAD)
}

/// CPU time the whole process has used, its threads included (user and system).
pub fn process_cpu_time() -> Duration {
    // SAFETY: timespec is plain old data; all-zero is a valid value.
    let mut now: libc::timespec = unsafe { mem::zeroed() };
    // SAFETY: clock_gettime writes one timespec into `now`, which lives across the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// [`thread_user_system_time`] for the whole process, its threads included.
pub fn process_user_system_time() -> (Duration, Duration) {
    user_system_time(libc::RUSAGE_SELF)
}

fn user_system_time(who: libc::c_int) -> (Duration, Duration) {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: getrusage writes one rusage into `usage`, which lives across the call.
    let rc = unsafe { libc::getrusage(who, &mut usage) };
    if rc != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// Clock ticks (`sysconf(_SC_CLK_TCK)`, 100 per second on Linux) of CPU a process has used in
/// user space and in the kernel, its exited threads included (`utime` + `stime` of
/// `/proc/<pid>/stat`); `None` once it is gone.
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat_fields(&stat)?;
    // Fields 14 and 15 of the line; `fields` starts at field 3, the state.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A process's state letter (`R` running or runnable, `S` sleeping, ...); `None` once gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.first()?.chars().next()
}

/// Clock ticks per second, for [`process_cpu_ticks`].
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// The processes whose parent is `pid` (from every `/proc/<pid>/stat`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat)?.get(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// The fields of a `/proc/<pid>/stat` line after the command name (which may hold spaces and
/// parentheses, so the line is split after its last `)`): state, ppid, ...
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Seconds since the Unix epoch, the unit of the agent's interval boundaries.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// "1.23M", "456k": record counts and rates at a glance.
pub fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(process_cpu_ticks(me).is_some());
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 15 3 0 0 20 0 1 0";
        let fields = stat_fields(stat).unwrap();
        assert_eq!(fields[0], "S");
        assert_eq!(fields[1], "7");
        assert_eq!((fields[11], fields[12]), ("15", "3"));
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(si(1_234_567.0), "1.23M");
        assert_eq!(si(10_000.0), "10k");
        assert_eq!(si(999.0), "999");
    }
}
