//! Host tests of the datapath's header parser (`flowlog_ebpf::parse`) and packet accounting
//! (`flowlog_ebpf::account`) on crafted frames. Every test asserts the exact flow key and
//! `Parsed`, or the exact error. The numbers are written out, not taken from the builder, so a
//! mistake shared by the builder and the parser cannot pass.

use std::ops::Range;

use flowlog_common::flow::{AddressFamily, FlowKey};
use flowlog_ebpf::{
    account::{WireCount, wire_count},
    headers::Header,
    parse::{Frame, ParseError, Parsed, parse},
};
use tests::frames::{ETHERTYPE_ARP, ExtensionHeader, FrameBuilder, tcp_flags};

const V4_A: [u8; 4] = [198, 18, 0, 1];
const V4_B: [u8; 4] = [198, 19, 255, 254];
const V6_A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
const V6_B: [u8; 16] = [0xfd, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b];

const TCP: u8 = 6;
const UDP: u8 = 17;

fn parse_frame<F: Frame>(frame: &F, gso: bool) -> Result<(Parsed, FlowKey), ParseError> {
    let mut key = FlowKey::zeroed();
    parse(frame, gso, &mut key).map(|parsed| (parsed, key))
}

/// Parses an ordinary (non-GSO) frame held in a byte slice.
fn parse_bytes(bytes: &[u8]) -> Result<(Parsed, FlowKey), ParseError> {
    parse_frame(&bytes, false)
}

fn v4_key(protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    let mut key = FlowKey::zeroed();
    key.family = AddressFamily::Ipv4 as u8;
    key.src_addr[..4].copy_from_slice(&V4_A);
    key.dst_addr[..4].copy_from_slice(&V4_B);
    key.protocol = protocol;
    key.src_port = src_port.to_be_bytes();
    key.dst_port = dst_port.to_be_bytes();
    key
}

fn v6_key(protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        family: AddressFamily::Ipv6 as u8,
        src_addr: V6_A,
        dst_addr: V6_B,
        ..v4_key(protocol, src_port, dst_port)
    }
}

/// `tcp_header_flags` as in the TCP header; the VPC Flow Logs encoding follows from it.
fn parsed(l3_offset: usize, ip_len: u32, header_len: u32, tcp_header_flags: u8) -> Parsed {
    Parsed {
        l3_offset,
        ip_len,
        header_len,
        tcp_flags: flowlog_common::tcp::aws_flags(tcp_header_flags),
        tcp_header_flags,
    }
}

fn v4() -> FrameBuilder {
    FrameBuilder::ipv4(V4_A, V4_B)
}

fn v6() -> FrameBuilder {
    FrameBuilder::ipv6(V6_A, V6_B)
}

fn assert_parses(builder: FrameBuilder, expected: Parsed, key: FlowKey) {
    let frame = builder.build();
    assert_eq!(
        parse_bytes(&frame.bytes),
        Ok((expected, key)),
        "{frame:02x?}"
    );
}

fn assert_error(builder: FrameBuilder, error: ParseError) {
    let frame = builder.build();
    assert_eq!(parse_bytes(&frame.bytes), Err(error), "{frame:02x?}");
}

#[test]
fn ipv4_tcp_udp_icmp() {
    let syn = v4().tcp(40000, 443).tcp_flags(tcp_flags::SYN).payload(100);
    assert_parses(syn, parsed(14, 140, 40, 2), v4_key(TCP, 40000, 443));

    let udp = v4().udp(5353, 53).payload(18);
    assert_parses(udp, parsed(14, 46, 28, 0), v4_key(UDP, 5353, 53));

    // ICMP has no ports, and the parser counts only the IP header as header bytes.
    let ping = v4().icmp_echo(7, 1).payload(56);
    assert_parses(ping, parsed(14, 84, 20, 0), v4_key(1, 0, 0));
}

#[test]
fn ipv6_tcp_udp_icmpv6() {
    let syn_ack = v6()
        .tcp(443, 40000)
        .tcp_flags(tcp_flags::SYN | tcp_flags::ACK)
        .tcp_options(20)
        .payload(10);
    assert_parses(syn_ack, parsed(14, 90, 80, 18), v6_key(TCP, 443, 40000));

    let udp = v6().udp(1000, 2000).payload(10);
    assert_parses(udp, parsed(14, 58, 48, 0), v6_key(UDP, 1000, 2000));

    let ping = v6().icmpv6_echo(7, 1).payload(56);
    assert_parses(ping, parsed(14, 104, 40, 0), v6_key(58, 0, 0));
}

