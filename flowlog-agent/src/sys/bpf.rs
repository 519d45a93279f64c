//! bpf(2) commands aya 0.14 does not wrap: the batched read-and-delete of a map, pinned objects
//! and link updates, and a program's recursion misses.

use std::{
    io, mem,
    os::fd::{AsRawFd, BorrowedFd},
    sync::mpsc,
    thread,
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
    let mut batch = Batch::new(chunk);
    let mut reader = BatchReader::new(map);
    let mut total = 0;
    while reader.next_chunk(&mut batch)? {
        batch.entries().for_each(|(key, value)| each(key, value));
        total += batch.filled;
    }
    Ok(total)
}

/// [`drain_hash_map`] with the system calls on `readers` other threads: while `each` handles
/// one chunk on this thread, the kernel copies out the next ones (for large maps, where the
/// kernel's part is most of the work).
///
/// `buckets` is the map's bucket count (its `max_entries` rounded up to a power of two). Each
/// reader starts at its share of the buckets and stops once past it: a hash map's batch
/// position is a bucket index. Nothing depends on that for exactness: an entry is read and
/// deleted in one step under its bucket's lock, so whichever reader reaches it takes it once,
/// and a last pass from the start reads whatever the readers left (none, as the kernel is).
///
/// Every entry the kernel handed out (and so deleted) reaches `each`, also when a call fails:
/// the first error is returned after them.
pub fn drain_hash_map_parallel<K: Pod + Send, V: Pod + Send>(
    map: BorrowedFd<'_>,
    buckets: u64,
    readers: usize,
    chunk: usize,
    mut each: impl FnMut(&K, &V),
) -> io::Result<usize> {
    /// Chunks each reader reads ahead of the one being handled.
    const READ_AHEAD: usize = 2;
    let readers = readers.max(1);
    let (full_tx, full_rx) = mpsc::sync_channel::<(usize, Batch<K, V>)>(READ_AHEAD * readers);
    let mut total = 0;
    thread::scope(|scope| -> io::Result<()> {
        let mut returns = Vec::with_capacity(readers);
        let mut handles = Vec::with_capacity(readers);
        for reader in 0..readers {
            let (empty_tx, empty_rx) = mpsc::channel::<Batch<K, V>>();
            for _ in 0..=READ_AHEAD {
                empty_tx
                    .send(Batch::new(chunk))
                    .expect("the receiver is alive");
            }
            returns.push(empty_tx);
            let share = |reader: usize| buckets * reader as u64 / readers as u64;
            let from = (reader > 0).then(|| share(reader));
            let until = (reader + 1 < readers).then(|| share(reader + 1));
            let full_tx = full_tx.clone();
            handles.push(scope.spawn(move || -> io::Result<()> {
                let mut position = BatchReader::range(map, from, until);
                // Ends when the handling side is gone (it never leaves before the last chunk).
                while let Ok(mut batch) = empty_rx.recv() {
                    if !position.next_chunk(&mut batch)? || full_tx.send((reader, batch)).is_err() {
                        break;
                    }
                }
                Ok(())
            }));
        }
        drop(full_tx);
        for (reader, batch) in full_rx {
            batch.entries().for_each(|(key, value)| each(key, value));
            total += batch.filled;
            // The reader may already have finished: then the buffer is simply dropped.
            let _ = returns[reader].send(batch);
        }
        let mut result = Ok(());
        for handle in handles {
            let outcome = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(outcome);
        }
        result
    })?;
    if readers > 1 {
        total += drain_hash_map(map, chunk, each)?;
    }
    Ok(total)
}

/// Buffers for one batch call and how many entries the kernel put in them.
struct Batch<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
    filled: usize,
}

impl<K: Pod, V: Pod> Batch<K, V> {
    fn new(chunk: usize) -> Self {
        let chunk = chunk.max(1);
        Self {
            keys: zeroed_vec(chunk),
            values: zeroed_vec(chunk),
            filled: 0,
        }
    }

