//! The packet generator: an AF_PACKET socket in the sending namespace that hands prebuilt frames
//! straight to the veth driver (`PACKET_QDISC_BYPASS`), many per system call (`sendmmsg`).
//!
//! Without a qdisc, a frame the veth cannot take (its peer's backlog is full) fails its `sendmsg`
//! with ENOBUFS instead of being queued or silently dropped, so the generator knows exactly which
//! frames were delivered: it sends a refused frame again, and every flow gets exactly the packets
//! it was meant to.

use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

use ::tests::netns::{NetNs, in_netns};

use crate::{
    rate::flows::FlowSet,
    support::{Context, Result},
};

/// Frames per `sendmmsg`.
const BATCH: usize = 256;
/// Refusals in a row after which the veth is taken to be stuck.
const MAX_REFUSALS_IN_A_ROW: u64 = 1_000_000;

/// A raw packet socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
}

/// What one [`PacketSocket::send_cycles`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Frames the driver took (each flow's frame `cycles` times).
    pub packets: u64,
    /// `sendmmsg` calls that stopped at a frame the veth refused (ENOBUFS, or a partial count);
    /// that frame was sent again. The sending veth's `tx_dropped` counts every refusal.
    pub cut_short: u64,
    pub elapsed: Duration,
}

impl PacketSocket {
    /// Opens the socket inside `ns`, bound to `ifname`. Protocol 0: it receives nothing.
    pub fn open(ns: &NetNs, ifname: &str) -> Result<Self> {
        let ifindex = ns
            .ifindex(ifname)
            .context("the sending interface's index")?;
        let fd = in_netns(ns, || {
            // SAFETY: socket(2) with constant arguments; it returns a new descriptor or -1.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                // SAFETY: `fd` is a descriptor just returned to us and owned by nothing else.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            }
        })
        .context("entering the sending namespace")?
        .context("opening an AF_PACKET socket")?;
        let socket = Self { fd };
        socket
            .set_option(libc::PACKET_QDISC_BYPASS, 1)
            .context("setting PACKET_QDISC_BYPASS")?;
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex as i32;
        // SAFETY: bind(2) reads `size_of::<sockaddr_ll>()` bytes from `address`, which lives
        // across the call; the descriptor is ours.
        let rc = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!(
                "binding to {ifname}: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(socket)
    }

    fn set_option(&self, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: setsockopt(2) reads one c_int from `value`, which lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                option,
                (&value as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Sends the frames of `flows[range]` in order, `cycles` times, as fast as the driver takes
    /// them. Fails if it cannot finish within `limit`.
    pub fn send_cycles(
        &self,
        flows: &FlowSet,
        range: std::ops::Range<usize>,
        cycles: u64,
        limit: Duration,
    ) -> Result<Sent> {
        let started = Instant::now();
        let mut sent = Sent::default();
        let mut refused_in_a_row = 0;
        for _ in 0..cycles {
            let mut next = range.start;
            while next < range.end {
                let end = (next + BATCH).min(range.end);
                match self.send_batch(flows, next..end) {
                    Ok(taken) => {
                        if taken < end - next {
                            // Stopped at a frame the veth refused; the next call retries it.
                            sent.cut_short += 1;
                        }
                        next += taken;
                        sent.packets += taken as u64;
                        refused_in_a_row = 0;
                    }
                    Err(error) if error.raw_os_error() == Some(libc::ENOBUFS) => {
                        sent.cut_short += 1;
                        refused_in_a_row += 1;
                        if refused_in_a_row > MAX_REFUSALS_IN_A_ROW {
                            return Err(format!(
                                "the veth refused {refused_in_a_row} frames in a row"
                            ));
                        }
                        // Let the receiving side drain its backlog.
                        thread::yield_now();
                    }
                    Err(error) => return Err(format!("sendmmsg: {error}")),
                }
                if started.elapsed() > limit {
                    return Err(format!(
                        "sent {} frames in {limit:?}, fewer than asked for",
                        sent.packets
                    ));
                }
            }
        }
        sent.elapsed = started.elapsed();
        Ok(sent)
    }

    /// One `sendmmsg` of the frames in `range`: how many the driver took, in order. A partial
    /// count means the next frame was refused.
    fn send_batch(&self, flows: &FlowSet, range: std::ops::Range<usize>) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain old data; all-zero is a valid value (no name, no control).
        let mut messages: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        let count = range.len();
        for (slot, i) in range.enumerate() {
            let frame = flows.frame(i);
            iovecs[slot] = libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
        }
        for (message, iovec) in messages.iter_mut().zip(iovecs.iter_mut()).take(count) {
            message.msg_hdr.msg_iov = iovec;
            message.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `count` messages point at one iovec each, and each iovec at a frame
        // of `flows`; all of them outlive the call, and the kernel only reads the frames (it
        // writes `msg_len` into the messages, which are ours).
        let rc = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }
}
