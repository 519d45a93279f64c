//! Figure 5: the object encoders. One million realistic records (mostly IPv4, some IPv6, many
//! ports, a few interfaces, NODATA rows) encoded on one core into a gzip text object and into a
//! Parquet object, as an object-store sink does: records per second (thread CPU time and wall
//! time), bytes per record, and the memory the records and the objects hold while in flight.
//! Also the CloudWatch sink's encoder and batcher on the same records.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Instant,
};

use flowlog_agent::{
    format::RecordFormat,
    record::IntervalRecords,
    record::{Direction, Flow, FlowRecord, Metadata, RecordKind, Verdict},
    sink::{
        LineRenderer,
        cloudwatch::Batcher,
        object::{Journal, ParquetObject, TextObject},
    },
    sys::thread_cpu_time,
};

use crate::{
    report::{Goal, Outcome, Report},
    support::{CpuPin, Result, median, si},
};

const GOAL_RECORDS_PER_SECOND: f64 = 1e6;
/// The default `--max-object-size`: what an open object may hold in memory.
const MAX_OBJECT_BYTES: f64 = 75e6;

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    let (count, rounds) = if quick { (200_000, 1) } else { (1_000_000, 3) };
    let _pin = CpuPin::highest_allowed()?;
    let rss_before = resident_bytes();
    let records = records(count);
    let rss_records = resident_bytes().saturating_sub(rss_before);
    let renderer = LineRenderer::new(
        Arc::new(RecordFormat::default()),
        Arc::new(Metadata {
            account_id: Some("123456789010".into()),
            ..Metadata::default()
        }),
    );

    let mut object_bytes = [0usize; 2];
    let mut peak_object_memory = 0u64;
    for (i, name) in ["text+gzip", "parquet"].into_iter().enumerate() {
        let mut cpu = Vec::new();
        let mut wall = Vec::new();
        for _ in 0..rounds {
            let rss_start = resident_bytes();
            let (started, cpu_started) = (Instant::now(), thread_cpu_time());
            let bytes = if i == 0 {
                let mut object = TextObject::new(&renderer);
                // As the sink does: one interval of records at a time (here 10 of them).
                for chunk in records.chunks(count / 10) {
                    object.append(&renderer, chunk).map_err(|e| e.to_string())?;
                }
                object.finish().map_err(|e| e.to_string())?
            } else {
                let mut object = ParquetObject::new(&renderer.format).map_err(|e| e.to_string())?;
                for chunk in records.chunks(count / 10) {
                    object.append(&renderer, chunk).map_err(|e| e.to_string())?;
                }
                object.finish().map_err(|e| e.to_string())?
            };
            cpu.push((thread_cpu_time() - cpu_started).as_secs_f64());
            wall.push(started.elapsed().as_secs_f64());
            peak_object_memory = peak_object_memory.max(resident_bytes().saturating_sub(rss_start));
            object_bytes[i] = bytes.len();
        }
        let cpu = median(&cpu);
        let wall = median(&wall);
        let rate = count as f64 / cpu;
        report.record(Outcome {
            figure: format!("encoder {name}"),
            measured: format!("{} records/s on one core ({count} records)", si(rate)),
            value: rate,
            goal: Goal::at_least(GOAL_RECORDS_PER_SECOND, "1M records/s"),
            details: vec![format!(
                "{:.1} bytes/record ({:.1} MB object); CPU {:.0} ms, wall {:.0} ms; median of {rounds}",
                object_bytes[i] as f64 / count as f64,
                object_bytes[i] as f64 / 1e6,
                cpu * 1e3,
                wall * 1e3,
            )],
        });
    }
    journal(&records, rounds, report)?;
    cloudwatch(&records, &renderer, rounds, report);
    let in_flight = rss_records as f64 + peak_object_memory as f64;
    report.record(Outcome {
        figure: format!("memory, {} records in flight", si(count as f64)),
        measured: format!(
            "records {:.0} MiB + open object and encoder {:.0} MiB",
            rss_records as f64 / 1048576.0,
            peak_object_memory as f64 / 1048576.0
        ),
        value: peak_object_memory as f64,
        goal: Goal::at_most(
            MAX_OBJECT_BYTES,
            "--max-object-size (75 MB) beyond the records",
        ),
        details: vec![format!(
            "{:.0} MiB in all: the records are shared by every sink (one Arc per interval, at most \
             {} intervals queued per sink); an object holds at most --max-object-size",
            in_flight / 1048576.0,
            flowlog_agent::sink::QUEUE_INTERVALS
        )],
    });
    Ok(())
}

