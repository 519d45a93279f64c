//! flowlog's real kernel programs on the running kernel: crafted frames through TC ingress, TC
//! egress and XDP with BPF_PROG_TEST_RUN, read back only through the agent's own read path
//! (`Datapath::drain_interval`, `Datapath::stats`). Needs root (CAP_BPF, CAP_NET_ADMIN).
//!
//! Every test asserts the exact flows of an interval (key and packets, bytes, TCP flags; the
//! timestamps are checked by `TestDatapath::drain`) or the exact statistics. Expected numbers are
//! written out from the frames' own header sizes, never taken from the code under test.
//! Truncated frames are in `datapath_truncation.rs`.

use std::{collections::BTreeMap, thread, time::Duration};

use flowlog_common::flow::{FlowKey, PacketCount};
use tests::{
    frames::{ETHERTYPE_ARP, ExtensionHeader, FrameBuilder, tcp_flags},
    netns::{NetNs, in_netns, veth_pair},
    test_run::{
        Counts, LOOPBACK_IFINDEX, Program, SkBuffContext, TestDatapath, flows, v4, v4_key, v6,
        v6_key,
    },
};

/// Room for every flow a test makes, so nothing is skipped unless a test wants it.
const MAX_FLOWS: u32 = 1024;

// Header sizes on the wire.
const IPV4: u64 = 20;
const IPV6: u64 = 40;
const TCP: u64 = 20;
const UDP: u64 = 8;
const ICMP_ECHO: u64 = 8;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_GRE: u8 = 47;
const PROTO_ICMPV6: u8 = 58;

/// An IP version as the tests use it: how to build a frame, the key it must get, its header size.
struct Family {
    frame: fn() -> FrameBuilder,
    key: fn(Program, u8, u16, u16) -> FlowKey,
    ip_header: u64,
}

const FAMILIES: [Family; 2] = [
    Family {
        frame: v4,
        key: v4_key,
        ip_header: IPV4,
    },
    Family {
        frame: v6,
        key: v6_key,
        ip_header: IPV6,
    },
];

#[test]
fn tcp_flags_are_or_ed_in_the_flow_logs_encoding() {
    use tcp_flags::{ACK, FIN, PSH, RST, SYN};
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let mut expected = BTreeMap::new();
        for Family {
            frame,
            key,
            ip_header,
        } in FAMILIES
        {
            let syn = frame().tcp(40000, 443).tcp_flags(SYN).build();
            datapath.send(hook, &syn.bytes, 1);
            expected.insert(
                key(hook, PROTO_TCP, 40000, 443),
                Counts::new(1, ip_header + TCP, 2),
            );

            let syn_ack = frame().tcp(443, 40000).tcp_flags(SYN | ACK).build();
            datapath.send(hook, &syn_ack.bytes, 1);
            expected.insert(
                key(hook, PROTO_TCP, 443, 40000),
                Counts::new(1, ip_header + TCP, 18),
            );

            // A connection's end over several packets: data (reports nothing), FIN-ACK twice
            // (1), then RST (4).
            let closing = || frame().tcp(40001, 443);
            datapath.send(
                hook,
                &closing().tcp_flags(PSH | ACK).payload(100).build().bytes,
                1,
            );
            datapath.send(
                hook,
                &closing().tcp_flags(FIN | ACK).payload(5).build().bytes,
                2,
            );
            datapath.send(hook, &closing().tcp_flags(RST).build().bytes, 1);
            expected.insert(
                key(hook, PROTO_TCP, 40001, 443),
                Counts::new(
                    4,
                    (ip_header + TCP + 100) + 2 * (ip_header + TCP + 5) + (ip_header + TCP),
                    1 | 4,
                ),
            );
        }
        assert_eq!(datapath.drain_flows(), expected, "{hook:?}");
    }
}

