//! Crafted Ethernet frames for BPF_PROG_TEST_RUN tests and host parser tests.
//!
//! A [`FrameBuilder`] describes a frame from the outside in (Ethernet, VLAN tags, IP, transport,
//! payload); [`FrameBuilder::build`] lays it out with every length and checksum field computed
//! and returns the bytes together with the facts tests assert on ([`CraftedFrame`]).
//!
//! ```
//! use tests::frames::FrameBuilder;
//!
//! let frame = FrameBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2])
//!     .vlan(100)
//!     .udp(40000, 53)
//!     .payload(18)
//!     .build();
//! assert_eq!((frame.frame_len(), frame.ip_len, frame.header_len), (64, 46, 28));
//! ```
//!
//! The methods named `*_field` write a header field as given instead of the computed value, to
//! make malformed frames. Misusing the builder (an IPv4 option on an IPv6 frame, a length that
//! cannot be encoded) panics: it is a bug in the test, not a frame.
//!
//! This module does not share constants or code with the parser on purpose, so a mistake in one
//! cannot hide the same mistake in the other.

mod checksum;
mod ip;
mod ipv6_ext;
mod transport;

use std::net::{Ipv4Addr, Ipv6Addr};

pub use checksum::internet_checksum;
use ip::{Ipv4, Ipv6};
pub use ipv6_ext::ExtensionHeader;
use transport::Transport;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// TCP header flag bits (the 14th header byte).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Locally administered addresses, so a crafted frame never claims a real vendor's MAC.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A frame and the facts about it that tests compare with what the datapath reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CraftedFrame {
    pub bytes: Vec<u8>,
    /// Offset of the IP header (Ethernet header plus VLAN tags); for a non-IP frame, of the
    /// payload after the EtherType.
    pub l3_offset: usize,
    /// IP-layer length as built: IPv4 header and everything after it, or the 40-byte IPv6 header
    /// plus its payload. Ethernet padding is not part of it. 0 for a non-IP frame.
    pub ip_len: u32,
    /// IP header (with options or extension headers) plus transport header (TCP with options,
    /// UDP, ICMP echo; none for other protocols or a non-first fragment). 0 for a non-IP frame.
    pub header_len: u32,
}

impl CraftedFrame {
    /// Length of the whole frame, Ethernet header and padding included.
    pub fn frame_len(&self) -> usize {
        self.bytes.len()
    }
}

#[derive(Clone, Debug)]
enum Network {
    Ipv4(Ipv4),
    Ipv6(Ipv6),
    NonIp { ether_type: u16 },
}

/// Describes a frame; see the module documentation.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// (TPID, TCI), outermost first.
    vlan_tags: Vec<(u16, u16)>,
    network: Network,
    transport: Transport,
    payload: Vec<u8>,
    min_frame_len: usize,
}

impl FrameBuilder {
    fn new(network: Network) -> Self {
        Self {
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: DEFAULT_DST_MAC,
            vlan_tags: Vec::new(),
            network,
            // RFC 3692's experimental protocol number, until a transport is chosen.
            transport: Transport::Other(253),
            payload: Vec::new(),
            min_frame_len: 0,
        }
    }

    /// An IPv4 packet, 64 TTL, no options, no flags.
    pub fn ipv4(src: impl Into<Ipv4Addr>, dst: impl Into<Ipv4Addr>) -> Self {
        Self::new(Network::Ipv4(Ipv4 {
            src: src.into(),
            dst: dst.into(),
            options: Vec::new(),
            ttl: 64,
            dont_fragment: false,
            more_fragments: false,
            fragment_offset: 0,
            version_field: None,
            ihl_field: None,
            total_len_field: None,
        }))
    }

    /// An IPv6 packet, hop limit 64, no extension headers.
    pub fn ipv6(src: impl Into<Ipv6Addr>, dst: impl Into<Ipv6Addr>) -> Self {
        Self::new(Network::Ipv6(Ipv6 {
            src: src.into(),
            dst: dst.into(),
            hop_limit: 64,
            extensions: Vec::new(),
            version_field: None,
            payload_len_field: None,
        }))
    }

