//! A start in two steps. Until it commits, the programs a previous agent left keep running
//! untouched: its pinned links are only noted for adoption, maps this start creates are not
//! pinned, and what the programs decide with (policy word, exclusions) is remembered. A start
//! that is refused ([`Datapath::abort_start`]) detaches what it attached and puts that back, so
//! the kernel is as it found it. A start that commits ([`Datapath::commit_start`]) takes over
//! the pinned links in one atomic update each, pins its maps, removes links nobody uses and, if
//! the flow maps were replaced (another `--max-flows`), drains the old ones.

use std::os::fd::{AsFd, OwnedFd};

use aya::{Ebpf, maps::MapData};
use flowlog_common::maps::FLOWS;

use super::{
    Datapath, DatapathError, DrainedEpoch, attach, epoch, pins::Pins, policy_slots::InForce,
};

/// What a start that has not committed yet has to finish, or to undo.
#[derive(Default)]
pub(super) struct StartState {
    /// The policy word and exclusions before this start changed them.
    before: Option<InForce>,
    /// Names of the maps this start created, to pin at commit.
    to_pin: Vec<&'static str>,
    /// Their descriptors, held from load to commit.
    unpinned: Vec<(&'static str, OwnedFd)>,
    /// The flow maps a previous agent pinned, when this start replaces them.
    replaced_flows: Option<ReplacedFlows>,
    /// The programs a previous agent of this pin directory left running: behind its pinned
    /// links, and pinned for its clsact filters.
    own_programs: Vec<u32>,
}

struct ReplacedFlows {
    maps: [MapData; 2],
    capacity: u32,
}

/// What committing a start did beyond attaching.
#[derive(Debug, Default)]
pub struct CommittedStart {
    /// Pinned links of interfaces this agent does not attach, removed.
    pub stale_links: Vec<String>,
    /// The counts of flow maps that were replaced by maps of another capacity, with the
    /// capacity they had: they join the first interval.
    pub replaced_flows: Option<(u32, DrainedEpoch)>,
}

impl StartState {
    pub(super) fn set_own_programs(&mut self, programs: Vec<u32>) {
        self.own_programs = programs;
    }

    pub(super) fn own_programs(&self) -> &[u32] {
        &self.own_programs
    }

    pub(super) fn pin_when_committed(&mut self, name: &'static str) {
        self.to_pin.push(name);
    }

    /// Opens the pinned flow maps the new ones replace.
    pub(super) fn replace_flows(
        &mut self,
        pins: &Pins,
        capacity: u32,
    ) -> Result<(), DatapathError> {
        let open = |name: &'static str| {
            MapData::from_pin(pins.map_path(name))
                .map_err(|source| DatapathError::Map { name, source })
        };
        self.replaced_flows = Some(ReplacedFlows {
            maps: [open(FLOWS[0])?, open(FLOWS[1])?],
            capacity,
        });
        Ok(())
    }

    /// Keeps a descriptor of every map to pin at commit (the typed maps are taken out of the
    /// object right after loading).
    pub(super) fn hold_unpinned_maps(&mut self, ebpf: &Ebpf) -> Result<(), DatapathError> {
        for name in &self.to_pin {
            let fd = ebpf
                .map(name)
                .and_then(map_fd)
                .ok_or(DatapathError::MissingMap(name))?
                .try_clone_to_owned()
                .map_err(|source| DatapathError::Syscall {
                    call: "dup(map)",
                    source,
                })?;
            self.unpinned.push((name, fd));
        }
        Ok(())
    }
}

