//! Netlink: link and address notifications, the generic `netdev` family's XDP features, and
//! the socket helpers the rtnetlink queries of `attachments` share.

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd},
};

/// A netlink socket subscribed to link and address notifications, registered with tokio:
/// readable whenever an interface appears, changes, goes away, or gains or loses an address.
pub fn link_notifications() -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    super::ready::readable(link_socket()?)
}

fn link_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned by the result.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid; bind reads it for the call only.
    let mut address: libc::sockaddr_nl = unsafe { mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // Addresses too: a scope by CIDR follows the addresses interfaces hold.
    address.nl_groups =
        (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Reads and discards every pending message of a non-blocking socket. Returns whether there was
/// any (an overflowed socket, ENOBUFS, counts as news: something was missed).
pub fn drain_socket(socket: BorrowedFd<'_>) -> io::Result<bool> {
    let mut buffer = [0u8; 16384];
    let mut any = false;
    loop {
        // SAFETY: recv writes at most `buffer.len()` bytes into the buffer.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            any = true;
            continue;
        }
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::EAGAIN) => Ok(any),
            Some(libc::ENOBUFS) => {
                any = true;
                continue;
            }
            Some(libc::EINTR) => continue,
            _ if n == 0 => Ok(any),
            _ => Err(error),
        };
    }
}

/// The XDP features an interface's driver declares (`NETDEV_A_DEV_XDP_FEATURES` of the generic
/// netlink family `netdev`, Linux 6.3+): bit 0 (`NETDEV_XDP_ACT_BASIC`) means native XDP.
/// `None` when the kernel has no such family.
pub fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NETDEV_CMD_DEV_GET: u8 = 1;
    const NETDEV_A_DEV_IFINDEX: u16 = 1;
    const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

    let socket = netlink_socket(libc::NETLINK_GENERIC)?;
    let family = genl_request(
        &socket,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        CTRL_ATTR_FAMILY_NAME,
        b"netdev\0",
    )?;
    let Some(family) = family
        .and_then(|attrs| netlink_attribute(&attrs, CTRL_ATTR_FAMILY_ID))
        .and_then(|id| Some(u16::from_ne_bytes(id.get(..2)?.try_into().ok()?)))
    else {
        return Ok(None);
    };
    let device = genl_request(
        &socket,
        family,
        NETDEV_CMD_DEV_GET,
        NETDEV_A_DEV_IFINDEX,
        &ifindex.to_ne_bytes(),
    )?;
    Ok(device
        .and_then(|attrs| netlink_attribute(&attrs, NETDEV_A_DEV_XDP_FEATURES))
        .and_then(|value| Some(u64::from_ne_bytes(value.get(..8)?.try_into().ok()?))))
}

/// A blocking netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_GENERIC`) to talk to the
/// kernel.
pub(super) fn netlink_socket(protocol: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket(2) with constant arguments; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Sends one netlink message to the kernel.
pub(super) fn netlink_send(socket: &std::os::fd::OwnedFd, message: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_nl addresses the kernel; send reads `message` for the call.
    let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            message.as_ptr().cast(),
            message.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one netlink datagram into `buffer`; returns its length.
pub(super) fn netlink_receive(
    socket: &std::os::fd::OwnedFd,
    buffer: &mut [u8],
) -> io::Result<usize> {
    // SAFETY: recv writes at most `buffer.len()` bytes into the buffer.
    let received = unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            0,
        )
    };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(received as usize)
}

/// Sends one generic netlink request with one attribute and returns the attributes of the
/// answer; `None` if the kernel answered ENOENT or EOPNOTSUPP (no such family or device).
fn genl_request(
    socket: &std::os::fd::OwnedFd,
    family: u16,
    command: u8,
    attribute: u16,
    value: &[u8],
) -> io::Result<Option<Vec<u8>>> {
    let attribute_len = 4 + value.len();
    let total = 16 + 4 + attribute_len.next_multiple_of(4);
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&family.to_ne_bytes());
    message.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.extend_from_slice(&[command, 1, 0, 0]); // genlmsghdr: command, version 1
    message.extend_from_slice(&(attribute_len as u16).to_ne_bytes());
    message.extend_from_slice(&attribute.to_ne_bytes());
    message.extend_from_slice(value);
    message.resize(total, 0);
    netlink_send(socket, &message)?;
    let mut buffer = vec![0u8; 16384];
    let received = netlink_receive(socket, &mut buffer)?;
    let answer = &buffer[..received];
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short netlink answer");
    let kind = u16::from_ne_bytes(answer.get(4..6).ok_or_else(short)?.try_into().unwrap());
    if kind == libc::NLMSG_ERROR as u16 {
        let code = i32::from_ne_bytes(answer.get(16..20).ok_or_else(short)?.try_into().unwrap());
        return match -code {
            0 => Ok(Some(Vec::new())),
            libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV => Ok(None),
            errno => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    let length = u32::from_ne_bytes(answer.get(0..4).ok_or_else(short)?.try_into().unwrap());
    let end = (length as usize).min(answer.len());
    Ok(Some(answer.get(20..end).ok_or_else(short)?.to_vec()))
}

/// The payload of the first netlink attribute of type `wanted` in `attributes`.
pub(super) fn netlink_attribute(attributes: &[u8], wanted: u16) -> Option<Vec<u8>> {
    let mut rest = attributes;
    while rest.len() >= 4 {
        let length = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if length < 4 || length > rest.len() {
            return None;
        }
        if kind == wanted {
            return Some(rest[4..length].to_vec());
        }
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink attribute: length (header included, unpadded), type, payload, padding.
    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    #[test]
    fn netlink_attributes_are_found_past_padded_ones() {
        let mut attributes = attribute(2, b"netdev\0");
        // The nested flag (0x8000) is not part of the type.
        attributes.extend(attribute(0x8000 | 5, &[1, 2, 3]));
        attributes.extend(attribute(3, &0x21u64.to_ne_bytes()));
        assert_eq!(
            netlink_attribute(&attributes, 3),
            Some(0x21u64.to_ne_bytes().to_vec())
        );
        assert_eq!(netlink_attribute(&attributes, 5), Some(vec![1, 2, 3]));
        assert_eq!(netlink_attribute(&attributes, 9), None);
        // A length beyond the buffer ends the walk.
        assert_eq!(netlink_attribute(&[40, 0, 3, 0, 1, 2], 3), None);
    }
}
