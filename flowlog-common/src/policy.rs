//! The policy as the kernel programs see it: compiled rule tables, the connection table that
//! holds security-group state and caches each flow's rule verdicts, and the word that says which
//! policy is live.
//!
//! A policy lives in one of two slots (`POLICY_CONFIG_n`, `ACL_RULES_n`, `SG_RULES_n`). The
//! agent writes a new policy into the slot the programs do not use, then switches the
//! [`POLICY_ACTIVE`](crate::maps::POLICY_ACTIVE) word in one 4-byte store: every packet reads
//! that word once, so it sees either the whole old policy or the whole new one. The word also
//! carries a generation number; connection entries remember the generation their cached rule
//! verdicts came from, so a swap invalidates every cached verdict at once.

/// ACL rules per policy (ingress and egress rules together).
pub const MAX_ACL_RULES: u32 = 10_240;
/// Security-group rules per policy (ingress and egress rules together).
pub const MAX_SG_RULES: u32 = 10_240;
/// Entries of the rule arrays the programs of the previous layout scanned (`ACL_RULES_n`,
/// `SG_RULES_n`): still written when a policy fits, so that those programs, still attached
/// while a newer agent takes over from them, decide as before until their links are updated.
pub const LEGACY_RULE_ENTRIES: u32 = 1024;
/// Entries of the exclusion table.
pub const MAX_EXCLUSIONS: u32 = 64;
/// Entries of the connection table (an LRU map: state may be evicted, counters never are).
pub const MAX_CONNECTIONS: u32 = 262_144;

/// The `POLICY_ACTIVE` word: the generation in the upper 30 bits, and in the low two bits
/// `slot + 1` of the live policy, or 0 when no policy is loaded. The generation is there even
/// without a policy, so the next agent continues the count: a generation is never published
/// twice on the same maps, and no cached verdict outlives the policy that made it.
pub const fn active_word(slot: Option<u32>, generation: u32) -> u32 {
    let slot_bits = match slot {
        Some(slot) => slot + 1,
        None => 0,
    };
    (generation << 2) | slot_bits
}

/// The slot a `POLICY_ACTIVE` word makes live, if any.
pub const fn active_slot(word: u32) -> Option<u32> {
    match word & 3 {
        0 => None,
        bits => Some(bits - 1),
    }
}

/// The generation a `POLICY_ACTIVE` word carries.
pub const fn word_generation(word: u32) -> u32 {
    word >> 2
}

/// Generations wrap within the 30 bits the word has for them.
pub const GENERATION_MASK: u32 = u32::MAX >> 2;

/// Policy mode: drop what the policy rejects, or only record it.
pub const MODE_ENFORCE: u8 = 0;
pub const MODE_AUDIT: u8 = 1;

/// What a rule does when it matches.
pub const RULE_ALLOW: u8 = 0;
pub const RULE_DENY: u8 = 1;

/// Protocol value of a rule that matches every protocol.
pub const ANY_PROTOCOL: u16 = 0x100;

/// Idle timeouts, indexed by [`timeout_class`].
pub const TIMEOUT_CLASSES: usize = 3;

/// Which idle timeout applies to a protocol: TCP, UDP, everything else.
pub const fn timeout_class(protocol: u8) -> usize {
    match protocol {
        6 => 0,
        17 => 1,
        _ => 2,
    }
}

/// One slot's settings: counts and offsets into its rule tables.
///
/// Rules of one table are sorted: ingress rules first (`*_in_count` of them), then egress rules
/// (`*_eg_count`). ACL rules are in ascending rule number (first match wins); security-group rules
/// are all allow rules, so their order does not matter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// [`MODE_ENFORCE`] or [`MODE_AUDIT`].
    pub mode: u8,
    /// 1 when the policy has an `[acl]` section; without one every packet passes the ACL.
    pub acl_present: u8,
    /// [`RULE_ALLOW`] or [`RULE_DENY`]: the ACL action when no rule matches.
    pub acl_default: u8,
    /// 1 when the policy has a `[security_group]` section; without one it allows everything.
    pub sg_present: u8,
    /// 1 when the security group has no egress section: every outbound connection is allowed.
    pub sg_egress_open: u8,
    /// The fast path's window is `2^fast_path_shift` jiffies (see [`fast_path_stamp`]): at most
    /// a second and at most the shortest idle timeout.
    pub fast_path_shift: u8,
    pub _pad: [u8; 2],
    pub acl_in_count: u32,
    pub acl_eg_count: u32,
    pub sg_in_count: u32,
    pub sg_eg_count: u32,
    /// Idle timeouts of connection state in jiffies, per [`timeout_class`].
    pub idle_timeout_jiffies: [u64; TIMEOUT_CLASSES],
}

