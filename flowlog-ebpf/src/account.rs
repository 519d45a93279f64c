//! How many wire packets and IP-layer bytes one frame stands for.

use crate::parse::Parsed;

/// Packets and IP-layer bytes to add to a flow for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Counts a frame as the wire packets it stands for.
///
/// An ordinary frame is one packet of `ip_len` bytes. A GSO/GRO super-packet (`gso_size` > 0)
/// stands for `gso_segs` packets, each repeating the IP and transport headers, so its bytes are
/// the super-packet's length plus one copy of the headers for every segment after the first.
/// When the kernel left `gso_segs` at zero it is derived from the payload and `gso_size`.
#[inline(always)]
pub fn wire_count(parsed: &Parsed, gso_size: u32, gso_segs: u32) -> WireCount {
    let ip_len = parsed.ip_len as u64;
    if gso_size == 0 {
        return WireCount {
            packets: 1,
            bytes: ip_len,
        };
    }
    let header_len = parsed.header_len as u64;
    let segments = if gso_segs != 0 {
        gso_segs as u64
    } else {
        let payload = ip_len.saturating_sub(header_len);
        payload.div_ceil(gso_size as u64).max(1)
    };
    WireCount {
        packets: segments,
        bytes: ip_len + (segments - 1) * header_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(ip_len: u32, header_len: u32) -> Parsed {
        Parsed {
            l3_offset: 14,
            ip_len,
            header_len,
            tcp_flags: 0,
            tcp_header_flags: 0,
        }
    }

    #[test]
    fn an_ordinary_frame_is_one_packet() {
        assert_eq!(
            wire_count(&parsed(84, 20), 0, 0),
            WireCount {
                packets: 1,
                bytes: 84
            }
        );
    }

    #[test]
    fn a_gso_packet_counts_its_segments_and_their_headers() {
        // IPv4 + TCP with timestamps (20 + 32 header bytes), 3 segments of 1448 + one of 100.
        let header = 52;
        let payload = 3 * 1448 + 100;
        let count = wire_count(&parsed(header + payload, header), 1448, 4);
        assert_eq!(count.packets, 4);
        // What the four wire packets add up to.
        assert_eq!(count.bytes, 3 * (52 + 1448) + (52 + 100));
    }

    #[test]
    fn missing_segment_count_is_derived_from_the_segment_size() {
        let header = 28; // IPv4 + UDP
        let payload = 1000 * 5 + 1;
        let count = wire_count(&parsed(header + payload, header), 1000, 0);
        assert_eq!(count.packets, 6);
        assert_eq!(count.bytes, 5 * (28 + 1000) + (28 + 1));
    }
}
