//! The flow key and counters the kernel programs write and the agent drains.

/// Which way a packet crossed the interface it was counted on.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(Self::Ingress),
            1 => Ok(Self::Egress),
            other => Err(other),
        }
    }
}

/// The IP version of a flow. IPv4 addresses sit in the first four bytes of the 16-byte address
/// fields, the other twelve are zero; the family says which one it is, so an IPv6 packet that
/// carries an IPv4-mapped address is never mistaken for IPv4.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    Ipv4 = 4,
    Ipv6 = 6,
}

impl TryFrom<u8> for AddressFamily {
    type Error = u8;
    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            4 => Ok(Self::Ipv4),
            6 => Ok(Self::Ipv6),
            other => Err(other),
        }
    }
}

/// What the datapath did with a packet, and which policy layer decided it.
///
/// The verdict is part of the flow key, so accepted and rejected packets of one tuple are counted
/// apart, as VPC Flow Logs require. The low nibble is the rejecting layer ([`RejectLayer`], 0 for
/// none); [`Verdict::AUDIT`] marks a packet that was let through only because the policy is in
/// audit mode.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Accept = 0,
    /// Dropped: the network ACL denied it.
    RejectAcl = 1,
    /// Dropped: no security-group rule allows the connection.
    RejectSecurityGroup = 2,
    /// Dropped: it belongs to a TCP connection that was already closed.
    RejectClosedConnection = 3,
    /// Passed in audit mode; the ACL would have dropped it.
    AuditAcl = 0x11,
    /// Passed in audit mode; the security group would have dropped it.
    AuditSecurityGroup = 0x12,
    /// Passed in audit mode; it belongs to a closed connection.
    AuditClosedConnection = 0x13,
    /// Dropped by the kernel itself (netfilter, no socket, ...): only in the agent's drained
    /// flows, whose `cpu` field then holds the kernel's drop reason (see `crate::drops`).
    KernelDrop = 0x20,
}

/// The policy layer that rejects a packet (the low nibble of a [`Verdict`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectLayer {
    Acl = 1,
    SecurityGroup = 2,
    ClosedConnection = 3,
}

impl Verdict {
    /// Set on the verdict of a packet that passed only because the policy is in audit mode.
    pub const AUDIT: u8 = 0x10;

    /// Whether the packet was dropped (the record's action is REJECT).
    pub const fn is_reject(self) -> bool {
        (self as u8) & Self::AUDIT == 0 && self as u8 != 0
    }
}

impl TryFrom<u8> for Verdict {
    type Error = u8;
    fn try_from(value: u8) -> Result<Self, u8> {
        match value {
            0 => Ok(Self::Accept),
            1 => Ok(Self::RejectAcl),
            2 => Ok(Self::RejectSecurityGroup),
            3 => Ok(Self::RejectClosedConnection),
            0x11 => Ok(Self::AuditAcl),
            0x12 => Ok(Self::AuditSecurityGroup),
            0x13 => Ok(Self::AuditClosedConnection),
            0x20 => Ok(Self::KernelDrop),
            other => Err(other),
        }
    }
}

/// One unidirectional flow on one interface, as counted by one CPU.
///
/// `cpu` makes every map entry private to the CPU that counts into it: kernel programs on one
/// CPU never run concurrently with each other, so a plain `+=` on the entry cannot lose an
/// increment. The agent sums the entries of a flow over CPUs when it drains.
///
/// 48 bytes, no implicit padding. 8-byte aligned so the kernel programs can clear it with six
/// word stores.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Interface index the packet was seen on.
    pub ifindex: u32,
    /// CPU that counted the packet (see the type's documentation). Zero in merged keys, except
    /// those of kernel drops ([`Verdict::KernelDrop`]), where it holds the drop reason.
    pub cpu: u32,
    /// Source address: IPv4 in the first 4 bytes (rest zero), or IPv6.
    pub src_addr: [u8; 16],
    /// Destination address, same layout as `src_addr`.
    pub dst_addr: [u8; 16],
    /// Source port, big-endian; zero for protocols without ports and non-first fragments.
    pub src_port: [u8; 2],
    /// Destination port, big-endian.
    pub dst_port: [u8; 2],
    /// IANA protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, ...).
    pub protocol: u8,
    /// [`AddressFamily`] as its integer.
    pub family: u8,
    /// [`Direction`] as its integer.
    pub direction: u8,
    /// [`Verdict`] as its integer.
    pub verdict: u8,
}

