//! The kernel side as the agent sees it: load the eBPF object, attach its programs to
//! interfaces, and drain the flow maps interval by interval.

mod attach;
mod clock;
mod epoch;
pub mod hook;
mod kernel;
mod kernel_drops;
pub mod owner;
mod pins;
mod policy_slots;
mod start;

use std::{collections::BTreeMap, io, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, MapError, PerCpuArray},
    programs::ProgramError,
};
use flowlog_common::{
    flow::PacketCount,
    maps::{EPOCH, FLOWS, MAX_SKIP_ENTRIES, SKIP_OVERFLOW, SKIPPED, STATS, STATS_REPORTED},
    policy::Rule,
    stats::Stat,
};

pub use attach::AttachedInterface;
pub use clock::{ClockSample, JiffiesClock};
pub use epoch::DrainedEpoch;
pub use hook::{Hook, HookChoice, TcMode, TcModeChoice};
pub use kernel::{CountingProgram, ProgramSet, has_tcx, why_no_policy};
pub use pins::{LAYOUT_VERSION, PinnedLinkName, inspect as inspect_pins, remove_pins};
pub use start::CommittedStart;

use crate::policy::CompiledPolicy;

/// The eBPF object built by `build.rs` from `flowlog-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlog"));

/// Reads the kernel programs' aya-log messages into the `log`/`tracing` pipeline.
pub type KernelLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Program names in the object.
pub mod programs {
    pub const TC_INGRESS: &str = "flowlog_tc_in";
    pub const TC_EGRESS: &str = "flowlog_tc_eg";
    pub const XDP_INGRESS: &str = "flowlog_xdp";
    /// The same programs with bounded loops instead of `bpf_loop`, and no policy, for kernels
    /// before 5.17 ([`super::ProgramSet::BoundedLoops`]).
    pub const TC_INGRESS_BOUNDED: &str = "flowlog_tc_in_b";
    pub const TC_EGRESS_BOUNDED: &str = "flowlog_tc_eg_b";
    pub const XDP_INGRESS_BOUNDED: &str = "flowlog_xdp_b";
    /// Benchmark references: one per-CPU hash update per packet.
    pub const REFERENCE_TC: &str = "flowlog_ref_tc";
    pub const REFERENCE_XDP: &str = "flowlog_ref_xdp";
    /// Reads jiffies and the monotonic clock together (run with BPF_PROG_TEST_RUN, never
    /// attached).
    pub const CLOCK: &str = "flowlog_clock";
    /// Counts the kernel's own drops (`skb:kfree_skb`) on the agent's interfaces.
    pub const KERNEL_DROPS: &str = "flowlog_kernel_drops";
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "this flowlog-agent was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild it with `cargo xtask run`"
    )]
    StubObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("pin directory: {0}")]
    Pins(String),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("interface {interface}: {message}")]
    Attach { interface: String, message: String },
    #[error("starting the eBPF log reader: {0}")]
    Logger(#[from] aya_log::Error),
    #[error(
        "the policy cannot run on this kernel ({kernel}): {why}; run without a policy, or on Linux 6.5 or later"
    )]
    PolicyUnsupported { kernel: String, why: &'static str },
    #[error("{call}: {source}")]
    Syscall {
        call: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Capacities chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct DatapathConfig {
    /// Entries of each flow epoch map.
    pub max_flows: u32,
}

/// The loaded programs and maps. Dropping it detaches every program.
pub struct Datapath {
    ebpf: Ebpf,
    logger: Option<KernelLogger>,
    epochs: epoch::Epochs,
    stats: PerCpuArray<MapData, PacketCount>,
    /// What the agents reported of `stats` so far; `adopted` when a previous agent left it.
    stats_reported: Array<MapData, PacketCount>,
    stats_reported_adopted: bool,
    attached: BTreeMap<u32, AttachedInterface>,
    /// The build of the counting programs this kernel verifies.
    programs: ProgramSet,
    policy: policy_slots::PolicyTables,
    /// Where maps and links are pinned, if they are.
    pins: Option<pins::Pins>,
    /// What a start that has not committed yet must finish or undo; `None` once it committed.
    start: Option<start::StartState>,
    /// The clock sample taken at load, against which the tick length is measured.
    first_clock: ClockSample,
}

impl Datapath {
    /// Loads the object, sizes the flow maps and loads (verifies) every program. Nothing is
    /// attached yet. Maps are the agent's own and go with it.
    pub fn load(config: DatapathConfig) -> Result<Self, DatapathError> {
        Self::load_with_pins(config, None, ProgramSet::for_running_kernel())
    }

    /// As [`Datapath::load`], with the given build of the counting programs rather than the
    /// one the kernel's features call for (tests run the bounded-loop build on new kernels).
    pub fn load_programs(
        config: DatapathConfig,
        programs: ProgramSet,
    ) -> Result<Self, DatapathError> {
        Self::load_with_pins(config, None, programs)
    }

    /// As [`Datapath::load`], with the maps pinned under `pin_dir` (a BPF filesystem): maps left
    /// there by a previous agent are reused with their counts, and programs attached with TCX
    /// or XDP links are pinned there too, so they keep counting while no agent runs.
    pub fn load_pinned(config: DatapathConfig, pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::load_with_pins(config, Some(pin_dir), ProgramSet::for_running_kernel())
    }

    fn load_with_pins(
        config: DatapathConfig,
        pin_dir: Option<&Path>,
        programs: ProgramSet,
    ) -> Result<Self, DatapathError> {
        Self::load_inner(config, pin_dir, programs, None)
    }

    /// As [`Datapath::load`] (or [`Datapath::load_pinned`] with `pin_dir`), with the kernel drop
    /// program loaded too when `kernel_drops` says how to read this kernel; it is attached by
    /// [`Datapath::attach_kernel_drops`].
    pub fn load_full(
        config: DatapathConfig,
        pin_dir: Option<&Path>,
        kernel_drops: Option<&crate::kernel_drops::Setup>,
    ) -> Result<Self, DatapathError> {
        Self::load_inner(
            config,
            pin_dir,
            ProgramSet::for_running_kernel(),
            kernel_drops,
        )
    }

    fn load_inner(
        config: DatapathConfig,
        pin_dir: Option<&Path>,
        programs: ProgramSet,
        kernel_drops: Option<&crate::kernel_drops::Setup>,
    ) -> Result<Self, DatapathError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DatapathError::StubObject);
        }
        let pins = pin_dir.map(pins::Pins::prepare).transpose()?;
        // Checked before loading, which creates it: an agent of a version without it left none.
        let stats_reported_adopted = pins
            .as_ref()
            .is_some_and(|pins| pins.reused && pins.map_path(STATS_REPORTED).exists());
        // Maps a previous agent pinned are adopted with their counts; the others are created
        // now and pinned only when the start commits, so a refused start pins nothing. Flow maps
        // of another capacity (`--max-flows` changed) are replaced: the new programs count into
        // new ones, and the old ones are drained when the start commits.
        let mut start = start::StartState::default();
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            let pinned_capacity = pins.pinned_flow_capacity()?;
            let resize = pinned_capacity.is_some_and(|capacity| capacity != config.max_flows);
            if resize {
                start.replace_flows(pins, pinned_capacity.unwrap_or_default())?;
            }
            start.set_own_programs(pins.own_programs());
            for name in pins::PINNED_MAPS {
                let path = pins.map_path(name);
                if path.exists() && !(resize && FLOWS.contains(&name)) {
                    loader.map_pin_path(name, path);
                } else {
                    start.pin_when_committed(name);
                }
            }
        }
        for name in FLOWS {
            loader.map_max_entries(name, config.max_flows);
        }
        for name in SKIPPED {
            loader.map_max_entries(name, MAX_SKIP_ENTRIES);
        }
        if let Some(setup) = kernel_drops {
            kernel_drops::configure(&mut loader, setup);
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        start.hold_unpinned_maps(&ebpf)?;
        attach::load_programs(&mut ebpf, programs)?;
        if programs == ProgramSet::BoundedLoops {
            tracing::warn!(
                kernel = %crate::sys::kernel_release(),
                "loaded the bounded-loop programs: they count and apply exclusions exactly, but a policy is unavailable: {}",
                why_no_policy().unwrap_or("requested")
            );
        }
        let logger = Some(aya_log::EbpfLogger::init(&mut ebpf)?);

        let epoch_map: Array<MapData, u32> = take_map(&mut ebpf, EPOCH)?;
        let flows = [
            take_map_data(&mut ebpf, FLOWS[0])?,
            take_map_data(&mut ebpf, FLOWS[1])?,
        ];
        let skipped = [
            take_map_data(&mut ebpf, SKIPPED[0])?,
            take_map_data(&mut ebpf, SKIPPED[1])?,
        ];
        let overflow: PerCpuArray<MapData, PacketCount> = take_map(&mut ebpf, SKIP_OVERFLOW)?;
        let stats: PerCpuArray<MapData, PacketCount> = take_map(&mut ebpf, STATS)?;
        let stats_reported: Array<MapData, PacketCount> = take_map(&mut ebpf, STATS_REPORTED)?;
        let mut epochs = epoch::Epochs::new(epoch_map, flows, skipped, overflow)?;
        if let Some(setup) = kernel_drops {
            epochs.kernel_drops = Some(kernel_drops::KernelDrops::load(&mut ebpf, setup)?);
        }
        let policy = policy_slots::PolicyTables::take(&mut ebpf)?;
        let first_clock = clock::sample(&ebpf)?;
        Ok(Self {
            ebpf,
            logger,
            epochs,
            stats,
            stats_reported,
            stats_reported_adopted,
            attached: BTreeMap::new(),
            programs,
            policy,
            start: pins.is_some().then_some(start),
            pins,
            first_clock,
        })
    }

    /// The reader of the programs' log messages (aya-log), to be polled by the caller; the
    /// programs log only rare events (a full flow map), never per packet.
    pub fn take_logger(&mut self) -> Option<KernelLogger> {
        self.logger.take()
    }

    /// The build of the counting programs that is loaded.
    pub fn programs(&self) -> ProgramSet {
        self.programs
    }

    /// The loaded object, for tests and benchmarks that run programs with BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches the counting programs to one interface. While a start has not committed, links
    /// a previous agent pinned for the interface are only noted, and taken over at commit.
    pub fn attach(
        &mut self,
        interface: &str,
        ifindex: u32,
        hook: Hook,
        tc_mode: TcMode,
    ) -> Result<&AttachedInterface, DatapathError> {
        let links = self.pins.as_ref().map(|pins| pins.links_dir());
        let point = attach::AttachPoint {
            interface,
            ifindex,
            hook,
            tc_mode,
            pins: links.as_deref(),
            adopt_now: self.start.is_none(),
            own_programs: self
                .start
                .as_ref()
                .map_or(&[], |start| start.own_programs()),
            set: self.programs,
        };
        let attached = attach::attach(&mut self.ebpf, point)?;
        if let Some(drops) = &mut self.epochs.kernel_drops {
            drops.interface_attached(ifindex)?;
        }
        Ok(self.attached.entry(ifindex).or_insert(attached))
    }

    /// Attaches the kernel drop program, if it was loaded (see [`Datapath::load_full`]).
    pub fn attach_kernel_drops(&mut self) -> Result<bool, DatapathError> {
        match &mut self.epochs.kernel_drops {
            Some(drops) => drops.attach(&mut self.ebpf).map(|()| true),
            None => Ok(false),
        }
    }

    /// Detaches the kernel drop program: drops are no longer counted (before the last drain).
    pub fn detach_kernel_drops(&mut self) {
        if let Some(drops) = &mut self.epochs.kernel_drops {
            drops.detach(&mut self.ebpf);
        }
    }

    /// Whether the kernel drop program is attached.
    pub fn kernel_drops_attached(&self) -> bool {
        self.epochs
            .kernel_drops
            .as_ref()
            .is_some_and(kernel_drops::KernelDrops::is_attached)
    }

    /// Detaches the programs from one interface (nothing happens if they were not attached).
    pub fn detach(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        if let Some(drops) = &mut self.epochs.kernel_drops {
            drops.interface_detached(ifindex);
        }
        match self.attached.remove(&ifindex) {
            Some(attached) => attach::detach(&mut self.ebpf, attached),
            None => Ok(()),
        }
    }

    /// Whether maps left by a previous agent were reused (their counts carry over).
    pub fn reused_pinned_maps(&self) -> bool {
        self.pins.as_ref().is_some_and(|pins| pins.reused)
    }

    /// Entries each flow map holds.
    pub fn flow_capacity(&self) -> Option<u32> {
        self.epochs.flow_capacity()
    }

    /// Whether any interface is attached through pinned links, which outlive the agent.
    pub fn has_pinned_links(&self) -> bool {
        self.attached.values().any(AttachedInterface::is_pinned)
    }

    /// Detaches the interfaces whose links are not pinned (clsact filters, or no pin directory).
    pub fn detach_unpinned(&mut self) -> Result<(), DatapathError> {
        let unpinned: Vec<u32> = self
            .attached
            .values()
            .filter(|a| !a.is_pinned())
            .map(|a| a.ifindex)
            .collect();
        for ifindex in unpinned {
            self.detach(ifindex)?;
        }
        Ok(())
    }

    /// Removes pinned links this agent did not attach or adopt (interfaces gone or no longer
    /// selected, or an ingress hook that changed). Called when a start commits.
    fn remove_stale_links(&mut self) -> Result<Vec<String>, DatapathError> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let keep: Vec<&Path> = self
            .attached
            .values()
            .flat_map(AttachedInterface::pinned_paths)
            .collect();
        pins.remove_links_except(&keep)
    }

    /// Forgets the pinned links without detaching them: they keep counting after the agent exits.
    pub fn leave_pinned_attached(&mut self) {
        let kept: Vec<u32> = self
            .attached
            .values()
            .filter(|a| a.is_pinned())
            .map(|a| a.ifindex)
            .collect();
        for ifindex in kept {
            if let Some(attached) = self.attached.remove(&ifindex) {
                attach::leave_attached(&mut self.ebpf, attached);
            }
        }
    }

    /// Drains the epoch the programs are not counting into, without switching: what a previous
    /// agent left undrained (it was stopped before draining, or killed). Exact, because programs
    /// left that epoch at least one grace period ago.
    pub fn drain_leftovers(&mut self) -> Result<DrainedEpoch, DatapathError> {
        let clock = self.clock()?;
        self.epochs.drain_retired(clock)
    }

    /// Detaches every program from every interface.
    pub fn detach_all(&mut self) -> Result<(), DatapathError> {
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in ifindexes {
            self.detach(ifindex)?;
        }
        Ok(())
    }

    pub fn attached(&self) -> impl Iterator<Item = &AttachedInterface> {
        self.attached.values()
    }

    /// Ends the current epoch: switches the programs to the other flow map, waits until no
    /// program still counts into the old one, and drains it.
    pub fn drain_interval(&mut self) -> Result<DrainedEpoch, DatapathError> {
        let clock = self.clock()?;
        self.epochs.rotate_and_drain(clock)
    }

    /// Drains both epochs without switching. Only exact once no program runs any more, i.e.
    /// after [`Datapath::detach_all`]: used for the final drain at shutdown.
    pub fn drain_all_after_detach(&mut self) -> Result<DrainedEpoch, DatapathError> {
        let clock = self.clock()?;
        self.epochs.drain_everything(clock)
    }

    /// Jiffies and the monotonic clock now, as the programs see them.
    pub fn clock_sample(&self) -> Result<ClockSample, DatapathError> {
        clock::sample(&self.ebpf)
    }

    fn clock(&self) -> Result<JiffiesClock, DatapathError> {
        Ok(JiffiesClock::new(
            self.first_clock,
            self.clock_sample()?,
            crate::sys::monotonic_to_unix_offset_ns(),
        ))
    }

    /// Publishes a policy (`None` removes it): every packet sees either the old or the new one.
    /// Returns the policy's generation.
    /// Refused when the loaded programs enforce no policy (a kernel without `bpf_loop`).
    pub fn set_policy(&mut self, policy: Option<&CompiledPolicy>) -> Result<u32, DatapathError> {
        if policy.is_some() && !self.programs.has_policy() {
            return Err(DatapathError::PolicyUnsupported {
                kernel: crate::sys::kernel_release(),
                why: why_no_policy().unwrap_or("the programs loaded enforce no policy"),
            });
        }
        self.policy.publish(policy)
    }

    /// Sets the traffic excluded from logging (before attaching).
    pub fn set_exclusions(&mut self, rules: &[Rule]) -> Result<(), DatapathError> {
        self.policy.set_exclusions(rules)
    }

    /// The length of a kernel tick, measured over at least 210 ms since load (enough to tell
    /// 100 Hz from 250 Hz), sleeping for the rest if needed.
    pub fn ns_per_jiffy(&self) -> Result<u64, DatapathError> {
        let elapsed = self
            .clock_sample()?
            .monotonic_ns
            .saturating_sub(self.first_clock.monotonic_ns);
        let wanted = 210_000_000;
        if elapsed < wanted {
            std::thread::sleep(std::time::Duration::from_nanos(wanted - elapsed));
        }
        Ok(self.clock()?.ns_per_jiffy)
    }

    /// The totals of [`Datapath::stats`] that earlier agents reported, if they left them
    /// (pinned maps adopted): reporting resumes from there, so what was counted while no agent
    /// ran is reported too.
    pub fn stats_reported(&self) -> Result<Option<BTreeMap<Stat, PacketCount>>, DatapathError> {
        if !self.stats_reported_adopted {
            return Ok(None);
        }
        let mut totals = BTreeMap::new();
        for stat in Stat::ALL {
            let count = self
                .stats_reported
                .get(&(stat as u32), 0)
                .map_err(|source| DatapathError::Map {
                    name: STATS_REPORTED,
                    source,
                })?;
            totals.insert(stat, count);
        }
        Ok(Some(totals))
    }

    /// Records the totals this agent has reported (for the next one).
    pub fn set_stats_reported(
        &mut self,
        totals: &BTreeMap<Stat, PacketCount>,
    ) -> Result<(), DatapathError> {
        for (stat, count) in totals {
            self.stats_reported
                .set(*stat as u32, count, 0)
                .map_err(|source| DatapathError::Map {
                    name: STATS_REPORTED,
                    source,
                })?;
        }
        Ok(())
    }

    /// Running totals of the packets the programs did not count as flows.
    pub fn stats(&self) -> Result<BTreeMap<Stat, PacketCount>, DatapathError> {
        let mut totals = BTreeMap::new();
        for stat in Stat::ALL {
            let per_cpu =
                self.stats
                    .get(&(stat as u32), 0)
                    .map_err(|source| DatapathError::Map {
                        name: STATS,
                        source,
                    })?;
            let mut total = PacketCount::default();
            for count in per_cpu.iter() {
                total.add(count);
            }
            totals.insert(stat, total);
        }
        Ok(totals)
    }
}

fn take_map_data(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, DatapathError> {
    match ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))? {
        aya::maps::Map::HashMap(data) => Ok(data),
        _ => Err(DatapathError::Map {
            name,
            source: MapError::InvalidName { name: name.into() },
        }),
    }
}

fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, DatapathError>
where
    M: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    M::try_from(map).map_err(|source| DatapathError::Map { name, source })
}