    /// A frame of another EtherType (e.g. [`ETHERTYPE_ARP`]) that carries only the payload.
    pub fn non_ip(ether_type: u16) -> Self {
        Self::new(Network::NonIp { ether_type })
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds an 802.1Q tag inside the tags added before.
    pub fn vlan(self, vid: u16) -> Self {
        self.vlan_tag(ETHERTYPE_VLAN, vid)
    }

    /// Adds a tag with this TPID (802.1Q 0x8100, 802.1ad 0x88a8) inside the tags added before.
    pub fn vlan_tag(mut self, tpid: u16, vid: u16) -> Self {
        assert!(vid < 4096, "VLAN id {vid} does not fit 12 bits");
        self.vlan_tags.push((tpid, vid));
        self
    }

    /// An 802.1ad outer tag and an 802.1Q inner tag.
    pub fn qinq(self, outer_vid: u16, inner_vid: u16) -> Self {
        self.vlan_tag(ETHERTYPE_QINQ, outer_vid).vlan(inner_vid)
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        match &mut self.network {
            Network::Ipv4(ip) => ip.ttl = ttl,
            Network::Ipv6(ip) => ip.hop_limit = ttl,
            Network::NonIp { .. } => panic!("ttl on a non-IP frame"),
        }
        self
    }

    /// IPv4 options, padded with End-of-Options to a multiple of 4 bytes (at most 40, IHL 15).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        let ip = self.ipv4_mut("ipv4_options");
        ip.options = options.to_vec();
        ip.options.resize(options.len().next_multiple_of(4), 0);
        assert!(ip.options.len() <= 40, "IPv4 options exceed 40 bytes");
        self
    }

    /// Sets the IPv4 DF flag.
    pub fn dont_fragment(mut self) -> Self {
        self.ipv4_mut("dont_fragment").dont_fragment = true;
        self
    }