impl FlowKey {
    /// An address in the key's layout: IPv4 in the first four bytes, the rest zero.
    pub const fn address_bytes(address: core::net::IpAddr) -> [u8; 16] {
        match address {
            core::net::IpAddr::V4(v4) => {
                let octets = v4.octets();
                [
                    octets[0], octets[1], octets[2], octets[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ]
            }
            core::net::IpAddr::V6(v6) => v6.octets(),
        }
    }

    pub const fn zeroed() -> Self {
        Self {
            ifindex: 0,
            cpu: 0,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: [0; 2],
            dst_port: [0; 2],
            protocol: 0,
            family: 0,
            direction: 0,
            verdict: 0,
        }
    }

    pub const fn src_port(&self) -> u16 {
        u16::from_be_bytes(self.src_port)
    }

    pub const fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst_port)
    }
}

/// What one CPU counted for one flow during one interval.
///
/// 40 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Wire packets (a GSO/GRO super-packet counts as its segments).
    pub packets: u64,
    /// IP-layer bytes of those packets, IP header included.
    pub bytes: u64,
    /// Kernel jiffies (`bpf_jiffies64`, which the verifier inlines) at the first packet. The
    /// agent converts them to Unix time with the clock program's samples.
    pub first_seen_jiffies: u64,
    /// Kernel jiffies at the last packet.
    pub last_seen_jiffies: u64,
    /// OR of the packets' TCP flags in the VPC Flow Logs encoding (see [`crate::tcp`]); only the
    /// low byte is used. A u32 beside a u32, so the value is built with plain stores.
    pub tcp_flags: u32,
    /// Not a count: the policy's fast-path stamp ([`crate::policy::fast_path_stamp`]), set by
    /// the program when the policy accepted this flow after a full check; 0 = none. The agent
    /// ignores it.
    pub policy_stamp: u32,
}

impl FlowCounters {
    /// Adds another CPU's (or interval's) counts of the same flow.
    pub fn merge(&mut self, other: &Self) {
        if self.packets == 0 {
            *self = *other;
            return;
        }
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.first_seen_jiffies = self.first_seen_jiffies.min(other.first_seen_jiffies);
        self.last_seen_jiffies = self.last_seen_jiffies.max(other.last_seen_jiffies);
        self.tcp_flags |= other.tcp_flags;
    }
}

/// Packets that could not get a flow entry because the flow map was full, per interface and CPU.
/// Reported as SKIPDATA records.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SkipKey {
    pub ifindex: u32,
    pub cpu: u32,
}

/// A packet and byte count (used for skipped packets and datapath statistics).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

impl PacketCount {
    pub fn add(&mut self, other: &Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<FlowKey>(), 48);
        assert_eq!(size_of::<FlowCounters>(), 40);
        assert_eq!(size_of::<SkipKey>(), 8);
        assert_eq!(size_of::<PacketCount>(), 16);
    }

    #[test]
    fn enums_round_trip_through_their_integers() {
        for d in [Direction::Ingress, Direction::Egress] {
            assert_eq!(Direction::try_from(d as u8), Ok(d));
        }
        for f in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
            assert_eq!(AddressFamily::try_from(f as u8), Ok(f));
        }
        for v in [
            Verdict::Accept,
            Verdict::RejectAcl,
            Verdict::RejectSecurityGroup,
            Verdict::RejectClosedConnection,
            Verdict::AuditAcl,
            Verdict::AuditSecurityGroup,
            Verdict::AuditClosedConnection,
            Verdict::KernelDrop,
        ] {
            assert_eq!(Verdict::try_from(v as u8), Ok(v));
            assert_eq!(
                v.is_reject(),
                (1..=3).contains(&(v as u8)) || v == Verdict::KernelDrop
            );
        }
        assert_eq!(
            Verdict::AuditAcl as u8,
            Verdict::AUDIT | RejectLayer::Acl as u8
        );
        assert_eq!(Direction::try_from(7), Err(7));
        assert_eq!(AddressFamily::try_from(5), Err(5));
    }

    #[test]
    fn merge_sums_counts_and_widens_times() {
        let mut a = FlowCounters {
            packets: 2,
            bytes: 100,
            first_seen_jiffies: 50,
            last_seen_jiffies: 60,
            tcp_flags: 2,
            policy_stamp: 0,
        };
        let b = FlowCounters {
            packets: 3,
            bytes: 300,
            first_seen_jiffies: 40,
            last_seen_jiffies: 55,
            tcp_flags: 1,
            policy_stamp: 0,
        };
        a.merge(&b);
        assert_eq!((a.packets, a.bytes), (5, 400));
        assert_eq!((a.first_seen_jiffies, a.last_seen_jiffies), (40, 60));
        assert_eq!(a.tcp_flags, 3);

        let mut empty = FlowCounters::default();
        empty.merge(&b);
        assert_eq!(empty, b);
    }
}
