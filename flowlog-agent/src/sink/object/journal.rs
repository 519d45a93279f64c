//! The open object's records, journaled to disk as each interval arrives: an agent killed before
//! it sealed the object (up to `--rotate` of records) loses nothing, because the next start
//! seals what the journal holds into an object of the same window.
//!
//! Layout: the header `flowlog-journal 3 <window start>\n`, then one frame per interval,
//! fsynced: a little-endian `u32` length, then the interval's records, each
//!
//! ```text
//! kind u8 (0 flow, 1 NODATA, 2 SKIPDATA) | ifindex u32 | start u64 | end u64 | name length u8 | name
//!           | interface-type length u8 (0: none) | interface-type
//! flow:     direction u8 | family u8 (4, 6) | src [16] | dst [16] | src port u16 | dst port u16
//!           | protocol u8 | packets u64 | bytes u64 | verdict u8 | tcp flags u8
//! SKIPDATA: packets u64 | bytes u64
//! ```
//!
//! Version 2 (before `interface-type`) is read too: its records have none.
//!
//! Binary, because the journal is written for every record an object sink receives: it must
//! cost far less than encoding the object itself.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::{IpAddr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    files::FILE_MODE,
    record::{Direction, Flow, FlowRecord, RecordKind, Verdict},
};

const MAGIC: &str = "flowlog-journal 3";
/// The layout before records had an `interface-type`: still read after an upgrade.
const MAGIC_2: &str = "flowlog-journal 2";

/// The journal of one sink's open object. Every call either does all it says or leaves the
/// file as it was: a frame is never left half written (a full disk is cut back), so what the
/// file holds always decodes.
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    /// The file's length after the last whole frame.
    length: u64,
    frame: Vec<u8>,
}

impl Journal {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            length: 0,
            frame: Vec::new(),
        }
    }

    /// Starts the journal of a new object (replacing what a sealed one left, which the caller
    /// has spooled). On failure no journal is left.
    pub fn start(&mut self, window_start: u64) -> io::Result<()> {
        let header = format!("{MAGIC} {window_start}\n");
        let started = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&self.path)
            .and_then(|mut file| {
                file.write_all(header.as_bytes())?;
                file.sync_data()?;
                Ok(file)
            });
        match started {
            Ok(file) => {
                self.file = Some(file);
                self.length = header.len() as u64;
                Ok(())
            }
            Err(error) => {
                self.file = None;
                let _ = fs::remove_file(&self.path);
                Err(error)
            }
        }
    }

    /// Appends an interval's records as one frame, durably.
    pub fn append(&mut self, records: &[FlowRecord]) -> io::Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        self.frame.clear();
        self.frame.extend_from_slice(&[0; 4]);
        for record in records {
            encode(record, &mut self.frame);
        }
        let length = u32::try_from(self.frame.len() - 4)
            .map_err(|_| io::Error::other("an interval of more than 4 GiB"))?;
        self.frame[..4].copy_from_slice(&length.to_le_bytes());
        let appended = file.write_all(&self.frame).and_then(|()| file.sync_data());
        if let Err(error) = appended {
            // Cut back to the last whole frame, so the next append follows it.
            if let Err(cut) = file.set_len(self.length) {
                tracing::error!(path = %self.path.display(), error = %cut, "cannot cut a failed journal append back");
            }
            return Err(error);
        }
        self.length += self.frame.len() as u64;
        Ok(())
    }

    /// The object is sealed in the spool: nothing is left to recover.
    pub fn clear(&mut self) -> io::Result<()> {
        self.file = None;
        match fs::remove_file(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// What a run that was killed left: its object's window and records. A last frame cut
    /// short by the kill is skipped (its interval was not acknowledged).
    pub fn recover(path: &Path) -> io::Result<Option<(u64, Vec<FlowRecord>)>> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let not_a_journal = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a flowlog journal", path.display()),
            )
        };
        let header_end = bytes
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(not_a_journal)?;
        let header = std::str::from_utf8(&bytes[..header_end]).map_err(|_| not_a_journal())?;
        let (window_start, with_type) = [(MAGIC, true), (MAGIC_2, false)]
            .into_iter()
            .find_map(|(magic, with_type)| {
                Some((header.strip_prefix(magic)?.trim().parse().ok()?, with_type))
            })
            .ok_or_else(not_a_journal)?;
        let mut records = Vec::new();
        let mut rest = &bytes[header_end + 1..];
        while let Some(length) = rest.get(..4) {
            let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
            let Some(frame) = rest.get(4..4 + length) else {
                break;
            };
            let mut reader = Reader(frame);
            while !reader.0.is_empty() {
                records.push(decode(&mut reader, with_type).ok_or_else(not_a_journal)?);
            }
            rest = &rest[4 + length..];
        }
        Ok(Some((window_start, records)))
    }
}