#[test]
fn udp_icmp_and_other_protocols_have_no_tcp_flags() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let sends = [
            (
                v4().udp(5353, 53).payload(18),
                v4_key(hook, PROTO_UDP, 5353, 53),
                IPV4 + UDP + 18,
            ),
            (
                v6().udp(5353, 53).payload(18),
                v6_key(hook, PROTO_UDP, 5353, 53),
                IPV6 + UDP + 18,
            ),
            // ICMP echo carries an identifier, never ports.
            (
                v4().icmp_echo(7, 1).payload(56),
                v4_key(hook, PROTO_ICMP, 0, 0),
                IPV4 + ICMP_ECHO + 56,
            ),
            (
                v6().icmpv6_echo(7, 1).payload(56),
                v6_key(hook, PROTO_ICMPV6, 0, 0),
                IPV6 + ICMP_ECHO + 56,
            ),
            (
                v4().protocol(PROTO_GRE).payload(24),
                v4_key(hook, PROTO_GRE, 0, 0),
                IPV4 + 24,
            ),
            (
                v6().protocol(PROTO_GRE).payload(24),
                v6_key(hook, PROTO_GRE, 0, 0),
                IPV6 + 24,
            ),
        ];
        let mut expected = BTreeMap::new();
        for (frame, key, ip_len) in sends {
            datapath.send(hook, &frame.build().bytes, 1);
            expected.insert(key, Counts::new(1, ip_len, 0));
        }
        assert_eq!(datapath.drain_flows(), expected, "{hook:?}");
    }
}

#[test]
fn packets_of_one_flow_accumulate() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let frame = v4().udp(40000, 4789).payload(100).build();
        let ip_len = IPV4 + UDP + 100;
        // `repeat` runs the program that many times: that many packets.
        datapath.send(hook, &frame.bytes, 1000);
        let (key, counts) = datapath.drain_one_flow();
        assert_eq!(key, v4_key(hook, PROTO_UDP, 40000, 4789));
        assert_eq!(counts, Counts::new(1000, 1000 * ip_len, 0));

        // Packets apart in time: the flow spans them.
        datapath.send(hook, &frame.bytes, 3);
        thread::sleep(Duration::from_millis(20));
        let between = datapath.jiffies();
        thread::sleep(Duration::from_millis(20));
        datapath.send(hook, &frame.bytes, 2);
        let drained = datapath.drain();
        let counters = drained.flows[&key];
        assert_eq!(Counts::from(&counters), Counts::new(5, 5 * ip_len, 0));
        assert!(
            counters.first_seen_jiffies < between && between < counters.last_seen_jiffies,
            "{counters:?} should span {between}"
        );
    }
}

#[test]
fn ingress_and_egress_count_apart() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    let frame = v6().tcp(22, 50000).payload(64).build();
    datapath.send(Program::TcIngress, &frame.bytes, 2);
    datapath.send(Program::TcEgress, &frame.bytes, 3);
    let ip_len = IPV6 + TCP + 64;
    assert_eq!(
        datapath.drain_flows(),
        BTreeMap::from([
            (
                v6_key(Program::TcIngress, PROTO_TCP, 22, 50000),
                Counts::new(2, 2 * ip_len, 0)
            ),
            (
                v6_key(Program::TcEgress, PROTO_TCP, 22, 50000),
                Counts::new(3, 3 * ip_len, 0)
            ),
        ])
    );
}

