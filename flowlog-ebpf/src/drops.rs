//! The drop program: every packet the kernel drops (`skb:kfree_skb`, with its drop reason) that
//! belongs to an interface the agent attached is counted per flow and reason, into the drop
//! map of the current epoch. The agent turns these counts into REJECT records and takes ingress
//! drops out of the ACCEPT counts the TC or XDP program made for the same packets.
//!
//! Why the counts are exact:
//! - Entries are keyed by CPU like flow entries, and drop programs never run interleaved on one
//!   CPU (the kernel skips a tracing program that would re-enter itself on a CPU, and counts the
//!   skip in the program's `recursion_misses`, which the agent reports), so a plain
//!   read-add-write cannot lose an increment. The TC and XDP programs never write these maps.
//! - Epochs work as for flows: the agent switches `EPOCH`, waits a grace period, then drains.
//! - A packet flowlog's own policy drops (`TC_ACT_SHOT`) reaches this tracepoint next, on the same
//!   CPU: the TC program notes it in `OWN_DROP`, and this program skips it (it is counted as a
//!   REJECT of the policy already).
//!
//! The kernel's structures are read with `bpf_probe_read_kernel` at the offsets the agent found
//! in the kernel's BTF (`DROP_CONFIG`): Rust eBPF has no CO-RE relocations.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_smp_processor_id, bpf_probe_read_kernel, bpf_probe_read_kernel_buf},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use flowlog_common::{
    drops::{
        COUNT_REASON, DropConfig, DropKey, MAX_DROP_ENTRIES, MAX_DROP_INTERFACES, OwnDrop,
        REASON_SLOTS, SKB_READ_LEN,
    },
    flow::{Direction, FlowCounters, PacketCount},
};
use flowlog_ebpf::{
    account::wire_count,
    headers::{ETH_P_IPV4, ETH_P_IPV6, Header},
    parse::{Frame, parse, zeroed_key},
};

use crate::{counting::jiffies, maps::EPOCH};

#[map]
pub static DROPS_0: HashMap<DropKey, FlowCounters> =
    HashMap::with_max_entries(MAX_DROP_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static DROPS_1: HashMap<DropKey, FlowCounters> =
    HashMap::with_max_entries(MAX_DROP_ENTRIES, BPF_F_NO_PREALLOC);

/// Per epoch: drops that found the drop map full.
#[map]
pub static DROP_OVERFLOW: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(2, 0);

/// Which drop reasons are counted (`--kernel-drops`).
#[map]
pub static DROP_REASONS: Array<u8> = Array::with_max_entries(REASON_SLOTS, 0);

/// The interfaces (ifindex, in the agent's namespace) the agent attached.
#[map]
pub static DROP_INTERFACES: HashMap<u32, u8> = HashMap::with_max_entries(MAX_DROP_INTERFACES, 0);

/// flowlog's own policy drop, noted by the TC program for the drop program.
#[map]
pub static OWN_DROP: PerCpuArray<OwnDrop> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU copies: slot 0 the start of the `sk_buff`, slot 1 the packet's headers.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(2, 0);

#[repr(C)]
struct Scratch {
    bytes: [u8; SCRATCH_LEN],
}

const SCRATCH_LEN: usize = SKB_READ_LEN as usize;
/// Bytes of the packet copied from its network header: enough for IPv4 with options or IPv6
/// with extension headers, then the transport ports and TCP flags.
const HEADERS_LEN: usize = 192;
/// The copy is preceded by a made-up Ethernet header, so the flow parser of the TC and XDP
/// programs reads it unchanged, and gives the same key.
const ETH_LEN: usize = 14;

/// Set by the agent at load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static DROP_CONFIG: DropConfig = DropConfig {
    skb_dev: 0,
    skb_iif: 0,
    skb_refdst: 0,
    skb_len: 0,
    skb_network_header: 0,
    skb_end: 0,
    skb_head: 0,
    skb_data: 0,
    dev_ifindex: 0,
    dev_net: 0,
    net_inum: 0,
    dst_dev: 0,
    shinfo_gso_size: 0,
    shinfo_gso_segs: 0,
    netns_inum: 0,
    count_subsystem_reasons: 0,
};

/// One field of [`DROP_CONFIG`], read so the compiler cannot assume the zero it was built with.
macro_rules! config {
    ($field:ident) => {
        // SAFETY: a plain read of a static the loader filled in.
        unsafe { core::ptr::read_volatile(&raw const DROP_CONFIG.$field) }
    };
}

