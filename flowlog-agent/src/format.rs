//! VPC Flow Logs format strings: which fields a flow log writes, in which order, and how each
//! field of a record is rendered.
//!
//! Text sinks call [`RecordFormat::render`]; columnar sinks (Parquet) call
//! [`RecordFormat::value`] per field so both agree on every value, `-` included.

use std::{fmt, io::Write as _, net::IpAddr, str::FromStr};

use crate::record::{FlowRecord, Metadata, RecordKind};

/// Physical column type of a field in Parquet objects, as AWS writes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Int32,
    Int64,
    String,
}

/// Declares [`Field`] and its per-field facts from one table, so a field cannot be added to the
/// enum and forgotten in a lookup.
macro_rules! fields {
    ($($variant:ident = $name:literal, $column:literal, $version:literal, $ty:ident;)*) => {
        /// A field of a VPC Flow Logs record, versions 2 to 11 (version 6 is Transit Gateway
        /// flow logs' own, which have no interfaces).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Field {
            $($variant,)*
        }

        impl Field {
            /// Every field, in the reference's order.
            pub const ALL: &'static [Field] = &[$(Field::$variant,)*];

            /// The name written between `${` and `}` in a format string and in header lines.
            pub fn name(self) -> &'static str {
                match self {
                    $(Field::$variant => $name,)*
                }
            }

            /// The first flow log version that has this field.
            pub fn version(self) -> u8 {
                match self {
                    $(Field::$variant => $version,)*
                }
            }

            /// Column name in Parquet objects and Athena tables, where `-` is not allowed.
            pub fn column_name(self) -> &'static str {
                match self {
                    $(Field::$variant => $column,)*
                }
            }

            pub fn column_type(self) -> ColumnType {
                match self {
                    $(Field::$variant => ColumnType::$ty,)*
                }
            }
        }
    };
}

fields! {
    Version = "version", "version", 2, Int32;
    AccountId = "account-id", "account_id", 2, String;
    InterfaceId = "interface-id", "interface_id", 2, String;
    SrcAddr = "srcaddr", "srcaddr", 2, String;
    DstAddr = "dstaddr", "dstaddr", 2, String;
    SrcPort = "srcport", "srcport", 2, Int32;
    DstPort = "dstport", "dstport", 2, Int32;
    Protocol = "protocol", "protocol", 2, Int32;
    Packets = "packets", "packets", 2, Int64;
    Bytes = "bytes", "bytes", 2, Int64;
    Start = "start", "start", 2, Int64;
    End = "end", "end", 2, Int64;
    Action = "action", "action", 2, String;
    LogStatus = "log-status", "log_status", 2, String;
    VpcId = "vpc-id", "vpc_id", 3, String;
    SubnetId = "subnet-id", "subnet_id", 3, String;
    InstanceId = "instance-id", "instance_id", 3, String;
    TcpFlags = "tcp-flags", "tcp_flags", 3, Int32;
    Type = "type", "type", 3, String;
    PktSrcAddr = "pkt-srcaddr", "pkt_srcaddr", 3, String;
    PktDstAddr = "pkt-dstaddr", "pkt_dstaddr", 3, String;
    Region = "region", "region", 4, String;
    AzId = "az-id", "az_id", 4, String;
    SublocationType = "sublocation-type", "sublocation_type", 4, String;
    SublocationId = "sublocation-id", "sublocation_id", 4, String;
    PktSrcAwsService = "pkt-src-aws-service", "pkt_src_aws_service", 5, String;
    PktDstAwsService = "pkt-dst-aws-service", "pkt_dst_aws_service", 5, String;
    FlowDirection = "flow-direction", "flow_direction", 5, String;
    TrafficPath = "traffic-path", "traffic_path", 5, Int32;
    RejectReason = "reject-reason", "reject_reason", 8, String;
    EcsClusterArn = "ecs-cluster-arn", "ecs_cluster_arn", 7, String;
    EcsClusterName = "ecs-cluster-name", "ecs_cluster_name", 7, String;
    EcsContainerInstanceArn = "ecs-container-instance-arn", "ecs_container_instance_arn", 7, String;
    EcsContainerInstanceId = "ecs-container-instance-id", "ecs_container_instance_id", 7, String;
    EcsContainerId = "ecs-container-id", "ecs_container_id", 7, String;
    EcsSecondContainerId = "ecs-second-container-id", "ecs_second_container_id", 7, String;
    EcsServiceName = "ecs-service-name", "ecs_service_name", 7, String;
    EcsTaskDefinitionArn = "ecs-task-definition-arn", "ecs_task_definition_arn", 7, String;
    EcsTaskArn = "ecs-task-arn", "ecs_task_arn", 7, String;
    EcsTaskId = "ecs-task-id", "ecs_task_id", 7, String;
    ResourceId = "resource-id", "resource_id", 9, String;
    EncryptionStatus = "encryption-status", "encryption_status", 10, Int32;
    InstanceTag = "instance-tag", "instance_tag", 11, String;
    InstanceTag2 = "instance-tag-2", "instance_tag_2", 11, String;
    InterfaceTag = "interface-tag", "interface_tag", 11, String;
    InterfaceTag2 = "interface-tag-2", "interface_tag_2", 11, String;
    AsgTag = "asg-tag", "asg_tag", 11, String;
    AsgTag2 = "asg-tag-2", "asg_tag_2", 11, String;
    InterfaceType = "interface-type", "interface_type", 11, String;
    NextHopInterfaceId = "next-hop-interface-id", "next_hop_interface_id", 11, String;
    NextHopSubnetId = "next-hop-subnet-id", "next_hop_subnet_id", 11, String;
    NextHopAzId = "next-hop-az-id", "next_hop_az_id", 11, String;
    NextHopVpcId = "next-hop-vpc-id", "next_hop_vpc_id", 11, String;
    NextHopInterfaceType = "next-hop-interface-type", "next_hop_interface_type", 11, String;
}

