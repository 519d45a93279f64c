//! A BPF program that is not flowlog's: two instructions (`return XDP_PASS`) loaded with the raw
//! `bpf()` system call and attached to an interface through a BPF link held by the test. It
//! stands for another tool's XDP program occupying an interface's XDP hook.

use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::netns::{NetNs, in_netns};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE` (include/uapi/linux/if_link.h).
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to the program name.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The `link_create` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf(command: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<OwnedFd> {
    // SAFETY: the callers pass a live attribute struct of `size` bytes whose pointers reference
    // buffers that outlive the call; the kernel returns a new descriptor nothing else owns.
    unsafe {
        let fd = libc::syscall(libc::SYS_bpf, command, attr, size as libc::c_uint);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd as i32))
    }
}

/// Attaches a plain `XDP_PASS` program named `other_xdp` to `ifname` in `ns`, in driver mode.
/// It stays attached while the returned link is open.
pub fn attach_other_xdp(ns: &NetNs, ifname: &str) -> OwnedFd {
    let ifindex = ns.ifindex(ifname).expect("ifindex");
    // r0 = XDP_PASS (2); exit
    let instructions: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"other_xdp");
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..ProgLoadAttr::default()
    };
    let program = bpf(
        BPF_PROG_LOAD,
        (&mut load as *mut ProgLoadAttr).cast(),
        mem::size_of::<ProgLoadAttr>(),
    )
    .expect("loading a plain XDP program");
    in_netns(ns, || {
        let mut create = LinkCreateAttr {
            prog_fd: program.as_raw_fd() as u32,
            target_ifindex: ifindex,
            attach_type: BPF_XDP,
            flags: XDP_FLAGS_DRV_MODE,
        };
        bpf(
            BPF_LINK_CREATE,
            (&mut create as *mut LinkCreateAttr).cast(),
            mem::size_of::<LinkCreateAttr>(),
        )
    })
    .expect("enter namespace")
    .unwrap_or_else(|e| panic!("attaching XDP to {ifname}: {e}"))
}