/// Called by the TC programs when the policy drops a packet (`TC_ACT_SHOT`): the kernel frees it
/// right after, on this CPU, and the drop program must not count it again.
#[inline(always)]
pub fn note_own_drop(ifindex: u32, bytes: u64) {
    if let Some(slot) = OWN_DROP.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; the TC program and the drop program run one after the other on
        // this CPU for the packet.
        unsafe {
            *slot = OwnDrop {
                ifindex,
                armed: 1,
                bytes,
            }
        };
    }
}

/// `skb:kfree_skb(skb, location, reason, ...)`.
#[inline(always)]
pub fn count_drop(ctx: &RawTracePointContext) {
    let own = take_own_drop();
    let reason = ctx.arg::<u64>(2) as u32;
    if !counted_reason(reason) {
        return;
    }
    let skb = ctx.arg::<u64>(0);
    let _ = try_count_drop(skb, reason, own);
}

/// The noted own drop, disarmed: it concerns the very next drop on this CPU only.
#[inline(always)]
fn take_own_drop() -> Option<OwnDrop> {
    let slot = OWN_DROP.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot (see `note_own_drop`).
    unsafe {
        if (*slot).armed == 0 {
            return None;
        }
        (*slot).armed = 0;
        Some(*slot)
    }
}

#[inline(always)]
fn counted_reason(reason: u32) -> bool {
    if reason >> 16 != 0 {
        return config!(count_subsystem_reasons) != 0;
    }
    DROP_REASONS.get(reason).copied() == Some(COUNT_REASON)
}

/// Reads a kernel value at `base + offset`.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address and fails on a bad one.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }
}

/// A field of the copied `sk_buff`.
#[inline(always)]
fn skb_field<T: Copy>(copy: &Scratch, offset: u32) -> Result<T, i32> {
    let offset = offset as usize;
    if offset + core::mem::size_of::<T>() > SCRATCH_LEN {
        return Err(-1);
    }
    // SAFETY: inside the copy (checked above); unaligned read of plain integers.
    Ok(unsafe { (copy.bytes.as_ptr().add(offset) as *const T).read_unaligned() })
}

/// The interface index of a `net_device`, if it lives in the agent's network namespace.
#[inline(always)]
fn own_ifindex(dev: u64) -> Option<u32> {
    if dev == 0 {
        return None;
    }
    let net: u64 = read(dev, config!(dev_net)).ok()?;
    let inum: u32 = read(net, config!(net_inum)).ok()?;
    if inum != config!(netns_inum) {
        return None;
    }
    read::<u32>(dev, config!(dev_ifindex)).ok()
}

