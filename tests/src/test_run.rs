//! flowlog's real kernel programs on crafted frames: loaded through the agent's [`Datapath`], run
//! with BPF_PROG_TEST_RUN (aya's [`TestRun`]), and read back only the way the agent reads them
//! ([`Datapath::drain_interval`], [`Datapath::stats`]).
//!
//! What the kernel's test runs do (net/bpf/test_run.c) and the helpers rely on:
//! - the program runs synchronously on the calling thread's CPU. [`TestDatapath::load`] pins the
//!   thread to one CPU, so all packets of a flow land in one map entry and a map of N entries
//!   holds exactly N flows;
//! - a classifier gets a linear socket buffer on the loopback device of the calling thread's
//!   namespace (ifindex 1) unless the `__sk_buff` context names another device, and an XDP
//!   program's `ingress_ifindex` is that loopback too;
//! - input shorter than an Ethernet header (14 bytes) is refused with EINVAL; a classifier's
//!   run (on 6.18) also refuses an untagged IPv4 or IPv6 frame too short for its 20- or 40-byte
//!   IP header, and takes at most a page minus headroom and `skb_shared_info` (3712 bytes),
//!   always linear.

use std::collections::BTreeMap;

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};
use flowlog_agent::{
    datapath::{CountingProgram, Datapath, DatapathConfig, DrainedEpoch, ProgramSet},
    policy::Policy,
};
use flowlog_common::{
    flow::{AddressFamily, Direction, FlowCounters, FlowKey, PacketCount, Verdict},
    stats::Stat,
};

use crate::frames::FrameBuilder;

/// Names the build of the counting programs the BPF_PROG_TEST_RUN tests load:
/// `bounded-loops` runs them against the programs older kernels get, on any kernel; unset, the
/// build the kernel calls for.
pub const PROGRAMS_ENV: &str = "FLOWLOG_TEST_PROGRAMS";

fn programs_from_env() -> Option<ProgramSet> {
    match std::env::var(PROGRAMS_ENV).ok()?.as_str() {
        "bounded-loops" => Some(ProgramSet::BoundedLoops),
        "bpf_loop" => Some(ProgramSet::HelperLoops),
        other => panic!("{PROGRAMS_ENV}={other}: expected bounded-loops or bpf_loop"),
    }
}

/// `TC_ACT_UNSPEC` (-1) as BPF_PROG_TEST_RUN reports it: "no opinion", the packet goes on.
pub const TC_ACT_UNSPEC: u32 = -1i32 as u32;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `TC_ACT_SHOT`: the classifier drops the packet.
pub const TC_ACT_SHOT: u32 = 2;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// The loopback device is interface 1 in every network namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

/// Addresses of the crafted frames (198.18.0.0/15 and fd00::/8).
pub const V4_SRC: [u8; 4] = [198, 18, 0, 1];
pub const V4_DST: [u8; 4] = [198, 19, 255, 254];
pub const V6_SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a];
pub const V6_DST: [u8; 16] = [0xfd, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0b];

/// An IPv4 frame from [`V4_SRC`] to [`V4_DST`].
pub fn v4() -> FrameBuilder {
    FrameBuilder::ipv4(V4_SRC, V4_DST)
}

/// An IPv6 frame from [`V6_SRC`] to [`V6_DST`].
pub fn v6() -> FrameBuilder {
    FrameBuilder::ipv6(V6_SRC, V6_DST)
}

/// The key a [`v4`] packet must be counted under by `hook` on the loopback, written out field by
/// field.
pub fn v4_key(hook: Program, protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    let (mut src_addr, mut dst_addr) = ([0; 16], [0; 16]);
    src_addr[..4].copy_from_slice(&V4_SRC);
    dst_addr[..4].copy_from_slice(&V4_DST);
    FlowKey {
        ifindex: LOOPBACK_IFINDEX,
        cpu: 0,
        src_addr,
        dst_addr,
        src_port: src_port.to_be_bytes(),
        dst_port: dst_port.to_be_bytes(),
        protocol,
        family: AddressFamily::Ipv4 as u8,
        direction: hook.direction() as u8,
        verdict: Verdict::Accept as u8,
    }
}

