//! IPFIX (RFC 7011) messages for flowlog's records: a template set for IPv4 flows, one for
//! IPv6 flows, an options template for SKIPDATA counts, and data sets packed into messages of
//! at most a given size.
//!
//! The templates are fixed, so records are written straight into the message buffer with no
//! intermediate field list. The element table in ARCHITECTURE.md documents every field.

use std::net::IpAddr;

use crate::record::{Direction, Flow, Verdict};

/// IPFIX version number in the message header.
pub const VERSION: u16 = 10;
/// Message header: version, length, export time, sequence number, observation domain.
pub const MESSAGE_HEADER_LEN: usize = 16;
/// Set header: set id, length.
pub const SET_HEADER_LEN: usize = 4;
pub const TEMPLATE_SET_ID: u16 = 2;
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
/// Template ids (data set ids); 256 is the first one RFC 7011 allows.
pub const IPV4_FLOW_TEMPLATE: u16 = 256;
pub const IPV6_FLOW_TEMPLATE: u16 = 257;
pub const SKIPPED_OPTIONS_TEMPLATE: u16 = 258;
/// Field length meaning "variable" (RFC 7011 section 7).
pub const VARIABLE_LENGTH: u16 = 65535;
/// The smallest message size accepted: room for the template message and the largest record.
pub const MIN_MESSAGE_LEN: usize = 256;

/// IANA IPFIX information element ids used here.
pub mod ie {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const INGRESS_INTERFACE: u16 = 10;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const EGRESS_INTERFACE: u16 = 14;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const IP_VERSION: u16 = 60;
    pub const FLOW_DIRECTION: u16 = 61;
    pub const INTERFACE_NAME: u16 = 82;
    pub const FORWARDING_STATUS: u16 = 89;
    pub const FLOW_END_REASON: u16 = 136;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
    pub const IGNORED_PACKET_TOTAL_COUNT: u16 = 164;
    pub const IGNORED_OCTET_TOTAL_COUNT: u16 = 165;
    pub const OBSERVATION_TIME_MILLISECONDS: u16 = 323;
}

/// A field specifier: information element id and encoded length.
type Field = (u16, u16);

/// The flow template's fields, in data-record order; only the two address fields differ
/// between IPv4 and IPv6. Fixed-length fields come first, widest first, the name last.
const fn flow_fields(src: u16, dst: u16, address_len: u16) -> [Field; 17] {
    [
        (ie::FLOW_START_MILLISECONDS, 8),
        (ie::FLOW_END_MILLISECONDS, 8),
        (ie::OCTET_DELTA_COUNT, 8),
        (ie::PACKET_DELTA_COUNT, 8),
        (src, address_len),
        (dst, address_len),
        (ie::SOURCE_TRANSPORT_PORT, 2),
        (ie::DESTINATION_TRANSPORT_PORT, 2),
        (ie::INGRESS_INTERFACE, 4),
        (ie::EGRESS_INTERFACE, 4),
        (ie::TCP_CONTROL_BITS, 2),
        (ie::PROTOCOL_IDENTIFIER, 1),
        (ie::IP_VERSION, 1),
        (ie::FLOW_DIRECTION, 1),
        (ie::FORWARDING_STATUS, 1),
        (ie::FLOW_END_REASON, 1),
        (ie::INTERFACE_NAME, VARIABLE_LENGTH),
    ]
}

pub const IPV4_FLOW_FIELDS: [Field; 17] =
    flow_fields(ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS, 4);
pub const IPV6_FLOW_FIELDS: [Field; 17] =
    flow_fields(ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS, 16);

/// SKIPDATA as an options record: scope is the interface (ifindex, 0 when the packets could
/// not be attributed to one), then its name and the running totals of packets and bytes the
/// datapath could not count as flows, like RFC 7011's Metering Process Reliability Statistics.
pub const SKIPPED_SCOPE_FIELDS: [Field; 1] = [(ie::INGRESS_INTERFACE, 4)];
pub const SKIPPED_FIELDS: [Field; 4] = [
    (ie::OBSERVATION_TIME_MILLISECONDS, 8),
    (ie::IGNORED_PACKET_TOTAL_COUNT, 8),
    (ie::IGNORED_OCTET_TOTAL_COUNT, 8),
    (ie::INTERFACE_NAME, VARIABLE_LENGTH),
];

/// Fixed-length part of a flow data record: 8 x 4 + addresses x 2 + 2 x 2 + 4 x 2 + 2 + 5.
const fn flow_fixed_len(address_len: usize) -> usize {
    32 + 2 * address_len + 4 + 8 + 2 + 5
}
const SKIPPED_FIXED_LEN: usize = 4 + 24;

