//! The frame builder itself: byte-exact layouts, length fields and checksums.

use tests::frames::{
    CraftedFrame, ETHERTYPE_ARP, ExtensionHeader, FrameBuilder, IPPROTO_AH, IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMPV6, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP,
    internet_checksum, tcp_flags,
};

const V4_SRC: [u8; 4] = [198, 18, 0, 1];
const V4_DST: [u8; 4] = [198, 18, 0, 2];
const V6_SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The transport checksum over the pseudo-header and `segment`: 0 when the segment's own
/// checksum is right.
fn transport_sum(frame: &CraftedFrame, protocol: u8, l4: usize) -> u16 {
    let l3 = frame.l3_offset;
    let segment = &frame.bytes[l4..l3 + frame.ip_len as usize];
    let mut covered = Vec::new();
    if frame.bytes[l3] >> 4 == 4 {
        covered.extend(&frame.bytes[l3 + 12..l3 + 20]);
        covered.extend([0, protocol]);
        covered.extend((segment.len() as u16).to_be_bytes());
    } else {
        covered.extend(&frame.bytes[l3 + 8..l3 + 40]);
        covered.extend((segment.len() as u32).to_be_bytes());
        covered.extend([0, 0, 0, protocol]);
    }
    covered.extend(segment);
    internet_checksum(&covered)
}

#[test]
fn checksum_of_a_known_ipv4_header() {
    // The classic example header (checksum field zeroed); its checksum is 0xb861.
    let header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(internet_checksum(&header), 0xb861);
    let mut with_checksum = header;
    with_checksum[10..12].copy_from_slice(&[0xb8, 0x61]);
    assert_eq!(internet_checksum(&with_checksum), 0);
    // An odd length is padded with a zero byte.
    assert_eq!(internet_checksum(&[0x01]), !0x0100);
}

#[test]
fn ipv4_udp_frame_is_byte_exact() {
    let frame = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .udp(40000, 53)
        .payload(4)
        .build();
    #[rustfmt::skip]
    let expected = [
        // Ethernet: dst, src, IPv4.
        0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00,
        // IPv4: IHL 5, total length 32, id 0x4242, no flags, TTL 64, UDP, checksum.
        0x45, 0x00, 0x00, 32, 0x42, 0x42, 0x00, 0x00, 64, 17, 0xac, 0x63,
        198, 18, 0, 1, 198, 18, 0, 2,
        // UDP: 40000 -> 53, length 12, checksum.
        0x9c, 0x40, 0x00, 0x35, 0x00, 12, 0xd5, 0x34,
        // Payload.
        0, 1, 2, 3,
    ];
    assert_eq!(frame.bytes, expected);
    assert_eq!(
        (frame.l3_offset, frame.ip_len, frame.header_len),
        (14, 32, 28)
    );
}

#[test]
fn a_vlan_tag_moves_the_ip_header() {
    let frame = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .vlan(100)
        .udp(40000, 53)
        .payload(18)
        .build();
    assert_eq!(
        (
            frame.frame_len(),
            frame.l3_offset,
            frame.ip_len,
            frame.header_len
        ),
        (64, 18, 46, 28)
    );
    assert_eq!(frame.bytes[12..18], [0x81, 0x00, 0x00, 100, 0x08, 0x00]);
    assert_eq!(be16(&frame.bytes, 18 + 2), 46); // total length
    assert_eq!(be16(&frame.bytes, 18 + 20 + 4), 26); // UDP length
}

#[test]
fn qinq_puts_the_8021ad_tag_outside() {
    let frame = FrameBuilder::ipv6(V6_SRC, V6_DST)
        .qinq(10, 20)
        .udp(1, 2)
        .build();
    assert_eq!(
        frame.bytes[12..24],
        [0x88, 0xa8, 0, 10, 0x81, 0x00, 0, 20, 0x86, 0xdd, 0x60, 0]
    );
    assert_eq!(frame.l3_offset, 22);
}

#[test]
fn ipv4_options_set_the_ihl_and_keep_the_checksum_right() {
    // A 3-byte option padded with End-of-Options to 4; then the full 40 bytes (IHL 15).
    for (options, ihl) in [(&[7u8, 3, 4][..], 6u8), (&[1u8; 40][..], 15)] {
        let frame = FrameBuilder::ipv4(V4_SRC, V4_DST)
            .tcp(1, 2)
            .payload(10)
            .build();
        let with_options = FrameBuilder::ipv4(V4_SRC, V4_DST)
            .ipv4_options(options)
            .tcp(1, 2)
            .payload(10)
            .build();
        let header_len = ihl as usize * 4;
        let header = &with_options.bytes[14..14 + header_len];
        assert_eq!(header[0], 0x40 | ihl);
        assert_eq!(internet_checksum(header), 0);
        assert_eq!(with_options.ip_len, frame.ip_len + header_len as u32 - 20);
        assert_eq!(be16(header, 2) as u32, with_options.ip_len);
        assert_eq!(with_options.header_len, header_len as u32 + 20);
        assert_eq!(
            transport_sum(&with_options, IPPROTO_TCP, 14 + header_len),
            0
        );
    }
}

