//! Byte-exact messages, written out by hand from RFC 7011 and the IANA registry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

/// Parses a hex dump: whitespace and `|` separators are ignored.
fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).unwrap() as u8)
        .collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

fn flow(src: IpAddr, dst: IpAddr) -> Flow {
    Flow {
        direction: Direction::Ingress,
        src_addr: src,
        dst_addr: dst,
        src_port: 443,
        dst_port: 49152,
        protocol: 6,
        packets: 10,
        bytes: 5000,
        verdict: Verdict::Accept,
        tcp_flags: 18,
        drop_reason: None,
    }
}

#[test]
fn template_message_is_byte_exact() {
    let encoder = MessageEncoder::new(7, 1400);
    let message = encoder.templates(0x6500_0000);
    let flow_fields = |src: &str, dst: &str, len: &str| {
        format!(
            "0098 0008  0099 0008  0001 0008  0002 0008  {src} {len}  {dst} {len}
             0007 0002  000b 0002  000a 0004  000e 0004  0006 0002
             0004 0001  003c 0001  003d 0001  0059 0001  0088 0001  0052 ffff"
        )
    };
    let expected = hex(&format!(
        "000a 00c2 65000000 00000000 00000007
         0002 0094
           0100 0011 {}
           0101 0011 {}
         0003 001e
           0102 0005 0001  000a 0004  0143 0008  00a4 0008  00a5 0008  0052 ffff",
        flow_fields("0008", "000c", "0004"),
        flow_fields("001b", "001c", "0010"),
    ));
    assert_eq!(message, expected);
    assert_eq!(message.len(), 194);
}

#[test]
fn data_message_is_byte_exact() {
    let mut encoder = MessageEncoder::new(7, 1400);
    let v4 = flow(
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
    );
    let mut v6 = flow(
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
    );
    v6.direction = Direction::Egress;
    v6.protocol = 17;
    v6.tcp_flags = 0;
    v6.verdict = Verdict::RejectAcl;
    let records = [
        DataRecord::Flow(FlowData {
            flow: &v4,
            ifindex: 3,
            interface: "eth0",
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_059_000,
        }),
        DataRecord::Flow(FlowData {
            flow: &v6,
            ifindex: 3,
            interface: "eth0",
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_000_000,
        }),
        DataRecord::Skipped(SkippedData {
            ifindex: 0,
            interface: "-",
            observed_ms: 1_700_000_060_000,
            packets_total: 2,
            octets_total: 200,
        }),
    ];
    let mut messages = Vec::new();
    let counts = encoder.data(records, 0x6500_0000, &mut messages);
    assert_eq!(counts, [3]);
    // 1_700_000_000_000 = 0x18bcfe56800; + 59_000 = 0x18bcfe64e78; + 60_000 = 0x18bcfe65260.
    let expected = hex("000a 00d2 65000000 00000000 00000007
         0100 0044
           0000018bcfe56800 0000018bcfe64e78 0000000000001388 000000000000000a
           c6120001 c6120002  01bb c000  00000003 00000000  0012
           06 04 00 40 02  04 65746830
         0101 005c
           0000018bcfe56800 0000018bcfe56800 0000000000001388 000000000000000a
           fd000000000000000000000000000001 fd000000000000000000000000000002
           01bb c000  00000000 00000003  0000
           11 06 01 81 02  04 65746830
         0102 0022
           00000000 0000018bcfe65260 0000000000000002 00000000000000c8 01 2d");
    assert_eq!(messages, [expected]);
    assert_eq!(encoder.sequence(), 3);
}

#[test]
fn sequence_numbers_count_data_records_before_each_message() {
    let mut encoder = MessageEncoder::new(1, MIN_MESSAGE_LEN);
    let v4 = flow(
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
    );
    let record = DataRecord::Flow(FlowData {
        flow: &v4,
        ifindex: 2,
        interface: "veth0",
        start_ms: 0,
        end_ms: 0,
    });
    // 16 header + 4 set header + n x 65: three records fit in 256 bytes, a fourth does not.
    assert_eq!(record.encoded_len(), 65);
    let mut messages = Vec::new();
    let counts = encoder.data(std::iter::repeat_n(record, 10), 1, &mut messages);
    assert_eq!(counts, [3, 3, 3, 1]);
    let sequences: Vec<u32> = messages
        .iter()
        .map(|m| u32::from_be_bytes(m[8..12].try_into().unwrap()))
        .collect();
    assert_eq!(sequences, [0, 3, 6, 9]);
    for message in &messages {
        let len = usize::from(u16::from_be_bytes([message[2], message[3]]));
        assert_eq!(len, message.len());
        assert!(len <= MIN_MESSAGE_LEN);
        let set_len = usize::from(u16::from_be_bytes([message[18], message[19]]));
        assert_eq!(set_len, len - MESSAGE_HEADER_LEN);
    }
    // Templates carry the current count and do not advance it.
    let templates = encoder.templates(1);
    assert_eq!(&templates[8..12], &10u32.to_be_bytes());
    assert_eq!(encoder.sequence(), 10);
    encoder.reset_sequence();
    assert_eq!(encoder.sequence(), 0);
}

#[test]
fn long_names_use_the_three_byte_length() {
    let mut out = Vec::new();
    let name = "x".repeat(300);
    put_string(&name, &mut out);
    assert_eq!(&out[..3], &[255, 0x01, 0x2c]);
    assert_eq!(out.len(), 303);
    assert_eq!(string_len(&name), 303);
    assert_eq!(string_len("eth0"), 5);
}

#[test]
fn end_reason_marks_finished_tcp_flows() {
    let mut f = flow(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    );
    assert_eq!(end_reason_of(&f), end_reason::ACTIVE_TIMEOUT);
    f.tcp_flags = 1;
    assert_eq!(end_reason_of(&f), end_reason::END_OF_FLOW);
    f.tcp_flags = 4;
    assert_eq!(end_reason_of(&f), end_reason::END_OF_FLOW);
    f.protocol = 17;
    assert_eq!(end_reason_of(&f), end_reason::ACTIVE_TIMEOUT);
}

#[test]
fn kernel_drops_map_their_reason_to_a_forwarding_status() {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let dropped = |reason: &'static str| Flow {
        verdict: Verdict::KernelDrop,
        drop_reason: Some(reason),
        ..flow(localhost, localhost)
    };
    for (reason, status) in [
        ("netfilter-drop", 129),
        ("tc-ingress", 129),
        ("ip-rpfilter", 140),
        ("no-socket", 141),
        ("ip-outnoroutes", 131),
        ("neigh-failed", 132),
        ("pkt-too-big", 133),
        ("ip-csum", 134),
        ("qdisc-overlimit", 138),
        ("qdisc-drop", 139),
        ("socket-rcvbuff", 128),
    ] {
        assert_eq!(forwarding_status_of(&dropped(reason)), status, "{reason}");
    }
}
