//! From a frame to a flow key: Ethernet (with up to two VLAN tags), IPv4 (with options) or IPv6
//! (with up to six extension headers), then TCP or UDP ports.
//!
//! Every loop is bounded and every read is checked against the frame, so a malformed packet can
//! only produce an error, never a bad read. What the errors mean for the packet is decided by the
//! programs (`main.rs`): every error passes the packet on and is counted in the statistics map.

use flowlog_common::{
    flow::{AddressFamily, FlowKey},
    tcp,
};

use crate::headers::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, Header, IPPROTO_AH, IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT, IPPROTO_HIP, IPPROTO_HOPOPTS, IPPROTO_MOBILITY, IPPROTO_ROUTING,
    IPPROTO_SHIM6, IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, Ipv6ExtHdr, Ipv6FragHdr, Ipv6Hdr, TcpHdr,
    UdpHdr, VlanTag,
};

/// VLAN tags followed before giving up (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers followed before giving up.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Packet memory the parser can read.
pub trait Frame {
    /// Length of the whole packet in bytes. For a socket buffer this can exceed what
    /// [`Frame::header`] reaches (the rest sits in fragments).
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A view of the header of type `T` at `offset`, if all of it can be read in place.
    fn header<T: Header>(&self, offset: usize) -> Option<&T>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The EtherType (after VLAN tags) is neither IPv4 nor IPv6.
    NotIp,
    /// The headers contradict each other or the packet's own length fields.
    Malformed,
    /// A header the parser needs lies beyond the readable part of the frame.
    Truncated,
}

/// What counting needs to know about a packet besides its flow key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Offset of the IP header in the frame.
    pub l3_offset: usize,
    /// IP-layer length, header included. For a GSO packet, the length of the whole super-packet.
    pub ip_len: u32,
    /// IP and transport header bytes, which every segment of a GSO packet repeats.
    pub header_len: u32,
    /// The TCP flags in the VPC Flow Logs encoding, 0 for other protocols.
    pub tcp_flags: u8,
    /// The TCP header's flags byte as sent (the policy's connection tracking needs ACK), 0 for
    /// other protocols.
    pub tcp_header_flags: u8,
}

