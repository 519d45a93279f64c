//! Verdicts of the host itself: packets the kernel drops (netfilter, no socket, reverse path
//! filter, ...) on the agent's interfaces become REJECT records with the kernel's reason.
//!
//! - [`probe`] reads what the drop program needs from the running kernel's BTF: the offsets of
//!   the `sk_buff`, `net_device`, `net`, `dst_entry` and `skb_shared_info` fields it reads, the
//!   drop reasons and their numbers, and whether `skb:kfree_skb` carries a reason (Linux 5.17+).
//! - The datapath (`datapath/kernel_drops.rs`) loads and attaches the program and drains its
//!   maps with the flow maps.
//! - [`settle`] turns a drain's drops into REJECT flows and takes the drops of packets flowlog
//!   counted as ACCEPT out of those counts, so ACCEPT is what the stack delivered.

pub mod btf;
pub mod reasons;

use std::{collections::BTreeMap, os::unix::fs::MetadataExt, sync::OnceLock};

use flowlog_common::{
    drops::{COUNT_REASON, DropConfig, DropKey, REASON_SLOTS, SKB_READ_LEN},
    flow::{Direction, FlowCounters, FlowKey, PacketCount, Verdict},
};
use rustc_hash::FxHashMap;

pub use btf::Btf;
pub use reasons::{REFUSED, Reason, Reasons, intern};

/// `--kernel-drops`: which of the kernel's drops become REJECT records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelDropsMode {
    /// None: records are what flowlog's own programs saw (a packet the host drops after TC
    /// ingress is ACCEPT; one it drops before TC egress has no record).
    Off,
    /// What the host refused (netfilter, no socket, reverse path filter, ...; see README).
    #[default]
    Refused,
    /// Every drop, also buffers full, bad checksums, TCP state, ...
    All,
}

impl std::fmt::Display for KernelDropsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Refused => "refused",
            Self::All => "all",
        })
    }
}

/// Why this kernel cannot report its drops.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("kernel drops are unavailable: {0}")]
pub struct Unavailable(pub String);

/// What the drop program needs, read from the running kernel.
#[derive(Clone, Debug)]
pub struct Setup {
    pub mode: KernelDropsMode,
    pub config: DropConfig,
    pub reasons: Reasons,
}

/// The tracepoint the drop program attaches to.
pub const TRACEPOINT: &str = "kfree_skb";

/// Reads the kernel's layout and drop reasons for `mode`; `Ok(None)` when it is off.
pub fn probe(mode: KernelDropsMode) -> Result<Option<Setup>, Unavailable> {
    if mode == KernelDropsMode::Off {
        return Ok(None);
    }
    let btf = Btf::from_sys_fs().map_err(|e| Unavailable(e.to_string()))?;
    let reasons = Reasons::from_btf(&btf).ok_or_else(|| {
        Unavailable(
            "this kernel has no drop reasons (enum skb_drop_reason, Linux 5.17+)".to_owned(),
        )
    })?;
    // kfree_skb(skb, location, reason, ...), behind the context argument.
    match btf.prototype_params("btf_trace_kfree_skb") {
        Some(params) if params >= 4 => {}
        _ => {
            return Err(Unavailable(
                "the skb:kfree_skb tracepoint carries no drop reason on this kernel".to_owned(),
            ));
        }
    }
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| Unavailable(format!("reading /proc/self/ns/net: {e}")))?;
    let config = layout(&btf, netns.ino() as u32, mode == KernelDropsMode::All)?;
    Ok(Some(Setup {
        mode,
        config,
        reasons,
    }))
}

/// The offsets the drop program reads, checked against what it copies of the `sk_buff`.
fn layout(btf: &Btf, netns_inum: u32, all: bool) -> Result<DropConfig, Unavailable> {
    let offset = |name: &str, path: &[&str]| {
        btf.member_offset(name, path)
            .map_err(|e| Unavailable(e.to_string()))
    };
    let config = DropConfig {
        skb_dev: offset("sk_buff", &["dev"])?,
        skb_iif: offset("sk_buff", &["skb_iif"])?,
        skb_refdst: offset("sk_buff", &["_skb_refdst"])?,
        skb_len: offset("sk_buff", &["len"])?,
        skb_network_header: offset("sk_buff", &["network_header"])?,
        skb_end: offset("sk_buff", &["end"])?,
        skb_head: offset("sk_buff", &["head"])?,
        skb_data: offset("sk_buff", &["data"])?,
        dev_ifindex: offset("net_device", &["ifindex"])?,
        dev_net: offset("net_device", &["nd_net", "net"])?,
        net_inum: offset("net", &["ns", "inum"])?,
        dst_dev: offset("dst_entry", &["dev"])?,
        shinfo_gso_size: offset("skb_shared_info", &["gso_size"])?,
        shinfo_gso_segs: offset("skb_shared_info", &["gso_segs"])?,
        netns_inum,
        count_subsystem_reasons: all as u32,
    };
    // Pointers are 8 bytes, the rest at most 4.
    let fields = [
        (config.skb_dev, 8),
        (config.skb_iif, 4),
        (config.skb_refdst, 8),
        (config.skb_len, 4),
        (config.skb_network_header, 2),
        (config.skb_end, 4),
        (config.skb_head, 8),
        (config.skb_data, 8),
    ];
    if let Some((at, size)) = fields.iter().find(|(at, size)| at + size > SKB_READ_LEN) {
        return Err(Unavailable(format!(
            "an sk_buff field at byte {at} (+{size}) lies beyond the {SKB_READ_LEN} bytes the program copies"
        )));
    }
    Ok(config)
}

impl Setup {
    /// The `DROP_REASONS` slots to set: one per reason the mode counts.
    pub fn counted_slots(&self) -> Vec<u32> {
        self.reasons
            .iter()
            .filter(|(number, reason)| {
                *number < REASON_SLOTS
                    && match self.mode {
                        KernelDropsMode::Off => false,
                        KernelDropsMode::Refused => reason.refused,
                        KernelDropsMode::All => true,
                    }
            })
            .map(|(number, _)| number)
            .collect()
    }

    /// The value of a counted slot.
    pub const COUNTED: u8 = COUNT_REASON;
}

static REASONS: OnceLock<Reasons> = OnceLock::new();

/// Makes the running kernel's reasons known to the record builder (once, at start-up).
pub fn publish_reasons(reasons: &Reasons) {
    let _ = REASONS.set(reasons.clone());
}

/// The name of the kernel's drop reason `number` (see [`Reasons::name`]).
pub fn reason_name(number: u32) -> &'static str {
    match REASONS.get() {
        Some(reasons) => reasons.name(number),
        None => Reasons::default().name(number),
    }
}

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