/// Fields of Transit Gateway flow logs (version 6), which describe attachments rather than
/// interfaces: named in the refusal, so a format copied from one is not just "unknown".
const TRANSIT_GATEWAY_FIELDS: &[&str] = &[
    "resource-type",
    "tgw-id",
    "tgw-attachment-id",
    "tgw-src-vpc-account-id",
    "tgw-dst-vpc-account-id",
    "tgw-src-vpc-id",
    "tgw-dst-vpc-id",
    "tgw-src-subnet-id",
    "tgw-dst-subnet-id",
    "tgw-src-eni",
    "tgw-dst-eni",
    "tgw-src-az-id",
    "tgw-dst-az-id",
    "tgw-pair-attachment-id",
    "packets-lost-no-route",
    "packets-lost-blackhole",
    "packets-lost-mtu-exceeded",
    "packets-lost-ttl-expired",
];

impl Field {
    /// Looks a field up by its exact (case-sensitive) format-string name, as AWS does.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL
            .iter()
            .copied()
            .find(|field| field.name() == name)
    }

    /// The known field nearest to `name` (case-insensitive, edit distance at most 2), to turn
    /// a typo into a suggestion rather than a bare refusal.
    fn closest(name: &str) -> Option<Field> {
        let name = name.to_ascii_lowercase();
        Field::ALL
            .iter()
            .map(|&field| (edit_distance(&name, field.name()), field))
            .filter(|&(distance, _)| distance <= 2)
            .min_by_key(|&(distance, _)| distance)
            .map(|(_, field)| field)
    }
}

/// Levenshtein distance over bytes: field names are ASCII and short, so one row is enough.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.as_bytes().iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(diagonal + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

/// The default format of a flow log (version 2).
pub const DEFAULT_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} \
     ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

/// [`DEFAULT_FORMAT`] already parsed (a test keeps the two equal), so `Default` cannot fail.
const DEFAULT_FIELDS: [Field; 14] = [
    Field::Version,
    Field::AccountId,
    Field::InterfaceId,
    Field::SrcAddr,
    Field::DstAddr,
    Field::SrcPort,
    Field::DstPort,
    Field::Protocol,
    Field::Packets,
    Field::Bytes,
    Field::Start,
    Field::End,
    Field::Action,
    Field::LogStatus,
];

/// Why a format string was refused. Every message names the token at fault and its 1-based
/// position, so a user can fix a long format string without counting fields by hand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty format")]
    Empty,
    #[error("format starts with {} before token 1", spaces(.count))]
    LeadingSpace { count: usize },
    /// `count` is the number of spaces between the two tokens.
    #[error("{} before token {token}", spaces(.count))]
    ExtraSpace { count: usize, token: usize },
    #[error("format ends with {} after token {token}", spaces(.count))]
    TrailingSpace { count: usize, token: usize },
    #[error("{text:?} contains {found:?} (token {token}): separate tokens with exactly one space")]
    BadSeparator {
        text: String,
        token: usize,
        found: char,
    },
    #[error("{text:?} is not a ${{field}} token (token {token}){}", suggest(.suggestion))]
    NotAToken {
        text: String,
        token: usize,
        suggestion: Option<Field>,
    },
    #[error("unknown field {text:?} (token {token}){}", suggest(.suggestion))]
    UnknownField {
        text: String,
        token: usize,
        suggestion: Option<Field>,
    },
    #[error(
        "{text:?} (token {token}) is a field of Transit Gateway flow logs (version 6); VPC flow logs, which flowlog writes, have no such field"
    )]
    TransitGatewayField { text: String, token: usize },
    #[error("duplicate field \"${{{}}}\" (token {token}, first used as token {first})", .field.name())]
    Duplicate {
        field: Field,
        token: usize,
        first: usize,
    },
}

