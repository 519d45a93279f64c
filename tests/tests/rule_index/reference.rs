//! The policy as the reference reads it, its TOML, and the linear scan that decides a packet.

use std::{collections::HashSet, fmt, net::IpAddr};

use flowlog_common::flow::Verdict;

use crate::{
    packet::Opening,
    random::{
        ACL_NARROW_PERCENT, ACL_RULES, NETWORKS, Rng, SG_NARROW_PERCENT, SG_RULES_PER_DIRECTION,
        SINGLE_PORTS, SMALL_RANGES, WIDE_RANGES,
    },
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Icmpv6 => "icmpv6",
        }
    }

    /// The ICMP of the family: the only protocol without ports the test sends.
    pub fn icmp_of(ipv4: bool) -> Self {
        if ipv4 { Self::Icmp } else { Self::Icmpv6 }
    }
}

/// An address prefix, matched with integer masks (not the agent's `Network`).
#[derive(Clone, Copy, Debug)]
pub struct Network {
    pub address: IpAddr,
    pub len: u32,
}

impl Network {
    pub fn parse(text: &str) -> Self {
        let (address, len) = text.split_once('/').expect("address/len");
        Self {
            address: address.parse().expect("an address"),
            len: len.parse().expect("a prefix length"),
        }
    }

    /// A /24 or longer, a /64 or longer.
    pub fn is_narrow(&self) -> bool {
        self.len >= if self.address.is_ipv4() { 24 } else { 64 }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.len).unwrap_or(0);
                u32::from(a) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.len).unwrap_or(0);
                u128::from(a) & mask == u128::from(net)
            }
            _ => false,
        }
    }

    /// An address inside the network (host bits random, or all zeros or all ones), or with
    /// `outside` the same with the network's last prefix bit flipped: just outside it, maybe
    /// inside its parent.
    pub fn draw(&self, rng: &mut Rng, outside: bool) -> IpAddr {
        let host = match rng.below(4) {
            0 => 0,
            1 => u128::MAX,
            _ => u128::from(rng.next()) << 64 | u128::from(rng.next()),
        };
        let flip = |bits: u32| {
            if outside && self.len > 0 {
                1u128 << (bits - self.len)
            } else {
                0
            }
        };
        match self.address {
            IpAddr::V4(net) => {
                let host_mask = u32::MAX.checked_shr(self.len).unwrap_or(0);
                let inside = u32::from(net) | (host as u32 & host_mask);
                IpAddr::V4((inside ^ flip(32) as u32).into())
            }
            IpAddr::V6(net) => {
                let host_mask = u128::MAX.checked_shr(self.len).unwrap_or(0);
                IpAddr::V6(((u128::from(net) | (host & host_mask)) ^ flip(128)).into())
            }
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

/// What a rule matches: a protocol (`None`: all), the remote network, the destination ports
/// (`None`: any, also for packets without ports).
#[derive(Clone, Debug)]
pub struct Match {
    pub protocol: Option<Protocol>,
    pub network: Network,
    pub ports: Option<(u16, u16)>,
}

impl Match {
    pub fn matches(&self, packet: &Opening) -> bool {
        self.network.contains(packet.remote)
            && self.protocol.is_none_or(|p| p == packet.protocol)
            && self
                .ports
                .is_none_or(|(min, max)| (min..=max).contains(&packet.rule_port()))
    }

    /// A rule the policy parser accepts: ICMP only on IPv4 networks, ICMPv6 only on IPv6 ones,
    /// ports only on TCP and UDP rules. Only narrow networks get protocol `all`: on a broad one
    /// it would hide most later ACL rules of the family.
    pub fn random(rng: &mut Rng, narrow_percent: u64) -> Self {
        let narrow = rng.percent(narrow_percent);
        let network = loop {
            let network = Network::parse(rng.pick(NETWORKS));
            if network.is_narrow() == narrow {
                break network;
            }
        };
        let ipv4 = network.address.is_ipv4();
        let protocol = match rng.below(100) {
            0..40 => Some(Protocol::Tcp),
            40..75 => Some(Protocol::Udp),
            75..90 => Some(Protocol::icmp_of(ipv4)),
            _ if narrow => None,
            _ => Some(Protocol::Tcp),
        };
        let ports = match (protocol, rng.below(100)) {
            (Some(Protocol::Tcp | Protocol::Udp), draw) => match draw {
                0..60 => Some(rng.pick(SINGLE_PORTS)),
                60..90 => Some(rng.pick(SMALL_RANGES)),
                90..95 => Some(rng.pick(WIDE_RANGES)),
                _ => None,
            },
            _ => None,
        };
        Self {
            protocol,
            network,
            ports,
        }
    }

    pub fn toml(&self) -> String {
        let protocol = self.protocol.map_or("all", Protocol::name);
        let mut text = format!("protocol = \"{protocol}\"\ncidr = \"{}\"\n", self.network);
        if let Some((min, max)) = self.ports {
            text += &format!("ports = \"{min}-{max}\"\n");
        }
        text
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = self.protocol.map_or("all", Protocol::name);
        write!(f, "{protocol} {}", self.network)?;
        match self.ports {
            Some((min, max)) => write!(f, " ports {min}-{max}"),
            None => write!(f, " any port"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AclRule {
    pub number: u32,
    pub ingress: bool,
    pub matcher: Match,
    pub allow: bool,
}

/// The policy as the reference reads it.
pub struct PolicyModel {
    pub acl_default_allow: bool,
    /// In the file's order, not sorted.
    pub acl: Vec<AclRule>,
    pub sg_ingress: Vec<Match>,
    pub sg_egress: Vec<Match>,
}

/// The reference's decision, with the rules behind it.
pub struct Expected<'a> {
    pub verdict: Verdict,
    /// The first ACL rule of the direction that matched; `None`: the default applied.
    pub acl_rule: Option<&'a AclRule>,
    /// A security-group rule of the direction that allows the connection.
    pub sg_rule: Option<&'a Match>,
}

impl PolicyModel {
    pub fn random(rng: &mut Rng) -> Self {
        let mut numbers = HashSet::new();
        let mut acl = Vec::with_capacity(ACL_RULES);
        // In the file in the order drawn: the parser must sort them by number.
        while acl.len() < ACL_RULES {
            let number = 1 + rng.below(32_766) as u32;
            if numbers.insert(number) {
                acl.push(AclRule {
                    number,
                    ingress: rng.percent(50),
                    matcher: Match::random(rng, ACL_NARROW_PERCENT),
                    allow: rng.percent(50),
                });
            }
        }
        let mut sg = || -> Vec<Match> {
            (0..SG_RULES_PER_DIRECTION)
                .map(|_| Match::random(rng, SG_NARROW_PERCENT))
                .collect()
        };
        let (sg_ingress, sg_egress) = (sg(), sg());
        Self {
            acl_default_allow: rng.percent(50),
            acl,
            sg_ingress,
            sg_egress,
        }
    }

    pub fn toml(&self) -> String {
        let default = if self.acl_default_allow {
            "allow"
        } else {
            "deny"
        };
        let mut text = format!("mode = \"enforce\"\n[acl]\ndefault = \"{default}\"\n");
        for rule in &self.acl {
            let direction = if rule.ingress { "ingress" } else { "egress" };
            let action = if rule.allow { "allow" } else { "deny" };
            text += &format!(
                "[[acl.rule]]\nnumber = {}\ndirection = \"{direction}\"\n{}action = \"{action}\"\n",
                rule.number,
                rule.matcher.toml()
            );
        }
        text += "[security_group]\n";
        for (section, rules) in [("ingress", &self.sg_ingress), ("egress", &self.sg_egress)] {
            for rule in rules {
                text += &format!("[[security_group.{section}]]\n{}", rule.toml());
            }
        }
        text
    }

    /// The linear scan: the ACL rule of the packet's direction with the lowest number, any
    /// security-group rule of its direction; inbound the ACL rejects first, outbound the
    /// security group.
    pub fn decide(&self, packet: &Opening) -> Expected<'_> {
        let acl_rule = self
            .acl
            .iter()
            .filter(|rule| rule.ingress == packet.inbound && rule.matcher.matches(packet))
            .min_by_key(|rule| rule.number);
        let acl_allows = acl_rule.map_or(self.acl_default_allow, |rule| rule.allow);
        let sg = if packet.inbound {
            &self.sg_ingress
        } else {
            &self.sg_egress
        };
        let sg_rule = sg.iter().find(|rule| rule.matches(packet));
        let (acl_rejects, sg_rejects) = (!acl_allows, sg_rule.is_none());
        let verdict = if packet.inbound && acl_rejects {
            Verdict::RejectAcl
        } else if sg_rejects {
            Verdict::RejectSecurityGroup
        } else if acl_rejects {
            Verdict::RejectAcl
        } else {
            Verdict::Accept
        };
        Expected {
            verdict,
            acl_rule,
            sg_rule,
        }
    }
}
