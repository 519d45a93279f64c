//! What a flow log takes of each drain until its interval ends: the share-out, the merging of
//! drains and the due times. Plain data, tested on the host.
//!
//! The datapath counts every packet once, whatever the flow logs: every drain is shared out,
//! each flow log taking the flows of its interfaces and traffic type, the SKIPDATA of its
//! interfaces, and what no interface can be named for. A flow log whose interval is longer than
//! the drain period adds drains up until its interval ends on the wall clock.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use flowlog_common::{
    flow::{FlowKey, PacketCount, Verdict},
    stats::Stat,
};

use crate::{
    datapath::DrainedEpoch,
    interfaces::{Interface, InterfaceSelector},
    interval::{IntervalBuilder, unix_seconds},
    record::IntervalRecords,
    values::TrafficType,
};

/// One flow log's interval in progress.
#[derive(Debug)]
pub struct Accumulator {
    scope: InterfaceSelector,
    traffic_type: TrafficType,
    interval: Duration,
    builder: IntervalBuilder,
    /// What the drains since the interval began counted for this flow log.
    pending: Option<DrainedEpoch>,
    /// Datapath-wide figures of those drains, for the interval's log line.
    drains: DrainTotals,
    /// Unix second at which the current interval ends.
    due: u64,
}

/// Datapath-wide figures of the drains an interval is made of.
#[derive(Debug, Default)]
pub struct DrainTotals {
    pub entries: usize,
    pub time: Duration,
    pub not_flows: BTreeMap<Stat, PacketCount>,
}

impl Accumulator {
    /// A flow log's first interval, beginning `now`.
    pub fn new(
        scope: InterfaceSelector,
        traffic_type: TrafficType,
        interval: Duration,
        now: SystemTime,
    ) -> Self {
        Self {
            scope,
            traffic_type,
            interval,
            builder: IntervalBuilder::new(now),
            pending: None,
            drains: DrainTotals::default(),
            due: next_multiple(unix_seconds(now), interval.as_secs()),
        }
    }

    /// Brings the interfaces in line with `attached` (those the datapath counts on now): the
    /// ones the scope matches join; the others leave, their counts so far still written under
    /// their names.
    pub fn follow(&mut self, attached: &[Interface]) {
        let wanted: Vec<&Interface> = attached.iter().filter(|i| self.scope.matches(i)).collect();
        let leaving: Vec<u32> = self
            .builder
            .interfaces()
            .filter(|(ifindex, name)| {
                !wanted
                    .iter()
                    .any(|w| w.ifindex == *ifindex && *w.name == ***name)
            })
            .map(|(ifindex, _)| ifindex)
            .collect();
        for ifindex in leaving {
            self.builder.interface_detached(ifindex);
        }
        for interface in wanted {
            if !self.builder.has_interface(interface.ifindex) {
                self.builder.interface_attached(
                    interface.ifindex,
                    &interface.name,
                    interface.interface_type,
                );
            }
        }
    }

    /// An interface a previous agent counted on that was deleted while no agent ran: if the
    /// scope would have selected it by its name, what was counted on it belongs here and is
    /// written under that name in the first interval. Returns whether it does.
    pub fn add_vanished(&mut self, ifindex: u32, name: &str) -> bool {
        let interface = Interface {
            name: name.to_owned(),
            ifindex,
            loopback: false,
            addresses: Vec::new(),
            interface_type: None,
        };
        if !self.scope.matches(&interface) || self.builder.covers(ifindex) {
            return false;
        }
        self.builder.interface_attached(ifindex, name, None);
        self.builder.interface_detached(ifindex);
        true
    }

    /// Whether counts on this interface belong here.
    pub fn covers(&self, ifindex: u32) -> bool {
        self.builder.covers(ifindex)
    }

    /// Takes this flow log's share of a drain: the flows of its interfaces and traffic type,
    /// the SKIPDATA of its interfaces, and what no interface can be named for.
    pub fn absorb(
        &mut self,
        drained: &DrainedEpoch,
        not_flows: &BTreeMap<Stat, PacketCount>,
        drain_time: Duration,
    ) {
        let traffic_type = self.traffic_type;
        let share = DrainedEpoch {
            flows: drained
                .flows
                .iter()
                .filter(|(key, _)| self.covers(key.ifindex) && wanted(traffic_type, key))
                .map(|(key, counters)| (*key, *counters))
                .collect(),
            skipped: drained
                .skipped
                .iter()
                .filter(|(ifindex, _)| self.covers(**ifindex))
                .map(|(ifindex, count)| (*ifindex, *count))
                .collect(),
            ..drained.clone_without_flows()
        };
        self.take(share, drained.entries, not_flows, drain_time);
    }