fn spaces(count: &usize) -> String {
    match count {
        1 => "a space".to_owned(),
        2 => "two spaces".to_owned(),
        n => format!("{n} spaces"),
    }
}

fn suggest(suggestion: &Option<Field>) -> String {
    suggestion.map_or_else(String::new, |field| {
        format!("; did you mean \"${{{}}}\"?", field.name())
    })
}

/// A parsed format string: which fields each record line holds, in order.
///
/// A field may appear only once: AWS does not document duplicates, and a repeated field would
/// give a Parquet object two columns of the same name and an Athena table it cannot declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordFormat {
    fields: Vec<Field>,
    version: u8,
}

impl RecordFormat {
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The `version` written in records: the highest version among the format's fields.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The first line of text objects in object storage, which readers skip or use as column
    /// names.
    pub fn header_line(&self) -> String {
        let names: Vec<&str> = self.fields.iter().map(|field| field.name()).collect();
        names.join(" ")
    }

    /// Appends one record line, `\n` included. Nothing is allocated, so the drain stays cheap
    /// at a million records per second.
    pub fn render(&self, record: &FlowRecord, meta: &Metadata, out: &mut Vec<u8>) {
        for (i, &field) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            self.value(field, record, meta).write_to(out);
        }
        out.push(b'\n');
    }

    /// The value of one field of a record, shared by text rendering and columnar encoders.
    pub fn value<'a>(
        &self,
        field: Field,
        record: &'a FlowRecord,
        meta: &'a Metadata,
    ) -> FieldValue<'a> {
        use FieldValue::{Absent, Addr, Int, Str};
        let flow = match &record.kind {
            RecordKind::Flow(flow) => Some(flow),
            RecordKind::NoData | RecordKind::SkipData { .. } => None,
        };
        // flowlog writes SKIPDATA's unattributed counts; with nothing to attribute the row
        // reads exactly as AWS's.
        let skipped = match record.kind {
            RecordKind::SkipData { packets, bytes } if packets != 0 || bytes != 0 => {
                Some((packets, bytes))
            }
            _ => None,
        };
        match field {
            Field::Version => Int(self.version.into()),
            Field::AccountId => configured(&meta.account_id),
            Field::InterfaceId => text(&record.interface),
            Field::SrcAddr | Field::PktSrcAddr => flow.map_or(Absent, |f| Addr(f.src_addr)),
            Field::DstAddr | Field::PktDstAddr => flow.map_or(Absent, |f| Addr(f.dst_addr)),
            Field::SrcPort => flow.map_or(Absent, |f| Int(f.src_port.into())),
            Field::DstPort => flow.map_or(Absent, |f| Int(f.dst_port.into())),
            Field::Protocol => flow.map_or(Absent, |f| Int(f.protocol.into())),
            Field::Packets => match (flow, skipped) {
                (Some(f), _) => Int(f.packets),
                (None, Some((packets, _))) => Int(packets),
                (None, None) => Absent,
            },
            Field::Bytes => match (flow, skipped) {
                (Some(f), _) => Int(f.bytes),
                (None, Some((_, bytes))) => Int(bytes),
                (None, None) => Absent,
            },
            Field::Start => Int(record.start),
            Field::End => Int(record.end),
            Field::Action => flow.map_or(Absent, |f| Str(f.action())),
            Field::LogStatus => Str(record.kind.log_status()),
            Field::VpcId => configured(&meta.vpc_id),
            Field::SubnetId => configured(&meta.subnet_id),
            Field::InstanceId => configured(&meta.instance_id),
            Field::TcpFlags => flow.map_or(Absent, |f| {
                Int(if f.protocol == TCP {
                    f.tcp_flags.into()
                } else {
                    0
                })
            }),
            Field::Type => flow.map_or(Absent, |f| Str(f.ip_type())),
            Field::Region => configured(&meta.region),
            Field::AzId => configured(&meta.az_id),
            Field::SublocationType => configured(&meta.sublocation_type),
            Field::SublocationId => configured(&meta.sublocation_id),
            // A host cannot know AWS's address ranges or its egress path codes.
            Field::PktSrcAwsService | Field::PktDstAwsService | Field::TrafficPath => Absent,
            Field::FlowDirection => flow.map_or(Absent, |f| Str(f.direction_name())),
            Field::RejectReason => flow.and_then(|f| f.reject_reason()).map_or(Absent, Str),
            Field::ResourceId => configured(&meta.resource_id),
            Field::InstanceTag => configured(&meta.instance_tag),
            Field::InstanceTag2 => configured(&meta.instance_tag_2),
            Field::InterfaceTag => configured(&meta.interface_tag),
            Field::InterfaceTag2 => configured(&meta.interface_tag_2),
            Field::AsgTag => configured(&meta.asg_tag),
            Field::AsgTag2 => configured(&meta.asg_tag_2),
            Field::InterfaceType => record.interface_type.map_or(Absent, Str),
            // Not ECS task metadata (no interface of a host is a task's ENI), no Nitro
            // encryption to observe, and no view of where a router forwards next.
            Field::EcsClusterArn
            | Field::EcsClusterName
            | Field::EcsContainerInstanceArn
            | Field::EcsContainerInstanceId
            | Field::EcsContainerId
            | Field::EcsSecondContainerId
            | Field::EcsServiceName
            | Field::EcsTaskDefinitionArn
            | Field::EcsTaskArn
            | Field::EcsTaskId
            | Field::EncryptionStatus
            | Field::NextHopInterfaceId
            | Field::NextHopSubnetId
            | Field::NextHopAzId
            | Field::NextHopVpcId
            | Field::NextHopInterfaceType => Absent,
        }
    }
}