#[test]
fn ipv4_flags_and_fragments() {
    let df = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .dont_fragment()
        .udp(1, 2)
        .build();
    assert_eq!(be16(&df.bytes, 14 + 6), 0x4000);

    let first = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .fragment(0, true)
        .udp(1, 2)
        .payload(16)
        .build();
    assert_eq!(be16(&first.bytes, 14 + 6), 0x2000);
    assert_eq!((first.ip_len, first.header_len), (44, 28));

    // A non-first fragment carries only data: no UDP header.
    let later = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .fragment(185, false)
        .udp(1, 2)
        .payload(16)
        .build();
    assert_eq!(be16(&later.bytes, 14 + 6), 185);
    assert_eq!(later.bytes[14 + 9], IPPROTO_UDP);
    assert_eq!((later.ip_len, later.header_len), (36, 20));
    assert_eq!(later.bytes[34..], (0..16).collect::<Vec<u8>>());
}

#[test]
fn tcp_header_fields_options_and_checksum() {
    let frame = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .tcp(40000, 443)
        .tcp_flags(tcp_flags::SYN | tcp_flags::ACK)
        .tcp_options(12)
        .payload(5)
        .build();
    let tcp = &frame.bytes[34..];
    assert_eq!((be16(tcp, 0), be16(tcp, 2)), (40000, 443));
    assert_eq!(tcp[12], 8 << 4); // data offset 8 words
    assert_eq!(tcp[13], 0x12);
    assert_eq!(tcp[20..32], [1; 12]); // NOP options
    assert_eq!((frame.ip_len, frame.header_len), (20 + 32 + 5, 52));
    assert_eq!(transport_sum(&frame, IPPROTO_TCP, 34), 0);

    // Without flags chosen, a segment carries ACK only.
    let plain = FrameBuilder::ipv6(V6_SRC, V6_DST).tcp(1, 2).build();
    assert_eq!(plain.bytes[54 + 13], tcp_flags::ACK);
    assert_eq!(transport_sum(&plain, IPPROTO_TCP, 54), 0);
}

#[test]
fn udp_and_icmp_checksums_verify() {
    let udp4 = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .udp(5000, 6000)
        .payload(33)
        .build();
    assert_eq!(transport_sum(&udp4, IPPROTO_UDP, 34), 0);
    let udp6 = FrameBuilder::ipv6(V6_SRC, V6_DST)
        .udp(5000, 6000)
        .payload(33)
        .build();
    assert_eq!(transport_sum(&udp6, IPPROTO_UDP, 54), 0);
    assert_eq!(be16(&udp6.bytes, 54 + 4), 8 + 33);

    let icmp = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .icmp_echo(7, 9)
        .payload(56)
        .build();
    assert_eq!(
        icmp.bytes[34..42],
        [8, 0, icmp.bytes[36], icmp.bytes[37], 0, 7, 0, 9]
    );
    assert_eq!(internet_checksum(&icmp.bytes[34..]), 0);
    assert_eq!((icmp.ip_len, icmp.header_len), (84, 28));

    let icmpv6 = FrameBuilder::ipv6(V6_SRC, V6_DST)
        .icmpv6_echo(7, 9)
        .payload(56)
        .build();
    assert_eq!(icmpv6.bytes[54], 128);
    assert_eq!(icmpv6.bytes[20], IPPROTO_ICMPV6);
    assert_eq!(transport_sum(&icmpv6, IPPROTO_ICMPV6, 54), 0);
    assert_eq!((icmpv6.ip_len, icmpv6.header_len), (104, 48));
}

