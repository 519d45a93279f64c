//! Transport headers with their checksums.

use super::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    checksum::{PseudoHeader, internet_checksum},
    tcp_flags,
};

#[derive(Clone, Copy, Debug)]
pub(super) enum Transport {
    Tcp {
        src: u16,
        dst: u16,
        flags: u8,
        options_len: usize,
        data_offset_field: Option<u8>,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    IcmpEcho {
        id: u16,
        seq: u16,
    },
    Icmpv6Echo {
        id: u16,
        seq: u16,
    },
    Other(u8),
}

impl Transport {
    pub(super) fn protocol(self) -> u8 {
        match self {
            Self::Tcp { .. } => IPPROTO_TCP,
            Self::Udp { .. } => IPPROTO_UDP,
            Self::IcmpEcho { .. } => IPPROTO_ICMP,
            Self::Icmpv6Echo { .. } => IPPROTO_ICMPV6,
            Self::Other(protocol) => protocol,
        }
    }

    /// The transport header and payload, with the transport's checksum; and the header length.
    pub(super) fn segment(self, pseudo: &PseudoHeader, payload: &[u8]) -> (Vec<u8>, usize) {
        let mut segment = Vec::with_capacity(60 + payload.len());
        let checksum_at = match self {
            Transport::Tcp {
                src,
                dst,
                flags,
                options_len,
                data_offset_field,
            } => {
                let words = data_offset_field.unwrap_or(((20 + options_len) / 4) as u8);
                let ack: u32 = if flags & tcp_flags::ACK != 0 { 2000 } else { 0 };
                segment.extend(src.to_be_bytes());
                segment.extend(dst.to_be_bytes());
                segment.extend(1000u32.to_be_bytes()); // sequence number
                segment.extend(ack.to_be_bytes());
                segment.extend([words << 4, flags]);
                segment.extend(65535u16.to_be_bytes()); // window
                segment.extend([0, 0, 0, 0]); // checksum, urgent pointer
                segment.resize(20 + options_len, 1); // NOP options
                Some(16)
            }
            Transport::Udp { src, dst } => {
                let len = u16::try_from(8 + payload.len()).expect("UDP length overflows");
                segment.extend(src.to_be_bytes());
                segment.extend(dst.to_be_bytes());
                segment.extend(len.to_be_bytes());
                segment.extend([0, 0]);
                Some(6)
            }
            Transport::IcmpEcho { id, seq } => {
                segment.extend([8, 0, 0, 0]);
                segment.extend(id.to_be_bytes());
                segment.extend(seq.to_be_bytes());
                Some(2)
            }
            Transport::Icmpv6Echo { id, seq } => {
                segment.extend([128, 0, 0, 0]);
                segment.extend(id.to_be_bytes());
                segment.extend(seq.to_be_bytes());
                Some(2)
            }
            Transport::Other(_) => None,
        };
        let header_len = segment.len();
        segment.extend(payload);
        if let Some(at) = checksum_at {
            let checksum = match self {
                // ICMP for IPv4 is the only one without a pseudo-header.
                Transport::IcmpEcho { .. } => internet_checksum(&segment),
                _ => {
                    let mut covered = pseudo.bytes(self.protocol(), segment.len());
                    covered.extend(&segment);
                    match internet_checksum(&covered) {
                        // UDP sends a computed 0 as all ones (0 means "no checksum").
                        0 if matches!(self, Transport::Udp { .. }) => 0xffff,
                        sum => sum,
                    }
                }
            };
            segment[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
        }
        (segment, header_len)
    }
}