/// One rule (ACL, security group or exclusion). The remote address matches when
/// `address & mask == prefix`.
///
/// 40 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// The network prefix, already masked, in the flow key's address layout.
    pub prefix: [u8; 16],
    pub mask: [u8; 16],
    /// Port range, inclusive, host byte order. `0..=65535` matches packets without ports too.
    pub port_min: u16,
    pub port_max: u16,
    /// An IANA protocol number, or [`ANY_PROTOCOL`].
    pub protocol: u16,
    /// [`crate::flow::AddressFamily`] as its integer.
    pub family: u8,
    /// [`RULE_ALLOW`] or [`RULE_DENY`] (ACL rules only).
    pub action: u8,
}

/// The rule index: which rules can match a packet, found without scanning them. A rule matches
/// when its family and remote prefix contain the packet's remote address, and its protocol and
/// port range the packet's protocol and port; the index answers both halves with one LPM-trie
/// lookup each, as lists of rule-bitmap words, and the first rule in both lists is the first
/// rule that matches. Built by the agent (`flowlog-agent/src/policy/index.rs`), per policy slot.
///
/// Rule tables of the index, the first byte of its keys: each layer's ingress and egress rules.
/// Rule numbers in the bitmaps are positions within their table.
pub const TABLE_ACL_IN: u8 = 0;
pub const TABLE_ACL_EG: u8 = 1;
pub const TABLE_SG_IN: u8 = 2;
pub const TABLE_SG_EG: u8 = 3;

/// Words of rule bitmaps per slot (`RULE_WORDS_n`, 16 bytes each: 4 MiB).
pub const RULE_WORD_ENTRIES: u32 = 1 << 18;
/// Prefix entries per slot (`RULE_PREFIXES_n`): one per distinct rule network and table.
pub const RULE_PREFIX_ENTRIES: u32 = 1 << 16;
/// Port entries per slot (`RULE_PORTS_n`): each port range between two rule boundaries, as
/// aligned blocks.
pub const RULE_PORT_ENTRIES: u32 = 1 << 20;
/// Words of one table's bitmap: rule `n` of a table is bit `n % 64` of word `n / 64`.
pub const RULE_BITMAP_WORDS: u32 = MAX_ACL_RULES.div_ceil(64);

/// Data of a `RULE_PREFIXES_n` key: table, address family, two zero bytes, the address in the
/// flow key's layout. A rule network of length `len` is inserted with prefix length
/// [`PREFIX_KEY_HEADER_BITS`]` + len`; a packet is looked up with the full length.
pub type PrefixKeyData = [u8; 20];
pub const PREFIX_KEY_HEADER_BITS: u32 = 32;

/// Data of a `RULE_PORTS_n` key: table, scope, protocol, port (big-endian). Scope
/// [`PORTS_OWN`] holds the ports of a protocol some rule names (its rules and the rules for all
/// protocols); scope [`PORTS_OTHER`] with protocol 0 those of every other protocol (the rules for
/// all protocols only). A block of `2^k` ports is inserted with prefix length
/// [`PORT_KEY_HEADER_BITS`]` + 16 - k`.
pub type PortKeyData = [u8; 5];
pub const PORT_KEY_HEADER_BITS: u32 = 24;
pub const PORTS_OTHER: u8 = 0;
pub const PORTS_OWN: u8 = 1;

/// The value of an index key: `len` words of `RULE_WORDS_n` from `offset`, in ascending
/// word index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleList {
    pub offset: u32,
    pub len: u32,
}

/// One nonzero word of a rule bitmap: rules `64 * index ..` of a table.
///
/// 16 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleWord {
    pub bits: u64,
    pub index: u32,
    pub _pad: u32,
}

/// The prefix-key data of `address` (flow-key layout) in `table`.
pub const fn prefix_key(table: u8, family: u8, address: [u8; 16]) -> PrefixKeyData {
    let mut data = [0u8; 20];
    data[0] = table;
    data[1] = family;
    let mut i = 0;
    while i < 16 {
        data[4 + i] = address[i];
        i += 1;
    }
    data
}

