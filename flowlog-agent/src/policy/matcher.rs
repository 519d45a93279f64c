//! What a rule or an exclusion matches: a protocol, a remote network and ports, checked when
//! read and compiled into the kernel's rule layout.

use std::net::IpAddr;

use flowlog_common::{
    flow::{AddressFamily, FlowKey},
    policy::{ANY_PROTOCOL, Rule},
};

/// What a rule matches: protocol (`None` = all), remote network, port range.
#[derive(Clone, Debug, PartialEq)]
pub struct Matcher {
    pub protocol: Option<u8>,
    pub network: Network,
    pub ports: (u16, u16),
}

/// An address prefix (`198.18.0.0/15`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Network {
    pub address: IpAddr,
    pub prefix_len: u8,
}

/// Why a rule for `protocol` on `network` could never match: ICMP is IPv4's, ICMPv6 IPv6's.
pub(super) fn family_mismatch(protocol: Option<u8>, network: &Network) -> Option<String> {
    match (protocol, network.address.is_ipv4()) {
        (Some(1), false) => Some(
            "icmp is IPv4's; an IPv6 CIDR never matches it (use icmpv6, or an IPv4 CIDR)".into(),
        ),
        (Some(58), true) => Some(
            "icmpv6 is IPv6's; an IPv4 CIDR never matches it (use icmp, or an IPv6 CIDR)".into(),
        ),
        _ => None,
    }
}

/// `198.18.0.0/15`, `fd00::/8`, or a bare address (a /32 or /128).
pub fn parse_network(text: &str) -> Result<Network, String> {
    let (address, prefix_len) = match text.split_once('/') {
        Some((address, len)) => (address, Some(len)),
        None => (text, None),
    };
    let address: IpAddr = address
        .parse()
        .map_err(|_| "not an IPv4 or IPv6 address with a prefix length".to_owned())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix_len {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max)
            .ok_or_else(|| format!("prefix length {len:?}: expected 0 to {max}"))?,
    };
    let network = Network {
        address,
        prefix_len,
    };
    let (prefix, _) = network.prefix_and_mask();
    if prefix != FlowKey::address_bytes(address) {
        return Err(format!(
            "host bits are set; the network is {}/{prefix_len}",
            network.masked_address()
        ));
    }
    Ok(network)
}

pub(super) fn parse_ports(text: &str) -> Result<(u16, u16), String> {
    let port = |part: &str| {
        part.trim()
            .parse::<u16>()
            .map_err(|_| format!("{part:?} is not a port (0-65535)"))
    };
    let (min, max) = match text.split_once('-') {
        Some((min, max)) => (port(min)?, port(max)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if min > max {
        return Err("the range is empty (first port above the last)".into());
    }
    Ok((min, max))
}

impl Network {
    /// Whether `address` is inside this network (never across families).
    pub fn contains(&self, address: IpAddr) -> bool {
        if address.is_ipv4() != self.address.is_ipv4() {
            return false;
        }
        let (prefix, mask) = self.prefix_and_mask();
        let bytes = FlowKey::address_bytes(address);
        bytes
            .iter()
            .zip(mask)
            .zip(prefix)
            .all(|((byte, mask), prefix)| byte & mask == prefix)
    }

    fn family(&self) -> AddressFamily {
        if self.address.is_ipv4() {
            AddressFamily::Ipv4
        } else {
            AddressFamily::Ipv6
        }
    }

    /// Prefix (masked address) and mask, in the flow key's layout.
    fn prefix_and_mask(&self) -> ([u8; 16], [u8; 16]) {
        let mut mask = [0u8; 16];
        for bit in 0..self.prefix_len as usize {
            mask[bit / 8] |= 0x80 >> (bit % 8);
        }
        let mut prefix = FlowKey::address_bytes(self.address);
        for (byte, m) in prefix.iter_mut().zip(mask) {
            *byte &= m;
        }
        (prefix, mask)
    }

    fn masked_address(&self) -> IpAddr {
        let (prefix, _) = self.prefix_and_mask();
        match self.address {
            IpAddr::V4(_) => IpAddr::from([prefix[0], prefix[1], prefix[2], prefix[3]]),
            IpAddr::V6(_) => IpAddr::from(prefix),
        }
    }
}

impl Matcher {
    pub(super) fn compile(&self, action: u8) -> Rule {
        let (prefix, mask) = self.network.prefix_and_mask();
        Rule {
            prefix,
            mask,
            port_min: self.ports.0,
            port_max: self.ports.1,
            protocol: self.protocol.map_or(ANY_PROTOCOL, u16::from),
            family: self.network.family() as u8,
            action,
        }
    }
}
