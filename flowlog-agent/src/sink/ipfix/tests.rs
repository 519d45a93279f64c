//! The sink over loopback: what reaches a collector, and what `check` learns from one.

use std::net::{IpAddr, Ipv4Addr, UdpSocket as StdUdpSocket};

use super::*;
use crate::record::{Direction, Flow, FlowRecord, Verdict};

fn record(interface: &str, ifindex: u32, direction: Direction) -> FlowRecord {
    FlowRecord {
        interface: Arc::from(interface),
        ifindex,
        interface_type: None,
        start: 1_700_000_000,
        end: 1_700_000_001,
        kind: RecordKind::Flow(Flow {
            direction,
            src_addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            dst_addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            src_port: 5001,
            dst_port: 5002,
            protocol: 17,
            packets: 3,
            bytes: 300,
            verdict: Verdict::Accept,
            tcp_flags: 0,
            drop_reason: None,
        }),
    }
}

/// Over loopback: each record's own ifindex is its ingressInterface or egressInterface
/// (an interface the sink never heard of at start-up included), and the bytes counted are
/// the datagrams the collector received.
#[tokio::test]
async fn each_record_exports_its_ifindex_and_the_bytes_sent_are_counted() {
    let collector = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    collector
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let spec: IpfixSpec = format!("ipfix+udp://{}", collector.local_addr().unwrap())
        .parse()
        .unwrap();
    let mut sink = IpfixSink::new(spec);
    let interval = Arc::new(IntervalRecords {
        start: 1_700_000_000,
        end: 1_700_000_001,
        records: vec![
            record("late0", 41, Direction::Ingress),
            record("veth0", 2, Direction::Egress),
        ],
    });
    sink.write(interval).await.unwrap();

    let mut datagrams = Vec::new();
    let mut buffer = [0u8; 2048];
    for _ in 0..2 {
        let n = collector.recv(&mut buffer).expect("a datagram");
        datagrams.push(buffer[..n].to_vec());
    }
    let received: usize = datagrams.iter().map(Vec::len).sum();
    assert_eq!(sink.bytes_written().get(), received as u64);

    // Templates first (set 2), then the data: one IPv4 flow set (256) of two records.
    assert_eq!(datagrams[0][16..18], [0, 2]);
    let data = &datagrams[1];
    assert_eq!(data[16..18], [1, 0]);
    let interfaces = |at: usize| {
        // ingressInterface and egressInterface follow the times, counts, addresses and
        // ports: 8 + 8 + 8 + 8 + 4 + 4 + 2 + 2 bytes into the record.
        let field = |offset: usize| {
            u32::from_be_bytes(data[at + offset..at + offset + 4].try_into().unwrap())
        };
        (field(44), field(48))
    };
    // Records start after the message and set headers; each is 65 bytes with a
    // five-letter interface name.
    assert_eq!(interfaces(20), (41, 0));
    assert_eq!(interfaces(20 + 65), (0, 2));
    assert_eq!(data.len(), 20 + 2 * 65);
}

#[tokio::test]
async fn a_tcp_collector_is_probed_and_a_udp_one_only_resolved() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let spec = |transport: &str| -> IpfixSpec {
        format!("ipfix+{transport}://127.0.0.1:{port}")
            .parse()
            .unwrap()
    };
    let answer = probe(&spec("tcp")).await.unwrap();
    assert!(answer.contains("accepts connections"), "{answer}");
    drop(listener);
    let refused = probe(&spec("tcp")).await.unwrap_err();
    assert!(
        refused.starts_with(&format!(
            "127.0.0.1:{port}: connecting to 127.0.0.1:{port}: "
        )) && refused.contains("refused"),
        "{refused}"
    );
    let udp = probe(&spec("udp")).await.unwrap();
    assert!(udp.contains("cannot be probed"), "{udp}");
}
