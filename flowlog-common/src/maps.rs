//! Names and sizes of the maps, defined once for both sides.
//!
//! Flows are counted into one of two epoch maps. [`EPOCH`] holds the index of the map the
//! programs count into; the agent switches it at the end of each aggregation interval, waits
//! until every program that read the old index has returned, and then drains the retired map,
//! which nothing writes any more.

/// `Array<u32>` with one entry: the index (0 or 1) of the epoch the programs count into.
pub const EPOCH: &str = "EPOCH";

/// `HashMap<FlowKey, FlowCounters>` for epoch 0 and epoch 1.
pub const FLOWS: [&str; 2] = ["FLOWS_0", "FLOWS_1"];

/// `HashMap<SkipKey, PacketCount>` for epoch 0 and epoch 1: packets that found the flow map full.
pub const SKIPPED: [&str; 2] = ["SKIPPED_0", "SKIPPED_1"];

/// `PerCpuArray<PacketCount>` with one entry per epoch: skipped packets that also found the
/// skip map full (an interface cannot be named for them).
pub const SKIP_OVERFLOW: &str = "SKIP_OVERFLOW";

/// `PerCpuArray<PacketCount>` indexed by [`crate::stats::Stat`].
pub const STATS: &str = "STATS";

/// `Array<PacketCount>` indexed by [`crate::stats::Stat`]: the totals of `STATS` the agents
/// have reported so far. Written by the agent only; pinned, so the next agent reports exactly
/// what was counted after (while no agent ran, too).
pub const STATS_REPORTED: &str = "STATS_REPORTED";

/// `Array<u32>` with one entry: which policy slot is live, and its generation
/// ([`crate::policy::active_word`]); its low two bits are 0 when no policy is loaded.
pub const POLICY_ACTIVE: &str = "POLICY_ACTIVE";

/// `Array<PolicyConfig>` with one entry, per policy slot.
pub const POLICY_CONFIG: [&str; 2] = ["POLICY_CONFIG_0", "POLICY_CONFIG_1"];

/// `Array<Rule>` of ACL rules, per policy slot, for the programs of the previous layout only
/// ([`crate::policy::LEGACY_RULE_ENTRIES`]).
pub const ACL_RULES: [&str; 2] = ["ACL_RULES_0", "ACL_RULES_1"];

/// `Array<Rule>` of security-group rules, per policy slot, as [`ACL_RULES`].
pub const SG_RULES: [&str; 2] = ["SG_RULES_0", "SG_RULES_1"];

/// The rule index, per policy slot (`crate::policy`, "The rule index"):
/// `LpmTrie<PrefixKeyData, RuleList>`, `LpmTrie<PortKeyData, RuleList>`, `Array<RuleWord>`.
pub const RULE_PREFIXES: [&str; 2] = ["RULE_PREFIXES_0", "RULE_PREFIXES_1"];
pub const RULE_PORTS: [&str; 2] = ["RULE_PORTS_0", "RULE_PORTS_1"];
pub const RULE_WORDS: [&str; 2] = ["RULE_WORDS_0", "RULE_WORDS_1"];

/// `Array<u8>`: the action of each ACL rule, per policy slot.
pub const ACL_ACTIONS: [&str; 2] = ["ACL_ACTIONS_0", "ACL_ACTIONS_1"];

/// `Array<Rule>`: traffic that is not logged (it is still subject to the policy).
pub const EXCLUSIONS: &str = "EXCLUSIONS";

/// `Array<u32>` with one entry: how many entries of `EXCLUSIONS` are in use.
pub const EXCLUSION_COUNT: &str = "EXCLUSION_COUNT";

/// `LruHashMap<ConnKey, ConnState>`: security-group connection state and cached rule verdicts.
pub const CONNECTIONS: &str = "CONNECTIONS";

/// `Array<u32>`: connection versions of the policy's fast path
/// ([`crate::policy::CONN_VERSION_SLOTS`]).
pub const CONN_VERSIONS: &str = "CONN_VERSIONS";

/// Reference map of the benchmark program: `PerCpuHashMap<FlowKey, FlowCounters>`.
pub const BENCH_REFERENCE: &str = "BENCH_REFERENCE";

/// Default capacity of each flow epoch map, in entries. An entry is one flow as seen by one CPU.
/// See ARCHITECTURE.md for the kernel memory this costs.
pub const DEFAULT_MAX_FLOWS: u32 = 524_288;

/// Capacity of each skip map: (interface, CPU) pairs that hit a full flow map in one interval.
pub const MAX_SKIP_ENTRIES: u32 = 16_384;

/// Memory the kernel allocates for one flow entry of a `BPF_MAP_TYPE_HASH` map created with
/// `BPF_F_NO_PREALLOC`: the element header (48 bytes on 64-bit kernels), the key and the value,
/// each rounded up to 8 bytes.
pub const FLOW_ENTRY_BYTES: u64 = 48 + 48 + 40;

/// Memory of one hash bucket (list head and lock), allocated up front for the next power of two
/// of the capacity.
pub const BUCKET_BYTES: u64 = 16;

/// Upper bound of the kernel memory the two flow maps can take with `max_flows` entries each:
/// the buckets, allocated at load, plus every entry of both epochs in use at once.
pub const fn flow_maps_memory_bytes(max_flows: u32) -> u64 {
    let buckets = (max_flows as u64).next_power_of_two() * BUCKET_BYTES;
    2 * (buckets + max_flows as u64 * FLOW_ENTRY_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_capacity_fits_its_memory_budget() {
        // Worst case with both epochs full: about 152 MiB; buckets alone (always allocated): 16 MiB.
        assert!(flow_maps_memory_bytes(DEFAULT_MAX_FLOWS) <= 160 << 20);
        assert_eq!(2 * (DEFAULT_MAX_FLOWS as u64) * BUCKET_BYTES, 16 << 20);
    }
}
