//! Adding a packet to its flow in the current epoch, and what happens when that fails.
//!
//! Why the counts are exact:
//! - A flow entry is private to one CPU (the CPU is part of the key), and flowlog's programs never
//!   run interleaved on one CPU (XDP and TC ingress run in softirq context, TC egress with bottom
//!   halves disabled), so the plain read-add-write below cannot lose an increment.
//! - The agent never deletes entries from the map the programs count into: it switches `EPOCH`
//!   and drains the retired map only after an RCU grace period, when every program that read the
//!   old index has returned.
//! - When an entry cannot be created (the map is full), the packet goes to the skip map of its
//!   interface, and if that is full too, to the per-CPU overflow slot of the epoch. Nothing is
//!   dropped from the counts.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns},
    maps::HashMap,
};
use aya_log_ebpf::warn;
use flowlog_common::{
    flow::{FlowCounters, FlowKey, PacketCount, SkipKey},
    stats::Stat,
};
use flowlog_ebpf::{
    account::WireCount,
    parse::{ParseError, zeroed_key},
};

use crate::{
    loops::Loops,
    maps::{BENCH_REFERENCE, EPOCH, FLOWS_0, FLOWS_1, SKIP_OVERFLOW, SKIPPED_0, SKIPPED_1, STATS},
};

/// Counts one parsed packet (`key` holds its addresses, ports, protocol, interface, direction
/// and verdict) into the current epoch. `now` is `bpf_jiffies64()`; `stamp` is the policy's
/// fast-path stamp for the entry (0 for none, see `decide.rs`).
#[inline(always)]
pub fn count_flow<L: Loops, C: EbpfContext>(
    ctx: &C,
    key: &mut FlowKey,
    count: WireCount,
    tcp_flags: u8,
    now: u64,
    stamp: u32,
) {
    // SAFETY: the helper takes no arguments and only reads kernel state.
    key.cpu = unsafe { bpf_get_smp_processor_id() };
    let packet = Packet {
        count,
        tcp_flags,
        now,
        stamp,
    };
    // Each epoch has its own call site, so each map lookup sees one constant map.
    if current_epoch() == 0 {
        add_to_flow::<L, C>(ctx, &FLOWS_0, &SKIPPED_0, 0, key, packet);
    } else {
        add_to_flow::<L, C>(ctx, &FLOWS_1, &SKIPPED_1, 1, key, packet);
    }
}

/// The entry of `key` (with its verdict; `cpu` is set here) in the current epoch, if the flow
/// has one: for the policy's fast path, which reads the entry's stamp before counting into it.
#[inline(always)]
pub fn flow_entry(key: &mut FlowKey) -> Option<*mut FlowCounters> {
    // SAFETY: the helper takes no arguments and only reads kernel state.
    key.cpu = unsafe { bpf_get_smp_processor_id() };
    if current_epoch() == 0 {
        FLOWS_0.get_ptr_mut(key)
    } else {
        FLOWS_1.get_ptr_mut(key)
    }
}

/// Adds a packet to an entry [`flow_entry`] returned.
///
/// # Safety
/// `counters` must be this CPU's entry (see the module documentation).
#[inline(always)]
pub unsafe fn add_to_entry(counters: *mut FlowCounters, count: WireCount, tcp_flags: u8, now: u64) {
    unsafe {
        (*counters).packets += count.packets;
        (*counters).bytes += count.bytes;
        (*counters).last_seen_jiffies = now;
        (*counters).tcp_flags |= tcp_flags as u32;
    }
}

/// What [`add_to_flow`] adds.
#[derive(Clone, Copy)]
struct Packet {
    count: WireCount,
    tcp_flags: u8,
    now: u64,
    stamp: u32,
}

/// The clock of the flow counters and connection state: jiffies, not bpf_ktime_get_coarse_ns:
/// the verifier inlines bpf_jiffies64 into one load, while the ktime helper cost ~14 ns per
/// packet here; records need seconds only.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: the helper takes no arguments and only reads kernel state.
    unsafe { bpf_jiffies64() }
}