    /// [`Accumulator::absorb`] for the last flow log, which may keep the drain itself (with a
    /// single flow log, nothing is copied).
    pub fn absorb_owned(
        &mut self,
        mut drained: DrainedEpoch,
        not_flows: &BTreeMap<Stat, PacketCount>,
        drain_time: Duration,
    ) {
        let traffic_type = self.traffic_type;
        let builder = &self.builder;
        drained
            .flows
            .retain(|key, _| builder.covers(key.ifindex) && wanted(traffic_type, key));
        drained
            .skipped
            .retain(|ifindex, _| builder.covers(*ifindex));
        let entries = drained.entries;
        self.take(drained, entries, not_flows, drain_time);
    }

    fn take(
        &mut self,
        mut share: DrainedEpoch,
        entries: usize,
        not_flows: &BTreeMap<Stat, PacketCount>,
        drain_time: Duration,
    ) {
        self.drains.entries += entries;
        self.drains.time += drain_time;
        for (stat, count) in not_flows {
            self.drains.not_flows.entry(*stat).or_default().add(count);
        }
        // The newer drain carries the times the interval ends with.
        if let Some(older) = self.pending.take() {
            share.absorb(older);
        }
        self.pending = Some(share);
    }

    /// Whether the interval ends at the drain of wall-clock second `boundary`.
    pub fn is_due(&self, boundary: u64) -> bool {
        boundary >= self.due
    }

    /// The records of the interval, and the figures of its drains; the next interval begins
    /// (due at the next multiple of the interval after the last drain's switch). `None` if no
    /// drain was taken since the last one.
    pub fn end_interval(&mut self) -> Option<(IntervalRecords, DrainTotals)> {
        let pending = self.pending.take()?;
        self.due = next_multiple(unix_seconds(pending.switched_at), self.interval.as_secs());
        let records = self.builder.build(pending);
        Some((records, std::mem::take(&mut self.drains)))
    }
}

/// Whether a flow log of this traffic type keeps a flow with this key.
fn wanted(traffic_type: TrafficType, key: &FlowKey) -> bool {
    let reject = Verdict::try_from(key.verdict).is_ok_and(|v| v.is_reject());
    match traffic_type {
        TrafficType::All => true,
        TrafficType::Accept => !reject,
        TrafficType::Reject => reject,
    }
}