    fn entries(&self) -> impl Iterator<Item = (&K, &V)> {
        self.keys[..self.filled]
            .iter()
            .zip(&self.values[..self.filled])
    }
}

/// The position of a batched read-and-delete through a hash map.
struct BatchReader<'fd> {
    map: BorrowedFd<'fd>,
    /// For hash maps the batch position is a bucket index (u32); u64 leaves room.
    position: Option<u64>,
    /// Where this reader's share ends.
    until: Option<u64>,
    done: bool,
}

impl<'fd> BatchReader<'fd> {
    fn new(map: BorrowedFd<'fd>) -> Self {
        Self::range(map, None, None)
    }

    /// A reader that starts at bucket `from` (the first one if `None`) and stops once its
    /// position reaches `until` (the last chunk may run past it).
    fn range(map: BorrowedFd<'fd>, from: Option<u64>, until: Option<u64>) -> Self {
        Self {
            map,
            position: from,
            until,
            done: false,
        }
    }

    /// Reads and deletes the next entries into `batch`. Returns false (and an empty batch) once
    /// the whole map (or this reader's share) has been read. A batch too small for one
    /// bucket's entries is enlarged.
    fn next_chunk<K: Pod, V: Pod>(&mut self, batch: &mut Batch<K, V>) -> io::Result<bool> {
        loop {
            batch.filled = 0;
            if self.done {
                return Ok(false);
            }
            let chunk = batch.keys.len().min(batch.values.len());
            let mut next_position: u64 = 0;
            let mut attr = BatchAttr {
                in_batch: self
                    .position
                    .as_ref()
                    .map_or(0, |position| position as *const u64 as u64),
                out_batch: &mut next_position as *mut u64 as u64,
                keys: batch.keys.as_mut_ptr() as u64,
                values: batch.values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: self.map.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: `attr` describes buffers of `chunk` keys and `chunk` values of the map's
            // key and value types (`K`, `V` are the types the map was created with), which live
            // until the call returns; the kernel writes at most `count` entries into them and
            // the batch position into `next_position`.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                    &mut attr as *mut BatchAttr,
                    mem::size_of::<BatchAttr>() as libc::c_uint,
                )
            };
            let error = (ret < 0).then(io::Error::last_os_error);
            // The kernel writes `count` back on success, ENOENT and ENOSPC only: after any other
            // error it still holds what was asked for, and the buffers hold no new entries.
            match error.as_ref().and_then(io::Error::raw_os_error) {
                None => {
                    batch.filled = (attr.count as usize).min(chunk);
                    self.position = Some(next_position);
                    self.done = self.until.is_some_and(|until| next_position >= until);
                }
                // The whole map has been read (the last entries may come with this).
                Some(libc::ENOENT) => {
                    batch.filled = (attr.count as usize).min(chunk);
                    self.done = true;
                }
                // One bucket holds more entries than fit: retry it with larger buffers.
                Some(libc::ENOSPC) if attr.count == 0 => {
                    *batch = Batch::new(chunk * 2);
                    continue;
                }
                Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
            }
            if batch.filled > 0 || self.done {
                return Ok(batch.filled > 0);
            }
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

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;

    /// The first members of the `map_create` and `map_elem` parts of `union bpf_attr`, padded
    /// to a size the kernel accepts (it checks that the rest is zero).
    #[repr(C)]
    struct Attr([u64; 16]);

    fn bpf(command: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is a zero-padded `union bpf_attr` prefix valid for the call, and every
        // pointer it holds points at a live value of the size the map was created with.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                attr as *mut Attr,
                mem::size_of::<Attr>() as libc::c_uint,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    /// A map of u32 -> u64 of `map_type` with room for `entries`.
    fn empty_map(map_type: u32, entries: u32) -> OwnedFd {
        let mut create = Attr([0; 16]);
        // map_type, key_size; value_size, max_entries.
        create.0[0] = u64::from(map_type) | (4 << 32);
        create.0[1] = 8 | (u64::from(entries) << 32);
        let fd = bpf(BPF_MAP_CREATE, &mut create).expect("creating a map (needs root)");
        // SAFETY: the kernel just returned this descriptor to us alone.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    /// A hash map of u32 -> u64 holding `k -> 3k` for `k` in `0..entries`.
    fn filled_map(entries: u32) -> OwnedFd {
        let map = empty_map(BPF_MAP_TYPE_HASH, entries);
        for key in 0..entries {
            let value = u64::from(key) * 3;
            let mut update = Attr([0; 16]);
            update.0[0] = map.as_raw_fd() as u64;
            update.0[1] = &key as *const u32 as u64;
            update.0[2] = &value as *const u64 as u64;
            bpf(BPF_MAP_UPDATE_ELEM, &mut update).expect("adding an entry");
        }
        map
    }

    /// Every entry comes out exactly once and the map is left empty, whatever the chunk size:
    /// a chunk of one entry meets buckets holding two or more (the kernel answers ENOSPC and the
    /// buffers grow).
    #[test]
    fn every_drain_hands_out_every_entry_once_and_empties_the_map() {
        const ENTRIES: u32 = 5000;
        type Drain = fn(BorrowedFd<'_>, usize, &mut dyn FnMut(&u32, &u64)) -> io::Result<usize>;
        let drains: [(&str, Drain); 5] = [
            ("in turn", |map, chunk, each| {
                drain_hash_map(map, chunk, |k, v| each(k, v))
            }),
            ("one reader", |map, chunk, each| {
                drain_hash_map_parallel(map, 8192, 1, chunk, |k, v| each(k, v))
            }),
            ("three readers", |map, chunk, each| {
                drain_hash_map_parallel(map, 8192, 3, chunk, |k, v| each(k, v))
            }),
            // A wrong bucket count: the readers' shares miss most of the map, the last pass
            // reads it.
            (
                "three readers, bucket count too small",
                |map, chunk, each| drain_hash_map_parallel(map, 64, 3, chunk, |k, v| each(k, v)),
            ),
            (
                "three readers, bucket count too large",
                |map, chunk, each| {
                    drain_hash_map_parallel(map, 1 << 20, 3, chunk, |k, v| each(k, v))
                },
            ),
        ];
        for (name, drain) in drains {
            for chunk in [1, 7, 8192] {
                let map = filled_map(ENTRIES);
                let mut seen = Vec::new();
                let count = drain(map.as_fd(), chunk, &mut |&key, &value| {
                    seen.push((key, value))
                })
                .expect("draining");
                seen.sort_unstable();
                let expected: Vec<(u32, u64)> =
                    (0..ENTRIES).map(|key| (key, u64::from(key) * 3)).collect();
                assert_eq!(count, ENTRIES as usize, "{name}, chunk {chunk}");
                assert!(seen == expected, "{name}, chunk {chunk}: entries differ");
                let again = drain(map.as_fd(), chunk, &mut |_, _| {}).expect("draining again");
                assert_eq!(again, 0, "{name}, chunk {chunk}: the map was not emptied");
            }
        }
    }

    /// A failing batch call ends the drain with its error, on every reader, without waiting
    /// forever for the others, and hands out nothing: the kernel leaves `count` as asked after
    /// such an error (an array map refuses the batched read-and-delete).
    #[test]
    fn a_failing_call_ends_the_drain_with_its_error() {
        let map = empty_map(BPF_MAP_TYPE_ARRAY, 16);
        let result =
            drain_hash_map::<u32, u64>(map.as_fd(), 8, |_, _| panic!("no entry can come out"));
        assert!(result.is_err(), "{result:?}");
        for readers in [1, 3] {
            let result =
                drain_hash_map_parallel::<u32, u64>(map.as_fd(), 16, readers, 8, |_, _| {
                    panic!("no entry can come out")
                });
            assert!(result.is_err(), "{readers} reader(s): {result:?}");
        }
    }
}