    /// Makes the packet a fragment at `offset` (8-byte units) with the MF/M flag `more`.
    /// IPv4: sets the header's fields. IPv6: appends a fragment header to the extension headers
    /// added so far. A non-first fragment (offset > 0) carries only the payload, no transport
    /// header.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        assert!(
            offset < 1 << 13,
            "fragment offset {offset} does not fit 13 bits"
        );
        match &mut self.network {
            Network::Ipv4(ip) => {
                ip.fragment_offset = offset;
                ip.more_fragments = more;
                self
            }
            Network::Ipv6(_) => self.extension(ExtensionHeader::Fragment { offset, more }),
            Network::NonIp { .. } => panic!("fragment on a non-IP frame"),
        }
    }

    /// Appends an IPv6 extension header to the chain.
    pub fn extension(mut self, header: ExtensionHeader) -> Self {
        match &mut self.network {
            Network::Ipv6(ip) => ip.extensions.push(header),
            _ => panic!("extension headers need an IPv6 frame"),
        }
        self
    }

    /// A TCP header with these ports and only ACK set (see [`FrameBuilder::tcp_flags`]).
    pub fn tcp(mut self, src: u16, dst: u16) -> Self {
        self.transport = Transport::Tcp {
            src,
            dst,
            flags: tcp_flags::ACK,
            options_len: 0,
            data_offset_field: None,
        };
        self
    }

    /// The TCP header's flags byte.
    pub fn tcp_flags(mut self, value: u8) -> Self {
        match &mut self.transport {
            Transport::Tcp { flags, .. } => *flags = value,
            _ => panic!("tcp_flags before tcp"),
        }
        self
    }

    /// `len` bytes of TCP options (NOPs; a multiple of 4, at most 40), so the data offset is
    /// 5 + len / 4.
    pub fn tcp_options(mut self, len: usize) -> Self {
        assert!(
            len.is_multiple_of(4) && len <= 40,
            "TCP options must be a multiple of 4, at most 40"
        );
        match &mut self.transport {
            Transport::Tcp { options_len, .. } => *options_len = len,
            _ => panic!("tcp_options before tcp"),
        }
        self
    }

    pub fn udp(mut self, src: u16, dst: u16) -> Self {
        self.transport = Transport::Udp { src, dst };
        self
    }

    /// An ICMP echo request.
    pub fn icmp_echo(mut self, id: u16, seq: u16) -> Self {
        self.transport = Transport::IcmpEcho { id, seq };
        self
    }

    /// An ICMPv6 echo request.
    pub fn icmpv6_echo(mut self, id: u16, seq: u16) -> Self {
        self.transport = Transport::Icmpv6Echo { id, seq };
        self
    }

    /// Any other IP protocol: the payload follows the IP headers directly.
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.transport = Transport::Other(protocol);
        self
    }

    /// `len` payload bytes counting up from 0 (wrapping), so a copy can be checked byte-exact.
    pub fn payload(mut self, len: usize) -> Self {
        self.payload = (0..len).map(|i| i as u8).collect();
        self
    }

    pub fn payload_bytes(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Appends zero bytes after the packet until the frame is `len` bytes long, as Ethernet pads
    /// a short packet to its 60-byte minimum.
    pub fn pad_to(mut self, len: usize) -> Self {
        self.min_frame_len = len;
        self
    }

    /// Writes this IP version into the header instead of 4 or 6.
    pub fn ip_version_field(mut self, version: u8) -> Self {
        assert!(version < 16, "the IP version is 4 bits");
        match &mut self.network {
            Network::Ipv4(ip) => ip.version_field = Some(version),
            Network::Ipv6(ip) => ip.version_field = Some(version),
            Network::NonIp { .. } => panic!("ip_version_field on a non-IP frame"),
        }
        self
    }

    /// Writes this IHL (4-byte units) instead of the header's real length.
    pub fn ipv4_ihl_field(mut self, ihl: u8) -> Self {
        assert!(ihl < 16, "the IHL is 4 bits");
        self.ipv4_mut("ipv4_ihl_field").ihl_field = Some(ihl);
        self
    }

    /// Writes this IPv4 total length or IPv6 payload length instead of the real one.
    pub fn ip_length_field(mut self, len: u16) -> Self {
        match &mut self.network {
            Network::Ipv4(ip) => ip.total_len_field = Some(len),
            Network::Ipv6(ip) => ip.payload_len_field = Some(len),
            Network::NonIp { .. } => panic!("ip_length_field on a non-IP frame"),
        }
        self
    }

    /// Writes this TCP data offset (4-byte units) instead of the header's real length.
    pub fn tcp_data_offset_field(mut self, words: u8) -> Self {
        assert!(words < 16, "the data offset is 4 bits");
        match &mut self.transport {
            Transport::Tcp {
                data_offset_field, ..
            } => *data_offset_field = Some(words),
            _ => panic!("tcp_data_offset_field before tcp"),
        }
        self
    }

    fn ipv4_mut(&mut self, method: &str) -> &mut Ipv4 {
        match &mut self.network {
            Network::Ipv4(ip) => ip,
            _ => panic!("{method} needs an IPv4 frame"),
        }
    }

    pub fn build(&self) -> CraftedFrame {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend(self.dst_mac);
        bytes.extend(self.src_mac);
        for (tpid, tci) in &self.vlan_tags {
            bytes.extend(tpid.to_be_bytes());
            bytes.extend(tci.to_be_bytes());
        }
        let ether_type = match self.network {
            Network::Ipv4(_) => ETHERTYPE_IPV4,
            Network::Ipv6(_) => ETHERTYPE_IPV6,
            Network::NonIp { ether_type } => ether_type,
        };
        bytes.extend(ether_type.to_be_bytes());
        let l3_offset = bytes.len();

        let (ip_len, header_len) = match &self.network {
            Network::Ipv4(ip) => ip.write(self.transport, &self.payload, &mut bytes),
            Network::Ipv6(ip) => ip.write(self.transport, &self.payload, &mut bytes),
            Network::NonIp { .. } => {
                bytes.extend(&self.payload);
                (0, 0)
            }
        };
        if bytes.len() < self.min_frame_len {
            bytes.resize(self.min_frame_len, 0);
        }
        CraftedFrame {
            bytes,
            l3_offset,
            ip_len: ip_len as u32,
            header_len: header_len as u32,
        }
    }
}
