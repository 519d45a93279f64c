//! From a drained epoch to the records of one aggregation interval: one OK record per flow, one
//! NODATA record per idle interface, one SKIPDATA record per interface whose packets found the
//! flow map full.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use flowlog_common::flow::{AddressFamily, FlowCounters, FlowKey, PacketCount};

use crate::{
    datapath::DrainedEpoch,
    record::{Direction, Flow, FlowRecord, IntervalRecords, RecordKind, Verdict},
};

/// Interface name used when packets cannot be attributed to an interface.
pub const UNATTRIBUTED: &str = "-";

/// Turns drained epochs into interval records, remembering which interfaces are attached and
/// where the current interval began.
#[derive(Debug)]
pub struct IntervalBuilder {
    interfaces: BTreeMap<u32, Named>,
    /// Interfaces detached during the current interval: their last counts are still to come,
    /// under their names, but they get no NODATA record.
    departed: BTreeMap<u32, Named>,
    interval_start: SystemTime,
}

impl IntervalBuilder {
    /// `started` is when the programs began counting into the current epoch.
    pub fn new(started: SystemTime) -> Self {
        Self {
            interfaces: BTreeMap::new(),
            departed: BTreeMap::new(),
            interval_start: started,
        }
    }

    /// `interface_type` is the `interface-type` field of its records.
    pub fn interface_attached(
        &mut self,
        ifindex: u32,
        name: &str,
        interface_type: Option<&'static str>,
    ) {
        self.interfaces.insert(
            ifindex,
            Named {
                name: Arc::from(name),
                interface_type,
            },
        );
    }

    /// The interfaces attached now.
    pub fn interfaces(&self) -> impl Iterator<Item = (u32, &Arc<str>)> {
        self.interfaces
            .iter()
            .map(|(ifindex, named)| (*ifindex, &named.name))
    }

    pub fn has_interface(&self, ifindex: u32) -> bool {
        self.interfaces.contains_key(&ifindex)
    }

    /// Whether counts on `ifindex` go into the next interval: attached, or detached during
    /// the current one.
    pub fn covers(&self, ifindex: u32) -> bool {
        self.interfaces.contains_key(&ifindex) || self.departed.contains_key(&ifindex)
    }

    pub fn interface_detached(&mut self, ifindex: u32) {
        if let Some(named) = self.interfaces.remove(&ifindex) {
            self.departed.insert(ifindex, named);
        }
    }

    /// Builds the records of the interval that `drained` ends. The interval runs from the
    /// previous switch to the moment the last program counting into the drained epoch returned.
    pub fn build(&mut self, drained: DrainedEpoch) -> IntervalRecords {
        let start = unix_seconds(self.interval_start);
        let end = unix_seconds(drained.quiescent_at).max(start);
        self.interval_start = drained.switched_at;

        let mut records = Vec::with_capacity(drained.flows.len() + self.interfaces.len());
        let mut active: BTreeMap<u32, ()> = BTreeMap::new();
        let mut skipped = drained.skipped;
        let clock = drained.clock;
        let time = |jiffies: u64| clock.unix_seconds(jiffies).clamp(start, end);

        for (key, counters) in &drained.flows {
            active.insert(key.ifindex, ());
            match flow_of(key, counters) {
                Some(flow) => records.push(FlowRecord {
                    interface: self.name_of(key.ifindex),
                    ifindex: key.ifindex,
                    interface_type: self.type_of(key.ifindex),
                    start: time(counters.first_seen_jiffies),
                    end: time(counters.last_seen_jiffies),
                    kind: RecordKind::Flow(flow),
                }),
                None => {
                    // Only a datapath bug writes a key we cannot decode: keep its counts.
                    tracing::error!(?key, "undecodable flow key; counted as SKIPDATA");
                    skipped.entry(key.ifindex).or_default().add(&PacketCount {
                        packets: counters.packets,
                        bytes: counters.bytes,
                    });
                }
            }
        }
        for (&ifindex, count) in &skipped {
            active.insert(ifindex, ());
            let record = self.skip_record(self.name_of(ifindex), ifindex, start, end, count);
            records.push(FlowRecord {
                interface_type: self.type_of(ifindex),
                ..record
            });
        }
        if drained.unattributed.packets != 0 {
            tracing::error!(
                packets = drained.unattributed.packets,
                "the skip map was full too: SKIPDATA without an interface"
            );
            records.push(self.skip_record(
                Arc::from(UNATTRIBUTED),
                0,
                start,
                end,
                &drained.unattributed,
            ));
        }
        for (ifindex, named) in &self.interfaces {
            if !active.contains_key(ifindex) {
                records.push(FlowRecord {
                    interface: Arc::clone(&named.name),
                    ifindex: *ifindex,
                    interface_type: named.interface_type,
                    start,
                    end,
                    kind: RecordKind::NoData,
                });
            }
        }
        // Their programs were gone before this drain: nothing more can come from them.
        self.departed.clear();
        IntervalRecords {
            start,
            end,
            records,
        }
    }

