//! The CloudWatch sink's encoder and batcher: an interval's records become log events (one per
//! record, its line as the message, its `start` in milliseconds as the timestamp), grouped by
//! log stream, in time order, cut into batches that PutLogEvents accepts by construction.
//!
//! A batch is what one spool file holds and one call sends: the events of one stream, at most
//! [`MAX_EVENTS`] of them and [`MAX_BATCH_BYTES`] as CloudWatch counts (message bytes plus
//! [`EVENT_OVERHEAD`] each), in chronological order. Its encoding, after the spool's header
//! line, is per event a little-endian `i64` timestamp, a `u32` length and the message.

use std::{collections::hash_map::Entry, ops::Range};

use rustc_hash::FxHashMap;

use crate::{
    record::{FlowRecord, IntervalRecords},
    sink::LineRenderer,
};

/// PutLogEvents: at most this many events per call...
pub const MAX_EVENTS: usize = 10_000;
/// ... and at most this many bytes, counting each event's message and ...
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// ... this much per event.
pub const EVENT_OVERHEAD: usize = 26;
/// The events of one call may span at most a day.
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Bytes of an event's header in a batch's encoding.
const EVENT_HEADER: usize = 12;

/// One batch of events of one log stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub stream: String,
    pub events: usize,
    /// Timestamps of the first and last events (milliseconds).
    pub first: i64,
    pub last: i64,
    /// The size CloudWatch counts: messages plus [`EVENT_OVERHEAD`] per event.
    pub size: usize,
    /// The encoded events.
    pub bytes: Vec<u8>,
}

impl Batch {
    fn new(stream: &str, bytes: Vec<u8>) -> Self {
        Batch {
            stream: stream.to_owned(),
            events: 0,
            first: 0,
            last: 0,
            size: 0,
            bytes,
        }
    }

    /// What the spool's header line says of a batch after its record count: everything the
    /// uploader needs to plan calls without reading the file.
    pub fn spool_key(&self) -> String {
        BatchKey {
            first: self.first,
            last: self.last,
            size: self.size,
            stream: self.stream.clone(),
        }
        .to_string()
    }
}

/// A spooled batch as its header line describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchKey {
    pub first: i64,
    pub last: i64,
    pub size: usize,
    pub stream: String,
}

impl std::fmt::Display for BatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The stream last: it is the only part that is not a number.
        write!(
            f,
            "{} {} {} {}",
            self.first, self.last, self.size, self.stream
        )
    }
}

impl std::str::FromStr for BatchKey {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let mut parts = text.splitn(4, ' ');
        let mut number = || parts.next().ok_or(());
        let first = number()?.parse().map_err(|_| ())?;
        let last = number()?.parse().map_err(|_| ())?;
        let size = number()?.parse().map_err(|_| ())?;
        let stream = parts.next().filter(|s| !s.is_empty()).ok_or(())?;
        Ok(BatchKey {
            first,
            last,
            size,
            stream: stream.to_owned(),
        })
    }
}

/// The name of an interface's log stream, as `dir:` names its file without `.log`.
pub fn stream_name(interface: &str, traffic_type: &str) -> String {
    format!("{interface}-{traffic_type}")
}

/// Turns intervals into batches, reusing its buffers from one interval to the next.
pub struct Batcher {
    renderer: LineRenderer,
    traffic_type: &'static str,
    /// (stream, timestamp, record index) of every record of the interval.
    order: Vec<(u32, i64, u32)>,
    line: Vec<u8>,
}

impl Batcher {
    pub fn new(renderer: LineRenderer, traffic_type: &'static str) -> Self {
        Batcher {
            renderer,
            traffic_type,
            order: Vec::new(),
            line: Vec::with_capacity(512),
        }
    }

    /// The interval's batches: per stream (in the order streams first appear), events in time
    /// order (records of equal start in the interval's order), cut at the call's limits.
    pub fn batches(&mut self, interval: &IntervalRecords) -> Vec<Batch> {
        let records = &interval.records;
        let mut streams: Vec<String> = Vec::new();
        let mut index_of: FxHashMap<&str, u32> = FxHashMap::default();
        self.order.clear();
        self.order.reserve(records.len());
        for (i, record) in records.iter().enumerate() {
            let stream = match index_of.entry(&record.interface) {
                Entry::Occupied(entry) => *entry.get(),
                Entry::Vacant(entry) => {
                    streams.push(stream_name(&record.interface, self.traffic_type));
                    *entry.insert(streams.len() as u32 - 1)
                }
            };
            self.order.push((stream, timestamp(record), i as u32));
        }
        // The index makes the sort stable, and lets an unstable sort do it.
        self.order.sort_unstable();

        let mut batches = Vec::with_capacity(streams.len());
        let mut start = 0;
        while start < self.order.len() {
            let stream = self.order[start].0;
            let end = start
                + self.order[start..]
                    .iter()
                    .position(|entry| entry.0 != stream)
                    .unwrap_or(self.order.len() - start);
            self.cut(&streams[stream as usize], records, start..end, &mut batches);
            start = end;
        }
        batches
    }