#[inline(always)]
fn current_epoch() -> u32 {
    EPOCH.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn add_to_flow<L: Loops, C: EbpfContext>(
    ctx: &C,
    flows: &HashMap<FlowKey, FlowCounters>,
    skipped: &HashMap<SkipKey, PacketCount>,
    epoch: u32,
    key: &FlowKey,
    packet: Packet,
) {
    let Packet {
        count,
        tcp_flags,
        now,
        stamp,
    } = packet;
    if let Some(counters) = flows.get_ptr_mut(key) {
        // SAFETY: the entry belongs to this CPU (see the module documentation), so nothing else
        // writes it while we do, and it is not deleted while its epoch is current.
        unsafe {
            add_to_entry(counters, count, tcp_flags, now);
            if L::POLICY {
                (*counters).policy_stamp = stamp;
            }
        }
        return;
    }
    // A new entry: unless the traffic is excluded from logging (checked here, on the first
    // packet of a flow per CPU and interval, not on every packet; excluded traffic never gets an
    // entry, so each of its packets comes here).
    if L::excluded(key) {
        count_stat(Stat::Excluded, count);
        return;
    }
    let counters = FlowCounters {
        packets: count.packets,
        bytes: count.bytes,
        first_seen_jiffies: now,
        last_seen_jiffies: now,
        tcp_flags: tcp_flags as u32,
        policy_stamp: stamp,
    };
    if flows.insert(key, counters, BPF_NOEXIST as u64).is_err() {
        count_skipped(ctx, skipped, epoch, key, count);
    }
}

/// A packet that found the flow map full: counted per interface, reported as SKIPDATA.
#[inline(always)]
fn count_skipped<C: EbpfContext>(
    ctx: &C,
    skipped: &HashMap<SkipKey, PacketCount>,
    epoch: u32,
    key: &FlowKey,
    count: WireCount,
) {
    let skip_key = SkipKey {
        ifindex: key.ifindex,
        cpu: key.cpu,
    };
    if let Some(skip) = skipped.get_ptr_mut(skip_key) {
        // SAFETY: private to this CPU, as flow entries are.
        unsafe { add(skip, count) };
        return;
    }
    let first = PacketCount {
        packets: count.packets,
        bytes: count.bytes,
    };
    if skipped.insert(skip_key, first, BPF_NOEXIST as u64).is_ok() {
        // Once per interface, CPU and interval: off the per-packet path.
        warn!(
            ctx,
            "flow map full: packets on ifindex {} now count as SKIPDATA", key.ifindex
        );
        return;
    }
    if let Some(overflow) = SKIP_OVERFLOW.get_ptr_mut(epoch) {
        // SAFETY: a per-CPU array slot, written only by programs on this CPU.
        unsafe { add(overflow, count) };
    }
}

/// Counts a frame the parser could not turn into a flow.
#[inline(always)]
pub fn count_parse_error(error: ParseError, frame_len: usize) {
    let stat = match error {
        ParseError::NotIp => Stat::NonIp,
        ParseError::Malformed | ParseError::Truncated => Stat::Malformed,
    };
    count_stat(
        stat,
        WireCount {
            packets: 1,
            bytes: frame_len as u64,
        },
    );
}

#[inline(always)]
fn count_stat(stat: Stat, count: WireCount) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU array slot, written only by programs on this CPU.
        unsafe { add(slot, count) };
    }
}

/// The benchmark reference: one per-CPU hash update for a fixed key.
#[inline(always)]
pub fn count_reference(len: u64) {
    let mut storage = core::mem::MaybeUninit::uninit();
    let key: &FlowKey = zeroed_key(&mut storage);
    if let Some(counters) = BENCH_REFERENCE.get_ptr_mut(key) {
        // SAFETY: a per-CPU value, written only by programs on this CPU.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += len;
        }
        return;
    }
    let counters = FlowCounters {
        packets: 1,
        bytes: len,
        ..FlowCounters::default()
    };
    let _ = BENCH_REFERENCE.insert(key, counters, BPF_NOEXIST as u64);
}

/// # Safety
/// `slot` must point to a live map value that only the calling CPU writes.
#[inline(always)]
unsafe fn add(slot: *mut PacketCount, count: WireCount) {
    unsafe {
        (*slot).packets += count.packets;
        (*slot).bytes += count.bytes;
    }
}

/// The clock sample of the `flowlog_clock` program: jiffies and CLOCK_MONOTONIC nanoseconds,
/// read together, for the agent to turn the counters' jiffies into time.
#[inline(always)]
pub fn clock_sample() -> [u64; 2] {
    // SAFETY: both helpers take no arguments and only read kernel clocks.
    unsafe { [bpf_jiffies64(), bpf_ktime_get_ns()] }
}
