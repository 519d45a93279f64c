//! Wire headers as byte-array structs that can be viewed in place in packet memory.
//!
//! Every field is a byte or a byte array, so each header has alignment 1: a view at any packet
//! offset is valid (VLAN tags and IPv4 options put headers at offsets with no alignment
//! promise). Only the fields the parser reads have names; the rest is kept as padding.

/// A header that may be viewed at any offset of packet memory.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1, and be valid for every bit pattern.
pub unsafe trait Header: Sized {
    const LEN: usize = core::mem::size_of::<Self>();
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_MOBILITY: u8 = 135;
pub const IPPROTO_HIP: u8 = 139;
pub const IPPROTO_SHIM6: u8 = 140;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// An 802.1Q or 802.1ad tag: what follows the tagged EtherType.
#[repr(C)]
pub struct VlanTag {
    pub tci: [u8; 2],
    pub ether_type: [u8; 2],
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub flags_fragment_offset: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub version_class_flow: [u8; 4],
    pub payload_len: [u8; 2],
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// The common start of the IPv6 extension headers whose length is in 8-octet units
/// (hop-by-hop, routing, destination options, mobility, HIP, shim6) and of AH (4-octet units).
#[repr(C)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    pub len: u8,
}

#[repr(C)]
pub struct Ipv6FragHdr {
    pub next_header: u8,
    pub reserved: u8,
    /// Fragment offset (13 bits, in 8-octet units), 2 reserved bits, M flag.
    pub offset_flags: [u8; 2],
    pub id: [u8; 4],
}

#[repr(C)]
pub struct TcpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    /// Data offset (high 4 bits, in 4-octet units) and reserved bits.
    pub data_offset: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub checksum: [u8; 2],
    pub urgent: [u8; 2],
}

#[repr(C)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub checksum: [u8; 2],
}

// SAFETY: each type above is `#[repr(C)]` and made only of `u8` and `[u8; N]`, so it has
// alignment 1 and every bit pattern is valid.
unsafe impl Header for EthHdr {}
unsafe impl Header for VlanTag {}
unsafe impl Header for Ipv4Hdr {}
unsafe impl Header for Ipv6Hdr {}
unsafe impl Header for Ipv6ExtHdr {}
unsafe impl Header for Ipv6FragHdr {}
unsafe impl Header for TcpHdr {}
unsafe impl Header for UdpHdr {}

#[cfg(test)]
mod tests {
    use core::mem::{align_of, size_of};

    use super::*;

    #[test]
    fn headers_have_wire_sizes_and_no_alignment() {
        assert_eq!((size_of::<EthHdr>(), align_of::<EthHdr>()), (14, 1));
        assert_eq!((size_of::<VlanTag>(), align_of::<VlanTag>()), (4, 1));
        assert_eq!((size_of::<Ipv4Hdr>(), align_of::<Ipv4Hdr>()), (20, 1));
        assert_eq!((size_of::<Ipv6Hdr>(), align_of::<Ipv6Hdr>()), (40, 1));
        assert_eq!((size_of::<Ipv6ExtHdr>(), align_of::<Ipv6ExtHdr>()), (2, 1));
        assert_eq!(
            (size_of::<Ipv6FragHdr>(), align_of::<Ipv6FragHdr>()),
            (8, 1)
        );
        assert_eq!((size_of::<TcpHdr>(), align_of::<TcpHdr>()), (20, 1));
        assert_eq!((size_of::<UdpHdr>(), align_of::<UdpHdr>()), (8, 1));
    }
}
