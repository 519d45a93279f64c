//! The rate figure's traffic: one 64-byte IPv4/UDP frame per flow (60 bytes before the FCS a NIC
//! would add), from distinct source addresses and ports in 198.19.0.0/16 to one closed UDP port
//! of the receiving namespace. Every frame is built once; sending is copying them out in order.

use std::net::Ipv4Addr;

/// Bytes of each frame as the veth carries it: Ethernet 14 + IPv4 20 + UDP 8 + payload 18.
pub const FRAME_LEN: usize = 60;
/// The IP-layer size of each frame, which flowlog counts as its `bytes`.
pub const IP_LEN: u64 = 46;
const UDP_LEN: u16 = 26;
/// Source ports per source address: flow `i` comes from address `i / PORTS_PER_ADDRESS`.
const PORTS_PER_ADDRESS: usize = 250;
const FIRST_SOURCE_PORT: u16 = 20_000;
/// Sources are 198.19.0.1 upwards: outside the receiver's /24, so the receiving namespace has no
/// route back and sends nothing in answer (no ICMP port unreachable on the wire).
const SOURCE_NETWORK: u32 = u32::from_be_bytes([198, 19, 0, 0]);
/// 2^16 - 2 addresses of the /16 (neither .0.0 nor .255.255) times the ports.
pub const MAX_FLOWS: usize = 65_534 * PORTS_PER_ADDRESS;

/// Where the frames go.
#[derive(Clone, Copy, Debug)]
pub struct Destination {
    pub source_mac: [u8; 6],
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub port: u16,
}

/// One flow's 5-tuple as flowlog and the exporters report it (the protocol is always UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowTuple {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub source_port: u16,
    pub destination_port: u16,
}

/// `count` flows, each with its frame, and one more flow, the filler: traffic sent after a
/// round that is not part of it (see [`FlowSet::filler`]).
pub struct FlowSet {
    frames: Vec<u8>,
    destination: Destination,
}

impl FlowSet {
    pub fn new(count: usize, destination: Destination) -> Self {
        assert!(count < MAX_FLOWS, "fewer than {MAX_FLOWS} flows");
        let mut frames = vec![0; (count + 1) * FRAME_LEN];
        for (i, frame) in frames.chunks_exact_mut(FRAME_LEN).enumerate() {
            let (source, source_port) = source_of(i);
            write_frame(frame, &destination, source, source_port);
        }
        Self {
            frames,
            destination,
        }
    }

    /// The flows, the filler not included.
    pub fn len(&self) -> usize {
        self.frames.len() / FRAME_LEN - 1
    }

    /// The index of the filler flow, built like the others: [`FlowSet::frame`] and
    /// [`FlowSet::tuple`] take it.
    pub fn filler(&self) -> usize {
        self.len()
    }

    pub fn frame(&self, i: usize) -> &[u8] {
        &self.frames[i * FRAME_LEN..(i + 1) * FRAME_LEN]
    }

    pub fn tuple(&self, i: usize) -> FlowTuple {
        let (source, source_port) = source_of(i);
        FlowTuple {
            source,
            destination: self.destination.address,
            source_port,
            destination_port: self.destination.port,
        }
    }
}

fn source_of(i: usize) -> (Ipv4Addr, u16) {
    let address = SOURCE_NETWORK + 1 + (i / PORTS_PER_ADDRESS) as u32;
    let port = FIRST_SOURCE_PORT + (i % PORTS_PER_ADDRESS) as u16;
    (Ipv4Addr::from(address), port)
}

fn write_frame(frame: &mut [u8], to: &Destination, source: Ipv4Addr, source_port: u16) {
    frame[0..6].copy_from_slice(&to.mac);
    frame[6..12].copy_from_slice(&to.source_mac);
    frame[12..14].copy_from_slice(&0x0800_u16.to_be_bytes());
    let ip = &mut frame[14..34];
    ip[0] = 0x45; // version 4, 5 words of header
    ip[2..4].copy_from_slice(&(IP_LEN as u16).to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&source.octets());
    ip[16..20].copy_from_slice(&to.address.octets());
    let checksum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let udp = &mut frame[34..42];
    udp[0..2].copy_from_slice(&source_port.to_be_bytes());
    udp[2..4].copy_from_slice(&to.port.to_be_bytes());
    udp[4..6].copy_from_slice(&UDP_LEN.to_be_bytes());
    // A UDP checksum of 0 means "none" over IPv4: valid, and the same for every exporter.
    frame[42..].fill(0x5a);
}

/// The one's-complement sum of the header's 16-bit words, with the checksum field zero.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|word| u32::from(u16::from_be_bytes([word[0], word[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TO: Destination = Destination {
        source_mac: [0x02, 0, 0, 0, 0, 1],
        mac: [0x02, 0, 0, 0, 0, 2],
        address: Ipv4Addr::new(198, 18, 3, 2),
        port: 9,
    };

    #[test]
    fn frames_are_valid_ipv4_udp_of_the_stated_sizes() {
        let flows = FlowSet::new(3, TO);
        assert_eq!(flows.len(), 3);
        assert_eq!(flows.filler(), 3);
        assert_eq!(flows.tuple(flows.filler()).source_port, 20_003);
        let frame = flows.frame(2);
        assert_eq!(frame.len(), FRAME_LEN);
        assert_eq!(&frame[0..6], &TO.mac);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        // A header with its checksum in place sums to 0xffff, i.e. its checksum is 0.
        assert_eq!(ipv4_checksum(&frame[14..34]), 0);
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]) as u64, IP_LEN);
        assert_eq!(FRAME_LEN as u64 - 14, IP_LEN);
        assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), UDP_LEN);
        assert_eq!(UDP_LEN as u64 + 20, IP_LEN);
        assert_eq!(&frame[26..30], &[198, 19, 0, 1]);
        assert_eq!(u16::from_be_bytes([frame[34], frame[35]]), 20_002);
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), 9);
    }

    #[test]
    fn known_header_checksum() {
        // A commonly quoted worked example of the IPv4 header checksum (0xb861).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&header), 0xb861);
    }

    #[test]
    fn every_flow_is_distinct_and_in_the_benchmark_range() {
        let flows = FlowSet::new(100_000, TO);
        let tuples: std::collections::HashSet<FlowTuple> =
            (0..flows.len()).map(|i| flows.tuple(i)).collect();
        assert_eq!(tuples.len(), 100_000);
        assert!(tuples.iter().all(|t| t.source.octets()[..2] == [198, 19]));
        assert_eq!(flows.tuple(99_999).source, Ipv4Addr::new(198, 19, 1, 144));
        assert_eq!(flows.tuple(99_999).source_port, 20_249);
    }
}