#[test]
fn vlan_and_qinq_frames_count_their_inner_ip_packet() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let sends = [
            (
                v4().vlan(100).udp(1, 2).payload(18),
                v4_key(hook, PROTO_UDP, 1, 2),
                IPV4 + UDP + 18,
                0,
            ),
            (
                v4().qinq(10, 20).udp(3, 4).payload(18),
                v4_key(hook, PROTO_UDP, 3, 4),
                IPV4 + UDP + 18,
                0,
            ),
            (
                v6().qinq(10, 20)
                    .tcp(5, 6)
                    .tcp_flags(tcp_flags::SYN)
                    .payload(7),
                v6_key(hook, PROTO_TCP, 5, 6),
                IPV6 + TCP + 7,
                2,
            ),
        ];
        let mut expected = BTreeMap::new();
        for (frame, key, ip_len, flags) in sends {
            datapath.send(hook, &frame.build().bytes, 1);
            expected.insert(key, Counts::new(1, ip_len, flags));
        }
        assert_eq!(datapath.drain_flows(), expected, "{hook:?}");
    }
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_are_followed() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let sends = [
            // 8 bytes of options and 12 of TCP options.
            (
                v4().ipv4_options(&[7, 7, 4, 0, 0, 0, 0])
                    .tcp(1234, 80)
                    .tcp_options(12)
                    .payload(3),
                v4_key(hook, PROTO_TCP, 1234, 80),
                (IPV4 + 8) + (TCP + 12) + 3,
                0,
            ),
            // The 40-byte maximum.
            (
                v4().ipv4_options(&[1; 40]).udp(1235, 80),
                v4_key(hook, PROTO_UDP, 1235, 80),
                (IPV4 + 40) + UDP,
                0,
            ),
            (
                v6().extension(ExtensionHeader::HopByHop(8))
                    .extension(ExtensionHeader::Routing(24))
                    .extension(ExtensionHeader::DestinationOptions(16))
                    .extension(ExtensionHeader::Authentication(24))
                    .udp(5000, 6000)
                    .payload(7),
                v6_key(hook, PROTO_UDP, 5000, 6000),
                IPV6 + (8 + 24 + 16 + 24) + UDP + 7,
                0,
            ),
            // AH's length is in 4-byte units.
            (
                v6().extension(ExtensionHeader::Authentication(12))
                    .tcp(1, 2)
                    .tcp_flags(tcp_flags::FIN | tcp_flags::ACK),
                v6_key(hook, PROTO_TCP, 1, 2),
                IPV6 + 12 + TCP,
                1,
            ),
        ];
        let mut expected = BTreeMap::new();
        for (frame, key, ip_len, flags) in sends {
            datapath.send(hook, &frame.build().bytes, 1);
            expected.insert(key, Counts::new(1, ip_len, flags));
        }
        assert_eq!(datapath.drain_flows(), expected, "{hook:?}");
    }
}

#[test]
fn non_first_fragments_count_without_ports() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        // IPv4: the first fragment carries the UDP header, the next one (offset 185 x 8 = 1480)
        // only payload. IPv6: the same with a fragment header (8 bytes) and TCP.
        let first_v4 = v4().fragment(0, true).udp(1, 2).payload(1472).build();
        let next_v4 = v4().fragment(185, false).udp(1, 2).payload(1000).build();
        let first_v6 = v6()
            .fragment(0, true)
            .tcp(3, 4)
            .tcp_flags(tcp_flags::SYN)
            .payload(1000)
            .build();
        let next_v6 = v6()
            .fragment(125, false)
            .tcp(3, 4)
            .tcp_flags(tcp_flags::SYN)
            .payload(500)
            .build();
        for frame in [&first_v4, &next_v4, &first_v6, &next_v6] {
            datapath.send(hook, &frame.bytes, 1);
        }
        assert_eq!(
            datapath.drain_flows(),
            BTreeMap::from([
                (
                    v4_key(hook, PROTO_UDP, 1, 2),
                    Counts::new(1, IPV4 + UDP + 1472, 0)
                ),
                (
                    v4_key(hook, PROTO_UDP, 0, 0),
                    Counts::new(1, IPV4 + 1000, 0)
                ),
                (
                    v6_key(hook, PROTO_TCP, 3, 4),
                    Counts::new(1, IPV6 + 8 + TCP + 1000, 2)
                ),
                // No TCP header in the fragment, so no flags either.
                (
                    v6_key(hook, PROTO_TCP, 0, 0),
                    Counts::new(1, IPV6 + 8 + 500, 0)
                ),
            ]),
            "{hook:?}"
        );
    }
}

#[test]
fn ethernet_padding_is_not_counted() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let udp = v4().udp(1, 2).pad_to(60).build();
        let tcp = v4().tcp(3, 4).pad_to(60).build();
        assert_eq!((udp.frame_len(), tcp.frame_len()), (60, 60));
        datapath.send(hook, &udp.bytes, 1);
        datapath.send(hook, &tcp.bytes, 1);
        assert_eq!(
            datapath.drain_flows(),
            BTreeMap::from([
                (v4_key(hook, PROTO_UDP, 1, 2), Counts::new(1, IPV4 + UDP, 0)),
                (v4_key(hook, PROTO_TCP, 3, 4), Counts::new(1, IPV4 + TCP, 0)),
            ]),
            "{hook:?}"
        );
    }
}

