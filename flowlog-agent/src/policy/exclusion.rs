//! Exclusions (`--exclude`, the config file's `exclude`): traffic that is decided by the policy
//! but not logged.

use flowlog_common::policy::{MAX_EXCLUSIONS, RULE_ALLOW, Rule};

use super::{Matcher, family_mismatch, parse_network};

/// Traffic not logged (`--exclude CIDR[/PROTO[:PORT]]`): it matches when either address is in
/// the network, the protocol matches and either port is the port.
#[derive(Clone, Debug, PartialEq)]
pub struct Exclusion(pub Matcher);

impl Exclusion {
    /// The defaults, as AWS excludes them: DHCP and DHCPv6, the instance metadata service and
    /// the time sync service (IPv4 and IPv6).
    pub fn defaults() -> Vec<Exclusion> {
        [
            "0.0.0.0/0/udp:67",
            "0.0.0.0/0/udp:68",
            "::/0/udp:546",
            "::/0/udp:547",
            "169.254.169.254/32",
            "169.254.169.123/32",
            "fd00:ec2::254/128",
            "fd00:ec2::123/128",
        ]
        .into_iter()
        .map(|text| Exclusion::parse(text).expect("the defaults parse"))
        .collect()
    }

    /// `CIDR`, `CIDR/PROTO` or `CIDR/PROTO:PORT` (`169.254.169.254/32`, `0.0.0.0/0/udp:67`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: String| format!("--exclude {text:?}: {why}");
        // The CIDR has at most one '/'; a second one starts the protocol.
        let (cidr, rest) = match text.match_indices('/').nth(1) {
            Some((at, _)) => (&text[..at], Some(&text[at + 1..])),
            None => (text, None),
        };
        let network = parse_network(cidr).map_err(|why| bad(format!("{cidr:?}: {why}")))?;
        let (protocol, ports) = match rest {
            None => (None, (0, u16::MAX)),
            Some(rest) => {
                let (name, port) = match rest.split_once(':') {
                    Some((name, port)) => (name, Some(port)),
                    None => (rest, None),
                };
                let protocol = match name {
                    "tcp" => Some(6),
                    "udp" => Some(17),
                    "icmp" => Some(1),
                    "icmpv6" => Some(58),
                    "all" => None,
                    other => Some(other.parse::<u8>().map_err(|_| {
                        bad(format!(
                            "protocol {other:?}: expected tcp, udp, icmp, icmpv6, all or 0-255"
                        ))
                    })?),
                };
                let ports = match port {
                    None => (0, u16::MAX),
                    Some(port) => {
                        if !matches!(protocol, Some(6 | 17)) {
                            return Err(bad(format!(
                                "port {port:?}: {name} has no ports (only tcp and udp do)"
                            )));
                        }
                        let port: u16 = port
                            .parse()
                            .map_err(|_| bad(format!("port {port:?}: expected 0-65535")))?;
                        (port, port)
                    }
                };
                (protocol, ports)
            }
        };
        if let Some(message) = family_mismatch(protocol, &network) {
            return Err(bad(format!("{cidr:?}: {message}")));
        }
        Ok(Exclusion(Matcher {
            protocol,
            network,
            ports,
        }))
    }

    pub fn compile(list: &[Exclusion]) -> Result<Vec<Rule>, String> {
        if list.len() > MAX_EXCLUSIONS as usize {
            return Err(format!(
                "{} exclusions: at most {MAX_EXCLUSIONS} are supported",
                list.len()
            ));
        }
        Ok(list.iter().map(|e| e.0.compile(RULE_ALLOW)).collect())
    }
}