/// The first multiple of `period` seconds after `now` (intervals end on the wall clock: a 60 s
/// interval on every minute).
pub fn next_multiple(now: u64, period: u64) -> u64 {
    let period = period.max(1);
    (now / period + 1) * period
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use flowlog_common::flow::{AddressFamily, Direction, FlowCounters};
    use rustc_hash::FxHashMap;

    use super::*;
    use crate::{
        datapath::{ClockSample, JiffiesClock},
        record::RecordKind,
        sys::GracePeriod,
    };

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn interface(name: &str, ifindex: u32) -> Interface {
        Interface {
            name: name.into(),
            ifindex,
            loopback: false,
            addresses: Vec::new(),
            interface_type: None,
        }
    }

    fn key(ifindex: u32, src_port: u16, verdict: Verdict) -> FlowKey {
        let mut src_addr = [0; 16];
        src_addr[..4].copy_from_slice(&[198, 18, 0, 2]);
        let mut dst_addr = [0; 16];
        dst_addr[..4].copy_from_slice(&[198, 18, 0, 1]);
        FlowKey {
            ifindex,
            cpu: 0,
            src_addr,
            dst_addr,
            src_port: src_port.to_be_bytes(),
            dst_port: 53u16.to_be_bytes(),
            protocol: 17,
            family: AddressFamily::Ipv4 as u8,
            direction: Direction::Ingress as u8,
            verdict: verdict as u8,
        }
    }

    /// A drain switched at `switched` (Unix seconds) holding `flows`: (key, packets), each
    /// packet 100 bytes; `skipped` packets per interface; `unattributed` packets.
    fn drain(
        switched: u64,
        flows: &[(FlowKey, u64)],
        skipped: &[(u32, u64)],
        unattributed: u64,
    ) -> DrainedEpoch {
        let sample = ClockSample {
            jiffies: 1000,
            monotonic_ns: 1_000_000_000,
        };
        let clock = JiffiesClock::new(
            sample,
            sample,
            switched as i128 * 1_000_000_000 - 1_000_000_000,
        );
        let flows: FxHashMap<FlowKey, FlowCounters> = flows
            .iter()
            .map(|(key, packets)| {
                let counters = FlowCounters {
                    packets: *packets,
                    bytes: packets * 100,
                    first_seen_jiffies: 1000,
                    last_seen_jiffies: 1000,
                    ..FlowCounters::default()
                };
                (*key, counters)
            })
            .collect();
        let count = |packets: u64| PacketCount {
            packets,
            bytes: packets * 100,
        };
        DrainedEpoch {
            entries: flows.len(),
            flows,
            skipped: skipped.iter().map(|(i, p)| (*i, count(*p))).collect(),
            unattributed: count(unattributed),
            switched_at: at(switched),
            quiescent_at: at(switched),
            grace_period: GracePeriod::Rcu,
            clock,
            kernel_drops: Default::default(),
        }
    }

    /// (interface, log-status, packets) of every record.
    fn summary(records: &IntervalRecords) -> Vec<(String, &'static str, u64)> {
        let mut out: Vec<_> = records
            .records
            .iter()
            .map(|r| {
                let (status, packets) = match &r.kind {
                    RecordKind::Flow(flow) => ("OK", flow.packets),
                    RecordKind::NoData => ("NODATA", 0),
                    RecordKind::SkipData { packets, .. } => ("SKIPDATA", *packets),
                };
                (r.interface.to_string(), status, packets)
            })
            .collect();
        out.sort();
        out
    }

    fn accumulator(names: &[&str], traffic_type: TrafficType, interval: u64) -> Accumulator {
        let scope = InterfaceSelector::parse(names).unwrap();
        let mut accumulator =
            Accumulator::new(scope, traffic_type, Duration::from_secs(interval), at(100));
        accumulator.follow(&[interface("eth0", 2), interface("eth1", 3)]);
        accumulator
    }

    #[test]
    fn each_flow_log_takes_its_interfaces_traffic_type_and_the_unattributed() {
        let drained = drain(
            101,
            &[
                (key(2, 1000, Verdict::Accept), 5),
                (key(2, 1001, Verdict::RejectAcl), 7),
                (key(3, 1002, Verdict::Accept), 11),
            ],
            &[(2, 3), (3, 4)],
            2,
        );
        let none = BTreeMap::new();
        let mut rejects_on_eth0 = accumulator(&["eth0"], TrafficType::Reject, 1);
        let mut everything = accumulator(&[], TrafficType::All, 1);
        rejects_on_eth0.absorb(&drained, &none, Duration::ZERO);
        everything.absorb_owned(drained, &none, Duration::ZERO);

        let (records, drains) = rejects_on_eth0.end_interval().unwrap();
        assert_eq!(
            summary(&records),
            [
                ("-".into(), "SKIPDATA", 2),
                ("eth0".into(), "OK", 7),
                ("eth0".into(), "SKIPDATA", 3),
            ]
        );
        assert_eq!(
            drains.entries, 3,
            "the datapath-wide figures go to every flow log"
        );
        let (records, _) = everything.end_interval().unwrap();
        assert_eq!(
            summary(&records),
            [
                ("-".into(), "SKIPDATA", 2),
                ("eth0".into(), "OK", 5),
                ("eth0".into(), "OK", 7),
                ("eth0".into(), "SKIPDATA", 3),
                ("eth1".into(), "OK", 11),
                ("eth1".into(), "SKIPDATA", 4),
            ]
        );
    }

    #[test]
    fn drains_add_up_until_the_interval_ends_on_the_wall_clock() {
        let mut accumulator = accumulator(&["eth0"], TrafficType::All, 10);
        let flow = key(2, 1000, Verdict::Accept);
        let none = BTreeMap::new();
        assert!(!accumulator.is_due(105), "started at 100: due at 110");
        for (switched, packets) in [(105, 3), (110, 4)] {
            accumulator.absorb_owned(
                drain(switched, &[(flow, packets)], &[], 0),
                &none,
                Duration::ZERO,
            );
        }
        assert!(accumulator.is_due(110));
        let (records, _) = accumulator.end_interval().unwrap();
        assert_eq!(summary(&records), [("eth0".into(), "OK", 7)]);
        assert_eq!((records.start, records.end), (100, 110));
        assert!(!accumulator.is_due(115), "the next interval ends at 120");
        assert!(accumulator.is_due(120));
        // No drain since: nothing to write.
        assert!(accumulator.end_interval().is_none());
    }

    #[test]
    fn an_interface_that_left_keeps_its_counts_and_gets_no_nodata() {
        let mut accumulator = accumulator(&[], TrafficType::All, 1);
        let none = BTreeMap::new();
        accumulator.follow(&[interface("eth0", 2)]);
        assert!(accumulator.covers(3), "eth1 left during the interval");
        let drained = drain(101, &[(key(3, 1000, Verdict::Accept), 9)], &[], 0);
        accumulator.absorb_owned(drained, &none, Duration::ZERO);
        let (records, _) = accumulator.end_interval().unwrap();
        assert_eq!(
            summary(&records),
            [("eth0".into(), "NODATA", 0), ("eth1".into(), "OK", 9)]
        );
        assert!(!accumulator.covers(3), "gone after its last interval");
        assert!(
            accumulator.add_vanished(7, "eth7"),
            "the scope takes every name"
        );
        assert!(!accumulator.add_vanished(2, "eth0"), "attached already");
    }
}
