//! The open object's records, journaled to disk as each interval arrives: an agent killed before
//! it sealed the object (up to `--rotate` of records) loses nothing, because the next start
//! seals what the journal holds into an object of the same window.
//!
//! One line per record after a header line, fsynced per interval:
//!
//! ```text
//! flowlog-journal 1 <window start>
//! <ifindex> <start> <end> <interface> OK <direction> <src> <dst> <src port> <dst port> <protocol> <packets> <bytes> <verdict> <tcp flags>
//! <ifindex> <start> <end> <interface> NODATA
//! <ifindex> <start> <end> <interface> SKIPDATA <packets> <bytes>
//! ```
//!
//! Interface names hold no whitespace (the kernel refuses it), so the fields split on spaces.

use std::{
    fmt::Write as _,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::record::{Direction, Flow, FlowRecord, RecordKind, Verdict};

const MAGIC: &str = "flowlog-journal 1";

/// The journal of one sink's open object.
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
}

impl Journal {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Starts the journal of a new object (replacing what a sealed one left).
    pub fn start(&mut self, window_start: u64) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&self.path)?;
        writeln!(file, "{MAGIC} {window_start}")?;
        self.file = Some(file);
        Ok(())
    }

    /// Appends an interval's records, durably.
    pub fn append(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let mut text = String::with_capacity(records.len() * 96);
        for record in records {
            encode(record, &mut text);
        }
        file.write_all(text.as_bytes())?;
        file.sync_data()
    }

    /// The object is sealed in the spool: nothing is left to recover.
    pub fn clear(&mut self) -> io::Result<()> {
        self.file = None;
        match fs::remove_file(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// What a run that was killed left: its object's window and records. A last line cut
    /// short by the kill is skipped (its interval was not acknowledged).
    pub fn recover(path: &Path) -> io::Result<Option<(u64, Vec<FlowRecord>)>> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let mut lines = text.split_inclusive('\n');
        let window_start = lines
            .next()
            .and_then(|header| header.trim_end().strip_prefix(MAGIC)?.trim().parse().ok());
        let Some(window_start) = window_start else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a flowlog journal", path.display()),
            ));
        };
        let records = lines
            .filter(|line| line.ends_with('\n'))
            .filter_map(|line| decode(line.trim_end()))
            .collect();
        Ok(Some((window_start, records)))
    }
}

fn encode(record: &FlowRecord, out: &mut String) {
    let _ = write!(
        out,
        "{} {} {} {} ",
        record.ifindex, record.start, record.end, record.interface
    );
    let _ = match &record.kind {
        RecordKind::Flow(flow) => writeln!(
            out,
            "OK {} {} {} {} {} {} {} {} {} {}",
            flow.direction as u8,
            flow.src_addr,
            flow.dst_addr,
            flow.src_port,
            flow.dst_port,
            flow.protocol,
            flow.packets,
            flow.bytes,
            flow.verdict as u8,
            flow.tcp_flags
        ),
        RecordKind::NoData => writeln!(out, "NODATA"),
        RecordKind::SkipData { packets, bytes } => writeln!(out, "SKIPDATA {packets} {bytes}"),
    };
}

fn decode(line: &str) -> Option<FlowRecord> {
    let mut fields = line.split(' ');
    let mut next = || fields.next();
    let ifindex = next()?.parse().ok()?;
    let start = next()?.parse().ok()?;
    let end = next()?.parse().ok()?;
    let interface: Arc<str> = Arc::from(next()?);
    let kind = match next()? {
        "OK" => RecordKind::Flow(Flow {
            direction: Direction::try_from(next()?.parse::<u8>().ok()?).ok()?,
            src_addr: next()?.parse().ok()?,
            dst_addr: next()?.parse().ok()?,
            src_port: next()?.parse().ok()?,
            dst_port: next()?.parse().ok()?,
            protocol: next()?.parse().ok()?,
            packets: next()?.parse().ok()?,
            bytes: next()?.parse().ok()?,
            verdict: Verdict::try_from(next()?.parse::<u8>().ok()?).ok()?,
            tcp_flags: next()?.parse().ok()?,
        }),
        "NODATA" => RecordKind::NoData,
        "SKIPDATA" => RecordKind::SkipData {
            packets: next()?.parse().ok()?,
            bytes: next()?.parse().ok()?,
        },
        _ => return None,
    };
    Some(FlowRecord {
        interface,
        ifindex,
        start,
        end,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<FlowRecord> {
        let flow = |verdict, src: &str, dst: &str| FlowRecord {
            interface: Arc::from("eth0"),
            ifindex: 2,
            start: 1_700_000_000,
            end: 1_700_000_004,
            kind: RecordKind::Flow(Flow {
                direction: Direction::Ingress,
                src_addr: src.parse().unwrap(),
                dst_addr: dst.parse().unwrap(),
                src_port: 40000,
                dst_port: 443,
                protocol: 6,
                packets: 12,
                bytes: 3456,
                verdict,
                tcp_flags: 19,
            }),
        };
        vec![
            flow(Verdict::Accept, "198.18.0.2", "198.18.0.1"),
            flow(Verdict::AuditSecurityGroup, "fd00::2", "fd00::1"),
            FlowRecord {
                interface: Arc::from("veth-idle"),
                ifindex: 7,
                start: 1_700_000_000,
                end: 1_700_000_060,
                kind: RecordKind::NoData,
            },
            FlowRecord {
                interface: Arc::from("-"),
                ifindex: 0,
                start: 1_700_000_000,
                end: 1_700_000_060,
                kind: RecordKind::SkipData {
                    packets: 5,
                    bytes: 500,
                },
            },
        ]
    }

    #[test]
    fn what_was_journaled_is_recovered_exactly_and_a_cut_line_is_skipped() {
        let path = std::env::temp_dir().join(format!("flowlog-journal-{}", std::process::id()));
        let mut journal = Journal::new(path.clone());
        journal.start(1_699_999_800).unwrap();
        journal.append(&records()[..2]).unwrap();
        journal.append(&records()[2..]).unwrap();
        // A kill in the middle of the next interval's write.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"2 1700000000 1700000004 eth0 OK 0 198.18")
            .unwrap();
        let (window, recovered) = Journal::recover(&path).unwrap().unwrap();
        assert_eq!(window, 1_699_999_800);
        assert_eq!(recovered, records());

        journal.clear().unwrap();
        assert_eq!(Journal::recover(&path).unwrap(), None);
        journal.clear().unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_an_error() {
        let path = std::env::temp_dir().join(format!("flowlog-journal-bad-{}", std::process::id()));
        fs::write(&path, "hello\n").unwrap();
        assert!(Journal::recover(&path).is_err());
        fs::remove_file(&path).unwrap();
    }
}