#[test]
fn other_protocols_have_no_ports() {
    // GRE over IPv4, ESP over IPv6, SCTP (which has ports the parser does not read).
    assert_parses(
        v4().protocol(47).payload(24),
        parsed(14, 44, 20, 0),
        v4_key(47, 0, 0),
    );
    assert_parses(
        v6().protocol(50).payload(24),
        parsed(14, 64, 40, 0),
        v6_key(50, 0, 0),
    );
    assert_parses(
        v4().protocol(132).payload(12),
        parsed(14, 32, 20, 0),
        v4_key(132, 0, 0),
    );
}

#[test]
fn vlan_and_qinq_tags_are_skipped() {
    let key = v4_key(UDP, 1, 2);
    assert_parses(
        v4().vlan(100).udp(1, 2).payload(18),
        parsed(18, 46, 28, 0),
        key,
    );
    assert_parses(
        v4().qinq(10, 20).udp(1, 2).payload(18),
        parsed(22, 46, 28, 0),
        key,
    );
    // Two 802.1Q tags are followed too.
    assert_parses(
        v4().vlan(10).vlan(20).udp(1, 2).payload(18),
        parsed(22, 46, 28, 0),
        key,
    );
    assert_parses(
        v6().qinq(10, 20).tcp(3, 4).tcp_flags(tcp_flags::RST),
        parsed(22, 60, 60, 4),
        v6_key(TCP, 3, 4),
    );
}

#[test]
fn three_vlan_tags_are_malformed() {
    assert_error(v4().qinq(10, 20).vlan(30).udp(1, 2), ParseError::Malformed);
    assert_error(
        v6().vlan(1).vlan(2).vlan(3).udp(1, 2),
        ParseError::Malformed,
    );
}

#[test]
fn ipv4_options_move_the_transport_header() {
    // Record-route-like bytes padded to 8 (IHL 7), and the 40-byte maximum (IHL 15).
    assert_parses(
        v4().ipv4_options(&[7, 7, 4, 0, 0, 0, 0])
            .tcp(1234, 80)
            .tcp_options(12)
            .payload(3),
        parsed(14, 63, 60, tcp_flags::ACK),
        v4_key(TCP, 1234, 80),
    );
    assert_parses(
        v4().ipv4_options(&[1; 40]).udp(1234, 80),
        parsed(14, 68, 68, 0),
        v4_key(UDP, 1234, 80),
    );
}

#[test]
fn ipv6_extension_headers_are_followed() {
    let chain = v6()
        .extension(ExtensionHeader::HopByHop(8))
        .extension(ExtensionHeader::Routing(24))
        .extension(ExtensionHeader::DestinationOptions(16))
        .extension(ExtensionHeader::Authentication(24))
        .udp(5000, 6000)
        .payload(7);
    assert_parses(chain, parsed(14, 127, 120, 0), v6_key(UDP, 5000, 6000));

    // AH counts in 4-byte units: a 12-byte AH (length field 1) is not an 8-byte multiple.
    let ah = v6()
        .extension(ExtensionHeader::Authentication(12))
        .tcp(1, 2)
        .tcp_flags(tcp_flags::FIN | tcp_flags::ACK);
    assert_parses(
        ah,
        parsed(14, 72, 72, tcp_flags::FIN | tcp_flags::ACK),
        v6_key(TCP, 1, 2),
    );
}

#[test]
fn at_most_six_ipv6_extension_headers_are_followed() {
    let mut six = v6();
    for _ in 0..6 {
        six = six.extension(ExtensionHeader::DestinationOptions(8));
    }
    let seven = six.clone().extension(ExtensionHeader::HopByHop(8));
    assert_parses(six.udp(1, 2), parsed(14, 96, 96, 0), v6_key(UDP, 1, 2));
    assert_error(seven.udp(1, 2), ParseError::Malformed);
}

#[test]
fn ipv4_fragments() {
    // The first fragment carries the ports.
    assert_parses(
        v4().fragment(0, true).udp(1, 2).payload(1472),
        parsed(14, 1500, 28, 0),
        v4_key(UDP, 1, 2),
    );
    // Later fragments have none: ports 0, the fragment's protocol, no TCP flags.
    assert_parses(
        v4().fragment(185, true).udp(1, 2).payload(1480),
        parsed(14, 1500, 20, 0),
        v4_key(UDP, 0, 0),
    );
    assert_parses(
        v4().dont_fragment()
            .fragment(370, false)
            .tcp(1, 2)
            .tcp_flags(tcp_flags::SYN)
            .payload(100),
        parsed(14, 120, 20, 0),
        v4_key(TCP, 0, 0),
    );
}

