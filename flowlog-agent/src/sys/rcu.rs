//! Waiting for running BPF programs: one RCU grace period.

use std::{io, time::Duration};

/// `MEMBARRIER_CMD_GLOBAL` (include/uapi/linux/membarrier.h).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Waits until every BPF program that was running when this is called has returned: one RCU
/// grace period (`membarrier(MEMBARRIER_CMD_GLOBAL)` is exactly `synchronize_rcu()`; BPF
/// programs run inside RCU read-side critical sections). The kernel's own BPF selftests use the
/// same call for the same purpose.
///
/// On kernels booted with `nohz_full` the command is refused; then the wait falls back to a pause
/// far longer than any program runs, and says so in the returned value.
pub fn wait_for_running_programs() -> io::Result<GracePeriod> {
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if ret == 0 {
        return Ok(GracePeriod::Rcu);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EINVAL) {
        std::thread::sleep(FALLBACK_GRACE);
        return Ok(GracePeriod::Timed(FALLBACK_GRACE));
    }
    Err(error)
}

/// How long programs are given to return when an RCU grace period cannot be requested.
const FALLBACK_GRACE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GracePeriod {
    /// A real RCU grace period: exact by construction.
    Rcu,
    /// A timed pause (nohz_full kernels).
    Timed(Duration),
}