/// `forwardingStatus` (RFC 7270 / IANA): status in the top two bits, reason below.
pub mod forwarding_status {
    /// Forwarded, reason unknown.
    pub const FORWARDED: u8 = 0b0100_0000;
    /// Dropped, reason unknown: a packet of a closed TCP connection.
    pub const DROPPED_UNKNOWN: u8 = 0b1000_0000;
    /// Dropped, ACL deny: the network ACL rejected it.
    pub const DROPPED_ACL_DENY: u8 = 0b1000_0001;
    /// Dropped, ACL drop: no security-group rule allowed the connection.
    pub const DROPPED_ACL_DROP: u8 = 0b1000_0010;
    /// Dropped: no route (131), adjacency (132), fragmentation needed with DF set (133), bad
    /// header checksum (134), bad header length (136), policer (138), WRED / queue management
    /// (139), reverse path forwarding check (140), for us (141).
    pub const DROPPED_UNROUTABLE: u8 = 131;
    pub const DROPPED_ADJACENCY: u8 = 132;
    pub const DROPPED_FRAGMENTATION_DF: u8 = 133;
    pub const DROPPED_BAD_CHECKSUM: u8 = 134;
    pub const DROPPED_BAD_HEADER_LENGTH: u8 = 136;
    pub const DROPPED_POLICER: u8 = 138;
    pub const DROPPED_WRED: u8 = 139;
    pub const DROPPED_RPF: u8 = 140;
    pub const DROPPED_FOR_US: u8 = 141;
}

/// `flowEndReason` values (IANA).
pub mod end_reason {
    /// The interval ended while the flow was active.
    pub const ACTIVE_TIMEOUT: u8 = 0x02;
    /// A FIN or RST was seen.
    pub const END_OF_FLOW: u8 = 0x03;
}

/// `flowDirection` values (IANA).
const INGRESS: u8 = 0;
const EGRESS: u8 = 1;

/// One data record to export.
#[derive(Clone, Copy, Debug)]
pub enum DataRecord<'a> {
    Flow(FlowData<'a>),
    Skipped(SkippedData<'a>),
}

/// A flow with what the record model keeps beside it.
#[derive(Clone, Copy, Debug)]
pub struct FlowData<'a> {
    pub flow: &'a Flow,
    pub ifindex: u32,
    pub interface: &'a str,
    /// Unix milliseconds of the first and last packet.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Running totals of packets that found the flow map full, for one interface.
#[derive(Clone, Copy, Debug)]
pub struct SkippedData<'a> {
    pub ifindex: u32,
    pub interface: &'a str,
    /// Unix milliseconds the totals were last updated (the interval's end).
    pub observed_ms: u64,
    pub packets_total: u64,
    pub octets_total: u64,
}

impl DataRecord<'_> {
    fn set_id(&self) -> u16 {
        match self {
            DataRecord::Flow(data) => match data.flow.src_addr {
                IpAddr::V4(_) => IPV4_FLOW_TEMPLATE,
                IpAddr::V6(_) => IPV6_FLOW_TEMPLATE,
            },
            DataRecord::Skipped(_) => SKIPPED_OPTIONS_TEMPLATE,
        }
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            DataRecord::Flow(data) => {
                let address_len = match data.flow.src_addr {
                    IpAddr::V4(_) => 4,
                    IpAddr::V6(_) => 16,
                };
                flow_fixed_len(address_len) + string_len(data.interface)
            }
            DataRecord::Skipped(data) => SKIPPED_FIXED_LEN + string_len(data.interface),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            DataRecord::Flow(data) => encode_flow(data, out),
            DataRecord::Skipped(data) => {
                out.extend_from_slice(&data.ifindex.to_be_bytes());
                out.extend_from_slice(&data.observed_ms.to_be_bytes());
                out.extend_from_slice(&data.packets_total.to_be_bytes());
                out.extend_from_slice(&data.octets_total.to_be_bytes());
                put_string(data.interface, out);
            }
        }
    }
}

