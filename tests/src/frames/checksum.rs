//! The Internet checksum and the pseudo-header transport checksums cover.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The addresses the transport checksum covers.
pub(super) enum PseudoHeader {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl PseudoHeader {
    pub(super) fn bytes(&self, protocol: u8, upper_len: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(40);
        match self {
            Self::V4(src, dst) => {
                bytes.extend(src.octets());
                bytes.extend(dst.octets());
                bytes.extend([0, protocol]);
                bytes.extend((upper_len as u16).to_be_bytes());
            }
            Self::V6(src, dst) => {
                bytes.extend(src.octets());
                bytes.extend(dst.octets());
                bytes.extend((upper_len as u32).to_be_bytes());
                bytes.extend([0, 0, 0, protocol]);
            }
        }
        bytes
    }
}

/// The Internet checksum (RFC 1071) of `data`: the one's complement of the one's complement sum
/// of its 16-bit big-endian words, an odd last byte padded with zero. Data that includes a
/// correct checksum sums to 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|word| u64::from(word[0]) << 8 | u64::from(*word.get(1).unwrap_or(&0)))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
