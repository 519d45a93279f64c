//! Every truncation of full header stacks through flowlog's real programs (TC ingress, TC
//! egress, XDP) with BPF_PROG_TEST_RUN: each cut is passed and counted as malformed with its own
//! length, never as a flow; only the whole frame makes its one flow. Needs root (CAP_BPF).

use std::collections::BTreeMap;

use aya::{programs::ProgramError, sys::SyscallError};
use flowlog_common::flow::{FlowKey, PacketCount};
use tests::{
    frames::{CraftedFrame, ExtensionHeader, tcp_flags},
    test_run::{Counts, Program, TestDatapath, v4, v4_key, v6, v6_key},
};

const MAX_FLOWS: u32 = 1024;
/// BPF_PROG_TEST_RUN refuses packet data shorter than an Ethernet header.
const ETH_HLEN: usize = 14;

/// [802.1ad 4 + 802.1Q 4 +] IPv4 with 8 bytes of options 28 + TCP SYN with 12 bytes of options
/// 32 + 10 bytes of payload after the Ethernet header: 84 (92 tagged) bytes, an IP packet of 70.
fn ipv4_options_tcp(hook: Program, tagged: bool) -> (CraftedFrame, FlowKey, Counts) {
    let mut builder = v4();
    if tagged {
        builder = builder.qinq(10, 20);
    }
    let frame = builder
        .ipv4_options(&[1; 8])
        .tcp(40000, 443)
        .tcp_flags(tcp_flags::SYN)
        .tcp_options(12)
        .payload(10)
        .build();
    let tags = if tagged { 4 + 4 } else { 0 };
    assert_eq!(frame.frame_len(), 14 + tags + 28 + 32 + 10);
    let key = v4_key(hook, 6, 40000, 443); // TCP
    (frame, key, Counts::new(1, 28 + 32 + 10, 2))
}

/// [802.1Q 4 +] IPv6 40 + hop-by-hop 8 + destination options 16 + UDP 8 + 6 bytes of payload
/// after the Ethernet header: 92 (96 tagged) bytes, an IP packet of 78.
fn ipv6_extensions_udp(hook: Program, tagged: bool) -> (CraftedFrame, FlowKey, Counts) {
    let mut builder = v6();
    if tagged {
        builder = builder.vlan(7);
    }
    let frame = builder
        .extension(ExtensionHeader::HopByHop(8))
        .extension(ExtensionHeader::DestinationOptions(16))
        .udp(5000, 53)
        .payload(6)
        .build();
    let tag = if tagged { 4 } else { 0 };
    assert_eq!(frame.frame_len(), 14 + tag + 40 + 8 + 16 + 8 + 6);
    let key = v6_key(hook, 17, 5000, 53); // UDP
    (frame, key, Counts::new(1, 40 + 8 + 16 + 8 + 6, 0))
}

/// Sends every cut `frame[..cut]` for 14 <= cut < full length, each once, then the whole frame.
/// Cuts below `refused_below` must be refused by the kernel (EINVAL) and count nothing; every
/// other cut must add exactly one malformed packet of `cut` bytes (and nothing else). The whole
/// frame must count as exactly `counts` of `key`.
fn assert_every_cut_is_malformed(
    datapath: &mut TestDatapath,
    hook: Program,
    (frame, key, counts): (CraftedFrame, FlowKey, Counts),
    refused_below: usize,
) {
    let (non_ip, mut malformed) = datapath.stats();
    let full = frame.frame_len();
    for cut in ETH_HLEN..full {
        let bytes = &frame.bytes[..cut];
        if cut < refused_below {
            assert_refused(datapath, hook, bytes);
        } else {
            datapath.send(hook, bytes, 1);
            malformed.add(&PacketCount {
                packets: 1,
                bytes: cut as u64,
            });
        }
        assert_eq!(
            datapath.stats(),
            (non_ip, malformed),
            "{hook:?}, cut at {cut} of {full}"
        );
    }
    datapath.send(hook, &frame.bytes, 1);
    assert_eq!(
        datapath.stats(),
        (non_ip, malformed),
        "{hook:?}, whole frame"
    );
    // No cut made a flow of its own or added to the whole frame's.
    assert_eq!(
        datapath.drain_flows(),
        BTreeMap::from([(key, counts)]),
        "{hook:?}"
    );
}