#[test]
fn non_ip_frames_are_counted_as_statistics_only() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    let arp = FrameBuilder::non_ip(ETHERTYPE_ARP).payload(28).build();
    let tagged_arp = FrameBuilder::non_ip(ETHERTYPE_ARP)
        .vlan(5)
        .payload(28)
        .build();
    let lldp = FrameBuilder::non_ip(0x88cc).payload(46).build();
    assert_eq!(
        (arp.frame_len(), tagged_arp.frame_len(), lldp.frame_len()),
        (42, 46, 60)
    );
    let mut non_ip = PacketCount::default();
    for hook in Program::ALL {
        datapath.send(hook, &arp.bytes, 2);
        datapath.send(hook, &tagged_arp.bytes, 1);
        datapath.send(hook, &lldp.bytes, 1);
        non_ip.add(&PacketCount {
            packets: 4,
            bytes: 2 * 42 + 46 + 60,
        });
        assert_eq!(
            datapath.stats(),
            (non_ip, PacketCount::default()),
            "{hook:?}"
        );
    }
    assert_eq!(datapath.drain_flows(), BTreeMap::new());
}

#[test]
fn malformed_frames_are_counted_as_statistics_only() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    let malformed = [
        v4().ipv4_ihl_field(4).udp(1, 2).payload(10),
        // An IHL of 60 bytes in a 38-byte packet.
        v4().ipv4_ihl_field(15).udp(1, 2).payload(10),
        v4().ip_version_field(6).udp(1, 2).payload(10),
        // Total length beyond the frame (38 bytes are there).
        v4().udp(1, 2).payload(10).ip_length_field(39),
        v4().udp(1, 2).payload(10).ip_length_field(19),
        v4().tcp(1, 2).payload(40).tcp_data_offset_field(4),
        v4().tcp(1, 2).payload(40).tcp_data_offset_field(0),
        // A 60-byte TCP header in a 40-byte segment.
        v6().tcp(1, 2).payload(20).tcp_data_offset_field(15),
        v6().udp(1, 2).payload(10).ip_length_field(19),
        v6().udp(1, 2).payload(10).ip_length_field(0),
        v6().ip_version_field(4).udp(1, 2),
        // More VLAN tags or extension headers than are followed.
        v4().qinq(10, 20).vlan(30).udp(1, 2),
        (0..7)
            .fold(v6(), |frame, _| {
                frame.extension(ExtensionHeader::DestinationOptions(8))
            })
            .udp(1, 2),
    ]
    .map(|builder| builder.build());
    let mut expected = PacketCount::default();
    for hook in Program::ALL {
        for frame in &malformed {
            datapath.send(hook, &frame.bytes, 1);
            expected.add(&PacketCount {
                packets: 1,
                bytes: frame.frame_len() as u64,
            });
            assert_eq!(
                datapath.stats(),
                (PacketCount::default(), expected),
                "{hook:?} {frame:02x?}"
            );
        }
    }
    assert_eq!(datapath.drain_flows(), BTreeMap::new());
}

#[test]
fn an_empty_ipv6_packet_is_a_flow() {
    // 40 bytes, next header 59 (No Next Header, RFC 8200 4.7), payload length 0: a valid packet
    // that Linux's ipv6_rcv accepts, so it is traffic a flow log must show.
    const NO_NEXT_HEADER: u8 = 59;
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    let frame = v6().protocol(NO_NEXT_HEADER).build();
    assert_eq!(frame.frame_len(), 14 + 40);
    for hook in Program::ALL {
        datapath.send(hook, &frame.bytes, 1);
        assert_eq!(
            datapath.drain_one_flow(),
            (v6_key(hook, NO_NEXT_HEADER, 0, 0), Counts::new(1, IPV6, 0)),
            "{hook:?}"
        );
    }
    assert_eq!(datapath.stats(), Default::default());
}