/// The port-key data of `port` for `protocol` in `table` and `scope`.
pub const fn port_key(table: u8, scope: u8, protocol: u8, port: u16) -> PortKeyData {
    let port = port.to_be_bytes();
    [table, scope, protocol, port[0], port[1]]
}

/// Key of the connection table: one entry per connection and interface, the same for both
/// directions (addresses and ports are "local" and "remote" rather than source and destination).
///
/// 48 bytes, no implicit padding.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub ifindex: u32,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
    pub _pad2: [u8; 4],
}

/// Slots of the connection version table (`CONN_VERSIONS`, `Array<u32>`): a connection's slot
/// ([`conn_version_slot`]) is bumped by every packet that can change a verdict without a new
/// policy (a SYN, FIN or RST, a reject). Connections share slots; sharing costs only a full
/// check.
pub const CONN_VERSION_SLOTS: u32 = 1 << 16;

/// The policy fast path's stamp in a flow entry ([`crate::flow::FlowCounters::policy_stamp`]):
/// the policy generation and the connection's version under which a full check accepted the
/// flow. A later packet of the flow skips the connection table if the entry holds the stamp of
/// the current generation and version, its previous packet came in the same window of
/// `2^fast_path_shift` jiffies, and it has no SYN, FIN or RST. Never 0 (the stamp of "none"):
/// the generation's part is 1 to 65,535. Both parts are truncated to 16 bits: an entry lives one
/// interval and a stamp one window, far fewer than 65,535 policies or bumps of a slot.
pub const fn fast_path_stamp(generation: u32, conn_version: u32) -> u32 {
    (conn_version << 16) | (generation % 0xffff + 1)
}

/// The largest `shift` whose window (`2^shift` jiffies) is at most `limit` jiffies (0 for none).
pub const fn fast_path_shift(limit_jiffies: u64) -> u8 {
    if limit_jiffies <= 1 {
        0
    } else {
        (63 - limit_jiffies.leading_zeros()) as u8
    }
}

/// The connection version slot of a flow: the same for both directions of a connection (XOR
/// of the two ends is symmetric), so a packet in one direction invalidates the fast path of the
/// other. On every packet of the fast path, so a handful of instructions: the first and last
/// address words (an IPv4 address, or an IPv6 prefix and interface identifier), the ports, the
/// protocol and the interface, one finalizer.
#[inline(always)]
pub fn conn_version_slot(key: &crate::flow::FlowKey) -> u32 {
    #[inline(always)]
    fn end(address: &[u8; 16]) -> u32 {
        let p = address.as_ptr().cast::<u32>();
        // SAFETY: 16 readable bytes; unaligned reads make no alignment assumption.
        unsafe { p.read_unaligned() ^ p.add(3).read_unaligned().rotate_left(16) }
    }
    // The ports in the low half, where an IPv4 address (read little-endian) holds its first two
    // octets, which flows of one network share: ports and addresses do not cancel out.
    let ports = u16::from_ne_bytes(key.src_port) ^ u16::from_ne_bytes(key.dst_port);
    let rest = (ports as u32 | (key.protocol as u32) << 16) ^ key.ifindex.rotate_left(20);
    mix(end(&key.src_addr) ^ end(&key.dst_addr) ^ rest) & (CONN_VERSION_SLOTS - 1)
}

/// MurmurHash3's 32-bit finalizer: every input bit reaches every output bit.
#[inline(always)]
const fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

/// A cached rule verdict: not evaluated yet under this generation, allowed or denied.
pub const CACHED_UNKNOWN: u8 = 0;
pub const CACHED_ALLOW: u8 = 1;
pub const CACHED_DENY: u8 = 2;

/// Who opened a tracked connection.
pub const ORIGIN_NONE: u8 = 0;
pub const ORIGIN_INBOUND: u8 = 1;
pub const ORIGIN_OUTBOUND: u8 = 2;