const TCP: u8 = 6;

/// An empty value would leave two adjacent spaces and shift every later field, so it is `-`.
fn text(value: &str) -> FieldValue<'_> {
    if value.is_empty() {
        FieldValue::Absent
    } else {
        FieldValue::Str(value)
    }
}

fn configured(value: &Option<String>) -> FieldValue<'_> {
    value.as_deref().map_or(FieldValue::Absent, text)
}

impl Default for RecordFormat {
    fn default() -> Self {
        RecordFormat {
            fields: DEFAULT_FIELDS.to_vec(),
            version: 2,
        }
    }
}

impl FromStr for RecordFormat {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, FormatError> {
        if s.trim().is_empty() {
            return Err(FormatError::Empty);
        }
        let mut fields: Vec<Field> = Vec::new();
        // Empty pieces of the split are extra spaces; they are reported once the next token
        // (or the end) says where they sit.
        let mut pending_spaces = 0;
        for piece in s.split(' ') {
            if piece.is_empty() {
                pending_spaces += 1;
                continue;
            }
            let token = fields.len() + 1;
            match (token, pending_spaces) {
                (_, 0) => {}
                (1, count) => return Err(FormatError::LeadingSpace { count }),
                (token, extra) => {
                    return Err(FormatError::ExtraSpace {
                        count: extra + 1,
                        token,
                    });
                }
            }
            let field = parse_token(piece, token)?;
            if let Some(first) = fields.iter().position(|&f| f == field) {
                return Err(FormatError::Duplicate {
                    field,
                    token,
                    first: first + 1,
                });
            }
            fields.push(field);
        }
        if pending_spaces > 0 {
            return Err(FormatError::TrailingSpace {
                count: pending_spaces,
                token: fields.len(),
            });
        }
        let version = fields
            .iter()
            .map(|field| field.version())
            .max()
            .unwrap_or(2);
        Ok(RecordFormat { fields, version })
    }
}

fn parse_token(text: &str, token: usize) -> Result<Field, FormatError> {
    if let Some(found) = text.chars().find(|c| c.is_whitespace()) {
        return Err(FormatError::BadSeparator {
            text: text.to_owned(),
            token,
            found,
        });
    }
    let name = text
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|name| !name.contains(['$', '{', '}']));
    match name {
        Some(name) if TRANSIT_GATEWAY_FIELDS.contains(&name) => {
            Err(FormatError::TransitGatewayField {
                text: text.to_owned(),
                token,
            })
        }
        Some(name) => Field::from_name(name).ok_or_else(|| FormatError::UnknownField {
            text: text.to_owned(),
            token,
            suggestion: Field::closest(name),
        }),
        None => Err(FormatError::NotAToken {
            text: text.to_owned(),
            token,
            suggestion: Field::closest(&text.replace(['$', '{', '}'], "")),
        }),
    }
}

/// Writes the format string back, e.g. to log the configuration in effect.
impl fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.fields.iter().enumerate() {
            let separator = if i > 0 { " " } else { "" };
            write!(f, "{separator}${{{}}}", field.name())?;
        }
        Ok(())
    }
}

/// One field's value in a record. Addresses stay binary so text rendering writes them without
/// an intermediate `String`; integers are `u64` because every counter of the record model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Int(u64),
    Str(&'a str),
    Addr(IpAddr),
    /// The field does not apply to this record; written `-` (a null in columnar formats).
    Absent,
}

impl FieldValue<'_> {
    /// Appends the value as it appears in a text record.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match *self {
            FieldValue::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            FieldValue::Str(s) => out.extend_from_slice(s.as_bytes()),
            FieldValue::Addr(IpAddr::V4(addr)) => {
                for (i, octet) in addr.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    write_octet(octet, out);
                }
            }
            // Writing into a Vec cannot fail; IPv6 is rare enough for the formatter's cost.
            FieldValue::Addr(IpAddr::V6(addr)) => {
                let _ = write!(out, "{addr}");
            }
            FieldValue::Absent => out.push(b'-'),
        }
    }
}