    /// Encodes the events of `range` of `self.order` (one stream) into batches.
    fn cut(
        &mut self,
        stream: &str,
        records: &[FlowRecord],
        range: Range<usize>,
        batches: &mut Vec<Batch>,
    ) {
        let estimate = range.len().min(MAX_EVENTS) * 128;
        let mut batch = Batch::new(stream, Vec::with_capacity(estimate));
        for &(_, timestamp, index) in &self.order[range] {
            self.line.clear();
            self.renderer.format.render(
                &records[index as usize],
                &self.renderer.metadata,
                &mut self.line,
            );
            self.line.pop(); // the '\n': an event is the line
            let size = self.line.len() + EVENT_OVERHEAD;
            if batch.events > 0
                && (batch.events == MAX_EVENTS
                    || batch.size + size > MAX_BATCH_BYTES
                    || timestamp - batch.first > MAX_SPAN_MS)
            {
                let next = Batch::new(stream, Vec::with_capacity(estimate));
                batches.push(std::mem::replace(&mut batch, next));
            }
            if batch.events == 0 {
                batch.first = timestamp;
            }
            batch.last = timestamp;
            batch.events += 1;
            batch.size += size;
            batch.bytes.extend_from_slice(&timestamp.to_le_bytes());
            batch
                .bytes
                .extend_from_slice(&(self.line.len() as u32).to_le_bytes());
            batch.bytes.extend_from_slice(&self.line);
        }
        if batch.events > 0 {
            batches.push(batch);
        }
    }
}

/// An event's timestamp: the record's `start`, in milliseconds, as AWS sets it.
pub fn timestamp(record: &FlowRecord) -> i64 {
    (record.start as i64).saturating_mul(1000)
}