/// State of one connection: cached rule verdicts (valid for `generation` only) and
/// security-group tracking.
///
/// 24 bytes, no implicit padding. Entries are shared by CPUs; they hold state, never counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    /// Generation of the policy the cached verdicts below come from.
    pub generation: u32,
    /// ACL verdicts per direction ([`CACHED_UNKNOWN`], [`CACHED_ALLOW`], [`CACHED_DENY`]).
    pub acl_in: u8,
    pub acl_eg: u8,
    /// Whether a security-group rule allows opening the connection in each direction.
    pub sg_in: u8,
    pub sg_eg: u8,
    /// [`ORIGIN_NONE`] until the security group admitted the connection.
    pub origin: u8,
    /// TCP: FIN seen inbound / outbound; closed (both FINs, or an RST).
    pub fin_in: u8,
    pub fin_eg: u8,
    pub closed: u8,
    pub _pad: [u8; 4],
    /// Jiffies of the last packet, for idle timeouts.
    pub last_seen_jiffies: u64,
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<Rule>(), 40);
        assert_eq!(size_of::<ConnKey>(), 48);
        assert_eq!(size_of::<ConnState>(), 24);
        assert_eq!(size_of::<PolicyConfig>(), 48);
        assert_eq!(size_of::<RuleWord>(), 16);
        assert_eq!(size_of::<RuleList>(), 8);
    }

    #[test]
    fn a_stamp_is_never_none_and_tells_generations_and_versions_apart() {
        for generation in [0, 1, 0xfffe, 0xffff, 0x1_0000, GENERATION_MASK] {
            for version in [0, 1, 0xffff] {
                let stamp = fast_path_stamp(generation, version);
                assert_ne!(stamp, 0);
                assert_ne!(stamp, fast_path_stamp(generation + 1, version));
                assert_ne!(stamp, fast_path_stamp(generation, version + 1));
            }
        }
    }

    #[test]
    fn the_window_is_the_largest_power_of_two_within_the_limit() {
        assert_eq!(fast_path_shift(0), 0);
        assert_eq!(fast_path_shift(1), 0);
        assert_eq!(fast_path_shift(1000), 9);
        assert_eq!(fast_path_shift(1024), 10);
        assert_eq!(fast_path_shift(250), 7);
    }

    #[test]
    fn both_directions_of_a_connection_share_a_version_slot() {
        use crate::flow::FlowKey;
        // Three shapes of 1,000 connections: address and port varying together, one source
        // port to many hosts, many source ports to one host.
        for shape in 0..3u32 {
            let mut slots = [0u32; 1000];
            for i in 0..1000u32 {
                let mut out = FlowKey::zeroed();
                out.ifindex = 3;
                out.protocol = 6;
                out.family = 4;
                out.src_addr[..4].copy_from_slice(&[198, 18, 0, 1]);
                let host = if shape == 2 { 7 } else { i };
                out.dst_addr[..4].copy_from_slice(&(0xc612_0000 + host).to_be_bytes());
                let port = if shape == 1 {
                    50_000
                } else {
                    40_000 + i as u16
                };
                out.src_port = port.to_be_bytes();
                out.dst_port = 443u16.to_be_bytes();
                let mut back = out;
                back.src_addr = out.dst_addr;
                back.dst_addr = out.src_addr;
                back.src_port = out.dst_port;
                back.dst_port = out.src_port;
                back.direction = 1;
                let slot = conn_version_slot(&out);
                assert_eq!(slot, conn_version_slot(&back));
                assert!(slot < CONN_VERSION_SLOTS);
                slots[i as usize] = slot;
            }
            // Spread: 1,000 connections hardly share slots (about 8 pairs expected at random).
            slots.sort_unstable();
            let distinct = 1 + slots.windows(2).filter(|w| w[0] != w[1]).count();
            assert!(distinct > 980, "shape {shape}: {distinct}");
        }
    }

    #[test]
    fn the_active_word_keeps_slot_and_generation_apart() {
        assert_eq!(active_word(Some(0), 7) & 3, 1);
        assert_eq!(active_word(Some(1), 7) & 3, 2);
        assert_eq!(active_word(Some(1), 7) >> 2, 7);
        for slot in [None, Some(0), Some(1)] {
            let word = active_word(slot, 5);
            assert_eq!((active_slot(word), word_generation(word)), (slot, 5));
        }
    }

    #[test]
    fn a_word_without_a_policy_still_carries_its_generation() {
        assert_eq!(active_word(None, 9), 9 << 2);
        assert_eq!(active_slot(0), None, "the word of maps never written");
        assert_eq!(
            word_generation(active_word(None, GENERATION_MASK)),
            GENERATION_MASK
        );
    }
}