#[test]
fn ipv6_fragments() {
    assert_parses(
        v6().fragment(0, true)
            .tcp(1, 2)
            .tcp_flags(tcp_flags::SYN)
            .payload(1000),
        parsed(14, 1068, 68, 2),
        v6_key(TCP, 1, 2),
    );
    assert_parses(
        v6().fragment(125, false).udp(1, 2).payload(500),
        parsed(14, 548, 48, 0),
        v6_key(UDP, 0, 0),
    );
    // Headers before the fragment header are part of every fragment.
    assert_parses(
        v6().extension(ExtensionHeader::HopByHop(8))
            .fragment(125, true)
            .icmpv6_echo(1, 1)
            .payload(64),
        parsed(14, 120, 56, 0),
        v6_key(58, 0, 0),
    );
    // An atomic fragment (offset 0, no M flag) is a whole packet.
    assert_parses(
        v6().fragment(0, false).udp(7, 8),
        parsed(14, 56, 56, 0),
        v6_key(UDP, 7, 8),
    );
}

#[test]
fn non_ip_frames() {
    assert_error(
        FrameBuilder::non_ip(ETHERTYPE_ARP).payload(28),
        ParseError::NotIp,
    );
    assert_error(FrameBuilder::non_ip(ETHERTYPE_ARP), ParseError::NotIp);
    assert_error(
        FrameBuilder::non_ip(ETHERTYPE_ARP).vlan(5).payload(28),
        ParseError::NotIp,
    );
    // LLDP, and an 802.3 length field instead of an EtherType.
    assert_error(FrameBuilder::non_ip(0x88cc).payload(46), ParseError::NotIp);
    assert_error(FrameBuilder::non_ip(46).payload(46), ParseError::NotIp);
}

#[test]
fn ethernet_padding_is_not_counted() {
    let frame = v4().udp(1, 2).pad_to(60).build();
    assert_eq!(frame.frame_len(), 60);
    assert_eq!(
        parse_bytes(&frame.bytes),
        Ok((parsed(14, 28, 28, 0), v4_key(UDP, 1, 2)))
    );
    assert_parses(
        v6().tcp(1, 2).pad_to(128),
        parsed(14, 60, 60, tcp_flags::ACK),
        v6_key(TCP, 1, 2),
    );
    // A trailer that is not zero is not counted either.
    let mut frame = v4().icmp_echo(1, 1).build();
    frame.bytes.extend([0xff; 4]);
    assert_eq!(
        parse_bytes(&frame.bytes),
        Ok((parsed(14, 28, 20, 0), v4_key(1, 0, 0)))
    );
}

#[test]
fn bad_ip_version_and_ihl_are_malformed() {
    for ihl in [0, 1, 4] {
        assert_error(v4().ipv4_ihl_field(ihl).udp(1, 2), ParseError::Malformed);
    }
    // An IHL beyond the total length.
    assert_error(
        v4().ipv4_ihl_field(15).udp(1, 2).payload(4),
        ParseError::Malformed,
    );
    for version in [0, 6, 15] {
        assert_error(
            v4().ip_version_field(version).udp(1, 2),
            ParseError::Malformed,
        );
    }
    for version in [0, 4, 15] {
        assert_error(
            v6().ip_version_field(version).udp(1, 2),
            ParseError::Malformed,
        );
    }
}

