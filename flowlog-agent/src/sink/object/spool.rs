//! The disk spool: every sealed object is written here before it is uploaded, and removed once
//! the store has it. Objects that cannot be uploaded wait here, oldest first, also across
//! agent restarts. The spool is bounded: past `max_bytes` the oldest objects are dropped, and
//! each drop is counted and logged.
//!
//! One file per object: `<sequence>.obj`, starting with the line
//! `flowlog-spool 1 <records> <key>` and then the object's bytes. A file is written as
//! `<sequence>.tmp`, synced, then renamed, so a crash never leaves a half object that looks
//! whole.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use prometheus_client::metrics::gauge::Gauge;

use crate::files::{DIR_MODE, FILE_MODE};

const MAGIC: &str = "flowlog-spool 1";

/// A spooled object, without its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpooledObject {
    pub sequence: u64,
    pub key: String,
    pub records: u64,
    /// Size of the spool file.
    pub bytes: u64,
}

/// What the spool dropped to stay within its bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolLoss {
    pub objects: u64,
    pub records: u64,
}

/// The spool's size as the metrics endpoint shows it, kept equal to what is in the spool
/// directory: set when the spool opens (objects an earlier run left) and at every change.
#[derive(Clone, Debug, Default)]
pub struct SpoolGauges {
    /// Bytes of the spool files (each object and its one-line header).
    pub bytes: Gauge,
    /// Objects waiting for upload (the one being uploaded included).
    pub objects: Gauge,
}

pub struct Spool {
    directory: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    gauges: SpoolGauges,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<u64, SpooledObject>,
    total_bytes: u64,
    next_sequence: u64,
    /// The objects the uploader is sending: never dropped under it.
    in_flight: BTreeSet<u64>,
    lost: SpoolLoss,
}