#[inline(always)]
fn try_count_drop(skb: u64, reason: u32, own: Option<OwnDrop>) -> Result<(), i32> {
    let copy = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: a per-CPU scratch slot; the program does not re-enter on a CPU.
    let copy = unsafe { &mut *copy };
    // SAFETY: as `read`.
    unsafe { bpf_probe_read_kernel_buf(skb as *const u8, &mut copy.bytes)? };

    let dev: u64 = skb_field(copy, config!(skb_dev))?;
    let iif: u32 = skb_field(copy, config!(skb_iif))?;
    let refdst: u64 = skb_field(copy, config!(skb_refdst))?;
    let route_dev = || {
        let dst = refdst & !1;
        if dst == 0 {
            return 0;
        }
        read::<u64>(dst, config!(dst_dev)).unwrap_or(0)
    };
    // A received packet (forwarded ones too) is an ingress drop on the interface it arrived on;
    // a packet this host sends is an egress drop on the interface its route leads to.
    let (direction, ifindex) = if iif != 0 {
        // The namespace is the receiving device's (or, if the stack reused `dev`, the route's).
        let in_namespace = own_ifindex(dev).or_else(|| own_ifindex(route_dev()));
        in_namespace.ok_or(-1)?;
        (Direction::Ingress, iif)
    } else {
        let out = route_dev();
        let ifindex = own_ifindex(if out != 0 { out } else { dev }).ok_or(-1)?;
        (Direction::Egress, ifindex)
    };
    if DROP_INTERFACES.get_ptr(ifindex).is_none() {
        return Ok(());
    }

    let len: u32 = skb_field(copy, config!(skb_len))?;
    let head: u64 = skb_field(copy, config!(skb_head))?;
    let data: u64 = skb_field(copy, config!(skb_data))?;
    let network_header: u16 = skb_field(copy, config!(skb_network_header))?;
    let end: u32 = skb_field(copy, config!(skb_end))?;
    let l3 = head + network_header as u64;
    // skb->len counts from `data`, which may sit before or after the network header.
    let l3_len = (len as u64 + data).checked_sub(l3).ok_or(-1)?;
    let shinfo = head + end as u64;
    let gso_size: u16 = read(shinfo, config!(shinfo_gso_size))?;
    let gso_segs: u16 = read(shinfo, config!(shinfo_gso_segs))?;

    let headers = SCRATCH.get_ptr_mut(1).ok_or(-1)?;
    // SAFETY: as above, the other slot.
    let headers = unsafe { &mut *headers };
    // SAFETY: as `read`.
    unsafe {
        bpf_probe_read_kernel_buf(
            l3 as *const u8,
            &mut headers.bytes[ETH_LEN..ETH_LEN + HEADERS_LEN],
        )?
    };
    let ether_type = match headers.bytes[ETH_LEN] >> 4 {
        4 => ETH_P_IPV4,
        6 => ETH_P_IPV6,
        _ => return Ok(()),
    };
    headers.bytes[12..14].copy_from_slice(&ether_type.to_be_bytes());
    let frame = HeaderCopy {
        bytes: headers,
        len: ETH_LEN + l3_len as usize,
    };

    let mut storage = core::mem::MaybeUninit::uninit();
    let key = zeroed_key(&mut storage);
    let parsed = parse(&frame, gso_size != 0, key).map_err(|_| -1)?;
    let count = wire_count(&parsed, gso_size as u32, gso_segs as u32);
    if let Some(own) = own
        && own.bytes == count.bytes
    {
        // Ours: counted by the TC program already. A forwarded packet our egress policy drops
        // is noted on its output device, while the drop is seen on its input interface.
        let out = || own_ifindex(route_dev()).or_else(|| own_ifindex(dev));
        if own.ifindex == ifindex || (iif != 0 && out() == Some(own.ifindex)) {
            return Ok(());
        }
    }
    key.ifindex = ifindex;
    key.direction = direction as u8;
    // SAFETY: the helper takes no arguments and only reads kernel state.
    key.cpu = unsafe { bpf_get_smp_processor_id() };
    let drop_key = DropKey {
        flow: *key,
        reason,
        _pad: 0,
    };
    let now = jiffies();
    let epoch = EPOCH.get(0).copied().unwrap_or(0);
    // Each epoch has its own call site, so each map lookup sees one constant map.
    let added = if epoch == 0 {
        add(
            &DROPS_0,
            &drop_key,
            count.packets,
            count.bytes,
            parsed.tcp_flags,
            now,
        )
    } else {
        add(
            &DROPS_1,
            &drop_key,
            count.packets,
            count.bytes,
            parsed.tcp_flags,
            now,
        )
    };
    if !added && let Some(overflow) = DROP_OVERFLOW.get_ptr_mut(epoch.min(1)) {
        // SAFETY: a per-CPU slot, written only by this program on this CPU.
        unsafe {
            (*overflow).packets += count.packets;
            (*overflow).bytes += count.bytes;
        }
    }
    Ok(())
}

#[inline(always)]
fn add(
    drops: &HashMap<DropKey, FlowCounters>,
    key: &DropKey,
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    now: u64,
) -> bool {
    if let Some(counters) = drops.get_ptr_mut(key) {
        // SAFETY: the entry belongs to this CPU (see the module documentation).
        unsafe {
            (*counters).packets += packets;
            (*counters).bytes += bytes;
            (*counters).last_seen_jiffies = now;
            (*counters).tcp_flags |= tcp_flags as u32;
        }
        return true;
    }
    let counters = FlowCounters {
        packets,
        bytes,
        first_seen_jiffies: now,
        last_seen_jiffies: now,
        tcp_flags: tcp_flags as u32,
        policy_stamp: 0,
    };
    drops.insert(key, counters, BPF_NOEXIST as u64).is_ok()
}

/// The copied headers behind a made-up Ethernet header; `len` is the packet's real length, of
/// which only the copy can be read.
struct HeaderCopy<'a> {
    bytes: &'a Scratch,
    len: usize,
}

impl Frame for HeaderCopy<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.len
    }

    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        // LLVM knows offsets the parser makes stay within the copy and would drop the check
        // below; the verifier, which tracks them less tightly, needs it.
        // The offset itself is compared with a constant: `offset + LEN > END` (which may wrap)
        // compiles to a range check on `offset - K`, whose bound 6.1's verifier does not carry
        // back to `offset` ("R4 max value is outside of the allowed memory range").
        let offset = core::hint::black_box(offset);
        if offset > ETH_LEN + HEADERS_LEN - T::LEN {
            return None;
        }
        // Integer arithmetic, as for packet pointers: an in-bounds pointer offset would let LLVM
        // move the load above the check, which the verifier refuses.
        let start = self.bytes.bytes.as_ptr() as usize + offset;
        // SAFETY: inside the copy (checked above); headers have alignment 1 and accept every
        // bit pattern.
        Some(unsafe { &*(start as *const T) })
    }
}