/// The open object's journal, which an object sink writes beside the encoder (one text line per
/// record, fsynced per interval): records per second on one core, and bytes per record. The
/// sink's rate is about 1 / (1/encoder + 1/journal).
fn journal(records: &[FlowRecord], rounds: usize, report: &mut Report) -> Result<()> {
    let path = std::env::temp_dir().join(format!("flowlog-bench-journal-{}", std::process::id()));
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..rounds {
        let mut journal = Journal::new(path.clone());
        let (started, cpu_started) = (Instant::now(), thread_cpu_time());
        journal.start(0).map_err(|e| e.to_string())?;
        for chunk in records.chunks(records.len() / 10) {
            journal.append(chunk).map_err(|e| e.to_string())?;
        }
        cpu.push((thread_cpu_time() - cpu_started).as_secs_f64());
        wall.push(started.elapsed().as_secs_f64());
        bytes = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
        journal.clear().map_err(|e| e.to_string())?;
    }
    let (cpu, wall) = (median(&cpu), median(&wall));
    let count = records.len();
    let rate = count as f64 / wall.max(cpu);
    report.record(Outcome {
        figure: "open-object journal".to_owned(),
        measured: format!("{} records/s on one core ({count} records)", si(rate)),
        value: rate,
        goal: Goal::at_least(GOAL_RECORDS_PER_SECOND, "1M records/s"),
        details: vec![format!(
            "{:.1} bytes/record on disk, 10 fsyncs ({}); CPU {:.0} ms, wall {:.0} ms; median of {rounds}",
            bytes as f64 / count as f64,
            std::env::temp_dir().display(),
            cpu * 1e3,
            wall * 1e3,
        )],
    });
    Ok(())
}

/// The CloudWatch sink's encoder and batcher: intervals of records into PutLogEvents batches
/// (rendered, sorted by stream and time, cut at the call's limits, encoded for the spool), as
/// the sink does before spooling; no network.
fn cloudwatch(records: &[FlowRecord], renderer: &LineRenderer, rounds: usize, report: &mut Report) {
    let intervals: Vec<IntervalRecords> = records
        .chunks(records.len() / 10)
        .map(|chunk| IntervalRecords {
            start: 1_700_000_000,
            end: 1_700_000_060,
            records: chunk.to_vec(),
        })
        .collect();
    let mut batcher = Batcher::new(renderer.clone(), "all");
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    let (mut batches, mut bytes) = (0, 0);
    for _ in 0..rounds {
        let (started, cpu_started) = (Instant::now(), thread_cpu_time());
        (batches, bytes) = (0, 0);
        for interval in &intervals {
            let cut = batcher.batches(interval);
            batches += cut.len();
            bytes += cut.iter().map(|b| b.bytes.len()).sum::<usize>();
        }
        cpu.push((thread_cpu_time() - cpu_started).as_secs_f64());
        wall.push(started.elapsed().as_secs_f64());
    }
    let (cpu, wall) = (median(&cpu), median(&wall));
    let count = records.len();
    let rate = count as f64 / cpu;
    report.record(Outcome {
        figure: "CloudWatch encoder and batcher".to_owned(),
        measured: format!("{} records/s on one core ({count} records)", si(rate)),
        value: rate,
        goal: Goal::at_least(GOAL_RECORDS_PER_SECOND, "1M records/s"),
        details: vec![format!(
            "{batches} batches ({:.1} bytes/event); CPU {:.0} ms, wall {:.0} ms; median of {rounds}",
            bytes as f64 / count as f64,
            cpu * 1e3,
            wall * 1e3,
        )],
    });
}

/// `count` records: 90% IPv4 over 4 interfaces, 10% IPv6, ports spread, every 1000th a NODATA.
fn records(count: usize) -> Vec<FlowRecord> {
    let interfaces: Vec<Arc<str>> = ["eth0", "eth1", "ens5", "veth3a1f"]
        .iter()
        .map(|&name| Arc::from(name))
        .collect();
    let start = 1_700_000_000u64;
    (0..count)
        .map(|i| {
            let n = i as u32;
            let interface = Arc::clone(&interfaces[i % interfaces.len()]);
            let ifindex = (i % interfaces.len()) as u32 + 2;
            if i % 1000 == 999 {
                return FlowRecord {
                    interface,
                    ifindex,
                    interface_type: None,
                    start,
                    end: start + 60,
                    kind: RecordKind::NoData,
                };
            }
            let (src, dst) = if i % 10 == 9 {
                (
                    IpAddr::V6(Ipv6Addr::new(
                        0xfd00,
                        0,
                        0,
                        0,
                        0,
                        0,
                        (n >> 16) as u16,
                        n as u16,
                    )),
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 2)),
                )
            } else {
                (
                    IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (n & 0xffff))),
                    IpAddr::V4(Ipv4Addr::new(198, 18, 255, (n % 251) as u8)),
                )
            };
            let tcp = i % 3 != 0;
            FlowRecord {
                interface,
                ifindex,
                interface_type: None,
                start: start + (n % 60) as u64,
                end: start + 60,
                kind: RecordKind::Flow(Flow {
                    direction: if i % 2 == 0 {
                        Direction::Ingress
                    } else {
                        Direction::Egress
                    },
                    src_addr: src,
                    dst_addr: dst,
                    src_port: (1024 + n % 60_000) as u16,
                    dst_port: [443, 80, 53, 22][i % 4],
                    protocol: if tcp { 6 } else { 17 },
                    packets: 1 + (n % 97) as u64,
                    bytes: 60 + (n % 9973) as u64 * 13,
                    verdict: Verdict::Accept,
                    tcp_flags: if tcp { 19 } else { 0 },
                    drop_reason: None,
                }),
            }
        })
        .collect()
}

/// Resident set size from /proc/self/statm.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
