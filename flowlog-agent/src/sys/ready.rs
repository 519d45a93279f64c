//! One readiness helper for the kernel's file descriptors the agent waits on (the link
//! notifications socket, the programs' log ring buffer): registered with tokio's reactor.

use std::{io, os::fd::AsRawFd};

use tokio::io::unix::AsyncFd;

/// Registers `owner` (which owns a kernel file descriptor) with tokio, to wait until it is
/// readable.
pub fn readable<T: AsRawFd>(owner: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owner` owns its descriptor, and the AsyncFd now owns `owner`: nothing can close or
    // replace the descriptor while it is registered.
    unsafe { AsyncFd::register_with_interest(owner, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}