fn encode_flow(data: &FlowData, out: &mut Vec<u8>) {
    let flow = data.flow;
    out.extend_from_slice(&data.start_ms.to_be_bytes());
    out.extend_from_slice(&data.end_ms.to_be_bytes());
    out.extend_from_slice(&flow.bytes.to_be_bytes());
    out.extend_from_slice(&flow.packets.to_be_bytes());
    let version = match (flow.src_addr, flow.dst_addr) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
            4
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
            6
        }
        // The record model never mixes families; keep the record's length right regardless.
        (IpAddr::V4(src), IpAddr::V6(dst)) => {
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.to_ipv4_mapped().unwrap_or(src).octets());
            4
        }
        (IpAddr::V6(src), IpAddr::V4(dst)) => {
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.to_ipv6_mapped().octets());
            6
        }
    };
    out.extend_from_slice(&flow.src_port.to_be_bytes());
    out.extend_from_slice(&flow.dst_port.to_be_bytes());
    let (direction, ingress, egress) = match flow.direction {
        Direction::Ingress => (INGRESS, data.ifindex, 0),
        Direction::Egress => (EGRESS, 0, data.ifindex),
    };
    out.extend_from_slice(&ingress.to_be_bytes());
    out.extend_from_slice(&egress.to_be_bytes());
    out.extend_from_slice(&u16::from(flow.tcp_flags).to_be_bytes());
    out.extend_from_slice(&[
        flow.protocol,
        version,
        direction,
        forwarding_status_of(flow),
        end_reason_of(flow),
    ]);
    put_string(data.interface, out);
}

/// The verdict as `forwardingStatus`.
pub fn forwarding_status_of(flow: &Flow) -> u8 {
    match flow.verdict {
        // Audit verdicts were forwarded: nothing was dropped.
        Verdict::Accept
        | Verdict::AuditAcl
        | Verdict::AuditSecurityGroup
        | Verdict::AuditClosedConnection => forwarding_status::FORWARDED,
        Verdict::RejectAcl => forwarding_status::DROPPED_ACL_DENY,
        Verdict::RejectSecurityGroup => forwarding_status::DROPPED_ACL_DROP,
        Verdict::RejectClosedConnection => forwarding_status::DROPPED_UNKNOWN,
        Verdict::KernelDrop => flow
            .drop_reason
            .map_or(forwarding_status::DROPPED_UNKNOWN, kernel_forwarding_status),
    }
}

/// `forwardingStatus` of a packet the kernel dropped, from its reason (IANA's forwardingStatus
/// reason codes, RFC 7270).
pub fn kernel_forwarding_status(reason: &str) -> u8 {
    use forwarding_status::*;
    match reason {
        "netfilter-drop" | "socket-filter" | "xfrm-policy" | "bpf-cgroup-egress"
        | "security-hook" | "tc-ingress" | "tc-egress" => DROPPED_ACL_DENY,
        "ip-rpfilter" => DROPPED_RPF,
        "no-socket" | "ip-noproto" => DROPPED_FOR_US,
        "ip-innoroutes" | "ip-outnoroutes" | "ip-inaddrerrors" => DROPPED_UNROUTABLE,
        "pkt-too-big" => DROPPED_FRAGMENTATION_DF,
        "ip-csum" | "tcp-csum" | "udp-csum" | "icmp-csum" | "skb-csum" => DROPPED_BAD_CHECKSUM,
        "ip-inhdr" | "hdr-trunc" | "pkt-too-small" => DROPPED_BAD_HEADER_LENGTH,
        "qdisc-overlimit" => DROPPED_POLICER,
        "qdisc-drop" | "qdisc-congested" | "cake-flood" | "fq-band-limit" | "fq-horizon-limit"
        | "fq-flow-limit" | "dualpi2-step-drop" => DROPPED_WRED,
        reason if reason.starts_with("neigh-") => DROPPED_ADJACENCY,
        _ => DROPPED_UNKNOWN,
    }
}

/// `flowEndReason`: end of flow when the flow carried FIN or RST, else the interval cut it.
pub fn end_reason_of(flow: &Flow) -> u8 {
    use flowlog_common::tcp::{FIN, RST};
    if flow.protocol == 6 && flow.tcp_flags & (FIN | RST) != 0 {
        end_reason::END_OF_FLOW
    } else {
        end_reason::ACTIVE_TIMEOUT
    }
}

/// Length of a variable-length string field: one length byte below 255 bytes, else three.
fn string_len(text: &str) -> usize {
    let len = text.len().min(usize::from(u16::MAX));
    if len < 255 { 1 + len } else { 3 + len }
}