/// The key a [`v6`] packet must be counted under by `hook` on the loopback.
pub fn v6_key(hook: Program, protocol: u8, src_port: u16, dst_port: u16) -> FlowKey {
    FlowKey {
        src_addr: V6_SRC,
        dst_addr: V6_DST,
        family: AddressFamily::Ipv6 as u8,
        ..v4_key(hook, protocol, src_port, dst_port)
    }
}

/// A flowlog counting program to run frames through, by where it hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    TcIngress,
    TcEgress,
    Xdp,
}

impl Program {
    pub const ALL: [Self; 3] = [Self::TcIngress, Self::TcEgress, Self::Xdp];
    pub const TC: [Self; 2] = [Self::TcIngress, Self::TcEgress];

    pub fn program(self) -> CountingProgram {
        match self {
            Self::TcIngress => CountingProgram::TcIngress,
            Self::TcEgress => CountingProgram::TcEgress,
            Self::Xdp => CountingProgram::Xdp,
        }
    }

    /// The direction flows counted by this program must carry.
    pub fn direction(self) -> Direction {
        match self {
            Self::TcIngress | Self::Xdp => Direction::Ingress,
            Self::TcEgress => Direction::Egress,
        }
    }

    /// What the program returns for a packet it drops (a policy rejected it).
    pub fn drop_verdict(self) -> u32 {
        match self {
            Self::TcIngress | Self::TcEgress => TC_ACT_SHOT,
            Self::Xdp => XDP_DROP,
        }
    }

    /// What the program returns for a packet it passes (every packet without a policy).
    pub fn pass_verdict(self) -> u32 {
        match self {
            Self::TcIngress | Self::TcEgress => TC_ACT_UNSPEC,
            Self::Xdp => XDP_PASS,
        }
    }
}

/// The `struct __sk_buff` a classifier test run takes as context (`ctx_in`) and writes back
/// (`ctx_out`), reduced to the fields flowlog's tests set.
///
/// Byte offsets from include/uapi/linux/bpf.h: twenty `__u32` fields up to `napi_id`, i.e. `len`
/// 0, `pkt_type` 4, `mark` 8, `queue_mapping` 12, `protocol` 16, `vlan_present` 20, `vlan_tci`
/// 24, `vlan_proto` 28, `priority` 32, `ingress_ifindex` 36, **`ifindex` 40**, `tc_index` 44,
/// `cb[5]` 48..68, `hash` 68, `tc_classid` 72, `data` 76, `data_end` 80, `napi_id` 84; then
/// `family` 88, `remote_ip4` 92, `local_ip4` 96, `remote_ip6[4]` 100, `local_ip6[4]` 116,
/// `remote_port` 132, `local_port` 136, `data_meta` 140, `flow_keys` 144 (a pointer padded to
/// 8 bytes), `tstamp` 152 (`__u64`), `wire_len` 160, **`gso_segs` 164**, `sk` 168 (8 bytes),
/// **`gso_size` 176**, `tstamp_type` 180 (`__u8` and 24 bits of padding), `hwtstamp` 184
/// (`__u64`): 192 bytes. (aya-ebpf-bindings' generated `__sk_buff` has the same layout.)
///
/// The kernel refuses a context with a non-zero byte outside the fields it copies into the
/// socket buffer (`mark`, `priority`, `ingress_ifindex`, `ifindex`, `cb`, `tstamp`,
/// `wire_len`, `gso_segs`, `gso_size`, `hwtstamp`) with EINVAL, and writes the device's
/// `ifindex`, `gso_segs` and `gso_size` back into `ctx_out`: a wrong offset here fails a test
/// instead of passing quietly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkBuffContext {
    /// The device the packet is on; 0 (or 1) means the namespace's loopback.
    pub ifindex: u32,
    pub gso_segs: u32,
    pub gso_size: u32,
}

impl SkBuffContext {
    pub const SIZE: usize = 192;
    /// The size without `tstamp_type` and `hwtstamp` (added in Linux 5.18).
    pub const SIZE_BEFORE_5_18: usize = 184;
    const IFINDEX: usize = 40;
    const GSO_SEGS: usize = 164;
    const GSO_SIZE: usize = 176;