#[test]
fn ipv6_extension_headers_chain_and_count_in_the_payload_length() {
    let frame = FrameBuilder::ipv6(V6_SRC, V6_DST)
        .extension(ExtensionHeader::HopByHop(8))
        .extension(ExtensionHeader::Routing(24))
        .extension(ExtensionHeader::Fragment {
            offset: 0,
            more: true,
        })
        .extension(ExtensionHeader::Authentication(24))
        .extension(ExtensionHeader::DestinationOptions(16))
        .udp(1, 2)
        .payload(10)
        .build();
    let ext_len = 8 + 24 + 8 + 24 + 16;
    assert_eq!(be16(&frame.bytes, 14 + 4) as usize, ext_len + 8 + 10);
    assert_eq!(frame.bytes[14 + 6], IPPROTO_HOPOPTS);
    let hbh = 54;
    assert_eq!(frame.bytes[hbh..hbh + 2], [IPPROTO_ROUTING, 0]);
    let routing = hbh + 8;
    assert_eq!(
        frame.bytes[routing..routing + 4],
        [IPPROTO_FRAGMENT, 2, 253, 0]
    );
    let fragment = routing + 24;
    assert_eq!(frame.bytes[fragment..fragment + 4], [IPPROTO_AH, 0, 0, 1]);
    let ah = fragment + 8;
    assert_eq!(frame.bytes[ah..ah + 2], [IPPROTO_DSTOPTS, 24 / 4 - 2]);
    let dstopts = ah + 24;
    assert_eq!(frame.bytes[dstopts..dstopts + 2], [IPPROTO_UDP, 1]);
    assert_eq!(
        (frame.ip_len, frame.header_len),
        (40 + ext_len as u32 + 18, 40 + ext_len as u32 + 8)
    );
    assert_eq!(transport_sum(&frame, IPPROTO_UDP, dstopts + 16), 0);
}

#[test]
fn ipv6_options_are_well_formed_tlvs_without_long_padding() {
    for len in [8, 16, 264, 2048] {
        let frame = FrameBuilder::ipv6(V6_SRC, V6_DST)
            .extension(ExtensionHeader::DestinationOptions(len))
            .build();
        let options = &frame.bytes[54 + 2..54 + len];
        let mut at = 0;
        while at < options.len() {
            match options[at] {
                0 => at += 1,
                0x1e => at += 2 + options[at + 1] as usize,
                other => panic!("unexpected option type {other} in a {len}-byte header"),
            }
        }
        assert_eq!(at, options.len(), "{len}-byte header");
    }
}

#[test]
fn an_ipv6_non_first_fragment_ends_its_headers_at_the_fragment_header() {
    let frame = FrameBuilder::ipv6(V6_SRC, V6_DST)
        .extension(ExtensionHeader::HopByHop(8))
        .fragment(100, true)
        .extension(ExtensionHeader::DestinationOptions(8))
        .tcp(1, 2)
        .payload(24)
        .build();
    let fragment = 54 + 8;
    // Next header is what follows in the original packet; offset 100 << 3 | M.
    assert_eq!(
        frame.bytes[fragment..fragment + 4],
        [IPPROTO_DSTOPTS, 0, 0x03, 0x21]
    );
    assert_eq!(frame.bytes[fragment + 8..], (0..24).collect::<Vec<u8>>());
    assert_eq!((frame.ip_len, frame.header_len), (40 + 16 + 24, 56));
}

#[test]
fn padding_and_non_ip_frames() {
    let padded = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .udp(1, 2)
        .pad_to(60)
        .build();
    assert_eq!((padded.frame_len(), padded.ip_len), (60, 28));
    assert_eq!(padded.bytes[42..], [0; 18]);

    let arp = FrameBuilder::non_ip(ETHERTYPE_ARP).payload(28).build();
    assert_eq!(arp.bytes[12..14], [0x08, 0x06]);
    assert_eq!(
        (arp.frame_len(), arp.l3_offset, arp.ip_len, arp.header_len),
        (42, 14, 0, 0)
    );
}

#[test]
fn raw_fields_are_written_as_given() {
    let v4 = FrameBuilder::ipv4(V4_SRC, V4_DST)
        .ip_version_field(6)
        .ipv4_ihl_field(4)
        .ip_length_field(9999)
        .tcp(1, 2)
        .tcp_data_offset_field(3)
        .build();
    assert_eq!(v4.bytes[14], 0x64);
    assert_eq!(be16(&v4.bytes, 16), 9999);
    assert_eq!(v4.bytes[34 + 12], 3 << 4);
    // The header checksum covers the bytes as written.
    assert_eq!(internet_checksum(&v4.bytes[14..34]), 0);

    let v6 = FrameBuilder::ipv6(V6_SRC, V6_DST)
        .ip_version_field(4)
        .ip_length_field(0)
        .protocol(253)
        .payload(8)
        .build();
    assert_eq!(v6.bytes[14], 0x40);
    assert_eq!(be16(&v6.bytes, 18), 0);
    assert_eq!(v6.bytes[20], 253);
    assert_eq!((v6.ip_len, v6.header_len), (48, 40));
}
