//! Figure 5: IPFIX export speed. The agent's `IpfixSink` encodes intervals of flow records and
//! sends them over UDP to a receiver on loopback, on one tokio thread (one core for the sink);
//! records per second and bytes per record on the wire come out.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use flowlog_agent::{
    record::{Direction, Flow, FlowRecord, IntervalRecords, RecordKind, Verdict},
    sink::{
        IpfixSink, Sink,
        ipfix::{
            DEFAULT_MTU, IpfixSpec,
            encoder::{DataRecord, FlowData, MessageEncoder},
        },
    },
};

use crate::{
    report::{Goal, Outcome, Report},
    support::{Context, Result, median, si},
};

const GOAL_RECORDS_PER_SECOND: f64 = 1e6;
const RECORDS_PER_INTERVAL: usize = 100_000;
/// IPv4 + UDP headers of each datagram on the wire.
const IP_UDP_HEADERS: u64 = 28;

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    let runs = if quick { 3 } else { 9 };
    let receiver = UdpSocket::bind("127.0.0.1:0").context("binding the receiver")?;
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .context("receiver timeout")?;
    let port = receiver.local_addr().context("receiver address")?.port();
    let (received, datagrams, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let reader = {
        let (received, datagrams, stop) = (received.clone(), datagrams.clone(), stop.clone());
        thread::spawn(move || {
            let mut buffer = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = receiver.recv(&mut buffer) {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                    datagrams.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let spec: IpfixSpec = format!("ipfix+udp://127.0.0.1:{port}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut sink = IpfixSink::new(spec);
    let interval = Arc::new(interval_of(RECORDS_PER_INTERVAL));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut rates = Vec::new();
    let (mut sent_bytes, mut sent_datagrams) = (0u64, 0u64);
    for _ in 0..runs {
        let (bytes_before, datagrams_before) = (
            received.load(Ordering::Relaxed),
            datagrams.load(Ordering::Relaxed),
        );
        // A fresh Arc each time, as the agent hands each interval once.
        let interval = Arc::new(IntervalRecords::clone(&interval));
        let started = Instant::now();
        runtime
            .block_on(sink.write(interval))
            .map_err(|e| format!("IPFIX write: {e}"))?;
        let took = started.elapsed();
        rates.push(RECORDS_PER_INTERVAL as f64 / took.as_secs_f64());
        thread::sleep(Duration::from_millis(200));
        sent_bytes += received.load(Ordering::Relaxed) - bytes_before;
        sent_datagrams += datagrams.load(Ordering::Relaxed) - datagrams_before;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let rate = median(&rates);
    // What the sink sends for one interval, from the same encoder at the default MTU (the
    // receiver may miss datagrams under this load, so its count is only a detail).
    let (message_bytes, messages) = encoded_size(&interval);
    let payload_per_record = message_bytes as f64 / RECORDS_PER_INTERVAL as f64;
    let wire_per_record =
        (message_bytes + messages * IP_UDP_HEADERS) as f64 / RECORDS_PER_INTERVAL as f64;
    report.record(Outcome {
        figure: "ipfix export".into(),
        measured: format!(
            "{} records/s encoded and sent over UDP on loopback (median of {runs} x {} records)",
            si(rate),
            si(RECORDS_PER_INTERVAL as f64)
        ),
        value: rate,
        goal: Goal::at_least(GOAL_RECORDS_PER_SECOND, "1M records/s"),
        details: vec![
            format!(
                "bytes per record: {payload_per_record:.1} IPFIX, {wire_per_record:.1} with IPv4+UDP headers (9 in 10 flows IPv4, 1 IPv6; interface name eth0; mtu 1400)"
            ),
            format!(
                "{messages} datagrams per interval; the receiver got {sent_datagrams} of {} ({} bytes); {} records dropped by the sink",
                messages * runs as u64,
                sent_bytes,
                sink.records_dropped()
            ),
        ],
    });
    Ok(())
}

/// Bytes and messages of one interval's data, as the UDP sink cuts them at the default MTU.
fn encoded_size(interval: &IntervalRecords) -> (u64, u64) {
    let mut encoder = MessageEncoder::new(1, usize::from(DEFAULT_MTU) - IP_UDP_HEADERS as usize);
    let records = interval
        .records
        .iter()
        .filter_map(|record| match &record.kind {
            RecordKind::Flow(flow) => Some(DataRecord::Flow(FlowData {
                flow,
                ifindex: record.ifindex,
                interface: &record.interface,
                start_ms: record.start * 1000,
                end_ms: record.end * 1000,
            })),
            _ => None,
        });
    let mut messages = Vec::new();
    encoder.data(records, 0, &mut messages);
    (
        messages.iter().map(|m| m.len() as u64).sum(),
        messages.len() as u64,
    )
}

/// `count` IPv4 TCP and UDP flows on eth0, with an IPv6 flow every tenth.
fn interval_of(count: usize) -> IntervalRecords {
    let interface: Arc<str> = Arc::from("eth0");
    let records = (0..count)
        .map(|i| {
            let n = i as u32;
            let (src, dst) = if i % 10 == 9 {
                (
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
                    IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(n))),
                )
            } else {
                (
                    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                    IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (n & 0xffff))),
                )
            };
            FlowRecord {
                interface: Arc::clone(&interface),
                ifindex: 2,
                interface_type: None,
                start: 1_700_000_000,
                end: 1_700_000_059,
                kind: RecordKind::Flow(Flow {
                    direction: if i % 2 == 0 {
                        Direction::Ingress
                    } else {
                        Direction::Egress
                    },
                    src_addr: src,
                    dst_addr: dst,
                    src_port: 443,
                    dst_port: 10_000 + (i % 50_000) as u16,
                    protocol: if i % 3 == 0 { 17 } else { 6 },
                    packets: 10 + i as u64,
                    bytes: 1500 * (10 + i as u64),
                    verdict: Verdict::Accept,
                    tcp_flags: 18,
                    drop_reason: None,
                }),
            }
        })
        .collect();
    IntervalRecords {
        start: 1_700_000_000,
        end: 1_700_000_060,
        records,
    }
}
