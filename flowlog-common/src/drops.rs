//! Packets the kernel itself drops (netfilter, no socket, reverse-path filter, ...), seen through
//! the `skb:kfree_skb` tracepoint and counted per flow and drop reason.
//!
//! The drop program reads `struct sk_buff` and its neighbours through offsets the agent takes
//! from the running kernel's BTF at start-up ([`DropConfig`]): Rust eBPF has no CO-RE
//! relocations, and these layouts change between kernel builds.

use crate::flow::FlowKey;

/// `HashMap<DropKey, FlowCounters>` for epoch 0 and epoch 1: kernel drops per flow, reason and
/// CPU, switched and drained with the flow maps.
pub const DROPS: [&str; 2] = ["DROPS_0", "DROPS_1"];

/// `PerCpuArray<PacketCount>` with one entry per epoch: drops that found the drop map full.
pub const DROP_OVERFLOW: &str = "DROP_OVERFLOW";

/// `Array<u8>` indexed by drop reason: [`COUNT_REASON`] for the reasons to count.
pub const DROP_REASONS: &str = "DROP_REASONS";

/// `HashMap<u32, u8>`: the interfaces (by ifindex, in the agent's network namespace) whose drops
/// are counted: the ones the agent attached.
pub const DROP_INTERFACES: &str = "DROP_INTERFACES";

/// The global the agent sets at load with the kernel's layout ([`DropConfig`]).
pub const DROP_CONFIG: &str = "DROP_CONFIG";

/// Entries of each drop map: (flow, reason, CPU) triples in one interval.
pub const MAX_DROP_ENTRIES: u32 = 65_536;

/// Slots of [`DROP_REASONS`]: reasons of the core enum `skb_drop_reason` (128 values in Linux
/// 6.18). Subsystem reasons (the upper 16 bits set) are decided by
/// [`DropConfig::count_subsystem_reasons`].
pub const REASON_SLOTS: u32 = 512;

/// Interfaces [`DROP_INTERFACES`] holds.
pub const MAX_DROP_INTERFACES: u32 = 8192;

/// Value of a [`DROP_REASONS`] slot whose drops are counted.
pub const COUNT_REASON: u8 = 1;

/// Bytes of `struct sk_buff` the drop program copies in one read: every field it needs must lie
/// within them (the agent checks).
pub const SKB_READ_LEN: u32 = 256;

/// One kernel drop: the flow (with `cpu`, `verdict` 0) and the kernel's drop reason.
///
/// 56 bytes, no implicit padding.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub flow: FlowKey,
    /// The kernel's `enum skb_drop_reason` value.
    pub reason: u32,
    pub _pad: u32,
}

/// Offsets into kernel structures, from the running kernel's BTF, and the agent's network
/// namespace. All in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    /// `sk_buff.dev` (`struct net_device *`).
    pub skb_dev: u32,
    /// `sk_buff.skb_iif` (int): the interface a received packet arrived on, 0 for a packet
    /// this host sends.
    pub skb_iif: u32,
    /// `sk_buff._skb_refdst` (unsigned long: the route, low bit a flag).
    pub skb_refdst: u32,
    /// `sk_buff.len` (unsigned int).
    pub skb_len: u32,
    /// `sk_buff.network_header` (u16, from `head`).
    pub skb_network_header: u32,
    /// `sk_buff.end` (u32 offset from `head` on 64-bit kernels): `skb_shared_info` sits there.
    pub skb_end: u32,
    /// `sk_buff.head` (pointer).
    pub skb_head: u32,
    /// `sk_buff.data` (pointer).
    pub skb_data: u32,
    /// `net_device.ifindex` (int).
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net` (`struct net *`).
    pub dev_net: u32,
    /// `net.ns.inum` (unsigned int): the namespace's inode number.
    pub net_inum: u32,
    /// `dst_entry.dev` (`struct net_device *`).
    pub dst_dev: u32,
    /// `skb_shared_info.gso_size` (u16).
    pub shinfo_gso_size: u32,
    /// `skb_shared_info.gso_segs` (u16).
    pub shinfo_gso_segs: u32,
    /// The inode number of the agent's network namespace: drops elsewhere are not its own.
    pub netns_inum: u32,
    /// 1 to count subsystem drop reasons (upper 16 bits set: mac80211, openvswitch, ...).
    pub count_subsystem_reasons: u32,
}

/// What flowlog's own TC programs drop (the policy's `TC_ACT_SHOT`), noted per CPU for the drop
/// program, which sees the same packet next and must not count it twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnDrop {
    pub ifindex: u32,
    /// 1 while a drop is noted and not yet seen by the drop program.
    pub armed: u32,
    /// The packet's wire bytes as counted (identifies it beside the interface).
    pub bytes: u64,
}

/// `PerCpuArray<OwnDrop>` with one entry.
pub const OWN_DROP: &str = "OWN_DROP";

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<DropKey>(), 56);
        assert_eq!(size_of::<DropConfig>(), 16 * 4);
        assert_eq!(size_of::<OwnDrop>(), 16);
    }
}