    /// A GSO super-packet's metadata on the loopback device.
    pub fn gso(gso_size: u32, gso_segs: u32) -> Self {
        Self {
            ifindex: 0,
            gso_segs,
            gso_size,
        }
    }

    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut bytes = [0u8; Self::SIZE];
        for (offset, value) in [
            (Self::IFINDEX, self.ifindex),
            (Self::GSO_SEGS, self.gso_segs),
            (Self::GSO_SIZE, self.gso_size),
        ] {
            bytes[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        }
        bytes
    }

    pub fn from_bytes(bytes: &[u8; Self::SIZE]) -> Self {
        let field = |offset: usize| {
            u32::from_ne_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
        };
        Self {
            ifindex: field(Self::IFINDEX),
            gso_segs: field(Self::GSO_SEGS),
            gso_size: field(Self::GSO_SIZE),
        }
    }
}

/// What a flow is expected to have counted. Timestamps are checked for every flow by
/// [`TestDatapath::drain`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u8,
}

impl Counts {
    pub const fn new(packets: u64, bytes: u64, tcp_flags: u8) -> Self {
        Self {
            packets,
            bytes,
            tcp_flags,
        }
    }
}

impl From<&FlowCounters> for Counts {
    fn from(counters: &FlowCounters) -> Self {
        let tcp_flags = u8::try_from(counters.tcp_flags).expect("TCP flags fit in the low byte");
        Self::new(counters.packets, counters.bytes, tcp_flags)
    }
}

/// A loaded datapath (every program verified, nothing attached), as fresh as a new one, and the
/// thread pinned to one CPU.
///
/// Loading is the slow part (the verifier: seconds per load under emulation, in the kernel
/// matrix), so the datapaths a test process loaded are kept, one per build and flow-map size,
/// and a test gets one back emptied: both epochs drained, no policy, no exclusion, no
/// connection state, and statistics counted from zero.
pub struct TestDatapath {
    /// Back to the pool when the test is done.
    datapath: Option<Datapath>,
    key: PoolKey,
    /// Kernel jiffies (the programs' clock) before any packet of the current interval ran.
    interval_start_jiffies: u64,
    /// The statistics' running totals when the test began.
    stats_before: BTreeMap<Stat, PacketCount>,
}

/// Datapaths loaded by this test process, by flow-map size and build.
type PoolKey = (u32, ProgramSet);
static POOL: std::sync::Mutex<Vec<(PoolKey, Datapath)>> = std::sync::Mutex::new(Vec::new());

impl TestDatapath {
    /// The kernel's jiffies now.
    pub fn jiffies(&self) -> u64 {
        kernel_jiffies(self.datapath())
    }

    /// Loads the datapath with `max_flows` entries per epoch map and pins the calling thread to
    /// the CPU it runs on. The build of the programs is the one the kernel calls for, or the one
    /// [`PROGRAMS_ENV`] names.
    pub fn load(max_flows: u32) -> Self {
        let programs = programs_from_env().unwrap_or_else(ProgramSet::for_running_kernel);
        Self::load_programs(max_flows, programs)
    }

    /// [`TestDatapath::load`] with the given build of the counting programs.
    pub fn load_programs(max_flows: u32, programs: ProgramSet) -> Self {
        pin_to_current_cpu();
        let key = (max_flows, programs);
        let pooled = {
            let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            pool.iter()
                .position(|(k, _)| *k == key)
                .map(|i| pool.swap_remove(i).1)
        };
        let datapath = pooled.unwrap_or_else(|| {
            Datapath::load_programs(DatapathConfig { max_flows }, programs)
                .expect("loading the datapath")
        });
        let interval_start_jiffies = kernel_jiffies(&datapath);
        let stats_before = datapath.stats().expect("reading the statistics");
        Self {
            datapath: Some(datapath),
            key,
            interval_start_jiffies,
            stats_before,
        }
    }

    fn datapath(&self) -> &Datapath {
        self.datapath.as_ref().expect("until dropped")
    }