fn write_octet(octet: u8, out: &mut Vec<u8>) {
    if octet >= 100 {
        out.push(b'0' + octet / 100);
    }
    if octet >= 10 {
        out.push(b'0' + octet / 10 % 10);
    }
    out.push(b'0' + octet % 10);
}

impl fmt::Display for FieldValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Int(n) => write!(f, "{n}"),
            FieldValue::Str(s) => f.write_str(s),
            FieldValue::Addr(addr) => write!(f, "{addr}"),
            FieldValue::Absent => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{Direction, Flow, Verdict};

    const ENI: &str = "eni-1235b8ca123456789";

    fn account() -> Metadata {
        Metadata {
            account_id: Some("123456789010".to_owned()),
            ..Metadata::default()
        }
    }

    fn full_metadata() -> Metadata {
        Metadata {
            account_id: Some("123456789010".to_owned()),
            vpc_id: Some("vpc-0a1b2c3d".to_owned()),
            subnet_id: Some("subnet-0a1b2c3d".to_owned()),
            instance_id: Some("i-0123456789abcdef0".to_owned()),
            region: Some("eu-west-1".to_owned()),
            az_id: Some("euw1-az1".to_owned()),
            sublocation_type: None,
            sublocation_id: Some(String::new()),
            resource_id: Some("i-0123456789abcdef0".to_owned()),
            instance_tag: Some("web".to_owned()),
            instance_tag_2: None,
            interface_tag: Some("frontend".to_owned()),
            interface_tag_2: None,
            asg_tag: Some("asg-web".to_owned()),
            asg_tag_2: Some("blue".to_owned()),
        }
    }

    /// An ingress flow from `"srcaddr dstaddr srcport dstport protocol packets bytes action"`
    /// (the record's own field order), with tcp-flags 19 so tests see where they go.
    fn flow(spec: &str) -> Flow {
        let f: Vec<&str> = spec.split(' ').collect();
        Flow {
            direction: Direction::Ingress,
            src_addr: f[0].parse().unwrap(),
            dst_addr: f[1].parse().unwrap(),
            src_port: f[2].parse().unwrap(),
            dst_port: f[3].parse().unwrap(),
            protocol: f[4].parse().unwrap(),
            packets: f[5].parse().unwrap(),
            bytes: f[6].parse().unwrap(),
            verdict: if f[7] == "ACCEPT" {
                Verdict::Accept
            } else {
                Verdict::RejectAcl
            },
            tcp_flags: 19,
            drop_reason: None,
        }
    }

    fn record(interface: &str, start: u64, end: u64, kind: RecordKind) -> FlowRecord {
        FlowRecord {
            interface: Arc::from(interface),
            ifindex: 2,
            interface_type: None,
            start,
            end,
            kind,
        }
    }

    fn render(format: &RecordFormat, record: &FlowRecord, meta: &Metadata) -> String {
        let mut out = Vec::new();
        format.render(record, meta, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn parse(format: &str) -> RecordFormat {
        format.parse().unwrap()
    }

    fn parse_error(format: &str) -> String {
        format.parse::<RecordFormat>().unwrap_err().to_string()
    }

    fn every_field_format() -> RecordFormat {
        let all: Vec<String> = Field::ALL
            .iter()
            .map(|f| format!("${{{}}}", f.name()))
            .collect();
        parse(&all.join(" "))
    }

    #[test]
    fn reference_examples_render_byte_exact() {
        let ok = |spec| RecordKind::Flow(flow(spec));
        let skip = RecordKind::SkipData {
            packets: 0,
            bytes: 0,
        };
        #[rustfmt::skip]
        let cases = [
            (record(ENI, 1418530010, 1418530070, ok("172.31.16.139 172.31.16.21 20641 22 6 20 4249 ACCEPT")),
             "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK\n"),
            (record(ENI, 1432917027, 1432917142, ok("203.0.113.12 172.31.16.139 0 0 1 4 336 ACCEPT")),
             "2 123456789010 eni-1235b8ca123456789 203.0.113.12 172.31.16.139 0 0 1 4 336 1432917027 1432917142 ACCEPT OK\n"),
            (record(ENI, 1432917094, 1432917142, ok("172.31.16.139 203.0.113.12 0 0 1 4 336 REJECT")),
             "2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.12 0 0 1 4 336 1432917094 1432917142 REJECT OK\n"),
            (record(ENI, 1431280876, 1431280934, RecordKind::NoData),
             "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA\n"),
            (record("eni-11111111aaaaaaaaa", 1431280876, 1431280934, skip),
             "2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA\n"),
        ];
        let format = RecordFormat::default();
        for (record, line) in cases {
            assert_eq!(render(&format, &record, &account()), line);
        }
    }

    /// AWS's published version-3 example (a TCP flag sequence): two connections to port
    /// 5001, SYN (2) from the client, SYN-ACK (18) from the server.
    #[test]
    fn aws_version_3_example_renders_byte_exact() {
        let format = parse(
            "${version} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${account-id} \
             ${type} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${pkt-srcaddr} ${pkt-dstaddr} \
             ${protocol} ${bytes} ${packets} ${start} ${end} ${action} ${tcp-flags} ${log-status}",
        );
        assert_eq!(format.version(), 3);
        let meta = Metadata {
            account_id: Some("123456789010".into()),
            vpc_id: Some("vpc-abcdefab012345678".into()),
            subnet_id: Some("subnet-aaaaaaaa012345678".into()),
            instance_id: Some("i-01234567890123456".into()),
            ..Metadata::default()
        };
        #[rustfmt::skip]
        let cases = [
            ("52.213.180.42 10.0.0.62 43416 5001 6 8 568 ACCEPT", 2,
             "3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43416 5001 52.213.180.42 10.0.0.62 6 568 8 1566848875 1566848933 ACCEPT 2 OK\n"),
            ("10.0.0.62 52.213.180.42 5001 43416 6 7 376 ACCEPT", 18,
             "3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43416 10.0.0.62 52.213.180.42 6 376 7 1566848875 1566848933 ACCEPT 18 OK\n"),
            ("52.213.180.42 10.0.0.62 43418 5001 6 70 100701 ACCEPT", 2,
             "3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43418 5001 52.213.180.42 10.0.0.62 6 100701 70 1566848875 1566848933 ACCEPT 2 OK\n"),
            ("10.0.0.62 52.213.180.42 5001 43418 6 12 632 ACCEPT", 18,
             "3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43418 10.0.0.62 52.213.180.42 6 632 12 1566848875 1566848933 ACCEPT 18 OK\n"),
        ];
        for (spec, tcp_flags, line) in cases {
            let kind = RecordKind::Flow(Flow {
                tcp_flags,
                ..flow(spec)
            });
            let record = record(ENI, 1566848875, 1566848933, kind);
            assert_eq!(render(&format, &record, &meta), line);
        }
    }

    #[test]
    fn skipdata_carries_the_unattributed_counts() {
        let kind = RecordKind::SkipData {
            packets: 12,
            bytes: 3400,
        };
        assert_eq!(
            render(
                &RecordFormat::default(),
                &record("eth0", 60, 120, kind),
                &account()
            ),
            "2 123456789010 eth0 - - - - - 12 3400 60 120 - SKIPDATA\n"
        );
    }

    #[test]
    fn records_append_to_the_buffer() {
        let idle = record("eth0", 60, 120, RecordKind::NoData);
        let mut out = b"head\n".to_vec();
        RecordFormat::default().render(&idle, &Metadata::default(), &mut out);
        RecordFormat::default().render(&idle, &Metadata::default(), &mut out);
        let line = "2 - eth0 - - - - - - - 60 120 - NODATA\n";
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("head\n{line}{line}")
        );
    }

    #[test]
    fn ipv6_addresses_are_compressed_lower_case() {
        let format = parse("${srcaddr} ${dstaddr} ${type} ${pkt-srcaddr} ${pkt-dstaddr}");
        let v6 = flow("FD00:0:0:0:0:0:0:1 2001:DB8:0:ABCD:0:0:0:1 443 50000 6 1 60 ACCEPT");
        assert_eq!(
            render(
                &format,
                &record("eth0", 1, 2, RecordKind::Flow(v6)),
                &account()
            ),
            "fd00::1 2001:db8:0:abcd::1 IPv6 fd00::1 2001:db8:0:abcd::1\n"
        );
    }

    #[test]
    fn ipv4_octets_of_every_width() {
        let format = parse("${srcaddr} ${dstaddr} ${type}");
        let v4 = flow("0.9.10.99 100.199.250.255 0 0 1 1 84 ACCEPT");
        assert_eq!(
            render(
                &format,
                &record("eth0", 1, 2, RecordKind::Flow(v4)),
                &account()
            ),
            "0.9.10.99 100.199.250.255 IPv4\n"
        );
    }

    #[test]
    fn tcp_flags_are_zero_for_other_protocols() {
        let format = parse("${protocol} ${tcp-flags}");
        let line = |spec| {
            render(
                &format,
                &record("eth0", 1, 2, RecordKind::Flow(flow(spec))),
                &account(),
            )
        };
        assert_eq!(line("10.0.0.1 10.0.0.2 53 53 17 1 80 ACCEPT"), "17 0\n");
        assert_eq!(line("10.0.0.1 10.0.0.2 5353 80 6 1 80 ACCEPT"), "6 19\n");
    }

    #[test]
    fn version_is_the_highest_field_version() {
        assert_eq!(parse(DEFAULT_FORMAT).version(), 2);
        assert_eq!(parse("${srcaddr} ${tcp-flags}").version(), 3);
        assert_eq!(parse("${region} ${srcaddr}").version(), 4);
        assert_eq!(
            parse("${flow-direction} ${tcp-flags} ${version}").version(),
            5
        );
        assert_eq!(parse("${reject-reason}").version(), 8);
        assert_eq!(parse("${ecs-task-id} ${srcaddr}").version(), 7);
        assert_eq!(parse("${ecs-task-id} ${reject-reason}").version(), 8);
        assert_eq!(parse("${resource-id}").version(), 9);
        assert_eq!(parse("${encryption-status} ${tcp-flags}").version(), 10);
        assert_eq!(parse("${version} ${interface-type}").version(), 11);
        assert_eq!(parse("${next-hop-vpc-id} ${resource-id}").version(), 11);
        assert_eq!(parse("${srcaddr} ${version}").version(), 2);
        let line = render(
            &parse("${version} ${az-id}"),
            &record("eth0", 1, 2, RecordKind::NoData),
            &account(),
        );
        assert_eq!(line, "4 -\n");
    }

    #[test]
    fn default_format_is_the_default() {
        let parsed = parse(DEFAULT_FORMAT);
        assert_eq!(parsed, RecordFormat::default());
        assert_eq!(parsed.to_string(), DEFAULT_FORMAT);
        assert_eq!(
            parsed.header_line(),
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes \
             start end action log-status"
        );
        let custom = parse("${log-status} ${pkt-src-aws-service} ${az-id}");
        assert_eq!(custom.header_line(), "log-status pkt-src-aws-service az-id");
    }

    #[test]
    fn every_field_renders_in_order() {
        let format = every_field_format();
        assert_eq!(format.version(), 11);
        assert_eq!(format.fields(), Field::ALL);
        let egress = Flow {
            direction: Direction::Egress,
            ..flow("172.31.16.139 172.31.16.21 20641 22 6 20 4249 ACCEPT")
        };
        let ok = FlowRecord {
            interface_type: Some("veth"),
            ..record(ENI, 1418530010, 1418530070, RecordKind::Flow(egress))
        };
        let line = render(&format, &ok, &full_metadata());
        assert_eq!(line.trim_end().split(' ').count(), Field::ALL.len());
        assert_eq!(
            line,
            "11 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 \
             1418530010 1418530070 ACCEPT OK vpc-0a1b2c3d subnet-0a1b2c3d i-0123456789abcdef0 19 \
             IPv4 172.31.16.139 172.31.16.21 eu-west-1 euw1-az1 - - - - egress - - \
             - - - - - - - - - - i-0123456789abcdef0 - web - frontend - asg-web blue veth \
             - - - - -\n"
        );
        let idle = record("eth0", 60, 120, RecordKind::NoData);
        let dashes = vec!["-"; Field::ALL.len() - 14].join(" ");
        assert_eq!(
            render(&format, &idle, &Metadata::default()),
            format!("11 - eth0 - - - - - - - 60 120 - NODATA {dashes}\n")
        );
    }

    #[test]
    fn field_facts_follow_the_reference() {
        assert_eq!(Field::ALL.len(), 54);
        for &field in Field::ALL {
            assert_eq!(Field::from_name(field.name()), Some(field));
            assert_eq!(field.column_name(), field.name().replace('-', "_"));
        }
        assert_eq!(Field::LogStatus.column_name(), "log_status");
        assert_eq!(Field::PktSrcAddr.column_name(), "pkt_srcaddr");
        assert_eq!(Field::from_name("SRCADDR"), None);
        use ColumnType::{Int32 as I, Int64 as L, String as S};
        let types: Vec<ColumnType> = Field::ALL.iter().map(|f| f.column_type()).collect();
        #[rustfmt::skip]
        assert_eq!(types, [
            I, S, S, S, S, I, I, I, L, L, L, L, S, S, // version 2
            S, S, S, I, S, S, S, // version 3
            S, S, S, S, // version 4
            S, S, S, I, // version 5
            S, // version 8
            S, S, S, S, S, S, S, S, S, S, // version 7
            S, // version 9
            I, // version 10
            S, S, S, S, S, S, S, S, S, S, S, S, // version 11
        ]);
        let versions: Vec<u8> = Field::ALL.iter().map(|f| f.version()).collect();
        #[rustfmt::skip]
        assert_eq!(versions, [
            2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 8,
            7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 9, 10, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11,
        ]);
        // Names exactly as AWS spells them.
        let names: Vec<&str> = Field::ALL[30..].iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "ecs-cluster-arn",
                "ecs-cluster-name",
                "ecs-container-instance-arn",
                "ecs-container-instance-id",
                "ecs-container-id",
                "ecs-second-container-id",
                "ecs-service-name",
                "ecs-task-definition-arn",
                "ecs-task-arn",
                "ecs-task-id",
                "resource-id",
                "encryption-status",
                "instance-tag",
                "instance-tag-2",
                "interface-tag",
                "interface-tag-2",
                "asg-tag",
                "asg-tag-2",
                "interface-type",
                "next-hop-interface-id",
                "next-hop-subnet-id",
                "next-hop-az-id",
                "next-hop-vpc-id",
                "next-hop-interface-type",
            ]
        );
    }

    #[test]
    fn values_for_columnar_encoders() {
        let format = every_field_format();
        let meta = full_metadata();
        let v6 = record(
            "",
            5,
            6,
            RecordKind::Flow(flow("fd00::1 fd00::2 1 2 58 3 312 REJECT")),
        );
        let value = |field| format.value(field, &v6, &meta);
        assert_eq!(value(Field::Version), FieldValue::Int(11));
        assert_eq!(value(Field::InterfaceId), FieldValue::Absent);
        assert_eq!(value(Field::SrcAddr).to_string(), "fd00::1");
        assert_eq!(value(Field::Bytes), FieldValue::Int(312));
        assert_eq!(value(Field::TcpFlags), FieldValue::Int(0));
        assert_eq!(value(Field::Action), FieldValue::Str("REJECT"));
        assert_eq!(value(Field::Region), FieldValue::Str("eu-west-1"));
        assert_eq!(value(Field::SublocationType), FieldValue::Absent);
        assert_eq!(value(Field::SublocationId), FieldValue::Absent);
        assert_eq!(value(Field::RejectReason), FieldValue::Str("acl"));
        assert_eq!(value(Field::TrafficPath).to_string(), "-");
        assert_eq!(value(Field::EncryptionStatus), FieldValue::Absent);
        assert_eq!(value(Field::InterfaceType), FieldValue::Absent);
        assert_eq!(
            value(Field::ResourceId),
            FieldValue::Str("i-0123456789abcdef0")
        );
        assert_eq!(value(Field::InstanceTag2), FieldValue::Absent);
        assert_eq!(value(Field::AsgTag2), FieldValue::Str("blue"));
        assert_eq!(value(Field::EcsTaskArn), FieldValue::Absent);
    }

    #[test]
    fn parse_errors_name_the_token() {
        #[rustfmt::skip]
        let cases = [
            ("", "empty format"),
            ("   ", "empty format"),
            ("${version} ${account-id} ${interface-id} ${srcadr} ${dstaddr}",
             r#"unknown field "${srcadr}" (token 4); did you mean "${srcaddr}"?"#),
            ("${version} ${Log-Status}",
             r#"unknown field "${Log-Status}" (token 2); did you mean "${log-status}"?"#),
            ("${version} ${colour}", r#"unknown field "${colour}" (token 2)"#),
            ("${version} ${account-id} ${interface-id} srcaddr",
             r#""srcaddr" is not a ${field} token (token 4); did you mean "${srcaddr}"?"#),
            ("${version} $srcaddr}",
             r#""$srcaddr}" is not a ${field} token (token 2); did you mean "${srcaddr}"?"#),
            ("${srcaddr}${dstaddr}", r#""${srcaddr}${dstaddr}" is not a ${field} token (token 1)"#),
            ("hello", r#""hello" is not a ${field} token (token 1)"#),
            ("${version} ${srcaddr}  ${dstaddr}", "two spaces before token 3"),
            ("${version}    ${srcaddr}", "4 spaces before token 2"),
            (" ${version}", "format starts with a space before token 1"),
            ("${version} ${srcaddr} ", "format ends with a space after token 2"),
            ("${version}\t${srcaddr}",
             r#""${version}\t${srcaddr}" contains '\t' (token 1): separate tokens with exactly one space"#),
            ("${version} ${srcaddr}\n",
             r#""${srcaddr}\n" contains '\n' (token 2): separate tokens with exactly one space"#),
            ("${version} ${srcaddr} ${dstaddr} ${srcaddr}",
             r#"duplicate field "${srcaddr}" (token 4, first used as token 2)"#),
            ("${version} ${tgw-id} ${srcaddr}",
             r#""${tgw-id}" (token 2) is a field of Transit Gateway flow logs (version 6); VPC flow logs, which flowlog writes, have no such field"#),
            ("${packets-lost-no-route}",
             r#""${packets-lost-no-route}" (token 1) is a field of Transit Gateway flow logs (version 6); VPC flow logs, which flowlog writes, have no such field"#),
            ("${interface-typ}",
             r#"unknown field "${interface-typ}" (token 1); did you mean "${interface-type}"?"#),
        ];
        for (format, message) in cases {
            assert_eq!(parse_error(format), message, "format {format:?}");
        }
    }
}