#[test]
fn ip_length_fields_are_checked_against_the_frame() {
    // 20 + 8 + 10 = 38 bytes on the wire.
    for total in [39, 0xffff] {
        assert_error(
            v4().udp(1, 2).payload(10).ip_length_field(total),
            ParseError::Malformed,
        );
    }
    // Shorter than the header.
    for total in [0, 19] {
        assert_error(
            v4().udp(1, 2).payload(10).ip_length_field(total),
            ParseError::Malformed,
        );
    }
    // Shorter than the frame: the rest is padding; too short for the UDP header: malformed.
    assert_parses(
        v4().udp(1, 2).payload(10).ip_length_field(28),
        parsed(14, 28, 28, 0),
        v4_key(UDP, 1, 2),
    );
    assert_error(
        v4().udp(1, 2).payload(10).ip_length_field(27),
        ParseError::Malformed,
    );
    // IPv6: beyond the frame, and 0, which leaves no room for the UDP header.
    for payload_len in [19, 0] {
        assert_error(
            v6().udp(1, 2).payload(10).ip_length_field(payload_len),
            ParseError::Malformed,
        );
    }
    // Payload length 0 with a hop-by-hop header announces a jumbogram (not followed); without
    // one it is an empty packet (next header 59, "no next header").
    assert_error(
        v6().extension(ExtensionHeader::HopByHop(8))
            .protocol(59)
            .ip_length_field(0),
        ParseError::Malformed,
    );
    assert_parses(v6().protocol(59), parsed(14, 40, 40, 0), v6_key(59, 0, 0));
    // An extension header that runs past the payload length.
    assert_error(
        v6().extension(ExtensionHeader::HopByHop(16))
            .udp(1, 2)
            .ip_length_field(8),
        ParseError::Malformed,
    );
}

#[test]
fn tcp_data_offset_is_checked() {
    for words in 0..5 {
        assert_error(
            v4().tcp(1, 2).payload(40).tcp_data_offset_field(words),
            ParseError::Malformed,
        );
    }
    // 15 words (60 bytes) in a segment of 20 + 20 bytes.
    assert_error(
        v6().tcp(1, 2).payload(20).tcp_data_offset_field(15),
        ParseError::Malformed,
    );
    assert_parses(
        v6().tcp(1, 2).payload(40).tcp_data_offset_field(15),
        parsed(14, 100, 100, tcp_flags::ACK),
        v6_key(TCP, 1, 2),
    );
}

#[test]
fn tcp_flags_in_the_flow_logs_encoding() {
    use tcp_flags::{ACK, FIN, PSH, RST, SYN};
    for (flags, expected) in [
        (SYN, 2),
        (SYN | ACK, 18),
        (FIN | ACK, 1),
        (RST, 4),
        (RST | ACK, 4),
        (ACK, 0),
        (PSH | ACK, 0),
    ] {
        let frame = v4().tcp(1, 2).tcp_flags(flags).build();
        let (parsed, _) = parse_bytes(&frame.bytes).expect("a TCP frame");
        assert_eq!(parsed.tcp_flags, expected, "header flags {flags:#04x}");
    }
}

/// Asserts the parse of every prefix `bytes[..cut]` (cut < full length): the error of the range
/// that holds `cut`. The ranges must cover 0..full exactly.
fn assert_every_truncation(bytes: &[u8], expected: &[(Range<usize>, ParseError)]) {
    let covered: Vec<usize> = expected.iter().flat_map(|(r, _)| r.clone()).collect();
    assert_eq!(covered, (0..bytes.len()).collect::<Vec<_>>());
    for (range, error) in expected {
        for cut in range.clone() {
            assert_eq!(parse_bytes(&bytes[..cut]), Err(*error), "cut at {cut}");
        }
    }
}

#[test]
fn every_truncation_of_a_tagged_ipv4_tcp_stack_is_an_error() {
    // Ethernet 14 + 802.1ad 4 + 802.1Q 4 + IPv4 with options 28 + TCP with options 32 + 6.
    let frame = v4()
        .qinq(10, 20)
        .ipv4_options(&[1; 8])
        .tcp(40000, 443)
        .tcp_flags(tcp_flags::SYN)
        .tcp_options(12)
        .payload(6)
        .build();
    assert_eq!(frame.frame_len(), 88);
    assert_eq!(
        parse_bytes(&frame.bytes),
        Ok((parsed(22, 66, 60, 2), v4_key(TCP, 40000, 443)))
    );
    use ParseError::{Malformed, Truncated};
    assert_every_truncation(
        &frame.bytes,
        &[
            (0..14, Truncated),  // Ethernet header
            (14..18, Truncated), // 802.1ad tag
            (18..22, Truncated), // 802.1Q tag
            (22..42, Truncated), // IPv4 header up to its options
            (42..88, Malformed), // total length 66 runs past the frame
        ],
    );
}

#[test]
fn every_truncation_of_an_ipv6_extension_header_stack_is_an_error() {
    // Ethernet 14 + IPv6 40 + hop-by-hop 8 + destination options 16 + UDP 8 + 4.
    let frame = v6()
        .extension(ExtensionHeader::HopByHop(8))
        .extension(ExtensionHeader::DestinationOptions(16))
        .udp(5000, 53)
        .payload(4)
        .build();
    assert_eq!(frame.frame_len(), 90);
    assert_eq!(
        parse_bytes(&frame.bytes),
        Ok((parsed(14, 76, 72, 0), v6_key(UDP, 5000, 53)))
    );
    use ParseError::{Malformed, Truncated};
    assert_every_truncation(
        &frame.bytes,
        &[
            (0..14, Truncated),  // Ethernet header
            (14..54, Truncated), // IPv6 header
            (54..90, Malformed), // payload length 36 runs past the frame
        ],
    );
}

