//! The agent process and the system it runs on: CPUs, file limits, umask, kernel release.

use std::io;

/// Number of CPUs the kernel may run programs on (the size of per-CPU map values).
pub fn possible_cpus() -> io::Result<usize> {
    aya::util::nr_cpus().map_err(|(_, error)| error)
}

/// Sets the process's file-mode creation mask (every file and directory the agent creates,
/// including those object_store's local store creates, gets at most `mask`'s complement).
pub fn set_umask(mask: u32) {
    // SAFETY: umask(2) only replaces the process's mask; it cannot fail and touches no memory.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// Raises the soft limit on open files to the hard one; returns (before, after).
pub fn raise_open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into `limit`, which is ours and large enough.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit(2) reads one rlimit from `limit`, which is initialized above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// The running kernel's release, as `uname -r` prints it (`6.1.0-57-amd64`), for messages.
pub fn kernel_release() -> String {
    let mut name = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: uname writes a complete utsname into the buffer it is given.
    if unsafe { libc::uname(name.as_mut_ptr()) } != 0 {
        return "unknown".to_owned();
    }
    // SAFETY: uname succeeded, so the struct is initialised and `release` is NUL-terminated.
    let release = unsafe { std::ffi::CStr::from_ptr(name.assume_init_ref().release.as_ptr()) };
    release.to_string_lossy().into_owned()
}
