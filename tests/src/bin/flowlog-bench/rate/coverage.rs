//! What each exporter reported against what the generator sent, flow by flow: flowlog's records
//! read back from its log stream, softflowd's and pmacct's from their collectors.

use std::{collections::HashMap, fs, net::Ipv4Addr, ops::Range, path::Path};

use crate::{
    rate::flows::{FlowSet, FlowTuple, IP_LEN},
    support::{Context, Result},
};

/// Packets per flow as one exporter reported them (UDP flows only; the traffic is all UDP).
#[derive(Debug, Default)]
pub struct Reported {
    pub packets: HashMap<FlowTuple, u64>,
}

impl Reported {
    pub fn add(&mut self, tuple: FlowTuple, packets: u64) {
        *self.packets.entry(tuple).or_default() += packets;
    }

    /// Takes one flow out, returning its packets.
    pub fn take(&mut self, tuple: &FlowTuple) -> u64 {
        self.packets.remove(tuple).unwrap_or(0)
    }
}

/// [`Reported`] beside what was sent: every flow of a range of a [`FlowSet`] was sent
/// `per_flow` times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub flows: usize,
    /// Flows reported with exactly the packets sent.
    pub flows_exact: usize,
    /// Flows not reported at all.
    pub flows_missing: usize,
    pub packets_sent: u64,
    /// Packets reported in the flows sent (more than sent if a flow is over-counted).
    pub packets_reported: u64,
    /// Packets reported in flows that were not sent.
    pub packets_elsewhere: u64,
}

impl Comparison {
    pub fn new(flows: &FlowSet, range: Range<usize>, per_flow: u64, reported: &Reported) -> Self {
        let mut comparison = Self {
            flows: range.len(),
            flows_exact: 0,
            flows_missing: 0,
            packets_sent: per_flow * range.len() as u64,
            packets_reported: 0,
            packets_elsewhere: 0,
        };
        for tuple in range.map(|i| flows.tuple(i)) {
            match reported.packets.get(&tuple) {
                Some(&packets) => {
                    comparison.packets_reported += packets;
                    if packets == per_flow {
                        comparison.flows_exact += 1;
                    }
                }
                None => comparison.flows_missing += 1,
            }
        }
        let all: u64 = reported.packets.values().sum();
        comparison.packets_elsewhere = all - comparison.packets_reported;
        comparison
    }

    /// Packets reported / packets sent.
    pub fn coverage(&self) -> f64 {
        self.packets_reported as f64 / self.packets_sent as f64
    }

    /// Every flow reported with exactly its packets, and nothing else.
    pub fn exact(&self) -> bool {
        self.flows_exact == self.flows && self.packets_elsewhere == 0
    }

    pub fn describe(&self) -> String {
        format!(
            "{} of {} packets in the flows sent ({:.6}); {} of {} flows exact, {} missing; {} \
             packets in other flows",
            self.packets_reported,
            self.packets_sent,
            self.coverage(),
            self.flows_exact,
            self.flows,
            self.flows_missing,
            self.packets_elsewhere
        )
    }
}

/// flowlog's records of one interface, by action.
#[derive(Debug, Default)]
pub struct FlowlogRecords {
    pub accepted: Reported,
    pub rejected: Reported,
    pub records: usize,
    /// Records whose bytes are not `packets` x the frames' IP length.
    pub wrong_bytes: usize,
    /// Packets in SKIPDATA records (a full flow map).
    pub skipped_packets: u64,
}

impl FlowlogRecords {
    /// Reads a log stream in the default (version 2) format.
    pub fn read(path: &Path, interface: &str) -> Result<Self> {
        let text = fs::read_to_string(path).context(format!("reading {}", path.display()))?;
        let mut records = Self::default();
        for line in text.lines() {
            records.add_line(line, interface)?;
        }
        Ok(records)
    }