fn put_string(text: &str, out: &mut Vec<u8>) {
    let bytes = &text.as_bytes()[..text.len().min(usize::from(u16::MAX))];
    if bytes.len() < 255 {
        out.push(bytes.len() as u8);
    } else {
        out.push(255);
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

/// Builds IPFIX messages for one observation domain, keeping its sequence number: the count of
/// data records sent before each message (RFC 7011 section 3.1).
#[derive(Clone, Debug)]
pub struct MessageEncoder {
    observation_domain: u32,
    max_message_len: usize,
    sequence: u32,
}

impl MessageEncoder {
    /// `max_message_len` is clamped to 256..=65535.
    pub fn new(observation_domain: u32, max_message_len: usize) -> Self {
        Self {
            observation_domain,
            max_message_len: max_message_len.clamp(MIN_MESSAGE_LEN, usize::from(u16::MAX)),
            sequence: 0,
        }
    }

    /// Sets the largest message, clamped to 256..=65535.
    pub fn set_max_message_len(&mut self, max_message_len: usize) {
        self.max_message_len = max_message_len.clamp(MIN_MESSAGE_LEN, usize::from(u16::MAX));
    }

    /// Data records encoded so far, modulo 2^32: the next message's sequence number.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    /// Starts a new transport session (a new TCP connection): the sequence restarts at 0.
    pub fn reset_sequence(&mut self) {
        self.sequence = 0;
    }

    /// One message holding the template set (IPv4 and IPv6 flows) and the options template set
    /// (SKIPDATA).
    pub fn templates(&self, export_time: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.put_header(export_time, &mut out);
        let set = start_set(TEMPLATE_SET_ID, &mut out);
        for (id, fields) in [
            (IPV4_FLOW_TEMPLATE, &IPV4_FLOW_FIELDS),
            (IPV6_FLOW_TEMPLATE, &IPV6_FLOW_FIELDS),
        ] {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            put_fields(fields, &mut out);
        }
        end_set(set, &mut out);
        let set = start_set(OPTIONS_TEMPLATE_SET_ID, &mut out);
        let field_count = SKIPPED_SCOPE_FIELDS.len() + SKIPPED_FIELDS.len();
        out.extend_from_slice(&SKIPPED_OPTIONS_TEMPLATE.to_be_bytes());
        out.extend_from_slice(&(field_count as u16).to_be_bytes());
        out.extend_from_slice(&(SKIPPED_SCOPE_FIELDS.len() as u16).to_be_bytes());
        put_fields(&SKIPPED_SCOPE_FIELDS, &mut out);
        put_fields(&SKIPPED_FIELDS, &mut out);
        end_set(set, &mut out);
        finish_message(&mut out);
        out
    }

    /// Packs `records` into data sets, in order, and the sets into messages of at most the
    /// maximum length, appending each finished message to `messages`. Returns the number of
    /// records encoded in each message, in the same order.
    pub fn data<'a>(
        &mut self,
        records: impl IntoIterator<Item = DataRecord<'a>>,
        export_time: u32,
        messages: &mut Vec<Vec<u8>>,
    ) -> Vec<usize> {
        let mut counts = Vec::new();
        let mut message: Vec<u8> = Vec::new();
        let mut set: Option<(u16, usize)> = None;
        let mut in_message = 0usize;
        for record in records {
            let set_id = record.set_id();
            let same_set = matches!(set, Some((id, _)) if id == set_id);
            let needed = record.encoded_len() + if same_set { 0 } else { SET_HEADER_LEN };
            if !message.is_empty() && message.len() + needed > self.max_message_len {
                if let Some((_, start)) = set.take() {
                    end_set(start, &mut message);
                }
                finish_message(&mut message);
                messages.push(std::mem::take(&mut message));
                counts.push(std::mem::take(&mut in_message));
            }
            if message.is_empty() {
                message.reserve(self.max_message_len);
                self.put_header(export_time, &mut message);
            }
            if !matches!(set, Some((id, _)) if id == set_id) {
                if let Some((_, start)) = set.take() {
                    end_set(start, &mut message);
                }
                set = Some((set_id, start_set(set_id, &mut message)));
            }
            record.encode(&mut message);
            in_message += 1;
            self.sequence = self.sequence.wrapping_add(1);
        }
        if !message.is_empty() {
            if let Some((_, start)) = set {
                end_set(start, &mut message);
            }
            finish_message(&mut message);
            messages.push(message);
            counts.push(in_message);
        }
        counts
    }

    fn put_header(&self, export_time: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // length, set by `finish_message`
        out.extend_from_slice(&export_time.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.observation_domain.to_be_bytes());
    }
}

fn put_fields(fields: &[Field], out: &mut Vec<u8>) {
    for (id, len) in fields {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Writes a set header with a placeholder length; returns where the set starts.
fn start_set(id: u16, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    start
}

fn end_set(start: usize, out: &mut [u8]) {
    let len = (out.len() - start) as u16;
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn finish_message(out: &mut [u8]) {
    let len = out.len() as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests;