    fn datapath_mut(&mut self) -> &mut Datapath {
        self.datapath.as_mut().expect("until dropped")
    }

    /// Publishes the policy written in `toml` (the `--policy` file format).
    pub fn set_policy(&mut self, toml: &str) {
        let path = std::env::temp_dir().join(format!("flowlog-policy-{}.toml", std::process::id()));
        std::fs::write(&path, toml).expect("writing the policy file");
        let policy = Policy::load(&path);
        let _ = std::fs::remove_file(&path);
        let policy = policy.unwrap_or_else(|error| panic!("{error}"));
        let compiled = policy.compile(4_000_000);
        self.datapath_mut()
            .set_policy(Some(&compiled))
            .expect("publishing the policy");
    }

    /// Empties the policy's connection table, as an LRU eviction would entry by entry.
    pub fn forget_connections(&mut self) {
        clear_connections(self.datapath_mut()).expect("clearing the connection table");
    }

    /// Runs `frame` through `hook`'s program `repeat` times (one packet each) and returns the
    /// program's return value.
    pub fn try_run(
        &mut self,
        hook: Program,
        frame: &[u8],
        repeat: u32,
    ) -> Result<u32, ProgramError> {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        Ok(self.run(hook, options)?.return_value)
    }

    /// Sends `frame` through `hook` `repeat` times and checks the program passed it.
    pub fn send(&mut self, hook: Program, frame: &[u8], repeat: u32) {
        let verdict = self
            .try_run(hook, frame, repeat)
            .unwrap_or_else(|error| panic!("{hook:?} test run of {frame:02x?}: {error:?}"));
        assert_eq!(verdict, hook.pass_verdict(), "{hook:?} verdict");
    }

    /// Sends `frame` once through a classifier with `skb` as its context, checks the program
    /// passed it and returns the context the kernel wrote back.
    pub fn send_skb(&mut self, hook: Program, frame: &[u8], skb: SkBuffContext) -> SkBuffContext {
        assert_ne!(
            hook,
            Program::Xdp,
            "an __sk_buff context is for classifiers"
        );
        let ctx_in = skb.to_bytes();
        let mut ctx_out = [0u8; SkBuffContext::SIZE];
        let options = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        };
        let result = self
            .run(hook, options)
            .unwrap_or_else(|error| panic!("{hook:?} test run with {skb:?}: {error:?}"));
        assert_eq!(result.return_value, hook.pass_verdict(), "{hook:?} verdict");
        // Kernels before 5.18 have no `tstamp_type`/`hwtstamp`: their `__sk_buff` ends at 184.
        let size = result.ctx_size_out as usize;
        assert!(
            (SkBuffContext::SIZE_BEFORE_5_18..=SkBuffContext::SIZE).contains(&size),
            "__sk_buff of {size} bytes"
        );
        SkBuffContext::from_bytes(&ctx_out)
    }

    /// The build of the counting programs under test.
    pub fn programs(&self) -> ProgramSet {
        self.datapath().programs()
    }

    fn run(
        &mut self,
        hook: Program,
        options: TestRunOptions<'_>,
    ) -> Result<TestRunResult, ProgramError> {
        let name = self.datapath().programs().name(hook.program());
        let program = self
            .datapath_mut()
            .ebpf_mut()
            .program_mut(name)
            .expect("flowlog's object has every program");
        match hook {
            Program::TcIngress | Program::TcEgress => {
                let classifier: &mut SchedClassifier = program.try_into()?;
                classifier.test_run(options)
            }
            Program::Xdp => {
                let xdp: &mut Xdp = program.try_into()?;
                xdp.test_run(options)
            }
        }
    }

    /// Ends the interval the way the agent does (switch the epoch, wait a grace period, drain)
    /// and checks every flow's timestamps: non-zero, first <= last, both inside the interval.
    pub fn drain(&mut self) -> DrainedEpoch {
        let interval_end_jiffies = kernel_jiffies(self.datapath());
        let drained = self
            .datapath_mut()
            .drain_interval()
            .expect("draining the interval");
        for (key, counters) in &drained.flows {
            assert_eq!(key.cpu, 0, "drained keys are merged over CPUs: {key:?}");
            assert!(
                counters.first_seen_jiffies != 0
                    && self.interval_start_jiffies <= counters.first_seen_jiffies
                    && counters.first_seen_jiffies <= counters.last_seen_jiffies
                    && counters.last_seen_jiffies <= interval_end_jiffies,
                "timestamps of {key:?} outside [{}, {interval_end_jiffies}]: {counters:?}",
                self.interval_start_jiffies
            );
        }
        self.interval_start_jiffies = interval_end_jiffies;
        drained
    }

    /// Drains the interval and returns its flows, asserting nothing was skipped.
    pub fn drain_flows(&mut self) -> BTreeMap<FlowKey, Counts> {
        let drained = self.drain();
        assert_eq!(drained.skipped, BTreeMap::new(), "skipped packets");
        assert_eq!(drained.unattributed, PacketCount::default());
        flows(&drained)
    }

    /// Drains the interval and returns its one flow.
    pub fn drain_one_flow(&mut self) -> (FlowKey, Counts) {
        let flows = self.drain_flows();
        assert_eq!(flows.len(), 1, "expected exactly one flow: {flows:#?}");
        flows.into_iter().next().expect("one flow")
    }

    /// The running total of one datapath statistic since the test began.
    pub fn stat(&self, stat: Stat) -> PacketCount {
        let now = self.datapath().stats().expect("reading the statistics")[&stat];
        let before = self.stats_before.get(&stat).copied().unwrap_or_default();
        PacketCount {
            packets: now.packets - before.packets,
            bytes: now.bytes - before.bytes,
        }
    }

    /// Both statistics, as (non-IP, malformed).
    pub fn stats(&self) -> (PacketCount, PacketCount) {
        (self.stat(Stat::NonIp), self.stat(Stat::Malformed))
    }
}