    fn add_line(&mut self, line: &str, interface: &str) -> Result<()> {
        // version account interface srcaddr dstaddr srcport dstport protocol packets bytes start
        // end action log-status
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() != 14 {
            return Err(format!("not a default-format record: {line:?}"));
        }
        if fields[2] != interface {
            return Ok(());
        }
        let number = |i: usize| -> Result<u64> {
            fields[i]
                .parse()
                .with_context(|| format!("field {} of {line:?}", i + 1))
        };
        match fields[13] {
            "OK" => {}
            "SKIPDATA" => {
                self.skipped_packets += number(8)?;
                return Ok(());
            }
            _ => return Ok(()),
        }
        self.records += 1;
        if number(7)? != 17 {
            return Ok(());
        }
        let address = |i: usize| -> Result<Ipv4Addr> {
            fields[i]
                .parse()
                .with_context(|| format!("field {} of {line:?}", i + 1))
        };
        let tuple = FlowTuple {
            source: address(3)?,
            destination: address(4)?,
            source_port: number(5)? as u16,
            destination_port: number(6)? as u16,
        };
        let (packets, bytes) = (number(8)?, number(9)?);
        if bytes != packets * IP_LEN {
            self.wrong_bytes += 1;
        }
        match fields[12] {
            "ACCEPT" => self.accepted.add(tuple, packets),
            "REJECT" => self.rejected.add(tuple, packets),
            other => return Err(format!("action {other:?} in {line:?}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::flows::Destination;

    fn flows() -> FlowSet {
        FlowSet::new(
            3,
            Destination {
                source_mac: [2, 0, 0, 0, 0, 1],
                mac: [2, 0, 0, 0, 0, 2],
                address: Ipv4Addr::new(198, 18, 3, 2),
                port: 9,
            },
        )
    }

    #[test]
    fn exact_only_when_every_flow_has_its_packets_and_nothing_else_is_reported() {
        let flows = flows();
        let mut reported = Reported::default();
        for tuple in (0..flows.len()).map(|i| flows.tuple(i)) {
            reported.add(tuple, 4);
            reported.add(tuple, 6);
        }
        let comparison = Comparison::new(&flows, 0..3, 10, &reported);
        assert!(comparison.exact());
        assert_eq!(comparison.coverage(), 1.0);

        let mut short = Reported::default();
        short.add(flows.tuple(0), 10);
        short.add(flows.tuple(1), 7);
        let mut other = flows.tuple(2);
        other.destination_port = 10;
        short.add(other, 3);
        let comparison = Comparison::new(&flows, 0..3, 10, &short);
        assert_eq!(
            comparison,
            Comparison {
                flows: 3,
                flows_exact: 1,
                flows_missing: 1,
                packets_sent: 30,
                packets_reported: 17,
                packets_elsewhere: 3,
            }
        );
        assert!(!comparison.exact());
        // Only the flows of the range were sent: the third flow's packets are elsewhere.
        assert_eq!(
            Comparison::new(&flows, 0..2, 10, &reported).packets_elsewhere,
            10
        );
    }

    #[test]
    fn reads_flowlog_records_by_action() {
        let mut records = FlowlogRecords::default();
        let lines = [
            "2 - fbrr0 198.19.0.1 198.18.3.2 20000 9 17 4 184 1795537567 1795537569 ACCEPT OK",
            "2 - fbrr0 198.19.0.1 198.18.3.2 20000 9 17 2 92 1795537569 1795537570 ACCEPT OK",
            "2 - fbrr0 198.19.0.1 198.18.3.2 20001 9 17 3 100 1795537567 1795537569 REJECT OK",
            "2 - other 198.19.0.1 198.18.3.2 20000 9 17 5 230 1795537567 1795537569 ACCEPT OK",
            "2 - fbrr0 - - - - - 7 322 1795537567 1795537569 - SKIPDATA",
            "2 - fbrr0 - - - - - - - 1795537567 1795537569 - NODATA",
        ];
        for line in lines {
            records.add_line(line, "fbrr0").unwrap();
        }
        let tuple = |port| FlowTuple {
            source: Ipv4Addr::new(198, 19, 0, 1),
            destination: Ipv4Addr::new(198, 18, 3, 2),
            source_port: port,
            destination_port: 9,
        };
        assert_eq!(records.accepted.packets.get(&tuple(20000)), Some(&6));
        assert_eq!(records.rejected.packets.get(&tuple(20001)), Some(&3));
        assert_eq!(records.records, 3);
        assert_eq!(records.wrong_bytes, 1);
        assert_eq!(records.skipped_packets, 7);
        assert!(records.add_line("2 - fbrr0 garbage", "fbrr0").is_err());
    }
}