#[test]
fn gso_super_packets_count_their_segments() {
    // A classifier's test run takes at most a page of linear data (3712 bytes here), so these
    // super-packets hold 2 or 3 segments, not the 4 or 40 of real ones.
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::TC {
        let cases = [
            // TCP: 2 segments of 1448 payload bytes and one of 100, each with the 20 + 20 header
            // bytes; the segment count given, then derived from the segment size.
            (
                v4().tcp(40000, 5201).payload(2 * 1448 + 100),
                SkBuffContext::gso(1448, 3),
                v4_key(hook, PROTO_TCP, 40000, 5201),
                Counts::new(3, 2 * (IPV4 + TCP + 1448) + (IPV4 + TCP + 100), 0),
            ),
            (
                v4().tcp(40000, 5201).payload(2 * 1448 + 100),
                SkBuffContext::gso(1448, 0),
                v4_key(hook, PROTO_TCP, 40000, 5201),
                Counts::new(3, 2 * (IPV4 + TCP + 1448) + (IPV4 + TCP + 100), 0),
            ),
            // TCP with timestamps (12 option bytes), the IPv4 total length left at 0 (as GRO
            // and BIG TCP may): the frame's length counts.
            (
                v4().tcp(40001, 5201)
                    .tcp_options(12)
                    .payload(1000 + 10)
                    .ip_length_field(0),
                SkBuffContext::gso(1000, 2),
                v4_key(hook, PROTO_TCP, 40001, 5201),
                Counts::new(2, (IPV4 + TCP + 12 + 1000) + (IPV4 + TCP + 12 + 10), 0),
            ),
            // The same over IPv6 with payload length 0.
            (
                v6().tcp(40002, 5201).payload(1000 + 10).ip_length_field(0),
                SkBuffContext::gso(1000, 0),
                v6_key(hook, PROTO_TCP, 40002, 5201),
                Counts::new(2, (IPV6 + TCP + 1000) + (IPV6 + TCP + 10), 0),
            ),
            // UDP GSO over IPv6: 2 x 1200 + 1 payload bytes, each segment with 40 + 8.
            (
                v6().udp(4000, 4001).payload(2 * 1200 + 1),
                SkBuffContext::gso(1200, 0),
                v6_key(hook, PROTO_UDP, 4000, 4001),
                Counts::new(3, 2 * (IPV6 + UDP + 1200) + (IPV6 + UDP + 1), 0),
            ),
        ];
        for (frame, skb, key, counts) in cases {
            // The kernel writes the device (the loopback) and the GSO fields back into the
            // context: the offsets are the kernel's.
            let written_back = SkBuffContext {
                ifindex: LOOPBACK_IFINDEX,
                ..skb
            };
            assert_eq!(
                datapath.send_skb(hook, &frame.build().bytes, skb),
                written_back
            );
            assert_eq!(datapath.drain_one_flow(), (key, counts), "{hook:?} {skb:?}");
        }
    }
}

#[test]
fn each_interval_drains_only_its_own_packets() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    let a = v4().udp(1, 2).payload(10).build();
    let b = v6().udp(1, 2).payload(10).build();
    let (a_len, b_len) = (IPV4 + UDP + 10, IPV6 + UDP + 10);
    for hook in Program::ALL {
        let (a_key, b_key) = (v4_key(hook, PROTO_UDP, 1, 2), v6_key(hook, PROTO_UDP, 1, 2));
        datapath.send(hook, &a.bytes, 2);
        assert_eq!(
            datapath.drain_flows(),
            BTreeMap::from([(a_key, Counts::new(2, 2 * a_len, 0))])
        );
        datapath.send(hook, &a.bytes, 1);
        datapath.send(hook, &b.bytes, 3);
        assert_eq!(
            datapath.drain_flows(),
            BTreeMap::from([
                (a_key, Counts::new(1, a_len, 0)),
                (b_key, Counts::new(3, 3 * b_len, 0)),
            ])
        );
        // Nothing sent: both epochs drain empty.
        assert_eq!(datapath.drain_flows(), BTreeMap::new());
        assert_eq!(datapath.drain_flows(), BTreeMap::new());
    }
}

