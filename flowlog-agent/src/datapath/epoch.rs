//! Interval epochs: the programs count into one of two flow maps, chosen by `EPOCH`. Ending an
//! interval switches `EPOCH`, waits one RCU grace period (after which no program can still be
//! writing the old map) and drains the old map, which nothing touches any more. No entry is ever
//! deleted from a map a program may be updating, so no increment can be lost.

use std::{collections::BTreeMap, os::fd::AsFd, time::SystemTime};

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use flowlog_common::{
    flow::{FlowCounters, FlowKey, PacketCount, SkipKey},
    maps::{EPOCH, FLOWS, SKIP_OVERFLOW, SKIPPED},
};
use rustc_hash::FxHashMap;

use super::{DatapathError, JiffiesClock, kernel_drops::KernelDrops};
use crate::kernel_drops::DropTotals;
use crate::sys::{self, GracePeriod};

/// Entries fetched per batch system call.
const DRAIN_CHUNK: usize = 8192;
/// Most threads reading one flow map at once.
const MAX_DRAIN_READERS: usize = 4;

/// What one epoch counted, summed over CPUs.
#[derive(Clone, Debug)]
pub struct DrainedEpoch {
    /// Flows keyed with `cpu` = 0, their counters summed over the CPUs that saw them.
    pub flows: FxHashMap<FlowKey, FlowCounters>,
    /// Packets per interface that found the flow map full (reported as SKIPDATA).
    pub skipped: BTreeMap<u32, PacketCount>,
    /// Packets that found the skip map full as well: their interface is unknown.
    pub unattributed: PacketCount,
    /// The kernel's drops, by reason (they are in `flows` as REJECT flows too).
    pub kernel_drops: DropTotals,
    /// Map entries read (a flow seen on several CPUs has several).
    pub entries: usize,
    /// When the programs were switched away from this epoch.
    pub switched_at: SystemTime,
    /// When the last program that could count into this epoch had returned.
    pub quiescent_at: SystemTime,
    /// How that was ensured.
    pub grace_period: GracePeriod,
    /// Converts the counters' jiffies to Unix seconds.
    pub clock: JiffiesClock,
}

impl DrainedEpoch {
    /// Adds what another drain found (leftovers of a previous agent) to this one.
    pub fn absorb(&mut self, other: DrainedEpoch) {
        for (key, counters) in other.flows {
            self.flows.entry(key).or_default().merge(&counters);
        }
        for (ifindex, count) in other.skipped {
            self.skipped.entry(ifindex).or_default().add(&count);
        }
        self.unattributed.add(&other.unattributed);
        self.kernel_drops.add(&other.kernel_drops);
        self.entries += other.entries;
    }

    /// The same drain without its flows and SKIPDATA counts: its times, clock and
    /// unattributed packets (which belong to every flow log).
    pub fn clone_without_flows(&self) -> Self {
        Self {
            flows: FxHashMap::default(),
            skipped: BTreeMap::new(),
            kernel_drops: DropTotals::default(),
            ..*self
        }
    }

    fn new(switched_at: SystemTime, grace_period: GracePeriod, clock: JiffiesClock) -> Self {
        Self {
            flows: FxHashMap::default(),
            skipped: BTreeMap::new(),
            unattributed: PacketCount::default(),
            kernel_drops: DropTotals::default(),
            entries: 0,
            switched_at,
            quiescent_at: SystemTime::now(),
            grace_period,
            clock,
        }
    }
}

pub(super) struct Epochs {
    index: Array<MapData, u32>,
    flows: [MapData; 2],
    skipped: [MapData; 2],
    overflow: PerCpuArray<MapData, PacketCount>,
    /// The epoch the programs count into now.
    current: u32,
    /// The kernel drop program's maps, when it is loaded: drained with the flows.
    pub(super) kernel_drops: Option<KernelDrops>,
    /// Flows the last drain found: the next one makes room for as many in all at once rather
    /// than growing its table step by step (each step rehashes every flow so far).
    last_flows: usize,
}

impl Epochs {
    /// Entries each flow map holds: as created now, or as an earlier agent created them.
    pub(super) fn flow_capacity(&self) -> Option<u32> {
        self.flows[0].info().ok().map(|info| info.max_entries())
    }

    pub(super) fn new(
        index: Array<MapData, u32>,
        flows: [MapData; 2],
        skipped: [MapData; 2],
        overflow: PerCpuArray<MapData, PacketCount>,
    ) -> Result<Self, DatapathError> {
        let current = index
            .get(&0, 0)
            .map_err(|source| DatapathError::Map {
                name: EPOCH,
                source,
            })?
            .min(1);
        Ok(Self {
            index,
            flows,
            skipped,
            overflow,
            current,
            kernel_drops: None,
            last_flows: 0,
        })
    }

    /// Switches the programs to the other epoch and drains the one they left.
    pub(super) fn rotate_and_drain(
        &mut self,
        clock: JiffiesClock,
    ) -> Result<DrainedEpoch, DatapathError> {
        let retired = self.current;
        let next = 1 - retired;
        self.index
            .set(0, next, 0)
            .map_err(|source| DatapathError::Map {
                name: EPOCH,
                source,
            })?;
        self.current = next;
        let switched_at = SystemTime::now();
        let grace_period = wait_for_programs()?;
        let mut drained = DrainedEpoch::new(switched_at, grace_period, clock);
        self.drain_into(retired, &mut drained)?;
        Ok(drained)
    }

