//! IPv4 and IPv6 headers with their length fields and the IPv4 header checksum.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    ExtensionHeader,
    checksum::{PseudoHeader, internet_checksum},
    transport::Transport,
};

#[derive(Clone, Debug)]
pub(super) struct Ipv4 {
    pub(super) src: Ipv4Addr,
    pub(super) dst: Ipv4Addr,
    pub(super) options: Vec<u8>,
    pub(super) ttl: u8,
    pub(super) dont_fragment: bool,
    pub(super) more_fragments: bool,
    pub(super) fragment_offset: u16,
    pub(super) version_field: Option<u8>,
    pub(super) ihl_field: Option<u8>,
    pub(super) total_len_field: Option<u16>,
}

impl Ipv4 {
    /// Appends the IPv4 packet; returns its length and its header bytes.
    pub(super) fn write(
        &self,
        transport: Transport,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> (usize, usize) {
        let ip_header_len = 20 + self.options.len();
        let (segment, transport_header_len) = if self.fragment_offset != 0 {
            (payload.to_vec(), 0)
        } else {
            let pseudo = PseudoHeader::V4(self.src, self.dst);
            transport.segment(&pseudo, payload)
        };
        let ip_len = ip_header_len + segment.len();
        let total_len = self.total_len_field.unwrap_or_else(|| {
            u16::try_from(ip_len).expect("an IPv4 packet is at most 65535 bytes")
        });
        let flags_offset = u16::from(self.dont_fragment) << 14
            | u16::from(self.more_fragments) << 13
            | self.fragment_offset;

        let mut header = Vec::with_capacity(ip_header_len);
        let version = self.version_field.unwrap_or(4);
        let ihl = self.ihl_field.unwrap_or((ip_header_len / 4) as u8);
        header.extend([version << 4 | ihl, 0]);
        header.extend(total_len.to_be_bytes());
        header.extend(0x4242u16.to_be_bytes()); // identification
        header.extend(flags_offset.to_be_bytes());
        header.extend([self.ttl, transport.protocol(), 0, 0]);
        header.extend(self.src.octets());
        header.extend(self.dst.octets());
        header.extend(&self.options);
        let checksum = internet_checksum(&header);
        header[10..12].copy_from_slice(&checksum.to_be_bytes());

        out.extend(header);
        out.extend(segment);
        (ip_len, ip_header_len + transport_header_len)
    }
}

#[derive(Clone, Debug)]
pub(super) struct Ipv6 {
    pub(super) src: Ipv6Addr,
    pub(super) dst: Ipv6Addr,
    pub(super) hop_limit: u8,
    pub(super) extensions: Vec<ExtensionHeader>,
    pub(super) version_field: Option<u8>,
    pub(super) payload_len_field: Option<u16>,
}

impl Ipv6 {
    /// Appends the IPv6 packet; returns its length and its header bytes.
    pub(super) fn write(
        &self,
        transport: Transport,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> (usize, usize) {
        // Each header names the one after it: the next extension header or the transport.
        let next_protocols: Vec<u8> = self
            .extensions
            .iter()
            .map(|ext| ext.protocol())
            .chain([transport.protocol()])
            .collect();
        let mut extensions = Vec::new();
        let mut non_first_fragment = false;
        for (i, ext) in self.extensions.iter().enumerate() {
            ext.write(next_protocols[i + 1], &mut extensions);
            if ext.is_non_first_fragment() {
                non_first_fragment = true;
                break;
            }
        }
        let (segment, transport_header_len) = if non_first_fragment {
            (payload.to_vec(), 0)
        } else {
            transport.segment(&PseudoHeader::V6(self.src, self.dst), payload)
        };
        let payload_len = extensions.len() + segment.len();
        let payload_len_field = self
            .payload_len_field
            .unwrap_or_else(|| u16::try_from(payload_len).expect("jumbograms are not supported"));

        let version = self.version_field.unwrap_or(6);
        out.extend([version << 4, 0, 0, 0]); // traffic class 0, flow label 0
        out.extend(payload_len_field.to_be_bytes());
        out.extend([next_protocols[0], self.hop_limit]);
        out.extend(self.src.octets());
        out.extend(self.dst.octets());
        out.extend(&extensions);
        out.extend(segment);
        (
            40 + payload_len,
            40 + extensions.len() + transport_header_len,
        )
    }
}
