//! The BPF filesystem maps and links are pinned on, and the lock of a pin directory.

use std::{io, mem, os::fd::AsRawFd};

/// `BPF_FS_MAGIC` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// Whether `path` is on a BPF filesystem.
pub fn is_bpffs(path: &std::path::Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs writes into a zeroed struct it is given; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type as libc::c_long == BPF_FS_MAGIC)
}

/// Mounts a BPF filesystem on `path` (mode 0700: only root may open what is pinned there).
pub fn mount_bpffs(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: all four strings are NUL-terminated and live until the call returns.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes an exclusive lock on a directory for as long as the returned file is open, failing at
/// once if another process holds it.
pub fn lock_directory(path: &std::path::Path) -> io::Result<std::fs::File> {
    let dir = std::fs::File::open(path)?;
    // SAFETY: flock on a descriptor we own; it touches no memory.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(dir)
}
