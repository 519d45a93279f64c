//! A drain's kernel drops, settled against its flows: each drop becomes a REJECT flow with the
//! kernel's reason, and a drop of a packet flowlog had counted as passed leaves that count, so
//! ACCEPT is what the stack delivered. Done at the drain, on the sums over CPUs of one epoch,
//! where both sides are complete (docs/kernel-drops.md, "Why the counts stay exact").

use std::collections::BTreeMap;

use flowlog_common::{
    drops::DropKey,
    flow::{Direction, FlowCounters, FlowKey, PacketCount, Verdict},
};
use rustc_hash::FxHashMap;

use super::Reasons;

/// The kernel drops of one drain, as [`settle`] left them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropTotals {
    /// Packets and bytes per reason.
    pub by_reason: BTreeMap<&'static str, PacketCount>,
    /// Drops of packets that had to be taken out of an ACCEPT count that this drain does not
    /// hold: counted ACCEPT in an earlier interval (a drop long after arrival, or at an
    /// interval's switch), or never counted (dropped before flowlog's program). They are REJECT
    /// records all the same.
    pub uncovered: PacketCount,
    /// Drops that found the drop map full: not recorded (their ACCEPT stays).
    pub unrecorded: PacketCount,
    /// Runs of the drop program the kernel skipped (a drop in a softirq that interrupted the
    /// program on the same CPU; it does not re-enter a program): drops not seen at all.
    pub missed: u64,
}

impl DropTotals {
    /// Says what a drain's kernel drops could not record exactly (once per drain).
    pub fn log_losses(&self) {
        if self.unrecorded.packets != 0 {
            tracing::warn!(
                packets = self.unrecorded.packets,
                "kernel drops not recorded: the drop map was full (their ACCEPT counts stay)"
            );
        }
        if self.missed != 0 {
            tracing::warn!(
                drops = self.missed,
                "kernel drops the drop program did not see (a drop while it ran on the same CPU): not recorded"
            );
        }
        if self.uncovered.packets != 0 {
            tracing::info!(
                packets = self.uncovered.packets,
                "kernel drops of packets counted in an earlier interval or never seen by flowlog's programs: REJECT now, their ACCEPT (if any) is in an earlier interval"
            );
        }
    }

    pub fn add(&mut self, other: &Self) {
        for (reason, count) in &other.by_reason {
            self.by_reason.entry(reason).or_default().add(count);
        }
        self.uncovered.add(&other.uncovered);
        self.unrecorded.add(&other.unrecorded);
        self.missed += other.missed;
    }
}

/// The verdicts under which a packet went on into the stack: where a kernel drop is taken from.
const PASSED: [Verdict; 4] = [
    Verdict::Accept,
    Verdict::AuditAcl,
    Verdict::AuditSecurityGroup,
    Verdict::AuditClosedConnection,
];

