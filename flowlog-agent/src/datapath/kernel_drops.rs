//! The drop program in the datapath: loaded with the object (its layout set as a global),
//! attached to `skb:kfree_skb` when a start commits, told which interfaces are the agent's, and
//! drained with each epoch.
//!
//! Its link is not pinned: it is detached when the agent stops (a raw tracepoint link cannot be
//! updated in place the way TCX and XDP links are, so a pinned one could not be handed to the
//! next agent without counting some drops twice or not at all). Drops while no agent runs are
//! not seen.

use std::os::fd::{AsFd, OwnedFd};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{RawTracePoint, raw_trace_point::RawTracePointLinkId},
};
use flowlog_common::{
    drops::{DROP_CONFIG, DROP_INTERFACES, DROP_OVERFLOW, DROP_REASONS, DROPS, DropKey},
    flow::{FlowCounters, FlowKey, PacketCount},
};
use rustc_hash::FxHashMap;

use super::{DatapathError, DrainedEpoch, programs, take_map, take_map_data};
use crate::{
    kernel_drops::{Reasons, Setup, TRACEPOINT, settle},
    sys,
};

/// Entries fetched per batch system call.
const DRAIN_CHUNK: usize = 4096;

/// The drop program's maps and link.
pub(super) struct KernelDrops {
    drops: [MapData; 2],
    overflow: PerCpuArray<MapData, PacketCount>,
    interfaces: HashMap<MapData, u32, u8>,
    reasons: Reasons,
    link: Option<RawTracePointLinkId>,
    /// The program, for its `recursion_misses`: drops it did not see.
    program: OwnedFd,
    /// Its `recursion_misses` at the last drain.
    misses_reported: u64,
}

/// Sets the kernel's layout into the object before it is loaded.
pub(super) fn configure<'a>(loader: &mut EbpfLoader<'a>, setup: &'a Setup) {
    loader.override_global(DROP_CONFIG, &setup.config, true);
}

impl KernelDrops {
    /// Loads (verifies) the program and takes its maps out of the object; nothing is attached.
    pub(super) fn load(ebpf: &mut Ebpf, setup: &Setup) -> Result<Self, DatapathError> {
        let name = programs::KERNEL_DROPS;
        let loaded = program(ebpf)?;
        loaded
            .load()
            .map_err(|source| DatapathError::Program { name, source })?;
        let program_fd = loaded
            .fd()
            .map_err(|source| DatapathError::Program { name, source })?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| DatapathError::Syscall {
                call: "dup(program)",
                source,
            })?;
        let mut reasons: Array<MapData, u8> = take_map(ebpf, DROP_REASONS)?;
        for slot in setup.counted_slots() {
            reasons
                .set(slot, Setup::COUNTED, 0)
                .map_err(|source| DatapathError::Map {
                    name: DROP_REASONS,
                    source,
                })?;
        }
        Ok(Self {
            drops: [
                take_map_data(ebpf, DROPS[0])?,
                take_map_data(ebpf, DROPS[1])?,
            ],
            overflow: take_map(ebpf, DROP_OVERFLOW)?,
            interfaces: take_map(ebpf, DROP_INTERFACES)?,
            reasons: setup.reasons.clone(),
            link: None,
            misses_reported: sys::program_recursion_misses(program_fd.as_fd()).unwrap_or(0),
            program: program_fd,
        })
    }

    pub(super) fn attach(&mut self, ebpf: &mut Ebpf) -> Result<(), DatapathError> {
        if self.link.is_none() {
            let link =
                program(ebpf)?
                    .attach(TRACEPOINT)
                    .map_err(|source| DatapathError::Program {
                        name: programs::KERNEL_DROPS,
                        source,
                    })?;
            self.link = Some(link);
        }
        Ok(())
    }

    pub(super) fn detach(&mut self, ebpf: &mut Ebpf) {
        if let Some(link) = self.link.take()
            && let Ok(program) = program(ebpf)
            && let Err(error) = program.detach(link)
        {
            tracing::warn!(%error, "detaching the kernel drop program");
        }
    }

    pub(super) fn is_attached(&self) -> bool {
        self.link.is_some()
    }

    /// Counts drops on this interface from now on.
    pub(super) fn interface_attached(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.interfaces
            .insert(ifindex, 1, 0)
            .map_err(|source| DatapathError::Map {
                name: DROP_INTERFACES,
                source,
            })
    }

    pub(super) fn interface_detached(&mut self, ifindex: u32) {
        let _ = self.interfaces.remove(&ifindex);
    }

    /// Drains the drops of `epoch` (quiescent: see `epoch.rs`) into `drained`.
    pub(super) fn drain_into(
        &mut self,
        epoch: u32,
        drained: &mut DrainedEpoch,
    ) -> Result<(), DatapathError> {
        let e = epoch as usize;
        let mut drops: FxHashMap<DropKey, FlowCounters> = FxHashMap::default();
        drained.entries += sys::drain_hash_map::<DropKey, FlowCounters>(
            self.drops[e].fd().as_fd(),
            DRAIN_CHUNK,
            |key, counters| {
                let merged = DropKey {
                    flow: FlowKey { cpu: 0, ..key.flow },
                    ..*key
                };
                drops.entry(merged).or_default().merge(counters);
            },
        )
        .map_err(|source| DatapathError::Syscall {
            call: DROPS[e],
            source,
        })?;
        settle(
            &mut drained.flows,
            drops,
            &self.reasons,
            &mut drained.kernel_drops,
        );

        // A drop inside a softirq that interrupted the program on the same CPU is skipped by the
        // kernel (no re-entry) and only counted: reported, never silent.
        if let Ok(misses) = sys::program_recursion_misses(self.program.as_fd()) {
            drained.kernel_drops.missed += misses.saturating_sub(self.misses_reported);
            self.misses_reported = misses;
        }

        let overflow_error = |source| DatapathError::Map {
            name: DROP_OVERFLOW,
            source,
        };
        let per_cpu = self.overflow.get(&epoch, 0).map_err(overflow_error)?;
        if per_cpu.iter().any(|count| count.packets != 0) {
            for count in per_cpu.iter() {
                drained.kernel_drops.unrecorded.add(count);
            }
            let zeroes = PerCpuValues::try_from(vec![PacketCount::default(); per_cpu.len()])
                .map_err(|source| DatapathError::Syscall {
                    call: DROP_OVERFLOW,
                    source,
                })?;
            self.overflow
                .set(epoch, zeroes, 0)
                .map_err(overflow_error)?;
        }
        Ok(())
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut RawTracePoint, DatapathError> {
    let name = programs::KERNEL_DROPS;
    ebpf.program_mut(name)
        .ok_or(DatapathError::Program {
            name,
            source: aya::programs::ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}
