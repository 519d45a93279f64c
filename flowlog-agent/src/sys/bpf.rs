//! bpf(2) commands aya 0.14 does not wrap: the batched read-and-delete of a map, pinned objects
//! and link updates, and a program's recursion misses.

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya::Pod;

/// `enum bpf_cmd` value of `BPF_MAP_LOOKUP_AND_DELETE_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

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

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The `info` member of `union bpf_attr`.
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