/// The descriptor of a map of the kinds flowlog's object has.
fn map_fd(map: &aya::maps::Map) -> Option<std::os::fd::BorrowedFd<'_>> {
    use aya::maps::Map;
    let data = match map {
        Map::Array(data)
        | Map::PerCpuArray(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::LpmTrie(data)
        | Map::RingBuf(data) => data,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

impl Datapath {
    /// Remembers what the programs decide with now (they may be a previous agent's, on pinned
    /// maps), so [`Datapath::abort_start`] can put it back.
    pub fn begin_start(&mut self) -> Result<(), DatapathError> {
        let before = self.policy.in_force()?;
        self.start.get_or_insert_with(StartState::default).before = Some(before);
        Ok(())
    }

    /// Undoes a start that is refused: detaches what it attached (links of a previous agent
    /// were never touched), puts back the policy word and exclusions, and removes the pin
    /// directories it created. Nothing it created was pinned.
    pub fn abort_start(&mut self) {
        self.detach_kernel_drops();
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in ifindexes {
            if let Err(error) = self.detach(ifindex) {
                tracing::warn!(%error, "undoing the start");
            }
        }
        if let Some(before) = self.start.take().and_then(|start| start.before)
            && let Err(error) = self.policy.restore(&before)
        {
            tracing::error!(%error, "undoing the start: the previous policy and exclusions could not be put back");
        }
        if let Some(pins) = &mut self.pins {
            pins.abandon();
        }
    }

    /// Finishes a start whose every interface is attached: takes over the links a previous
    /// agent pinned (an interface whose link cannot be taken over is attached anew, or left out
    /// with a warning if that fails too), pins the maps this start created, removes pinned
    /// links no interface uses, and drains replaced flow maps.
    pub fn commit_start(&mut self) -> Result<CommittedStart, DatapathError> {
        let Some(start) = self.start.take() else {
            return Ok(CommittedStart::default());
        };
        let mut committed = CommittedStart::default();
        let Some(pins) = &mut self.pins else {
            return Ok(committed);
        };
        let links = pins.links_dir();
        let mut failed = Vec::new();
        for attached in self.attached.values_mut() {
            if let Err(error) = attach::adopt_pending(&mut self.ebpf, attached, &links) {
                tracing::warn!(interface = %attached.name, %error, "not attached");
                failed.push(attached.ifindex);
            }
        }
        for ifindex in failed {
            let _ = self.detach(ifindex);
        }
        let pins = self.pins.as_mut().expect("checked above");
        for (name, fd) in start.unpinned {
            let path = pins.map_path(name);
            // A replaced flow map's pin goes; the map itself is held until drained below.
            let _ = std::fs::remove_file(&path);
            let pinned = MapData::from_fd(fd)
                .map_err(|source| DatapathError::Map { name, source })
                .and_then(|map| {
                    map.pin(&path)
                        .map_err(|error| DatapathError::Pins(format!("pinning {name}: {error}")))
                });
            if let Err(error) = pinned {
                // Counting goes on; only the next agent cannot adopt this map.
                tracing::error!(%error, "map not pinned: a restart will not carry its counts");
            }
        }
        pins.keep();
        // Pinned so the next agent knows its clsact filters (links carry their own identity).
        for name in [
            self.programs.name(super::CountingProgram::TcIngress),
            self.programs.name(super::CountingProgram::TcEgress),
        ] {
            let path = pins.program_path(name);
            let _ = std::fs::remove_file(&path);
            let pinned = self
                .ebpf
                .program_mut(name)
                .ok_or(DatapathError::Program {
                    name,
                    source: aya::programs::ProgramError::NotLoaded,
                })
                .and_then(|program| {
                    program
                        .pin(&path)
                        .map_err(|error| DatapathError::Pins(format!("pinning {name}: {error}")))
                });
            if let Err(error) = pinned {
                tracing::error!(%error, "program not pinned: a restart will not recognize its clsact filters");
            }
        }
        committed.stale_links = self.remove_stale_links()?;
        committed
            .stale_links
            .extend(remove_stale_filters(&start.own_programs));
        if let Some(replaced) = start.replaced_flows {
            // Every program counting into the old maps was replaced or removed above; after a
            // grace period none runs any more, and both old epochs are complete.
            let clock = self.clock()?;
            let drained = epoch::drain_flow_maps(&replaced.maps, clock)?;
            committed.replaced_flows = Some((replaced.capacity, drained));
        }
        Ok(committed)
    }

    /// The links pinned in this agent's pin directory, by the names they were pinned under.
    pub fn pinned_links(&self) -> Vec<super::PinnedLinkName> {
        self.pins
            .as_ref()
            .map(|pins| pins.links().into_iter().map(|(_, name)| name).collect())
            .unwrap_or_default()
    }

    /// The programs a previous agent of this pin directory left running (behind its pinned
    /// links, and pinned for its clsact filters): this agent takes them over.
    pub fn own_programs(&self) -> &[u32] {
        self.start
            .as_ref()
            .map_or(&[], |start| start.own_programs())
    }
}

/// Removes clsact filters still running a previous agent's program (interfaces this agent does
/// not attach to); returns what it removed.
fn remove_stale_filters(own_programs: &[u32]) -> Vec<String> {
    if own_programs.is_empty() {
        return Vec::new();
    }
    let Ok(links) = crate::sys::list_links() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for link in links {
        let Ok(filters) = crate::sys::attachments::clsact_filters(link.ifindex) else {
            continue;
        };
        for filter in filters {
            if own_programs.contains(&filter.program_id) {
                attach::remove_filter(&link.name, filter.ingress, filter.priority, filter.handle);
                let direction = if filter.ingress { "ingress" } else { "egress" };
                removed.push(format!("{} clsact {direction}", link.name));
            }
        }
    }
    removed
}