/// Clears `storage` and returns it as a zeroed flow key. The six 8-byte stores are volatile and
/// the key is then used in place: a plain zero-initialisation (or a move of a zeroed key) is
/// turned by LLVM into a call to the byte-by-byte `memset` subprogram, which costs more than the
/// rest of the key handling together.
#[inline(always)]
pub fn zeroed_key(storage: &mut core::mem::MaybeUninit<FlowKey>) -> &mut FlowKey {
    let words = storage.as_mut_ptr().cast::<u64>();
    for i in 0..core::mem::size_of::<FlowKey>() / 8 {
        // SAFETY: FlowKey is 48 bytes and 8-byte aligned, so the six words cover it exactly and
        // are aligned.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte was written, and all-zero is a valid FlowKey (integers and arrays).
    unsafe { storage.assume_init_mut() }
}

/// Parses `frame` into `key` (which must arrive zeroed: fields the packet does not have, such as
/// the ports of ICMP or of a non-first fragment, stay 0).
///
/// `gso` says the frame is a GSO/GRO super-packet: its IP length fields may be stale or zero,
/// so the frame's length is used instead.
#[inline(always)]
pub fn parse<F: Frame>(frame: &F, gso: bool, key: &mut FlowKey) -> Result<Parsed, ParseError> {
    let eth = frame.header::<EthHdr>(0).ok_or(ParseError::Truncated)?;
    let mut ether_type = u16::from_be_bytes(eth.ether_type);
    let mut l3 = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag = frame.header::<VlanTag>(l3).ok_or(ParseError::Truncated)?;
        ether_type = u16::from_be_bytes(tag.ether_type);
        l3 += VlanTag::LEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(frame, l3, gso, key),
        ETH_P_IPV6 => parse_ipv6(frame, l3, gso, key),
        // More tags than we follow: an IP packet may be inside, but we cannot say which.
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseError::Malformed),
        _ => Err(ParseError::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame>(
    frame: &F,
    l3: usize,
    gso: bool,
    key: &mut FlowKey,
) -> Result<Parsed, ParseError> {
    let ip = frame.header::<Ipv4Hdr>(l3).ok_or(ParseError::Truncated)?;
    if ip.version_ihl >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if header_len < Ipv4Hdr::LEN {
        return Err(ParseError::Malformed);
    }
    let available = frame.len().saturating_sub(l3);
    if header_len > available {
        return Err(ParseError::Malformed);
    }
    let ip_len = if gso {
        available
    } else {
        let total = u16::from_be_bytes(ip.total_len) as usize;
        if total < header_len || total > available {
            return Err(ParseError::Malformed);
        }
        total
    };

    key.family = AddressFamily::Ipv4 as u8;
    key.protocol = ip.protocol;
    key.src_addr[..4].copy_from_slice(&ip.src);
    key.dst_addr[..4].copy_from_slice(&ip.dst);

    let fragment_offset = u16::from_be_bytes(ip.flags_fragment_offset) & 0x1fff;
    if fragment_offset != 0 {
        // A non-first fragment has no transport header: counted under ports 0.
        return Ok(Parsed {
            l3_offset: l3,
            ip_len: ip_len as u32,
            header_len: header_len as u32,
            tcp_flags: 0,
            tcp_header_flags: 0,
        });
    }
    parse_transport(frame, ip.protocol, l3, l3 + header_len, l3 + ip_len, key)
}

#[inline(always)]
fn parse_ipv6<F: Frame>(
    frame: &F,
    l3: usize,
    gso: bool,
    key: &mut FlowKey,
) -> Result<Parsed, ParseError> {
    let ip = frame.header::<Ipv6Hdr>(l3).ok_or(ParseError::Truncated)?;
    if ip.version_class_flow[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let available = frame.len().saturating_sub(l3);
    let ip_len = if gso {
        available
    } else {
        // A payload length of 0 with a hop-by-hop header announces a jumbogram (RFC 2675),
        // which we do not follow; without one it is an empty packet.
        let payload = u16::from_be_bytes(ip.payload_len) as usize;
        let total = Ipv6Hdr::LEN + payload;
        if (payload == 0 && ip.next_header == IPPROTO_HOPOPTS) || total > available {
            return Err(ParseError::Malformed);
        }
        total
    };
    key.family = AddressFamily::Ipv6 as u8;
    copy_address(&mut key.src_addr, &ip.src);
    copy_address(&mut key.dst_addr, &ip.dst);

    let end = l3 + ip_len;
    let mut next = ip.next_header;
    let mut offset = l3 + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_FRAGMENT {
            if offset + Ipv6FragHdr::LEN > end {
                return Err(ParseError::Malformed);
            }
            let fragment = frame
                .header::<Ipv6FragHdr>(offset)
                .ok_or(ParseError::Truncated)?;
            next = fragment.next_header;
            offset += Ipv6FragHdr::LEN;
            if u16::from_be_bytes(fragment.offset_flags) & 0xfff8 != 0 {
                // A non-first fragment has no transport header: counted under ports 0.
                key.protocol = next;
                return Ok(Parsed {
                    l3_offset: l3,
                    ip_len: ip_len as u32,
                    header_len: (offset - l3) as u32,
                    tcp_flags: 0,
                    tcp_header_flags: 0,
                });
            }
        } else if is_length_prefixed_extension(next) {
            if offset + Ipv6ExtHdr::LEN > end {
                return Err(ParseError::Malformed);
            }
            let ext = frame
                .header::<Ipv6ExtHdr>(offset)
                .ok_or(ParseError::Truncated)?;
            let len = if next == IPPROTO_AH {
                (ext.len as usize + 2) * 4
            } else {
                (ext.len as usize + 1) * 8
            };
            next = ext.next_header;
            offset += len;
        } else {
            break;
        }
    }
    if next == IPPROTO_FRAGMENT || is_length_prefixed_extension(next) || offset > end {
        return Err(ParseError::Malformed);
    }
    key.protocol = next;
    parse_transport(frame, next, l3, offset, end, key)
}

/// Copies an IPv6 address as two 8-byte words. A plain array assignment becomes a call to the
/// byte-by-byte `memmove` subprogram; with misaligned loads allowed (see build.rs) this is two
/// loads and two stores.
#[inline(always)]
fn copy_address(destination: &mut [u8; 16], source: &[u8; 16]) {
    let source = source.as_ptr().cast::<u64>();
    let destination = destination.as_mut_ptr().cast::<u64>();
    for word in 0..2 {
        // SAFETY: both arrays hold 16 bytes, so words 0 and 1 are in bounds; the unaligned
        // accessors make no alignment assumption.
        unsafe {
            destination
                .add(word)
                .write_unaligned(source.add(word).read_unaligned())
        };
    }
}

#[inline(always)]
fn is_length_prefixed_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_DSTOPTS
            | IPPROTO_AH
            | IPPROTO_MOBILITY
            | IPPROTO_HIP
            | IPPROTO_SHIM6
    )
}

/// Reads the ports (TCP, UDP) and TCP flags of the transport header at `l4`, which must end
/// before `end`, the end of the IP packet.
#[inline(always)]
fn parse_transport<F: Frame>(
    frame: &F,
    protocol: u8,
    l3: usize,
    l4: usize,
    end: usize,
    key: &mut FlowKey,
) -> Result<Parsed, ParseError> {
    let (headers_end, tcp_header_flags) = match protocol {
        IPPROTO_TCP => {
            if l4 + TcpHdr::LEN > end {
                return Err(ParseError::Malformed);
            }
            let tcp = frame.header::<TcpHdr>(l4).ok_or(ParseError::Truncated)?;
            let data_offset = ((tcp.data_offset >> 4) as usize) * 4;
            if data_offset < TcpHdr::LEN || l4 + data_offset > end {
                return Err(ParseError::Malformed);
            }
            key.src_port = tcp.src_port;
            key.dst_port = tcp.dst_port;
            (l4 + data_offset, tcp.flags)
        }
        IPPROTO_UDP => {
            if l4 + UdpHdr::LEN > end {
                return Err(ParseError::Malformed);
            }
            let udp = frame.header::<UdpHdr>(l4).ok_or(ParseError::Truncated)?;
            key.src_port = udp.src_port;
            key.dst_port = udp.dst_port;
            (l4 + UdpHdr::LEN, 0)
        }
        // ICMP, ICMPv6 and every other protocol: no ports.
        _ => (l4, 0),
    };
    Ok(Parsed {
        l3_offset: l3,
        ip_len: (end - l3) as u32,
        header_len: (headers_end - l3) as u32,
        tcp_flags: tcp::aws_flags(tcp_header_flags),
        tcp_header_flags,
    })
}

/// A frame held in a byte slice: how the host tests feed the parser.
impl Frame for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let bytes = self.get(offset..offset.checked_add(T::LEN)?)?;
        // SAFETY: `bytes` holds exactly `T::LEN` bytes, and `Header` guarantees `T` has
        // alignment 1 and is valid for every bit pattern.
        Some(unsafe { &*bytes.as_ptr().cast::<T>() })
    }
}
