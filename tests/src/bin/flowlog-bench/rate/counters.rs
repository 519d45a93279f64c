//! The kernel's own counts in a namespace: an interface's packets and drops
//! (`/proc/net/dev`) and UDP's (`/proc/net/snmp`), read from `/proc/thread-self`, which shows the
//! calling thread's namespace.

use std::fs;

use ::tests::netns::{NetNs, in_netns};

use crate::support::{Context, Result};

/// An interface's packet counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl LinkCounters {
    pub fn read(ns: &NetNs, ifname: &str) -> Result<Self> {
        let table = read_in(ns, "/proc/thread-self/net/dev")?;
        parse_net_dev(&table, ifname).context(format!("no counters of {ifname} in /proc/net/dev"))
    }

    /// What happened between `self` (earlier) and `later`.
    pub fn since(self, later: Self) -> Self {
        Self {
            rx_packets: later.rx_packets - self.rx_packets,
            rx_dropped: later.rx_dropped - self.rx_dropped,
            tx_packets: later.tx_packets - self.tx_packets,
            tx_dropped: later.tx_dropped - self.tx_dropped,
        }
    }
}

/// UDP's counters of a namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams for a port nobody listens on: where the rate figure's traffic ends.
    pub no_ports: u64,
    /// Datagrams a full socket buffer dropped: an exporter's collector losing exports.
    pub receive_buffer_errors: u64,
}

impl UdpCounters {
    pub fn read(ns: &NetNs) -> Result<Self> {
        let table = read_in(ns, "/proc/thread-self/net/snmp")?;
        Ok(Self {
            no_ports: snmp_value(&table, "Udp", "NoPorts")?,
            receive_buffer_errors: snmp_value(&table, "Udp", "RcvbufErrors")?,
        })
    }

    pub fn since(self, later: Self) -> Self {
        Self {
            no_ports: later.no_ports - self.no_ports,
            receive_buffer_errors: later.receive_buffer_errors - self.receive_buffer_errors,
        }
    }
}

fn read_in(ns: &NetNs, path: &str) -> Result<String> {
    in_netns(ns, || fs::read_to_string(path))
        .context("entering a namespace")?
        .context(format!("reading {path}"))
}

/// `  fbrr0: 3858416691 63131 0 5 0 0 0 0 1234 12 0 7 ...`: after the name, 8 receive columns
/// (bytes, packets, errs, drop, ...) and 8 transmit columns in the same order.
fn parse_net_dev(table: &str, ifname: &str) -> Option<LinkCounters> {
    table.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        let values: Vec<u64> = counters
            .split_whitespace()
            .map(|value| value.parse().ok())
            .collect::<Option<_>>()?;
        (values.len() >= 16).then(|| LinkCounters {
            rx_packets: values[1],
            rx_dropped: values[3],
            tx_packets: values[9],
            tx_dropped: values[11],
        })
    })
}

/// A counter of `/proc/net/snmp`, where each protocol has a line of names and a line of values.
fn snmp_value(table: &str, protocol: &str, name: &str) -> Result<u64> {
    let prefix = format!("{protocol}:");
    let mut lines = table.lines().filter(|line| line.starts_with(&prefix));
    let names = lines
        .next()
        .context(format!("no {protocol} line in /proc/net/snmp"))?;
    let values = lines
        .next()
        .context(format!("no {protocol} values in /proc/net/snmp"))?;
    let index = names
        .split_whitespace()
        .position(|field| field == name)
        .context(format!("no {protocol} {name} in /proc/net/snmp"))?;
    values
        .split_whitespace()
        .nth(index)
        .and_then(|value| value.parse().ok())
        .context(format!("the value of {protocol} {name} in /proc/net/snmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_interface_line() {
        let table = "Inter-|   Receive ...\n face |bytes ...\n    lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
                     fbrr0: 600 10 0 2 0 0 0 0 120 3 0 1 0 0 0 0\n";
        assert_eq!(
            parse_net_dev(table, "fbrr0"),
            Some(LinkCounters {
                rx_packets: 10,
                rx_dropped: 2,
                tx_packets: 3,
                tx_dropped: 1
            })
        );
        assert_eq!(parse_net_dev(table, "fbrr"), None);
    }

    #[test]
    fn reads_snmp_counters_by_name() {
        let table = "Ip: Forwarding DefaultTTL\nIp: 2 64\n\
                     Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\n\
                     Udp: 5 5000000 0 0 7\n\
                     UdpLite: InDatagrams NoPorts\nUdpLite: 0 0\n";
        assert_eq!(snmp_value(table, "Udp", "NoPorts"), Ok(5_000_000));
        assert_eq!(snmp_value(table, "Udp", "RcvbufErrors"), Ok(7));
        assert!(snmp_value(table, "Udp", "Missing").is_err());
    }
}
