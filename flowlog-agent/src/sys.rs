//! The few system calls neither aya 0.14 nor std wrap. All of the agent's `unsafe` lives here.

pub mod attachments;

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd},
    time::Duration,
};

use aya::Pod;

/// `enum bpf_cmd` value of `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// `MEMBARRIER_CMD_GLOBAL` (include/uapi/linux/membarrier.h).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads and deletes every entry of a hash map, `chunk` entries per system call, handing each
/// to `each`. Returns how many entries there were.
///
/// Only sound for counting when no program writes the map any more (a retired epoch): the kernel
/// deletes bucket by bucket, and an update racing with it could be lost.
pub fn drain_hash_map<K: Pod, V: Pod>(
    map: BorrowedFd<'_>,
    chunk: usize,
    mut each: impl FnMut(&K, &V),
) -> io::Result<usize> {
    let mut chunk = chunk.max(1);
    let mut keys: Vec<K> = zeroed_vec(chunk);
    let mut values: Vec<V> = zeroed_vec(chunk);
    // For hash maps the batch position is a bucket index (u32); u64 leaves room.
    let mut position: u64 = 0;
    let mut next_position: u64 = 0;
    let mut started = false;
    let mut total = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if started {
                &position as *const u64 as u64
            } else {
                0
            },
            out_batch: &mut next_position as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` describes buffers of `chunk` keys and `chunk` values of the map's key
        // and value types (`K`, `V` are the types the map was created with), which live until
        // the call returns; the kernel writes at most `count` entries into them and the batch
        // position into `next_position`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                &mut attr as *mut BatchAttr,
                mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(chunk);
        for (key, value) in keys[..filled].iter().zip(&values[..filled]) {
            each(key, value);
        }
        total += filled;
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None => {
                position = next_position;
                started = true;
            }
            // The whole map has been read.
            Some(libc::ENOENT) => return Ok(total),
            // One bucket holds more entries than fit: retry it with larger buffers.
            Some(libc::ENOSPC) if filled == 0 => {
                chunk *= 2;
                keys = zeroed_vec(chunk);
                values = zeroed_vec(chunk);
            }
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
    }
}

fn zeroed_vec<T: Pod>(len: usize) -> Vec<T> {
    // SAFETY: `Pod` types are valid for every bit pattern, zero included.
    (0..len).map(|_| unsafe { mem::zeroed() }).collect()
}

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

/// Number of CPUs the kernel may run programs on (the size of per-CPU map values).
pub fn possible_cpus() -> io::Result<usize> {
    aya::util::nr_cpus().map_err(|(_, error)| error)
}

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

/// Registers the kernel programs' log reader with tokio's reactor.
pub fn poll_kernel_logger(
    logger: crate::datapath::KernelLogger,
) -> io::Result<tokio::io::unix::AsyncFd<crate::datapath::KernelLogger>> {
    // SAFETY: the logger owns the ring buffer's file descriptor and neither closes nor replaces
    // it while the AsyncFd (which now owns the logger) keeps it registered.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)
}

/// CPU time the calling thread has used (user and system).
pub fn thread_cpu_time() -> Duration {
    let ns = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    Duration::from_nanos(ns.max(0) as u64)
}

/// `enum bpf_cmd` values for pinned objects and link updates.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// The `BPF_OBJ_*` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `link_update` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// Opens a pinned BPF object (a link, here).
pub fn bpf_obj_get(path: &std::path::Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..ObjAttr::default()
    };
    // SAFETY: `attr` points at a NUL-terminated path that lives until the call returns.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut ObjAttr,
            mem::size_of::<ObjAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins a BPF object (a link, here) at `path` on a BPF filesystem.
pub fn bpf_obj_pin(object: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: object.as_raw_fd() as u32,
        ..ObjAttr::default()
    };
    // SAFETY: `attr` points at a NUL-terminated path and holds a descriptor, both valid until
    // the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &mut attr as *mut ObjAttr,
            mem::size_of::<ObjAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Atomically replaces the program of a link (TCX and XDP links support it): no packet sees
/// both programs or neither.
pub fn bpf_link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_raw_fd() as u32,
        ..LinkUpdateAttr::default()
    };
    // SAFETY: `attr` holds two descriptors valid for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_UPDATE,
            &mut attr as *mut LinkUpdateAttr,
            mem::size_of::<LinkUpdateAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

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

/// A netlink socket subscribed to link and address notifications, registered with tokio:
/// readable whenever an interface appears, changes, goes away, or gains or loses an address.
pub fn link_notifications() -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let socket = link_socket()?;
    // SAFETY: the AsyncFd owns the socket, which nothing else can close or replace.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE)
    }
    .map_err(io::Error::from)
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

/// `_LINUX_CAPABILITY_VERSION_3` (include/uapi/linux/capability.h).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Reduces the process to the capabilities in `keep` (bit numbers): effective and permitted
/// sets, no inheritable or ambient ones, and (where the process may) the bounding set, so not
/// even an exec could regain the others.
pub fn keep_only_capabilities(keep: &[u32]) -> io::Result<()> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if !keep.contains(&cap) {
            // SAFETY: prctl with integer arguments. Without CAP_SETPCAP (a service whose bounding
            // set is already limited) this fails, which is fine.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let mut data = [CapData::default(); 2];
    for &cap in keep {
        let word = &mut data[(cap / 32) as usize];
        word.effective |= 1 << (cap % 32);
        word.permitted |= 1 << (cap % 32);
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads a version-3 header and two data words that live for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
fn netlink_socket(protocol: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
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
fn netlink_send(socket: &std::os::fd::OwnedFd, message: &[u8]) -> io::Result<()> {
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
fn netlink_receive(socket: &std::os::fd::OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
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
fn netlink_attribute(attributes: &[u8], wanted: u16) -> Option<Vec<u8>> {
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

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Byte offset of `recursion_misses` in the UAPI `struct bpf_prog_info` (after `run_time_ns`
/// at 192 and `run_cnt` at 200; Linux 5.12+).
const PROG_INFO_RECURSION_MISSES: usize = 208;

/// How many times the kernel skipped a program because it would have re-entered itself on a
/// CPU (`bpf_prog_info.recursion_misses`); 0 on kernels that do not report it.
pub fn program_recursion_misses(program: BorrowedFd<'_>) -> io::Result<u64> {
    let mut info = [0u8; 256];
    let mut attr = InfoAttr {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `attr` holds a descriptor and a buffer of `info_len` bytes, both valid for the
    // call; the kernel writes at most `info_len` bytes into it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            mem::size_of::<InfoAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let at = PROG_INFO_RECURSION_MISSES;
    if (attr.info_len as usize) < at + 8 {
        return Ok(0);
    }
    Ok(u64::from_ne_bytes(
        info[at..at + 8].try_into().expect("8 bytes"),
    ))
}