/// The events of an encoded batch: (timestamp, message), or `None` if the bytes are not a
/// whole batch.
pub fn decode(mut bytes: &[u8]) -> Option<Vec<(i64, &str)>> {
    let mut events = Vec::new();
    while !bytes.is_empty() {
        let (header, rest) = bytes.split_at_checked(EVENT_HEADER)?;
        let timestamp = i64::from_le_bytes(header[..8].try_into().ok()?);
        let length = u32::from_le_bytes(header[8..].try_into().ok()?) as usize;
        let (message, rest) = rest.split_at_checked(length)?;
        events.push((timestamp, std::str::from_utf8(message).ok()?));
        bytes = rest;
    }
    Some(events)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        format::RecordFormat,
        record::{Direction, Flow, Metadata, RecordKind, Verdict},
    };

    fn record(interface: &str, start: u64, src_port: u16) -> FlowRecord {
        FlowRecord {
            interface: Arc::from(interface),
            ifindex: 2,
            interface_type: None,
            start,
            end: start + 1,
            kind: RecordKind::Flow(Flow {
                direction: Direction::Ingress,
                src_addr: "198.18.0.2".parse().unwrap(),
                dst_addr: "198.18.0.1".parse().unwrap(),
                src_port,
                dst_port: 53,
                protocol: 17,
                packets: 1,
                bytes: 84,
                verdict: Verdict::Accept,
                tcp_flags: 0,
                drop_reason: None,
            }),
        }
    }

    fn batcher(format: &str) -> Batcher {
        let renderer = LineRenderer::new(
            Arc::new(format.parse::<RecordFormat>().unwrap()),
            Arc::new(Metadata::default()),
        );
        Batcher::new(renderer, "all")
    }

    fn interval(records: Vec<FlowRecord>) -> IntervalRecords {
        IntervalRecords {
            start: 1_700_000_000,
            end: 1_700_000_060,
            records,
        }
    }

    #[test]
    fn one_stream_per_interface_events_in_time_order_with_the_record_lines() {
        let mut batcher = batcher("${interface-id} ${srcport} ${start} ${log-status}");
        let idle = FlowRecord {
            kind: RecordKind::NoData,
            ..record("eth1", 1_700_000_000, 0)
        };
        let batches = batcher.batches(&interval(vec![
            record("eth0", 1_700_000_030, 3),
            record("eth0", 1_700_000_010, 1),
            idle,
            record("eth0", 1_700_000_030, 4),
            record("eth0", 1_700_000_010, 2),
        ]));
        let streams: Vec<&str> = batches.iter().map(|b| b.stream.as_str()).collect();
        assert_eq!(streams, ["eth0-all", "eth1-all"]);
        assert_eq!(
            decode(&batches[0].bytes).unwrap(),
            [
                (1_700_000_010_000, "eth0 1 1700000010 OK"),
                (1_700_000_010_000, "eth0 2 1700000010 OK"),
                (1_700_000_030_000, "eth0 3 1700000030 OK"),
                (1_700_000_030_000, "eth0 4 1700000030 OK"),
            ]
        );
        let eth0 = &batches[0];
        assert_eq!(
            (eth0.events, eth0.first, eth0.last),
            (4, 1_700_000_010_000, 1_700_000_030_000)
        );
        assert_eq!(eth0.size, 4 * (20 + EVENT_OVERHEAD));
        assert_eq!(
            decode(&batches[1].bytes).unwrap(),
            [(1_700_000_000_000, "eth1 - 1700000000 NODATA")]
        );
    }

    #[test]
    fn a_big_interval_is_cut_at_ten_thousand_events() {
        let mut batcher = batcher("${srcport}");
        let records = (0..25_000u32)
            .map(|i| {
                record(
                    "eth0",
                    1_700_000_000 + u64::from(i / 1000),
                    (i % 60_000) as u16,
                )
            })
            .collect();
        let batches = batcher.batches(&interval(records));
        let counts: Vec<usize> = batches.iter().map(|b| b.events).collect();
        assert_eq!(counts, [10_000, 10_000, 5_000]);
        // In order across the cut, and every event once.
        let mut previous = i64::MIN;
        let mut total = 0;
        for batch in &batches {
            let events = decode(&batch.bytes).unwrap();
            assert_eq!(
                (events[0].0, events.last().unwrap().0),
                (batch.first, batch.last)
            );
            assert!(batch.first >= previous);
            previous = batch.last;
            total += events.len();
        }
        assert_eq!(total, 25_000);
    }

    #[test]
    fn a_big_interval_is_cut_at_a_megabyte() {
        // About 500 bytes per event (with its overhead): a megabyte is about 2,000 events.
        let mut batcher = batcher("${srcaddr} ${dstaddr} ${srcport}");
        let mut records = Vec::new();
        for i in 0..5_000u32 {
            let mut r = record("eth0", 1_700_000_000, i as u16);
            r.interface = Arc::from("eth0");
            records.push(r);
        }
        let long = "x".repeat(470);
        let renderer = LineRenderer::new(
            Arc::new("${account-id} ${srcport}".parse::<RecordFormat>().unwrap()),
            Arc::new(Metadata {
                account_id: Some(long),
                ..Metadata::default()
            }),
        );
        batcher.renderer = renderer;
        let batches = batcher.batches(&interval(records));
        for batch in &batches {
            assert!(batch.size <= MAX_BATCH_BYTES, "{}", batch.size);
            let messages: usize = decode(&batch.bytes)
                .unwrap()
                .iter()
                .map(|(_, m)| m.len() + EVENT_OVERHEAD)
                .sum();
            assert_eq!(messages, batch.size);
        }
        // Full batches hold as many events as fit, and no more.
        let first = &batches[0];
        let per_event = first.size / first.events;
        assert!(first.size + per_event > MAX_BATCH_BYTES);
        assert_eq!(batches.iter().map(|b| b.events).sum::<usize>(), 5_000);
        assert!(batches.len() >= 3);
    }

    #[test]
    fn spool_keys_read_back() {
        let key = BatchKey {
            first: 1,
            last: 2,
            size: 3,
            stream: "eth0-all".into(),
        };
        assert_eq!(key.to_string(), "1 2 3 eth0-all");
        assert_eq!("1 2 3 eth0-all".parse(), Ok(key));
        assert_eq!("1 2 eth0-all".parse::<BatchKey>(), Err(()));
        assert_eq!(decode(&[1, 2, 3]), None);
    }
}