fn encode(record: &FlowRecord, out: &mut Vec<u8>) {
    let kind = match record.kind {
        RecordKind::Flow(_) => 0u8,
        RecordKind::NoData => 1,
        RecordKind::SkipData { .. } => 2,
    };
    out.push(kind);
    out.extend_from_slice(&record.ifindex.to_le_bytes());
    out.extend_from_slice(&record.start.to_le_bytes());
    out.extend_from_slice(&record.end.to_le_bytes());
    // Interface names are at most 15 bytes (IFNAMSIZ); "ifindex-N" stand-ins are short too.
    let name = &record.interface.as_bytes()[..record.interface.len().min(255)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    let interface_type = record.interface_type.unwrap_or("").as_bytes();
    let interface_type = &interface_type[..interface_type.len().min(255)];
    out.push(interface_type.len() as u8);
    out.extend_from_slice(interface_type);
    match &record.kind {
        RecordKind::Flow(flow) => {
            out.push(flow.direction as u8);
            for address in [flow.src_addr, flow.dst_addr] {
                let (family, octets) = match address {
                    IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped().octets()),
                    IpAddr::V6(v6) => (6u8, v6.octets()),
                };
                out.push(family);
                out.extend_from_slice(&octets);
            }
            out.extend_from_slice(&flow.src_port.to_le_bytes());
            out.extend_from_slice(&flow.dst_port.to_le_bytes());
            out.push(flow.protocol);
            out.extend_from_slice(&flow.packets.to_le_bytes());
            out.extend_from_slice(&flow.bytes.to_le_bytes());
            out.push(flow.verdict as u8);
            out.push(flow.tcp_flags);
            // Kernel drops only (older journals have none): the reason's name, which the next
            // start may read under another kernel, whose numbers differ.
            if flow.verdict == Verdict::KernelDrop {
                let reason = flow.drop_reason.unwrap_or("-").as_bytes();
                let reason = &reason[..reason.len().min(255)];
                out.push(reason.len() as u8);
                out.extend_from_slice(reason);
            }
        }
        RecordKind::NoData => {}
        RecordKind::SkipData { packets, bytes } => {
            out.extend_from_slice(&packets.to_le_bytes());
            out.extend_from_slice(&bytes.to_le_bytes());
        }
    }
}

/// Reads fields off the front of a frame.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_at_checked(N)?;
        self.0 = rest;
        head.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    /// A string of at most 255 bytes after its length.
    fn text(&mut self) -> Option<&str> {
        let length = self.u8()? as usize;
        let (text, rest) = self.0.split_at_checked(length)?;
        self.0 = rest;
        std::str::from_utf8(text).ok()
    }

    fn address(&mut self) -> Option<IpAddr> {
        let family = self.u8()?;
        let octets: [u8; 16] = self.take()?;
        let v6 = Ipv6Addr::from(octets);
        match family {
            4 => v6.to_ipv4_mapped().map(IpAddr::V4),
            6 => Some(IpAddr::V6(v6)),
            _ => None,
        }
    }
}

fn decode(reader: &mut Reader<'_>, with_type: bool) -> Option<FlowRecord> {
    let kind = reader.u8()?;
    let ifindex = reader.u32()?;
    let start = reader.u64()?;
    let end = reader.u64()?;
    let interface: Arc<str> = Arc::from(reader.text()?);
    let interface_type = match with_type {
        true => Some(reader.text()?)
            .filter(|t| !t.is_empty())
            .map(|t| crate::interfaces::interface_type(Some(t))),
        false => None,
    };
    let kind = match kind {
        0 => {
            let mut flow = Flow {
                direction: Direction::try_from(reader.u8()?).ok()?,
                src_addr: reader.address()?,
                dst_addr: reader.address()?,
                src_port: reader.u16()?,
                dst_port: reader.u16()?,
                protocol: reader.u8()?,
                packets: reader.u64()?,
                bytes: reader.u64()?,
                verdict: Verdict::try_from(reader.u8()?).ok()?,
                tcp_flags: reader.u8()?,
                drop_reason: None,
            };
            if flow.verdict == Verdict::KernelDrop {
                let length = reader.u8()? as usize;
                let (reason, rest) = reader.0.split_at_checked(length)?;
                reader.0 = rest;
                flow.drop_reason = Some(crate::kernel_drops::intern(
                    std::str::from_utf8(reason).ok()?,
                ));
            }
            RecordKind::Flow(flow)
        }
        1 => RecordKind::NoData,
        2 => RecordKind::SkipData {
            packets: reader.u64()?,
            bytes: reader.u64()?,
        },
        _ => return None,
    };
    Some(FlowRecord {
        interface,
        ifindex,
        interface_type,
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
            interface_type: Some("veth"),
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
                drop_reason: None,
            }),
        };
        vec![
            flow(Verdict::Accept, "198.18.0.2", "198.18.0.1"),
            flow(Verdict::AuditSecurityGroup, "fd00::2", "fd00::1"),
            FlowRecord {
                interface: Arc::from("veth-idle"),
                ifindex: 7,
                interface_type: None,
                start: 1_700_000_000,
                end: 1_700_000_060,
                kind: RecordKind::NoData,
            },
            FlowRecord {
                interface: Arc::from("-"),
                ifindex: 0,
                interface_type: None,
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
    fn what_was_journaled_is_recovered_exactly_and_a_cut_frame_is_skipped() {
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
    fn a_version_2_journal_is_still_read() {
        let path = std::env::temp_dir().join(format!("flowlog-journal-v2-{}", std::process::id()));
        let mut bytes = b"flowlog-journal 2 1699999800\n".to_vec();
        let mut frame = vec![1u8];
        frame.extend_from_slice(&7u32.to_le_bytes());
        frame.extend_from_slice(&1_700_000_000u64.to_le_bytes());
        frame.extend_from_slice(&1_700_000_060u64.to_le_bytes());
        frame.push(4);
        frame.extend_from_slice(b"eth1");
        bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&frame);
        fs::write(&path, bytes).unwrap();
        let (window, recovered) = Journal::recover(&path).unwrap().unwrap();
        assert_eq!(window, 1_699_999_800);
        assert_eq!(
            recovered,
            [FlowRecord {
                interface: Arc::from("eth1"),
                ifindex: 7,
                interface_type: None,
                start: 1_700_000_000,
                end: 1_700_000_060,
                kind: RecordKind::NoData,
            }]
        );
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_an_error() {
        let path = std::env::temp_dir().join(format!("flowlog-journal-bad-{}", std::process::id()));
        fs::write(&path, "hello\n").unwrap();
        assert!(Journal::recover(&path).is_err());
        fs::remove_file(&path).unwrap();
    }
}
