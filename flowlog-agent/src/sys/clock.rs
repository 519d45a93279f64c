//! The clocks the agent converts the programs' timestamps with.

use std::time::Duration;

/// Nanoseconds between the kernel's monotonic clock (what `bpf_ktime_get_ns` reads) and
/// the wall clock: add it to a program's timestamp to get Unix nanoseconds.
pub fn monotonic_to_unix_offset_ns() -> i128 {
    let realtime = clock_ns(libc::CLOCK_REALTIME);
    let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
    realtime - monotonic
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; both clocks exist on every Linux.
    let ret = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(ret, 0, "clock_gettime cannot fail for these clocks");
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CPU time the calling thread has used (user and system).
pub fn thread_cpu_time() -> Duration {
    let ns = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    Duration::from_nanos(ns.max(0) as u64)
}