    /// Drains the epoch the programs do not count into, in place.
    pub(super) fn drain_retired(
        &mut self,
        clock: JiffiesClock,
    ) -> Result<DrainedEpoch, DatapathError> {
        let switched_at = SystemTime::now();
        let grace_period = wait_for_programs()?;
        let mut drained = DrainedEpoch::new(switched_at, grace_period, clock);
        self.drain_into(1 - self.current, &mut drained)?;
        Ok(drained)
    }

    /// Drains both epochs in place. Exact only when no program is attached any more.
    pub(super) fn drain_everything(
        &mut self,
        clock: JiffiesClock,
    ) -> Result<DrainedEpoch, DatapathError> {
        let switched_at = SystemTime::now();
        let grace_period = wait_for_programs()?;
        let mut drained = DrainedEpoch::new(switched_at, grace_period, clock);
        for epoch in [self.current, 1 - self.current] {
            self.drain_into(epoch, &mut drained)?;
        }
        Ok(drained)
    }

    fn drain_into(&mut self, epoch: u32, drained: &mut DrainedEpoch) -> Result<(), DatapathError> {
        let e = epoch as usize;
        drained
            .flows
            .reserve(self.last_flows.saturating_sub(drained.flows.len()));
        drain_flows(&self.flows[e], FLOWS[e], drained)?;
        self.last_flows = drained.flows.len();
        // After the flows: their ACCEPT counts are what the drops are taken from.
        if let Some(drops) = &mut self.kernel_drops {
            drops.drain_into(epoch, drained)?;
        }

        let skipped = &mut drained.skipped;
        sys::drain_hash_map::<SkipKey, PacketCount>(
            self.skipped[e].fd().as_fd(),
            DRAIN_CHUNK,
            |key, count| skipped.entry(key.ifindex).or_default().add(count),
        )
        .map_err(|source| DatapathError::Syscall {
            call: SKIPPED[e],
            source,
        })?;

        let overflow_error = |source| DatapathError::Map {
            name: SKIP_OVERFLOW,
            source,
        };
        let per_cpu = self.overflow.get(&epoch, 0).map_err(overflow_error)?;
        if per_cpu.iter().any(|count| count.packets != 0) {
            for count in per_cpu.iter() {
                drained.unattributed.add(count);
            }
            let zeroes = PerCpuValues::try_from(vec![PacketCount::default(); per_cpu.len()])
                .map_err(|source| DatapathError::Syscall {
                    call: SKIP_OVERFLOW,
                    source,
                })?;
            self.overflow
                .set(epoch, zeroes, 0)
                .map_err(overflow_error)?;
        }
        Ok(())
    }
}

/// Drains flow maps no program counts into any more (after a grace period), such as the flow
/// maps of a previous agent that a start replaced with maps of another capacity.
pub(super) fn drain_flow_maps(
    maps: &[MapData; 2],
    clock: JiffiesClock,
) -> Result<DrainedEpoch, DatapathError> {
    let switched_at = SystemTime::now();
    let grace_period = wait_for_programs()?;
    let mut drained = DrainedEpoch::new(switched_at, grace_period, clock);
    for (map, name) in maps.iter().zip(FLOWS) {
        drain_flows(map, name, &mut drained)?;
    }
    Ok(drained)
}

/// Reads and deletes every entry of a flow map into `drained`, summing each flow over CPUs. The
/// kernel copies out the next entries on other threads while the last ones are summed.
fn drain_flows(
    map: &MapData,
    name: &'static str,
    drained: &mut DrainedEpoch,
) -> Result<(), DatapathError> {
    // The kernel sizes a hash map's bucket array to its capacity rounded up to a power of two.
    let capacity = map
        .info()
        .map_err(|source| DatapathError::Map { name, source })?
        .max_entries();
    let buckets = u64::from(capacity).next_power_of_two();
    let flows = &mut drained.flows;
    drained.entries += sys::drain_hash_map_parallel::<FlowKey, FlowCounters>(
        map.fd().as_fd(),
        buckets,
        drain_readers(),
        DRAIN_CHUNK,
        |key, counters| {
            let flow = FlowKey { cpu: 0, ..*key };
            flows.entry(flow).or_default().merge(counters);
        },
    )
    .map_err(|source| DatapathError::Syscall { call: name, source })?;
    Ok(())
}

/// Threads reading a flow map: one per CPU, up to [`MAX_DRAIN_READERS`]. The summing thread
/// takes about a third of what the kernel takes per entry, so it runs beside them.
fn drain_readers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_DRAIN_READERS)
}

fn wait_for_programs() -> Result<GracePeriod, DatapathError> {
    sys::wait_for_running_programs().map_err(|source| DatapathError::Syscall {
        call: "membarrier(MEMBARRIER_CMD_GLOBAL)",
        source,
    })
}
