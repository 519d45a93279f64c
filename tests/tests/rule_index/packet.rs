//! The first packet of a connection: drawn, framed, and the flow key it must be counted under.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use flowlog_common::flow::{AddressFamily, Direction, FlowKey, Verdict};
use tests::{
    frames::{FrameBuilder, tcp_flags::SYN},
    test_run::{LOOPBACK_IFINDEX, Program, V4_DST, V6_DST},
};

use crate::{
    random::{NETWORKS, Rng},
    reference::{Network, Protocol},
};

/// The local end of every connection; rules look only at the remote one.
pub const LOCAL_V4: Ipv4Addr = Ipv4Addr::new(V4_DST[0], V4_DST[1], V4_DST[2], V4_DST[3]);
pub const LOCAL_V6: Ipv6Addr = Ipv6Addr::from_octets(V6_DST);

/// The first packet of a connection, from the interface's point of view.
#[derive(Clone, Copy, Debug)]
pub struct Opening {
    pub inbound: bool,
    pub protocol: Protocol,
    pub remote: IpAddr,
    /// Source and destination ports (0 for ICMP).
    pub src_port: u16,
    pub dst_port: u16,
}

impl Opening {
    pub fn random(rng: &mut Rng, ports: &[u16]) -> Self {
        let ipv4 = rng.percent(50);
        let protocol = match rng.below(100) {
            0..40 => Protocol::Tcp,
            40..75 => Protocol::Udp,
            _ => Protocol::icmp_of(ipv4),
        };
        let remote = loop {
            let network = Network::parse(rng.pick(NETWORKS));
            if network.address.is_ipv4() == ipv4 {
                // Mostly inside a network; a fifth just outside one (the /0s: anywhere).
                let outside = rng.percent(20);
                break network.draw(rng, outside);
            }
        };
        let (src_port, dst_port) = match protocol {
            Protocol::Icmp | Protocol::Icmpv6 => (0, 0),
            _ if rng.percent(85) => (rng.next() as u16, rng.pick(ports)),
            _ => (rng.next() as u16, rng.next() as u16),
        };
        Self {
            inbound: rng.percent(50),
            protocol,
            remote,
            src_port,
            dst_port,
        }
    }

    /// The port rules apply to: the local port of an inbound connection, the remote port of
    /// an outbound one, i.e. the opening packet's destination port (0 for ICMP).
    pub fn rule_port(&self) -> u16 {
        self.dst_port
    }

    pub fn program(&self) -> Program {
        if self.inbound {
            Program::TcIngress
        } else {
            Program::TcEgress
        }
    }

    pub fn local(&self) -> IpAddr {
        match self.remote {
            IpAddr::V4(_) => LOCAL_V4.into(),
            IpAddr::V6(_) => LOCAL_V6.into(),
        }
    }

    /// Source and destination addresses.
    pub fn addresses(&self) -> (IpAddr, IpAddr) {
        if self.inbound {
            (self.remote, self.local())
        } else {
            (self.local(), self.remote)
        }
    }

    /// The connection, the same for both directions (what the connection table keys on).
    pub fn connection(&self) -> (u8, IpAddr, u16, u16) {
        let (local_port, remote_port) = if self.inbound {
            (self.dst_port, self.src_port)
        } else {
            (self.src_port, self.dst_port)
        };
        (self.protocol.number(), self.remote, local_port, remote_port)
    }

    pub fn frame(&self, echo_id: u16) -> Vec<u8> {
        let builder = match self.addresses() {
            (IpAddr::V4(src), IpAddr::V4(dst)) => FrameBuilder::ipv4(src, dst),
            (IpAddr::V6(src), IpAddr::V6(dst)) => FrameBuilder::ipv6(src, dst),
            _ => unreachable!("one family"),
        };
        let builder = match self.protocol {
            Protocol::Tcp => builder.tcp(self.src_port, self.dst_port).tcp_flags(SYN),
            Protocol::Udp => builder.udp(self.src_port, self.dst_port),
            Protocol::Icmp => builder.icmp_echo(echo_id, 1),
            Protocol::Icmpv6 => builder.icmpv6_echo(echo_id, 1),
        };
        builder.build().bytes
    }

    /// The key its flow must be counted under with `verdict`.
    pub fn flow_key(&self, verdict: Verdict) -> FlowKey {
        let (src, dst) = self.addresses();
        let (family, direction) = (
            match self.remote {
                IpAddr::V4(_) => AddressFamily::Ipv4,
                IpAddr::V6(_) => AddressFamily::Ipv6,
            },
            if self.inbound {
                Direction::Ingress
            } else {
                Direction::Egress
            },
        );
        FlowKey {
            ifindex: LOOPBACK_IFINDEX,
            cpu: 0,
            src_addr: FlowKey::address_bytes(src),
            dst_addr: FlowKey::address_bytes(dst),
            src_port: self.src_port.to_be_bytes(),
            dst_port: self.dst_port.to_be_bytes(),
            protocol: self.protocol.number(),
            family: family as u8,
            direction: direction as u8,
            verdict: verdict as u8,
        }
    }
}

impl fmt::Display for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = if self.remote.is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        let (direction, preposition) = if self.inbound {
            ("inbound", "from")
        } else {
            ("outbound", "to")
        };
        write!(
            f,
            "{family} {} {direction} {preposition} {}, ports {} -> {}",
            self.protocol.name(),
            self.remote,
            self.src_port,
            self.dst_port
        )
    }
}
