//! What is attached to an interface, as the kernel says: the XDP program (rtnetlink), clsact
//! filters (rtnetlink) and BPF links by id. Used at start-up to find flowlog programs that
//! another agent (another pin directory, or no pins at all) left on an interface, and to remove
//! them when told to take over.

use std::{
    io, mem,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use super::netlink::{netlink_attribute, netlink_receive, netlink_send, netlink_socket};

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

/// The `*_get_fd_by_id` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf(command: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<i64> {
    // SAFETY: every caller passes a pointer to a live, fully initialized attribute struct of
    // `size` bytes, whose pointers (if any) reference buffers that outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, command, attr, size as libc::c_uint) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

fn fd_by_id(command: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdByIdAttr {
        id,
        ..GetFdByIdAttr::default()
    };
    let fd = bpf(
        command,
        (&mut attr as *mut GetFdByIdAttr).cast(),
        mem::size_of::<GetFdByIdAttr>(),
    )?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Fills `info` (a `bpf_prog_info` or `bpf_link_info` prefix) for the object behind `fd`.
fn object_info(fd: BorrowedFd<'_>, info: &mut [u8]) -> io::Result<()> {
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&mut attr as *mut InfoAttr).cast(),
        mem::size_of::<InfoAttr>(),
    )
    .map(drop)
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

/// The name a program was loaded with (the kernel keeps 15 bytes of it).
pub fn program_name(id: u32) -> io::Result<String> {
    let fd = fd_by_id(BPF_PROG_GET_FD_BY_ID, id)?;
    // `struct bpf_prog_info` up to and including `name[16]`, which starts at byte 64.
    let mut info = [0u8; 80];
    object_info(fd.as_fd(), &mut info)?;
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The id of the program behind `fd`.
pub fn program_id(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // `struct bpf_prog_info`: type, id, ...
    let mut info = [0u8; 8];
    object_info(fd, &mut info)?;
    Ok(u32_at(&info, 4))
}

/// What the kernel says of a BPF link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub program_id: u32,
}

/// The id and program of the link behind `fd`.
pub fn link_info(fd: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // `struct bpf_link_info`: type, id, prog_id, then a union the callers do not need.
    let mut info = [0u8; 64];
    object_info(fd, &mut info)?;
    Ok(LinkInfo {
        id: u32_at(&info, 4),
        program_id: u32_at(&info, 8),
    })
}

/// Detaches the link with this id from its hook, whoever holds it (a pin elsewhere, another
/// process). The link object lives on, attached to nothing, until its last holder lets go.
pub fn detach_link(id: u32) -> io::Result<()> {
    let fd = fd_by_id(BPF_LINK_GET_FD_BY_ID, id)?;
    let mut attr = [fd.as_raw_fd() as u32, 0];
    bpf(
        BPF_LINK_DETACH,
        attr.as_mut_ptr().cast(),
        mem::size_of_val(&attr),
    )
    .map(drop)
}

/// The ids of every BPF link of the system (`BPF_LINK_GET_NEXT_ID`, Linux 5.8+).
pub fn link_ids() -> io::Result<Vec<u32>> {
    const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
    let mut ids = Vec::new();
    let mut id = 0;
    loop {
        let mut attr = GetFdByIdAttr {
            id,
            ..GetFdByIdAttr::default()
        };
        match bpf(
            BPF_LINK_GET_NEXT_ID,
            (&mut attr as *mut GetFdByIdAttr).cast(),
            mem::size_of::<GetFdByIdAttr>(),
        ) {
            Ok(_) => {
                id = attr.next_id;
                ids.push(id);
            }
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(ids),
            Err(error) => return Err(error),
        }
    }
}

/// The program of the link with this id, if the link still exists.
pub fn link_program(id: u32) -> io::Result<Option<u32>> {
    match fd_by_id(BPF_LINK_GET_FD_BY_ID, id) {
        Ok(fd) => Ok(Some(link_info(fd.as_fd())?.program_id)),
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(error),
    }
}

/// rtnetlink message types and attributes (include/uapi/linux/rtnetlink.h, if_link.h,
/// pkt_cls.h).
const RTM_GETLINK: u16 = 18;
const RTM_GETTFILTER: u16 = 46;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_PROG_ID: u16 = 4;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)` and `..._EGRESS`.
const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;

/// The XDP program attached to an interface (natively or generically), if any.
pub fn xdp_program(ifindex: u32) -> io::Result<Option<u32>> {
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut header = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    header.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    header.extend_from_slice(&[0; 8]);
    let answers = rtnetlink(RTM_GETLINK, libc::NLM_F_REQUEST as u16, &header)?;
    let Some(link) = answers.first() else {
        return Ok(None);
    };
    let attributes = link.get(16..).unwrap_or_default();
    Ok(netlink_attribute(attributes, IFLA_XDP)
        .and_then(|xdp| netlink_attribute(&xdp, IFLA_XDP_PROG_ID))
        .and_then(|id| Some(u32::from_ne_bytes(id.get(..4)?.try_into().ok()?)))
        .filter(|id| *id != 0))
}

/// The link kind of every interface (`IFLA_INFO_KIND`: `veth`, `bridge`, `vlan`, ...), by
/// index; `None` for a device without one (a NIC, loopback). One dump for all interfaces.
pub fn link_kinds() -> io::Result<Vec<(u32, Option<String>)>> {
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    // struct ifinfomsg for a dump: every field zero but the family.
    let header = [
        libc::AF_UNSPEC as u8,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    let answers = rtnetlink(
        RTM_GETLINK,
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        &header,
    )?;
    Ok(answers
        .iter()
        .filter(|link| link.len() >= 16)
        .map(|link| {
            let ifindex = i32::from_ne_bytes(link[4..8].try_into().expect("4 bytes")) as u32;
            let kind = netlink_attribute(&link[16..], IFLA_LINKINFO)
                .and_then(|info| netlink_attribute(&info, IFLA_INFO_KIND))
                .map(|kind| {
                    let end = kind.iter().position(|b| *b == 0).unwrap_or(kind.len());
                    String::from_utf8_lossy(&kind[..end]).into_owned()
                });
            (ifindex, kind)
        })
        .collect())
}

/// A BPF classifier under an interface's clsact qdisc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFilter {
    pub ingress: bool,
    pub priority: u16,
    pub handle: u32,
    /// The name the attacher gave the filter (aya gives the program's name).
    pub name: String,
    pub program_id: u32,
}

/// The BPF filters under the clsact qdisc of an interface (none if it has no clsact qdisc).
pub fn clsact_filters(ifindex: u32) -> io::Result<Vec<TcFilter>> {
    let mut filters = Vec::new();
    for (ingress, parent) in [(true, CLSACT_INGRESS), (false, CLSACT_EGRESS)] {
        // struct tcmsg: family, pad[3], ifindex, handle, parent, info.
        let mut header = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        header.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        header.extend_from_slice(&0u32.to_ne_bytes());
        header.extend_from_slice(&parent.to_ne_bytes());
        header.extend_from_slice(&0u32.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        let answers = match rtnetlink(RTM_GETTFILTER, flags, &header) {
            Ok(answers) => answers,
            // No clsact qdisc: nothing attached there.
            Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
                continue;
            }
            Err(error) => return Err(error),
        };
        for message in answers {
            let word = |offset: usize| {
                message
                    .get(offset..offset + 4)
                    .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
            };
            // struct tcmsg: handle at 8, info (priority << 16 | protocol) at 16.
            let (handle, info) = (word(8), word(16));
            let attributes = message.get(20..).unwrap_or_default();
            if netlink_attribute(attributes, TCA_KIND).as_deref() != Some(b"bpf\0") {
                continue;
            }
            let Some(options) = netlink_attribute(attributes, TCA_OPTIONS) else {
                continue;
            };
            let name = netlink_attribute(&options, TCA_BPF_NAME)
                .map(|name| {
                    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                    String::from_utf8_lossy(&name[..end]).into_owned()
                })
                .unwrap_or_default();
            let program_id = netlink_attribute(&options, TCA_BPF_ID)
                .and_then(|id| Some(u32::from_ne_bytes(id.get(..4)?.try_into().ok()?)))
                .unwrap_or(0);
            filters.push(TcFilter {
                ingress,
                priority: (info >> 16) as u16,
                handle,
                name,
                program_id,
            });
        }
    }
    Ok(filters)
}

/// Sends one rtnetlink request (`header` is the family header after the `nlmsghdr`) and returns
/// the payload of every answer, until the dump ends or the kernel acknowledges.
fn rtnetlink(kind: u16, flags: u16, header: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let socket = netlink_socket(libc::NETLINK_ROUTE)?;
    let total = 16 + header.len();
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&(flags | libc::NLM_F_ACK as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.extend_from_slice(header);
    netlink_send(&socket, &message)?;
    let mut payloads = Vec::new();
    let mut buffer = vec![0u8; 65536];
    // Bounded: a dump of one interface's filters is a few messages.
    for _ in 0..1024 {
        let received = netlink_receive(&socket, &mut buffer)?;
        let mut rest = &buffer[..received];
        while rest.len() >= 16 {
            let length = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if length < 16 || length > rest.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink answer",
                ));
            }
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(payloads),
                k if k == libc::NLMSG_ERROR as u16 => {
                    let code = i32::from_ne_bytes(
                        rest.get(16..20)
                            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?
                            .try_into()
                            .expect("4 bytes"),
                    );
                    return match -code {
                        0 => Ok(payloads),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                _ => payloads.push(rest[16..length].to_vec()),
            }
            rest = &rest[length.next_multiple_of(4).min(rest.len())..];
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "netlink answer never ended",
    ))
}