impl Drop for TestDatapath {
    /// Empties the datapath for the next test of the process and keeps it; one that cannot be
    /// emptied is dropped (unloaded).
    fn drop(&mut self) {
        let Some(mut datapath) = self.datapath.take() else {
            return;
        };
        if empty(&mut datapath).is_ok() {
            POOL.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((self.key, datapath));
        }
    }
}

/// Drains both epochs, removes the policy, the exclusions and the connection state.
fn empty(datapath: &mut Datapath) -> Result<(), Box<dyn std::error::Error>> {
    datapath.drain_all_after_detach()?;
    datapath.set_policy(None)?;
    datapath.set_exclusions(&[])?;
    clear_connections(datapath)
}

/// Empties the policy's connection table.
fn clear_connections(datapath: &mut Datapath) -> Result<(), Box<dyn std::error::Error>> {
    let map = datapath
        .ebpf_mut()
        .map_mut(flowlog_common::maps::CONNECTIONS)
        .ok_or("no connection table")?;
    let mut connections: aya::maps::HashMap<
        _,
        flowlog_common::policy::ConnKey,
        flowlog_common::policy::ConnState,
    > = aya::maps::HashMap::try_from(map)?;
    let keys: Vec<_> = connections.keys().collect::<Result<_, _>>()?;
    for key in keys {
        connections.remove(&key)?;
    }
    Ok(())
}

/// The flows of a drained interval with the counts tests compare.
pub fn flows(drained: &DrainedEpoch) -> BTreeMap<FlowKey, Counts> {
    drained
        .flows
        .iter()
        .map(|(key, counters)| (*key, Counts::from(counters)))
        .collect()
}

/// Pins the calling thread to the CPU it is running on.
pub fn pin_to_current_cpu() -> usize {
    // SAFETY: sched_getcpu takes no arguments and only returns a number.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu).expect("sched_getcpu failed");
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes bit `cpu` inside the set
    // (sched_getcpu returns a CPU number below CPU_SETSIZE); sched_setaffinity reads
    // size_of::<cpu_set_t>() bytes from a live value, and pid 0 is the calling thread only.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    cpu
}

/// The kernel's jiffies now: the clock the programs stamp flows with.
pub fn kernel_jiffies(datapath: &Datapath) -> u64 {
    datapath
        .clock_sample()
        .expect("sampling the kernel clock")
        .jiffies
}