#[test]
fn a_full_flow_map_counts_new_flows_as_skipped() {
    const CAPACITY: u16 = 8;
    let udp = |port: u16, payload: usize| v4().udp(port, 53).payload(payload).build();
    for hook in Program::ALL {
        let mut datapath = TestDatapath::load(CAPACITY.into());
        // Fill the map: one packet each of flows 1000..1008.
        let mut expected = BTreeMap::new();
        for port in 1000..1000 + CAPACITY {
            datapath.send(hook, &udp(port, 10).bytes, 1);
            expected.insert(
                v4_key(hook, PROTO_UDP, port, 53),
                Counts::new(1, IPV4 + UDP + 10, 0),
            );
        }
        // Three more flows find no room: 1 + 2 + 3 packets of 20, 40 and 60 payload bytes.
        for extra in 1..=3u16 {
            datapath.send(
                hook,
                &udp(2000 + extra, 20 * usize::from(extra)).bytes,
                extra.into(),
            );
        }
        let skipped_bytes = (IPV4 + UDP + 20) + 2 * (IPV4 + UDP + 40) + 3 * (IPV4 + UDP + 60);
        // A flow that has its entry keeps counting.
        datapath.send(hook, &udp(1000, 10).bytes, 4);
        expected.insert(
            v4_key(hook, PROTO_UDP, 1000, 53),
            Counts::new(5, 5 * (IPV4 + UDP + 10), 0),
        );

        let drained = datapath.drain();
        assert_eq!(flows(&drained), expected, "{hook:?}");
        assert_eq!(
            drained.skipped,
            BTreeMap::from([(
                LOOPBACK_IFINDEX,
                PacketCount {
                    packets: 1 + 2 + 3,
                    bytes: skipped_bytes
                }
            )]),
            "{hook:?}"
        );
        assert_eq!(drained.unattributed, PacketCount::default());

        // The next interval counts into the other map, the one after into the drained one:
        // both take the three flows and five more without skipping.
        for _ in 0..2 {
            let mut expected = BTreeMap::new();
            for port in (2001..2004).chain(3000..3005) {
                datapath.send(hook, &udp(port, 10).bytes, 1);
                expected.insert(
                    v4_key(hook, PROTO_UDP, port, 53),
                    Counts::new(1, IPV4 + UDP + 10, 0),
                );
            }
            assert_eq!(datapath.drain_flows(), expected, "{hook:?}");
        }
    }
}

#[test]
fn classifier_flows_and_skips_are_keyed_by_the_packets_device() {
    // Two devices besides the loopback, in a namespace of their own: a test run's socket buffer
    // is on the device its context names, looked up in the calling thread's namespace.
    let ns = NetNs::new().expect("namespace");
    veth_pair(&ns, "v0", &ns, "v1").expect("veth pair");
    let (v0, v1) = (ns.ifindex("v0").expect("v0"), ns.ifindex("v1").expect("v1"));
    assert!(v0 > LOOPBACK_IFINDEX && v1 > LOOPBACK_IFINDEX && v0 != v1);
    let on = |ifindex: u32| SkBuffContext {
        ifindex,
        ..SkBuffContext::default()
    };
    let udp = |port: u16| v4().udp(port, 53).payload(10).build();
    let ip_len = IPV4 + UDP + 10;
    in_netns(&ns, || {
        let mut datapath = TestDatapath::load(4);
        let mut expected = BTreeMap::new();
        for (port, device) in [(1, v0), (2, v0), (3, v1), (4, LOOPBACK_IFINDEX)] {
            datapath.send_skb(Program::TcEgress, &udp(port).bytes, on(device));
            let key = FlowKey {
                ifindex: device,
                ..v4_key(Program::TcEgress, PROTO_UDP, port, 53)
            };
            expected.insert(key, Counts::new(1, ip_len, 0));
        }
        // The map is full: new flows are skipped on the device they were seen on.
        for (port, device) in [(5, v0), (6, v1), (7, v1), (8, LOOPBACK_IFINDEX)] {
            datapath.send_skb(Program::TcEgress, &udp(port).bytes, on(device));
        }
        let drained = datapath.drain();
        assert_eq!(flows(&drained), expected);
        let skipped = |packets| PacketCount {
            packets,
            bytes: packets * ip_len,
        };
        assert_eq!(
            drained.skipped,
            BTreeMap::from([
                (LOOPBACK_IFINDEX, skipped(1)),
                (v0, skipped(1)),
                (v1, skipped(2))
            ])
        );
    })
    .expect("entering the namespace");
}