/// Adds a drain's kernel drops (summed over CPUs) to its flows as [`Verdict::KernelDrop`] flows
/// (with the reason in `cpu`), taking each drop of a packet flowlog counted out of the ACCEPT
/// count of the same flow: every ingress drop (the TC or XDP program counted the packet on
/// arrival) and egress drops after flowlog's TC egress program.
pub fn settle(
    flows: &mut FxHashMap<FlowKey, FlowCounters>,
    drops: FxHashMap<DropKey, FlowCounters>,
    reasons: &Reasons,
    totals: &mut DropTotals,
) {
    for (drop, counters) in drops {
        let direction = Direction::try_from(drop.flow.direction);
        let counted_before = match direction {
            Ok(Direction::Ingress) => true,
            Ok(Direction::Egress) => reasons.get(drop.reason).is_some_and(|r| r.after_tc_egress),
            Err(_) => false,
        };
        let mut left = PacketCount {
            packets: counters.packets,
            bytes: counters.bytes,
        };
        if counted_before {
            for verdict in PASSED {
                if left.packets == 0 {
                    break;
                }
                let key = FlowKey {
                    cpu: 0,
                    verdict: verdict as u8,
                    ..drop.flow
                };
                let Some(accepted) = flows.get_mut(&key) else {
                    continue;
                };
                let packets = accepted.packets.min(left.packets);
                let bytes = accepted.bytes.min(left.bytes);
                accepted.packets -= packets;
                accepted.bytes -= bytes;
                left.packets -= packets;
                left.bytes -= bytes;
                if accepted.packets == 0 {
                    flows.remove(&key);
                }
            }
            totals.uncovered.add(&left);
        }
        let name = reasons.name(drop.reason);
        totals.by_reason.entry(name).or_default().add(&PacketCount {
            packets: counters.packets,
            bytes: counters.bytes,
        });
        let key = FlowKey {
            cpu: drop.reason,
            verdict: Verdict::KernelDrop as u8,
            ..drop.flow
        };
        flows.entry(key).or_default().merge(&counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons() -> Reasons {
        Reasons::from_enum(
            [
                (3, "SKB_DROP_REASON_NO_SOCKET"),
                (12, "SKB_DROP_REASON_NETFILTER_DROP"),
                (64, "SKB_DROP_REASON_QDISC_DROP"),
                (80, "SKB_DROP_REASON_TCP_OFO_DROP"),
            ]
            .into_iter(),
        )
    }

    fn flow(direction: Direction, verdict: Verdict) -> FlowKey {
        let mut key = FlowKey::zeroed();
        key.ifindex = 2;
        key.family = 4;
        key.protocol = 17;
        key.src_addr[..4].copy_from_slice(&[198, 18, 0, 2]);
        key.dst_addr[..4].copy_from_slice(&[198, 18, 0, 1]);
        key.dst_port = 9995u16.to_be_bytes();
        key.direction = direction as u8;
        key.verdict = verdict as u8;
        key
    }

    fn counters(packets: u64, bytes: u64) -> FlowCounters {
        FlowCounters {
            packets,
            bytes,
            first_seen_jiffies: 10,
            last_seen_jiffies: 20,
            ..FlowCounters::default()
        }
    }

    fn drop(direction: Direction, reason: u32) -> DropKey {
        DropKey {
            flow: flow(direction, Verdict::Accept),
            reason,
            _pad: 0,
        }
    }

    #[test]
    fn an_ingress_drop_moves_its_packets_from_accept_to_reject() {
        let mut flows = FxHashMap::default();
        flows.insert(
            flow(Direction::Ingress, Verdict::Accept),
            counters(10, 1000),
        );
        let mut drops = FxHashMap::default();
        drops.insert(drop(Direction::Ingress, 12), counters(4, 400));
        let mut totals = DropTotals::default();
        settle(&mut flows, drops, &reasons(), &mut totals);
        assert_eq!(
            flows[&flow(Direction::Ingress, Verdict::Accept)].packets,
            6,
            "ACCEPT keeps what the stack delivered"
        );
        let rejected = FlowKey {
            cpu: 12,
            ..flow(Direction::Ingress, Verdict::KernelDrop)
        };
        assert_eq!((flows[&rejected].packets, flows[&rejected].bytes), (4, 400));
        assert_eq!(totals.by_reason["netfilter-drop"].packets, 4);
        assert_eq!(totals.uncovered, PacketCount::default());
    }

    #[test]
    fn a_flow_dropped_whole_has_no_accept_left() {
        let mut flows = FxHashMap::default();
        flows.insert(flow(Direction::Ingress, Verdict::Accept), counters(3, 300));
        let mut drops = FxHashMap::default();
        drops.insert(drop(Direction::Ingress, 3), counters(3, 300));
        let mut totals = DropTotals::default();
        settle(&mut flows, drops, &reasons(), &mut totals);
        assert!(!flows.contains_key(&flow(Direction::Ingress, Verdict::Accept)));
        assert_eq!(flows.len(), 1);
    }

    #[test]
    fn egress_drops_before_tc_add_a_reject_and_after_tc_take_from_accept() {
        let mut flows = FxHashMap::default();
        flows.insert(flow(Direction::Egress, Verdict::Accept), counters(5, 500));
        let mut drops = FxHashMap::default();
        // netfilter OUTPUT: the TC egress program never saw these.
        drops.insert(drop(Direction::Egress, 12), counters(7, 700));
        // A queueing discipline, after TC egress counted the packet.
        drops.insert(drop(Direction::Egress, 64), counters(2, 200));
        let mut totals = DropTotals::default();
        settle(&mut flows, drops, &reasons(), &mut totals);
        assert_eq!(flows[&flow(Direction::Egress, Verdict::Accept)].packets, 3);
        assert_eq!(totals.uncovered, PacketCount::default());
        assert_eq!(flows.len(), 3);
    }

    #[test]
    fn a_drop_without_its_accept_count_is_reported_as_uncovered() {
        let mut flows = FxHashMap::default();
        flows.insert(
            flow(Direction::Ingress, Verdict::AuditAcl),
            counters(1, 100),
        );
        let mut drops = FxHashMap::default();
        drops.insert(drop(Direction::Ingress, 80), counters(3, 300));
        let mut totals = DropTotals::default();
        settle(&mut flows, drops, &reasons(), &mut totals);
        assert!(!flows.contains_key(&flow(Direction::Ingress, Verdict::AuditAcl)));
        assert_eq!(
            totals.uncovered,
            PacketCount {
                packets: 2,
                bytes: 200
            }
        );
    }
}
