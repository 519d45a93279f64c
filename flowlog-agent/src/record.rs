//! The record model: what one line of a flow log says, before any format renders it.

use std::{net::IpAddr, sync::Arc};

pub use flowlog_common::flow::{Direction, Verdict};

/// One record of a flow log: a flow, an idle interface, or packets that could not be attributed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// Name of the interface the record belongs to (`interface-id`).
    pub interface: Arc<str>,
    /// The interface's index when its packets were counted (IPFIX `ingressInterface` /
    /// `egressInterface`); 0 ("no interface" in IPFIX) only for packets not attributable to an
    /// interface.
    pub ifindex: u32,
    /// The `interface-type` field (version 11): the Linux link kind of the interface (`veth`,
    /// `bridge`, `vlan`, ...), or `interface` for a device without one (a NIC, as EC2 calls an
    /// instance's network interface). `None` (`-`) when unknown: packets not attributable to
    /// an interface, or an interface that vanished while no agent ran.
    pub interface_type: Option<&'static str>,
    /// Unix seconds: first packet of the flow within the interval, or the interval's start for
    /// NODATA and SKIPDATA.
    pub start: u64,
    /// Unix seconds: last packet of the flow within the interval, or the interval's end.
    pub end: u64,
    pub kind: RecordKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// `log-status` OK: a flow seen in the interval.
    Flow(Flow),
    /// `log-status` NODATA: the interface had no traffic in the interval.
    NoData,
    /// `log-status` SKIPDATA: packets that found the flow map full, with their counts.
    SkipData { packets: u64, bytes: u64 },
}

/// A unidirectional flow on one interface during one interval, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub direction: Direction,
    pub src_addr: IpAddr,
    pub dst_addr: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number.
    pub protocol: u8,
    pub packets: u64,
    pub bytes: u64,
    pub verdict: Verdict,
    /// OR of the TCP flags in the VPC Flow Logs encoding; 0 for other protocols.
    pub tcp_flags: u8,
    /// For [`Verdict::KernelDrop`]: the kernel's drop reason (`netfilter-drop`, `no-socket`,
    /// ...).
    pub drop_reason: Option<&'static str>,
}

impl RecordKind {
    /// The `log-status` field.
    pub fn log_status(&self) -> &'static str {
        match self {
            RecordKind::Flow(_) => "OK",
            RecordKind::NoData => "NODATA",
            RecordKind::SkipData { .. } => "SKIPDATA",
        }
    }
}

impl Flow {
    /// The `action` field.
    pub fn action(&self) -> &'static str {
        action(self.verdict)
    }

    /// The `reject-reason` field: the policy layer that dropped the packets (`acl`,
    /// `security-group`, `closed-connection`), or in audit mode the layer that would have,
    /// prefixed `audit-` (the action stays ACCEPT, since nothing was dropped). None (`-`) for
    /// packets the policy accepted. A packet the kernel dropped has the kernel's reason
    /// (`netfilter-drop`, `no-socket`, ...).
    pub fn reject_reason(&self) -> Option<&'static str> {
        self.drop_reason.or_else(|| reject_reason(self.verdict))
    }

    /// The `type` field.
    pub fn ip_type(&self) -> &'static str {
        match self.src_addr {
            IpAddr::V4(_) => "IPv4",
            IpAddr::V6(_) => "IPv6",
        }
    }

    /// The `flow-direction` field.
    pub fn direction_name(&self) -> &'static str {
        match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The `action` field of a verdict.
pub fn action(verdict: Verdict) -> &'static str {
    if verdict.is_reject() {
        "REJECT"
    } else {
        "ACCEPT"
    }
}

/// The `reject-reason` field of a verdict: see [`Flow::reject_reason`].
pub fn reject_reason(verdict: Verdict) -> Option<&'static str> {
    match verdict {
        Verdict::Accept => None,
        Verdict::RejectAcl => Some("acl"),
        Verdict::RejectSecurityGroup => Some("security-group"),
        Verdict::RejectClosedConnection => Some("closed-connection"),
        Verdict::AuditAcl => Some("audit-acl"),
        Verdict::AuditSecurityGroup => Some("audit-security-group"),
        Verdict::AuditClosedConnection => Some("audit-closed-connection"),
        // The kernel's reason is in the flow ([`Flow::drop_reason`]).
        Verdict::KernelDrop => Some("kernel"),
    }
}

/// Values of the fields the host cannot know (account, VPC, ...), from configuration; `None`
/// renders as `-`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub account_id: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub az_id: Option<String>,
    pub sublocation_type: Option<String>,
    pub sublocation_id: Option<String>,
    /// `resource-id` (version 9): the resource behind the flow log's interfaces.
    pub resource_id: Option<String>,
    /// The tag fields of version 11: the value of the tag key the operator chose, as AWS
    /// writes the values of the keys chosen when a flow log is created.
    pub instance_tag: Option<String>,
    pub instance_tag_2: Option<String>,
    pub interface_tag: Option<String>,
    pub interface_tag_2: Option<String>,
    pub asg_tag: Option<String>,
    pub asg_tag_2: Option<String>,
}

/// Everything one aggregation interval produced, shared by every sink of a flow log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntervalRecords {
    /// Unix seconds of the interval's start and end.
    pub start: u64,
    pub end: u64,
    pub records: Vec<FlowRecord>,
}
