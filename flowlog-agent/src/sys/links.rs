//! The interfaces of the agent's network namespace and their addresses.

use std::{io, mem, os::fd::AsRawFd};

/// An interface of the current network namespace, as the kernel names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkName {
    pub ifindex: u32,
    pub name: String,
    /// `IFF_LOOPBACK` is set.
    pub loopback: bool,
}

/// The IP addresses each interface holds, by interface index (`getifaddrs(3)`).
pub fn interface_addresses() -> io::Result<Vec<(u32, std::net::IpAddr)>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs; we only read
    // entries, checking every pointer, while the list is alive.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addresses = Vec::new();
        let mut entry = head;
        while !entry.is_null() {
            let address = (*entry).ifa_addr;
            if !address.is_null() && !(*entry).ifa_name.is_null() {
                let ip = match i32::from((*address).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*(address as *const libc::sockaddr_in);
                        Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
                    }
                    libc::AF_INET6 => {
                        let v6 = &*(address as *const libc::sockaddr_in6);
                        Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)))
                    }
                    _ => None,
                };
                // The name may be an IPv4 label (eth0:1); the index is the interface's.
                let ifindex = libc::if_nametoindex((*entry).ifa_name);
                if let (Some(ip), true) = (ip, ifindex != 0) {
                    addresses.push((ifindex, ip));
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(head);
        Ok(addresses)
    }
}

/// Lists the interfaces of the calling thread's network namespace (`if_nameindex(3)` asks the
/// kernel over netlink, so unlike /sys/class/net it is right inside any namespace).
pub fn list_links() -> io::Result<Vec<LinkName>> {
    // SAFETY: if_nameindex returns either NULL (error, errno set) or an array terminated by an
    // entry with if_index 0, which stays valid until if_freenameindex, called below once we have
    // copied what we need.
    let mut links = Vec::new();
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut entry = head;
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            links.push(((*entry).if_index, name));
            entry = entry.add(1);
        }
        libc::if_freenameindex(head);
    }
    let mut out = Vec::with_capacity(links.len());
    for (ifindex, name) in links {
        let flags = match interface_flags(&name) {
            Ok(flags) => flags,
            // Gone between the listing and now: interfaces come and go.
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENODEV | libc::ENXIO)) => {
                continue;
            }
            Err(error) => return Err(error),
        };
        out.push(LinkName {
            ifindex,
            name,
            loopback: flags & libc::IFF_LOOPBACK as libc::c_short != 0,
        });
    }
    Ok(out)
}

/// `SIOCGIFFLAGS` for one interface.
fn interface_flags(name: &str) -> io::Result<libc::c_short> {
    use std::os::fd::{FromRawFd, OwnedFd};

    // SAFETY: a plain socket(2) call; the descriptor is owned (and closed) by `socket`.
    let socket = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name in `request` and writes the flags into
    // it; `request` outlives the call.
    let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags.
    Ok(unsafe { request.ifr_ifru.ifru_flags })
}