/// A socket buffer whose headers may reach past its linear part: `len` bytes in all, of which
/// the parser can read only `linear`.
struct PagedFrame<'a> {
    linear: &'a [u8],
    len: usize,
}

impl Frame for PagedFrame<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        Frame::header(&self.linear, offset)
    }
}

#[test]
fn headers_beyond_the_linear_part_are_truncated() {
    // The parser reads the fixed part of each header it follows, and nothing more: TCP options,
    // the rest of extension headers and the payload may stay in paged data.
    let cases = [
        // Tagged IPv4 + options + TCP: the TCP header's fixed part ends at 22 + 28 + 20.
        v4().qinq(10, 20)
            .ipv4_options(&[1; 8])
            .tcp(40000, 443)
            .tcp_options(12)
            .payload(100)
            .build(),
        // IPv6 + hop-by-hop (2 bytes read at 54) + destination options (2 bytes read at 62) +
        // UDP at 78.
        v6().extension(ExtensionHeader::HopByHop(8))
            .extension(ExtensionHeader::DestinationOptions(16))
            .udp(5000, 53)
            .payload(100)
            .build(),
    ];
    for (frame, needed) in cases.iter().zip([70, 86]) {
        let whole = parse_bytes(&frame.bytes);
        assert!(whole.is_ok());
        for linear in 0..=frame.frame_len() {
            let paged = PagedFrame {
                linear: &frame.bytes[..linear],
                len: frame.frame_len(),
            };
            let expected = if linear < needed {
                Err(ParseError::Truncated)
            } else {
                whole
            };
            assert_eq!(parse_frame(&paged, false), expected, "linear part {linear}");
        }
    }
}

#[test]
fn an_ordinary_frame_counts_as_one_packet_of_its_ip_length() {
    let frame = v4().udp(1, 2).payload(4).pad_to(60).build();
    let (parsed, _) = parse_bytes(&frame.bytes).expect("a UDP frame");
    assert_eq!(
        wire_count(&parsed, 0, 0),
        WireCount {
            packets: 1,
            bytes: 32
        }
    );
}

#[test]
fn gso_super_packets_count_their_segments() {
    // A TCP super-packet with timestamps (IPv4 20 + TCP 32 header bytes), 3 x 1448 + 100 bytes
    // of payload, and a total length field GRO left at 0.
    let frame = v4()
        .tcp(40000, 5201)
        .tcp_options(12)
        .payload(3 * 1448 + 100)
        .ip_length_field(0)
        .build();
    assert_eq!(parse_bytes(&frame.bytes), Err(ParseError::Malformed));
    let (parsed, key) = parse_frame(&frame.bytes.as_slice(), true).expect("a GSO frame");
    assert_eq!(parsed, self::parsed(14, 4496, 52, tcp_flags::ACK));
    assert_eq!(key, v4_key(TCP, 40000, 5201));
    let four_segments = WireCount {
        packets: 4,
        bytes: 3 * (52 + 1448) + (52 + 100),
    };
    assert_eq!(wire_count(&parsed, 1448, 4), four_segments);
    // Without a segment count from the kernel, it follows from the segment size.
    assert_eq!(wire_count(&parsed, 1448, 0), four_segments);

    // UDP GSO over IPv6 (40 + 8 header bytes), payload 2 x 1000 + 500, payload length 0.
    let frame = v6()
        .udp(4000, 4001)
        .payload(2500)
        .ip_length_field(0)
        .build();
    let (parsed, _) = parse_frame(&frame.bytes.as_slice(), true).expect("a GSO frame");
    assert_eq!(parsed, self::parsed(14, 2548, 48, 0));
    assert_eq!(
        wire_count(&parsed, 1000, 0),
        WireCount {
            packets: 3,
            bytes: 2 * (48 + 1000) + (48 + 500),
        }
    );
    // A super-packet that fits one segment is one packet.
    assert_eq!(
        wire_count(&parsed, 4000, 0),
        WireCount {
            packets: 1,
            bytes: 2548
        }
    );
}
