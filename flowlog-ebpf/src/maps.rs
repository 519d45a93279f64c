//! The kernel side of the maps named in `flowlog_common::maps` (same names, same sizes).
//! Flow and skip maps are resized at load time by the agent (`--max-flows`).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use flowlog_common::{
    flow::{FlowCounters, FlowKey, PacketCount, SkipKey},
    maps::{DEFAULT_MAX_FLOWS, MAX_SKIP_ENTRIES},
    policy::{
        CONN_VERSION_SLOTS, ConnKey, ConnState, LEGACY_RULE_ENTRIES, MAX_ACL_RULES,
        MAX_CONNECTIONS, MAX_EXCLUSIONS, PolicyConfig, PortKeyData, PrefixKeyData,
        RULE_PORT_ENTRIES, RULE_PREFIX_ENTRIES, RULE_WORD_ENTRIES, Rule, RuleList, RuleWord,
    },
    stats::Stat,
};

/// Index (0 or 1) of the epoch the programs count into; switched by the agent.
#[map]
pub static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

// Entries are allocated as flows appear (BPF_F_NO_PREALLOC), so an idle host does not hold the
// memory of a full map.
#[map]
pub static FLOWS_0: HashMap<FlowKey, FlowCounters> =
    HashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_PREALLOC);
#[map]
pub static FLOWS_1: HashMap<FlowKey, FlowCounters> =
    HashMap::with_max_entries(DEFAULT_MAX_FLOWS, BPF_F_NO_PREALLOC);

#[map]
pub static SKIPPED_0: HashMap<SkipKey, PacketCount> =
    HashMap::with_max_entries(MAX_SKIP_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static SKIPPED_1: HashMap<SkipKey, PacketCount> =
    HashMap::with_max_entries(MAX_SKIP_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static SKIP_OVERFLOW: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(2, 0);

#[map]
pub static STATS: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// What the agents have reported of `STATS` (userspace only; see `flowlog_common::maps`).
#[map]
pub static STATS_REPORTED: Array<PacketCount> = Array::with_max_entries(Stat::COUNT, 0);

#[map]
pub static BENCH_REFERENCE: PerCpuHashMap<FlowKey, FlowCounters> =
    PerCpuHashMap::with_max_entries(16, 0);

/// Which policy slot is live and its generation; 0 = no policy (see `flowlog_common::policy`).
#[map]
pub static POLICY_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static POLICY_CONFIG_0: Array<PolicyConfig> = Array::with_max_entries(1, 0);
#[map]
pub static POLICY_CONFIG_1: Array<PolicyConfig> = Array::with_max_entries(1, 0);

// The rule index of each slot (`flowlog_common::policy`, "The rule index").
#[map]
pub static RULE_PREFIXES_0: LpmTrie<PrefixKeyData, RuleList> =
    LpmTrie::with_max_entries(RULE_PREFIX_ENTRIES, 0);
#[map]
pub static RULE_PREFIXES_1: LpmTrie<PrefixKeyData, RuleList> =
    LpmTrie::with_max_entries(RULE_PREFIX_ENTRIES, 0);
#[map]
pub static RULE_PORTS_0: LpmTrie<PortKeyData, RuleList> =
    LpmTrie::with_max_entries(RULE_PORT_ENTRIES, 0);
#[map]
pub static RULE_PORTS_1: LpmTrie<PortKeyData, RuleList> =
    LpmTrie::with_max_entries(RULE_PORT_ENTRIES, 0);
#[map]
pub static RULE_WORDS_0: Array<RuleWord> = Array::with_max_entries(RULE_WORD_ENTRIES, 0);
#[map]
pub static RULE_WORDS_1: Array<RuleWord> = Array::with_max_entries(RULE_WORD_ENTRIES, 0);

/// The action of each ACL rule (`RULE_ALLOW`, `RULE_DENY`), ingress rules first.
#[map]
pub static ACL_ACTIONS_0: Array<u8> = Array::with_max_entries(MAX_ACL_RULES, 0);
#[map]
pub static ACL_ACTIONS_1: Array<u8> = Array::with_max_entries(MAX_ACL_RULES, 0);

// The rule arrays of the previous layout: not read by these programs (see
// `flowlog_common::policy::LEGACY_RULE_ENTRIES`).
#[map]
pub static ACL_RULES_0: Array<Rule> = Array::with_max_entries(LEGACY_RULE_ENTRIES, 0);
#[map]
pub static ACL_RULES_1: Array<Rule> = Array::with_max_entries(LEGACY_RULE_ENTRIES, 0);
#[map]
pub static SG_RULES_0: Array<Rule> = Array::with_max_entries(LEGACY_RULE_ENTRIES, 0);
#[map]
pub static SG_RULES_1: Array<Rule> = Array::with_max_entries(LEGACY_RULE_ENTRIES, 0);

#[map]
pub static EXCLUSIONS: Array<Rule> = Array::with_max_entries(MAX_EXCLUSIONS, 0);
#[map]
pub static EXCLUSION_COUNT: Array<u32> = Array::with_max_entries(1, 0);

/// Connection state and cached rule verdicts. LRU: an evicted entry only costs a re-evaluation
/// (and, for a connection no rule allows in its current direction, its tracking).
#[map]
pub static CONNECTIONS: LruHashMap<ConnKey, ConnState> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Per-CPU room for the connection key of the packet being decided: the full check's stack
/// frame, below the programs' and above the rule lookups', leaves no room for it (the kernel
/// allows 512 bytes for the whole chain). A program does not re-enter on a CPU, and TC and XDP
/// programs do not interrupt one another there (both run with bottom halves disabled).
#[map]
pub static CONN_KEY_SCRATCH: PerCpuArray<ConnKey> = PerCpuArray::with_max_entries(1, 0);

/// Connection versions of the policy's fast path (`flowlog_common::policy::CONN_VERSION_SLOTS`).
/// Not pinned: a restart starts a new table, and a stamp lives one window.
#[map]
pub static CONN_VERSIONS: Array<u32> = Array::with_max_entries(CONN_VERSION_SLOTS, 0);