/// Asserts that BPF_PROG_TEST_RUN refuses `frame` with EINVAL.
fn assert_refused(datapath: &mut TestDatapath, hook: Program, frame: &[u8]) {
    match datapath.try_run(hook, frame, 1) {
        Err(ProgramError::SyscallError(SyscallError { io_error, .. })) => assert_eq!(
            io_error.raw_os_error(),
            Some(libc::EINVAL),
            "{hook:?}, {} bytes: {io_error}",
            frame.len()
        ),
        other => panic!("{hook:?}, {} bytes: {other:?}", frame.len()),
    }
}

/// The statistics (non-IP, malformed) after `times` malformed packets of each length in
/// `lengths` and nothing else.
fn malformed(lengths: std::ops::Range<u64>, times: u64) -> (PacketCount, PacketCount) {
    let packets = lengths.end - lengths.start;
    let bytes: u64 = lengths.sum();
    (
        PacketCount::default(),
        PacketCount {
            packets: times * packets,
            bytes: times * bytes,
        },
    )
}

#[test]
fn every_cut_of_a_qinq_tagged_ipv4_tcp_stack_is_malformed() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let stack = ipv4_options_tcp(hook, true);
        assert_every_cut_is_malformed(&mut datapath, hook, stack, ETH_HLEN);
    }
    // Over the three programs: 78 cuts each, of 14..92 bytes (4095 bytes in all).
    assert_eq!(
        malformed(14..92, 1).1,
        PacketCount {
            packets: 78,
            bytes: 4095
        }
    );
    assert_eq!(datapath.stats(), malformed(14..92, 3));
}

#[test]
fn every_cut_of_a_vlan_tagged_ipv6_extension_header_udp_stack_is_malformed() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let stack = ipv6_extensions_udp(hook, true);
        assert_every_cut_is_malformed(&mut datapath, hook, stack, ETH_HLEN);
    }
    assert_eq!(datapath.stats(), malformed(14..96, 3));
}

#[test]
fn every_cut_of_untagged_stacks_is_malformed() {
    // A classifier's test run sets the socket buffer's network header from the EtherType, and
    // this kernel refuses an IPv4 frame too short for a 20-byte IPv4 header and an IPv6 frame
    // too short for the 40-byte IPv6 header with EINVAL; XDP takes every cut. (The tagged
    // stacks above reach those cuts in the classifiers too.)
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    for hook in Program::ALL {
        let (ipv4_from, ipv6_from) = match hook {
            Program::TcIngress | Program::TcEgress => (ETH_HLEN + 20, ETH_HLEN + 40),
            Program::Xdp => (ETH_HLEN, ETH_HLEN),
        };
        assert_every_cut_is_malformed(
            &mut datapath,
            hook,
            ipv4_options_tcp(hook, false),
            ipv4_from,
        );
        let stack = ipv6_extensions_udp(hook, false);
        assert_every_cut_is_malformed(&mut datapath, hook, stack, ipv6_from);
    }
    // Both frames are 84 and 92 bytes long.
    let mut expected = PacketCount::default();
    for (lengths, times) in [(34..84, 2), (14..84, 1), (54..92, 2), (14..92, 1)] {
        expected.add(&malformed(lengths, times).1);
    }
    assert_eq!(datapath.stats(), (PacketCount::default(), expected));
}

#[test]
fn frames_shorter_than_an_ethernet_header_are_refused_by_the_kernel() {
    let mut datapath = TestDatapath::load(MAX_FLOWS);
    let (frame, _, _) = ipv4_options_tcp(Program::TcIngress, true);
    for hook in Program::ALL {
        for len in [0, 1, 6, ETH_HLEN - 1] {
            assert_refused(&mut datapath, hook, &frame.bytes[..len]);
        }
        // The shortest frame the kernel takes is run (and is malformed: the 802.1ad tag is
        // missing).
        assert_eq!(
            datapath.try_run(hook, &frame.bytes[..ETH_HLEN], 1).ok(),
            Some(hook.pass_verdict())
        );
    }
    assert_eq!(datapath.stats(), malformed(14..15, 3));
    assert_eq!(datapath.drain_flows(), BTreeMap::new());
}