    fn skip_record(
        &self,
        interface: Arc<str>,
        ifindex: u32,
        start: u64,
        end: u64,
        count: &PacketCount,
    ) -> FlowRecord {
        FlowRecord {
            interface,
            ifindex,
            interface_type: None,
            start,
            end,
            kind: RecordKind::SkipData {
                packets: count.packets,
                bytes: count.bytes,
            },
        }
    }

    /// The interface's name; an index no longer attached keeps a readable stand-in.
    fn name_of(&self, ifindex: u32) -> Arc<str> {
        match self.named(ifindex) {
            Some(named) => Arc::clone(&named.name),
            None => Arc::from(format!("ifindex-{ifindex}")),
        }
    }

    fn type_of(&self, ifindex: u32) -> Option<&'static str> {
        self.named(ifindex).and_then(|named| named.interface_type)
    }

    fn named(&self, ifindex: u32) -> Option<&Named> {
        self.interfaces
            .get(&ifindex)
            .or(self.departed.get(&ifindex))
    }
}

/// An interface as its records name it.
#[derive(Debug)]
struct Named {
    name: Arc<str>,
    interface_type: Option<&'static str>,
}

/// Decodes a drained key into a flow; `None` if a field holds a value no program writes.
fn flow_of(key: &FlowKey, counters: &FlowCounters) -> Option<Flow> {
    let (src_addr, dst_addr) = match AddressFamily::try_from(key.family).ok()? {
        AddressFamily::Ipv4 => (ipv4(&key.src_addr), ipv4(&key.dst_addr)),
        AddressFamily::Ipv6 => (
            IpAddr::V6(Ipv6Addr::from(key.src_addr)),
            IpAddr::V6(Ipv6Addr::from(key.dst_addr)),
        ),
    };
    let verdict = Verdict::try_from(key.verdict).ok()?;
    Some(Flow {
        direction: Direction::try_from(key.direction).ok()?,
        src_addr,
        dst_addr,
        src_port: key.src_port(),
        dst_port: key.dst_port(),
        protocol: key.protocol,
        packets: counters.packets,
        bytes: counters.bytes,
        verdict,
        tcp_flags: counters.tcp_flags as u8,
        // A kernel drop's key holds its reason in place of the CPU.
        drop_reason: (verdict == Verdict::KernelDrop)
            .then(|| crate::kernel_drops::reason_name(key.cpu)),
    })
}

fn ipv4(address: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        address[0], address[1], address[2], address[3],
    ))
}

pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustc_hash::FxHashMap;

    use super::*;
    use crate::{datapath::JiffiesClock, sys::GracePeriod};

    const SECOND: u64 = 1_000_000_000;
    /// A 1000 Hz kernel, whose jiffy 0 is Unix second 1000.
    const JIFFIES_PER_SECOND: u64 = 1000;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn key(ifindex: u32, family: AddressFamily, protocol: u8) -> FlowKey {
        let mut key = FlowKey::zeroed();
        key.ifindex = ifindex;
        key.family = family as u8;
        key.protocol = protocol;
        key.direction = Direction::Egress as u8;
        key.src_port = 40000u16.to_be_bytes();
        key.dst_port = 53u16.to_be_bytes();
        match family {
            AddressFamily::Ipv4 => {
                key.src_addr[..4].copy_from_slice(&[198, 18, 0, 1]);
                key.dst_addr[..4].copy_from_slice(&[198, 18, 0, 2]);
            }
            AddressFamily::Ipv6 => {
                key.src_addr = "fd00::1".parse::<Ipv6Addr>().unwrap().octets();
                key.dst_addr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
            }
        }
        key
    }

    fn counters(packets: u64, first_s: u64, last_s: u64) -> FlowCounters {
        FlowCounters {
            packets,
            bytes: packets * 100,
            first_seen_jiffies: first_s * JIFFIES_PER_SECOND,
            last_seen_jiffies: last_s * JIFFIES_PER_SECOND + JIFFIES_PER_SECOND / 2,
            ..FlowCounters::default()
        }
    }

    /// An epoch switched at `end` seconds.
    fn drained(end: u64, flows: Vec<(FlowKey, FlowCounters)>) -> DrainedEpoch {
        DrainedEpoch {
            flows: flows.into_iter().collect::<FxHashMap<_, _>>(),
            skipped: BTreeMap::new(),
            unattributed: PacketCount::default(),
            kernel_drops: Default::default(),
            entries: 0,
            switched_at: at(end),
            quiescent_at: at(end),
            grace_period: GracePeriod::Rcu,
            clock: JiffiesClock {
                jiffies: 0,
                unix_ns: 1000 * SECOND as i128,
                ns_per_jiffy: SECOND / JIFFIES_PER_SECOND,
            },
        }
    }

    fn builder() -> IntervalBuilder {
        let mut builder = IntervalBuilder::new(at(2000));
        builder.interface_attached(2, "veth0", Some("veth"));
        builder.interface_attached(3, "idle0", Some("interface"));
        builder
    }

    #[test]
    fn flows_become_ok_records_and_idle_interfaces_nodata() {
        let mut builder = builder();
        // Seen from jiffy second 1003 to 1007 = 2003..2007 Unix.
        let epoch = drained(
            2060,
            vec![(key(2, AddressFamily::Ipv4, 17), counters(4, 1003, 1007))],
        );
        let interval = builder.build(epoch);
        assert_eq!((interval.start, interval.end), (2000, 2060));
        assert_eq!(interval.records.len(), 2);
        let flow = &interval.records[0];
        assert_eq!((&*flow.interface, flow.ifindex), ("veth0", 2));
        assert_eq!(flow.interface_type, Some("veth"));
        assert_eq!((flow.start, flow.end), (2003, 2007));
        let RecordKind::Flow(f) = &flow.kind else {
            panic!("{flow:?}")
        };
        assert_eq!(f.src_addr, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((f.src_port, f.dst_port, f.protocol), (40000, 53, 17));
        assert_eq!((f.packets, f.bytes), (4, 400));
        assert_eq!(
            interval.records[1],
            FlowRecord {
                interface: Arc::from("idle0"),
                ifindex: 3,
                interface_type: Some("interface"),
                start: 2000,
                end: 2060,
                kind: RecordKind::NoData,
            }
        );
    }

    #[test]
    fn times_are_clamped_into_the_interval() {
        let mut builder = builder();
        // A timestamp a second before the switch, and one after the end.
        let epoch = drained(
            2060,
            vec![(key(2, AddressFamily::Ipv6, 6), counters(1, 999, 1061))],
        );
        let record = &builder.build(epoch).records[0];
        assert_eq!((record.start, record.end), (2000, 2060));
    }

    #[test]
    fn the_next_interval_starts_at_the_switch() {
        let mut builder = builder();
        builder.build(drained(2060, vec![]));
        let interval = builder.build(drained(2120, vec![]));
        assert_eq!((interval.start, interval.end), (2060, 2120));
        assert_eq!(interval.records.len(), 2, "two idle interfaces");
    }

    #[test]
    fn skipped_packets_become_skipdata_with_their_counts() {
        let mut builder = builder();
        let mut epoch = drained(2060, vec![]);
        epoch.skipped.insert(
            3,
            PacketCount {
                packets: 7,
                bytes: 700,
            },
        );
        epoch.unattributed = PacketCount {
            packets: 1,
            bytes: 60,
        };
        let records = builder.build(epoch).records;
        let kinds: Vec<(&str, u32, &RecordKind)> = records
            .iter()
            .map(|r| (&*r.interface, r.ifindex, &r.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    "idle0",
                    3,
                    &RecordKind::SkipData {
                        packets: 7,
                        bytes: 700
                    }
                ),
                (
                    UNATTRIBUTED,
                    0,
                    &RecordKind::SkipData {
                        packets: 1,
                        bytes: 60
                    }
                ),
                ("veth0", 2, &RecordKind::NoData),
            ]
        );
    }

    #[test]
    fn records_carry_the_ifindex_of_interfaces_attached_and_detached_on_the_way() {
        let mut builder = builder();
        builder.build(drained(2060, vec![]));
        // Attached after the start, then veth0 leaves with its last counts still to drain.
        builder.interface_attached(41, "late0", None);
        builder.interface_detached(2);
        let epoch = drained(
            2120,
            vec![
                (key(41, AddressFamily::Ipv4, 17), counters(1, 1061, 1062)),
                (key(2, AddressFamily::Ipv4, 17), counters(1, 1061, 1062)),
                (key(77, AddressFamily::Ipv4, 17), counters(1, 1061, 1062)),
            ],
        );
        let mut seen: Vec<(String, u32, &str)> = builder
            .build(epoch)
            .records
            .iter()
            .map(|r| (r.interface.to_string(), r.ifindex, r.kind.log_status()))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            [
                ("idle0".to_owned(), 3, "NODATA"),
                ("ifindex-77".to_owned(), 77, "OK"),
                ("late0".to_owned(), 41, "OK"),
                ("veth0".to_owned(), 2, "OK"),
            ]
        );
    }

    #[test]
    fn an_undecodable_key_keeps_its_counts_as_skipdata() {
        let mut builder = builder();
        let mut bad = key(2, AddressFamily::Ipv4, 17);
        bad.family = 9;
        let records = builder
            .build(drained(2060, vec![(bad, counters(2, 1001, 1002))]))
            .records;
        assert_eq!(
            records[0].kind,
            RecordKind::SkipData {
                packets: 2,
                bytes: 200
            }
        );
    }
}