impl Spool {
    /// Opens (creating it if missing) the spool in `directory`, picking up what an earlier run
    /// left.
    pub fn open(directory: PathBuf, max_bytes: u64) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&directory)?;
        let mut state = State::default();
        for entry in fs::read_dir(&directory)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A write that a crash interrupted: its object was never acknowledged.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(sequence) = name.strip_suffix(".obj").and_then(|s| s.parse().ok()) else {
                continue;
            };
            match read_header(&path) {
                Ok((records, key)) => {
                    let bytes = fs::metadata(&path)?.len();
                    state.total_bytes += bytes;
                    state.objects.insert(
                        sequence,
                        SpooledObject {
                            sequence,
                            key,
                            records,
                            bytes,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "unreadable spool file left in place");
                }
            }
            state.next_sequence = state.next_sequence.max(sequence + 1);
        }
        let spool = Spool {
            directory,
            max_bytes,
            state: Mutex::new(state),
            gauges: SpoolGauges::default(),
        };
        spool.publish(&spool.lock());
        Ok(spool)
    }

    /// The gauges that follow the spool's size.
    pub fn gauges(&self) -> SpoolGauges {
        self.gauges.clone()
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Objects waiting, oldest first.
    pub fn pending(&self) -> Vec<SpooledObject> {
        self.lock().objects.values().cloned().collect()
    }

    pub fn pending_records(&self) -> u64 {
        self.lock().objects.values().map(|o| o.records).sum()
    }

    pub fn lost(&self) -> SpoolLoss {
        self.lock().lost
    }

    /// Writes an object durably, then drops the oldest objects while the spool is over its
    /// bound (never the newest one, nor the one being uploaded).
    pub fn push(&self, key: &str, records: u64, object: &[u8]) -> io::Result<SpooledObject> {
        let sequence = {
            let mut state = self.lock();
            state.next_sequence += 1;
            state.next_sequence - 1
        };
        let temporary = self.directory.join(format!("{sequence:020}.tmp"));
        let path = self.path(sequence);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&temporary)
            .and_then(|mut file| {
                writeln!(file, "{MAGIC} {records} {key}")?;
                file.write_all(object)?;
                file.sync_all()?;
                drop(file);
                fs::rename(&temporary, &path)?;
                Ok(fs::metadata(&path)?.len())
            });
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(error) => {
                // A full disk: nothing half written stays, the caller keeps the object.
                let _ = fs::remove_file(&temporary);
                return Err(error);
            }
        };
        let spooled = SpooledObject {
            sequence,
            key: key.to_owned(),
            records,
            bytes,
        };
        let mut state = self.lock();
        state.total_bytes += bytes;
        state.objects.insert(sequence, spooled.clone());
        self.enforce_bound(&mut state, sequence);
        self.publish(&state);
        Ok(spooled)
    }

    /// The oldest object and its bytes, marked in flight.
    pub fn take_oldest(&self) -> io::Result<Option<(SpooledObject, Vec<u8>)>> {
        let oldest = {
            let mut state = self.lock();
            let Some(oldest) = state.objects.values().next().cloned() else {
                return Ok(None);
            };
            state.in_flight.insert(oldest.sequence);
            oldest
        };
        let object = self.read(&oldest)?;
        Ok(Some((oldest, object)))
    }

    /// The bytes of these objects (as [`Spool::pending`] listed them), each marked in flight
    /// until [`Spool::remove`] or [`Spool::release`]. On an error none is marked.
    pub fn take(&self, objects: &[SpooledObject]) -> io::Result<Vec<Vec<u8>>> {
        {
            let mut state = self.lock();
            for object in objects {
                if !state.objects.contains_key(&object.sequence) {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("spooled object {} was dropped", object.sequence),
                    ));
                }
                state.in_flight.insert(object.sequence);
            }
        }
        let read: io::Result<Vec<Vec<u8>>> = objects.iter().map(|o| self.read(o)).collect();
        if read.is_err() {
            for object in objects {
                self.release(object.sequence);
            }
        }
        read
    }

    /// An object's bytes, after its header line.
    fn read(&self, object: &SpooledObject) -> io::Result<Vec<u8>> {
        let mut reader = BufReader::new(File::open(self.path(object.sequence))?);
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let mut bytes = Vec::with_capacity(object.bytes as usize);
        reader.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The store has the object: forget it.
    pub fn remove(&self, sequence: u64) -> io::Result<()> {
        let mut state = self.lock();
        state.in_flight.remove(&sequence);
        if let Some(object) = state.objects.remove(&sequence) {
            state.total_bytes -= object.bytes;
            let removed = fs::remove_file(self.path(sequence));
            self.publish(&state);
            removed?;
        }
        Ok(())
    }

    /// The upload failed: the object stays, and may be dropped again if the spool overflows.
    pub fn release(&self, sequence: u64) {
        self.lock().in_flight.remove(&sequence);
    }

    fn enforce_bound(&self, state: &mut State, newest: u64) {
        while state.total_bytes > self.max_bytes {
            let victim = state
                .objects
                .keys()
                .copied()
                .find(|s| *s != newest && !state.in_flight.contains(s));
            let Some(victim) = victim else {
                break;
            };
            let Some(object) = state.objects.remove(&victim) else {
                break;
            };
            state.total_bytes -= object.bytes;
            state.lost.objects += 1;
            state.lost.records += object.records;
            if let Err(error) = fs::remove_file(self.path(victim)) {
                tracing::error!(%error, "removing a dropped spool file");
            }
            tracing::error!(
                spool = %self.directory.display(),
                key = %object.key,
                records = object.records,
                lost_objects_total = state.lost.objects,
                lost_records_total = state.lost.records,
                max_bytes = self.max_bytes,
                "spool full: oldest object dropped, its records are lost"
            );
        }
    }

    /// Sets the gauges from `state`; called with the lock held, so they move in step with it.
    fn publish(&self, state: &State) {
        self.gauges.bytes.set(state.total_bytes as i64);
        self.gauges.objects.set(state.objects.len() as i64);
    }

    fn path(&self, sequence: u64) -> PathBuf {
        self.directory.join(format!("{sequence:020}.obj"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every update is one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read_header(path: &Path) -> io::Result<(u64, String)> {
    let mut line = String::new();
    BufReader::new(File::open(path)?)
        .take(4096)
        .read_line(&mut line)?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a flowlog spool file");
    let rest = line
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(bad)?;
    let (records, key) = rest
        .trim_end_matches('\n')
        .split_once(' ')
        .ok_or_else(bad)?;
    Ok((records.parse().map_err(|_| bad())?, key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("flowlog-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// The spool files' total size and count, as `ls` would see them.
    fn on_disk(dir: &Path) -> (i64, i64) {
        let sizes: Vec<u64> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().metadata().unwrap().len())
            .collect();
        (sizes.iter().sum::<u64>() as i64, sizes.len() as i64)
    }

    fn gauges(spool: &Spool) -> (i64, i64) {
        let gauges = spool.gauges();
        (gauges.bytes.get(), gauges.objects.get())
    }

    #[test]
    fn the_gauges_follow_what_is_on_disk() {
        let dir = scratch("gauges");
        let spool = Spool::open(dir.clone(), 2 * 1100).unwrap();
        assert_eq!(gauges(&spool), (0, 0));
        spool.push("k1", 1, &[1; 1000]).unwrap();
        spool.push("k2", 2, &[2; 1000]).unwrap();
        assert_eq!(gauges(&spool).1, 2);
        assert_eq!(gauges(&spool), on_disk(&dir));
        drop(spool);

        // What an earlier run left is counted from the start.
        let spool = Spool::open(dir.clone(), 2 * 1100).unwrap();
        assert_eq!(gauges(&spool), on_disk(&dir));
        assert_eq!(gauges(&spool).1, 2);
        // Over the bound: the oldest is dropped.
        spool.push("k3", 3, &[3; 1000]).unwrap();
        assert_eq!(gauges(&spool).1, 2);
        assert_eq!(gauges(&spool), on_disk(&dir));
        while let Some((object, _)) = spool.take_oldest().unwrap() {
            spool.remove(object.sequence).unwrap();
            assert_eq!(gauges(&spool), on_disk(&dir));
        }
        assert_eq!(gauges(&spool), (0, 0));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn objects_survive_a_reopen_oldest_first_with_their_keys() {
        let dir = scratch("reopen");
        let spool = Spool::open(dir.clone(), 1 << 20).unwrap();
        spool.push("a/first.log.gz", 3, b"one").unwrap();
        spool.push("a/second.log.gz", 4, b"two!").unwrap();
        // A write a crash interrupted is ignored and cleaned up.
        fs::write(dir.join("00000000000000000099.tmp"), b"half").unwrap();
        drop(spool);

        let spool = Spool::open(dir.clone(), 1 << 20).unwrap();
        assert_eq!(spool.pending_records(), 7);
        let (first, bytes) = spool.take_oldest().unwrap().unwrap();
        assert_eq!((first.key.as_str(), first.records), ("a/first.log.gz", 3));
        assert_eq!(bytes, b"one");
        spool.remove(first.sequence).unwrap();
        let third = spool.push("a/third.log.gz", 1, b"3").unwrap();
        assert!(third.sequence > first.sequence + 1, "sequence continues");
        let (second, bytes) = spool.take_oldest().unwrap().unwrap();
        assert_eq!(
            (second.key.as_str(), bytes.as_slice()),
            ("a/second.log.gz", &b"two!"[..])
        );
        assert!(!dir.join("00000000000000000099.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn over_its_bound_the_spool_drops_the_oldest_and_counts_it() {
        let dir = scratch("bound");
        let object = vec![7u8; 1000];
        // Room for two objects and their headers, not three.
        let spool = Spool::open(dir.clone(), 2 * 1100).unwrap();
        spool.push("k1", 10, &object).unwrap();
        spool.push("k2", 20, &object).unwrap();
        assert_eq!(spool.lost(), SpoolLoss::default());
        spool.push("k3", 30, &object).unwrap();
        assert_eq!(
            spool.lost(),
            SpoolLoss {
                objects: 1,
                records: 10
            }
        );
        let keys: Vec<String> = spool.pending().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["k2", "k3"]);

        // The object being uploaded is not dropped under the uploader.
        let (in_flight, _) = spool.take_oldest().unwrap().unwrap();
        assert_eq!(in_flight.key, "k2");
        spool.push("k4", 40, &object).unwrap();
        let keys: Vec<String> = spool.pending().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["k2", "k4"]);
        assert_eq!(
            spool.lost(),
            SpoolLoss {
                objects: 2,
                records: 40
            }
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}
