//! The policy verdict of a packet, from the live policy slot and the connection table. The
//! semantics (layer order, connection tracking) are in `flowlog_ebpf::policy`; this module
//! looks things up and caches.
//!
//! Rules are evaluated once per connection, direction and policy generation: the result is
//! cached in the connection's entry. A packet of a known, accepted connection does not even look
//! that entry up: [`counted_on_fast_path`] finds the stamp the last full check left in the flow
//! entry, which the packet is counted into anyway, and counts it there. See
//! `flowlog_common::policy::fast_path_stamp` for when a stamp holds, and docs/policy.md for why
//! the verdicts stay those of the full check.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::bpf_loop,
    maps::{Array, LpmTrie, lpm_trie::Key},
};
use flowlog_common::{
    flow::{Direction, FlowKey, RejectLayer, Verdict},
    policy::{
        CACHED_ALLOW, CACHED_DENY, CACHED_UNKNOWN, ConnKey, ConnState, MODE_AUDIT,
        PORT_KEY_HEADER_BITS, PORTS_OTHER, PORTS_OWN, PREFIX_KEY_HEADER_BITS, PolicyConfig,
        PortKeyData, PrefixKeyData, RULE_ALLOW, RULE_BITMAP_WORDS, RuleList, RuleWord,
        TABLE_ACL_EG, TABLE_ACL_IN, TABLE_SG_EG, TABLE_SG_IN, conn_version_slot, fast_path_stamp,
        timeout_class, word_generation,
    },
    tcp::{FIN, RST, SYN},
};
use flowlog_ebpf::{
    account::WireCount,
    parse::Parsed,
    policy::{
        Packet, RuleSubject, cached, closed_connection, fill_conn_key, reset_cache, reset_tracking,
        security_group, sg_rule_direction, track_close,
    },
};

use crate::{
    counting::{add_to_entry, flow_entry},
    loops::Loops,
    maps::{
        ACL_ACTIONS_0, ACL_ACTIONS_1, CONN_KEY_SCRATCH, CONN_VERSIONS, CONNECTIONS, POLICY_ACTIVE,
        POLICY_CONFIG_0, POLICY_CONFIG_1, RULE_PORTS_0, RULE_PORTS_1, RULE_PREFIXES_0,
        RULE_PREFIXES_1, RULE_WORDS_0, RULE_WORDS_1,
    },
};

/// A packet's verdict ([`Verdict`] as its integer), whether to drop it, and the fast-path stamp
/// its flow entry gets (0 for none).
pub struct Decision {
    pub verdict: u8,
    pub drop: bool,
    pub stamp: u32,
}

impl Decision {
    /// The decision as one register: verdict in bits 0-7, drop in bit 8, stamp in bits 32-63.
    #[inline(always)]
    fn pack(&self) -> u64 {
        u64::from(self.verdict) | u64::from(self.drop) << 8 | u64::from(self.stamp) << 32
    }

    #[inline(always)]
    fn unpack(packed: u64) -> Self {
        Self {
            verdict: packed as u8,
            drop: packed & 1 << 8 != 0,
            stamp: (packed >> 32) as u32,
        }
    }
}

const ACCEPT: Decision = Decision {
    verdict: Verdict::Accept as u8,
    drop: false,
    stamp: 0,
};

/// TCP flags that open or close a connection: their packets always take the full check.
const CONNECTION_FLAGS: u8 = SYN | FIN | RST;

/// The fast path of a policy: counts a packet of a flow that a full check accepted under the
/// live policy and the connection's current version, in the same window as the flow's previous
/// packet (see `flowlog_common::policy::fast_path_stamp`), and returns true. Anything else
/// returns false, and the packet goes to [`decide`] and `count_flow`. `word` is the packet's
/// [`policy_word`] (false at once without a policy); `key` arrives with the ACCEPT verdict.
///
/// Cost: the flow lookup the packet needs anyway, plus array reads the verifier inlines.
///
/// Inlined into the program: a BPF-to-BPF call and its return cost a few ns each on kernels
/// with the SRSO return thunk, which is what a known connection's packet would pay here. The
/// full check ([`decide`]) is the function instead, for the verifier (see there).
#[inline(always)]
pub fn counted_on_fast_path(
    word: u32,
    key: &mut FlowKey,
    parsed: &Parsed,
    count: &WireCount,
    now: u64,
) -> bool {
    if word & 3 == 0 || parsed.tcp_header_flags & CONNECTION_FLAGS != 0 {
        return false;
    }
    let config = match word & 3 {
        1 => POLICY_CONFIG_0.get(0),
        2 => POLICY_CONFIG_1.get(0),
        _ => return false,
    };
    let Some(config) = config else {
        return false;
    };
    let shift = (config.fast_path_shift & 63) as u64;
    let Some(entry) = flow_entry(key) else {
        return false;
    };
    let version = read_conn_version(conn_version_slot(key));
    let stamp = fast_path_stamp(word_generation(word), version);
    // SAFETY: this CPU's entry of the current epoch (see `counting`).
    unsafe {
        if (*entry).policy_stamp != stamp || (*entry).last_seen_jiffies >> shift != now >> shift {
            return false;
        }
        add_to_entry(entry, *count, parsed.tcp_flags, now);
    }
    true
}

/// The connection version in `slot` (0 if out of range).
#[inline(always)]
fn read_conn_version(slot: u32) -> u32 {
    CONN_VERSIONS.get(slot).copied().unwrap_or(0)
}

/// [`read_conn_version`] for the full check, not inlined, for the verifier: its found and
/// not-found branches end in one returned value rather than two states reaching the rule
/// lookups. (The fast path reads it inline: no call on a known connection's packet.)
#[inline(never)]
fn conn_version(slot: u32) -> u32 {
    read_conn_version(slot)
}

/// The live policy word (`POLICY_ACTIVE`: slot and generation), read once per packet, which so
/// uses one policy throughout; 0 (no policy) in programs built without it ([`Loops::POLICY`]).
#[inline(always)]
pub fn policy_word<L: Loops>() -> u32 {
    if !L::POLICY {
        return 0;
    }
    POLICY_ACTIVE.get(0).copied().unwrap_or(0)
}

/// Decides a parsed packet (`key` complete but for `cpu` and `verdict`) under the policy
/// `word` ([`policy_word`]). Without a policy every packet is accepted, with no call.
///
/// The check is a function of its own (a BPF-to-BPF call, its [`Decision`] packed into the one
/// returned register): after its return the verifier sees one state, where the inlined
/// branches of the check multiplied the states reaching the rest of the program (inlined with
/// the fast path as the function, TC egress verified at 705k instructions on 6.18 and 7.3
/// refused it at its million; this way, 399k on 6.18). Its stack frame sits between the
/// program's and the rule lookups' (512 bytes in all), so the connection key lives in a per-CPU
/// scratch slot (`CONN_KEY_SCRATCH`).
#[inline(always)]
pub fn decide(word: u32, key: &FlowKey, parsed: &Parsed, now: u64) -> Decision {
    if word & 3 == 0 {
        return ACCEPT;
    }
    Decision::unpack(decide_packed(word, key, parsed, now))
}

/// [`decide`]'s check, its answer packed by [`Decision::pack`].
#[inline(never)]
fn decide_packed(word: u32, key: &FlowKey, parsed: &Parsed, now: u64) -> u64 {
    let generation = word_generation(word);
    // One call site per slot, so each rule lookup sees one constant map.
    let decision = if word & 3 == 1 {
        decide_with(&POLICY_CONFIG_0, Slot0, generation, key, parsed, now)
    } else {
        decide_with(&POLICY_CONFIG_1, Slot1, generation, key, parsed, now)
    };
    decision.pack()
}

#[inline(always)]
fn decide_with<S: Slot>(
    config: &Array<PolicyConfig>,
    _slot: S,
    generation: u32,
    key: &FlowKey,
    parsed: &Parsed,
    now: u64,
) -> Decision {
    let Some(config) = config.get(0) else {
        return ACCEPT;
    };
    let inbound = key.direction == Direction::Ingress as u8;
    let packet = Packet {
        inbound,
        tcp: key.protocol == 6,
        tcp_flags: parsed.tcp_header_flags,
        payload: parsed.ip_len > parsed.header_len,
    };
    // The connection's version is read before its state: a packet that changes the state
    // bumps the version after writing it, so a stamp made from a state older than that change
    // carries an older version and never holds.
    let version_slot = conn_version_slot(key);
    let version = conn_version(version_slot);
    let Some(conn) = CONN_KEY_SCRATCH.get_ptr_mut(0) else {
        return ACCEPT;
    };
    let conn: &ConnKey = {
        // SAFETY: this CPU's scratch slot, which nothing else uses while this program runs.
        let conn = zeroed_conn_key(unsafe { &mut *conn });
        fill_conn_key(conn, key);
        conn
    };

    let entry = CONNECTIONS.get_ptr_mut(conn);
    let (mut state, known) = match entry {
        // SAFETY: a live map value; a torn read by a concurrent writer only affects cached state,
        // never a count.
        Some(state) => (unsafe { *state }, true),
        None => (ConnState::default(), false),
    };
    if !known || state.generation != generation {
        reset_cache(&mut state, generation);
    }
    let timeout = config.idle_timeout_jiffies[timeout_class(key.protocol)];
    if known && now.wrapping_sub(state.last_seen_jiffies) > timeout {
        reset_tracking(&mut state);
    }
    state.last_seen_jiffies = now;

    let acl_rejects = config.acl_present != 0 && {
        let cached_acl = if inbound { state.acl_in } else { state.acl_eg };
        let verdict = if cached_acl == CACHED_UNKNOWN {
            let (start, table) = if inbound {
                (0, TABLE_ACL_IN)
            } else {
                (config.acl_in_count, TABLE_ACL_EG)
            };
            let rule = S::first_match(table, conn, inbound);
            let action = if rule == NO_MATCH {
                config.acl_default
            } else {
                S::acl_action(start.wrapping_add(rule)).unwrap_or(config.acl_default)
            };
            cached(action == RULE_ALLOW)
        } else {
            cached_acl
        };
        if inbound {
            state.acl_in = verdict;
        } else {
            state.acl_eg = verdict;
        }
        verdict == CACHED_DENY
    };

    let audit = config.mode == MODE_AUDIT;
    // Inbound, a packet the ACL drops never reaches the security group: it opens no connection
    // there. (In audit mode it passes, so the security group sees it.)
    let sg_rejects = if config.sg_present == 0 || (inbound && acl_rejects && !audit) {
        None
    } else {
        match closed_connection(&mut state, packet) {
            Some(layer) => Some(layer),
            None => {
                let rule_inbound = sg_rule_direction(&state, packet);
                let allowed = !rule_inbound && config.sg_egress_open != 0 || {
                    let cached_sg = if rule_inbound {
                        state.sg_in
                    } else {
                        state.sg_eg
                    };
                    let verdict = if cached_sg == CACHED_UNKNOWN {
                        let table = if rule_inbound {
                            TABLE_SG_IN
                        } else {
                            TABLE_SG_EG
                        };
                        cached(S::first_match(table, conn, rule_inbound) != NO_MATCH)
                    } else {
                        cached_sg
                    };
                    if rule_inbound {
                        state.sg_in = verdict;
                    } else {
                        state.sg_eg = verdict;
                    }
                    verdict == CACHED_ALLOW
                };
                security_group(&mut state, packet, allowed, audit)
            }
        }
    };

    // Inbound: ACL first, then the security group; outbound the other way round.
    let rejected = if inbound {
        if acl_rejects {
            Some(RejectLayer::Acl)
        } else {
            sg_rejects
        }
    } else if sg_rejects.is_some() {
        sg_rejects
    } else if acl_rejects {
        Some(RejectLayer::Acl)
    } else {
        None
    };
    if rejected.is_none() || audit {
        track_close(&mut state, packet);
    }
    match entry {
        // Written only when something changed (compared with the entry itself, not a copy:
        // the stack is tight). SAFETY: as above; entries hold state, and a lost update is a
        // re-evaluation.
        Some(slot) => unsafe {
            if *slot != state {
                *slot = state;
            }
        },
        None => {
            let _ = CONNECTIONS.insert(conn, state, BPF_ANY as u64);
        }
    }
    // A packet that opens or closes the connection, or is rejected, may change the verdict of
    // the connection's other packets: their stamps stop holding.
    if (packet.tcp_flags & CONNECTION_FLAGS != 0 || rejected.is_some())
        && let Some(version) = CONN_VERSIONS.get_ptr_mut(version_slot)
    {
        // SAFETY: a live array slot; a lost increment between two CPUs still changes the value
        // each of them read.
        unsafe { *version = (*version).wrapping_add(1) };
    }
    match rejected {
        None => Decision {
            stamp: fast_path_stamp(generation, version),
            ..ACCEPT
        },
        Some(layer) if audit => Decision {
            verdict: Verdict::AUDIT | layer as u8,
            drop: false,
            stamp: 0,
        },
        Some(layer) => Decision {
            verdict: layer as u8,
            drop: true,
            stamp: 0,
        },
    }
}

/// The rule index of one policy slot (`flowlog_common::policy`, "The rule index"): one type
/// per slot, so each lookup sees one constant map.
trait Slot {
    /// The position in `table` of the first rule that matches the packet opening `conn` in the
    /// given direction, or [`NO_MATCH`]. A function of its own (a BPF-to-BPF call), for the
    /// verifier: after its return it sees one value rather than the states of every lookup.
    fn first_match(table: u8, conn: &ConnKey, inbound: bool) -> u32;
    /// The action of ACL rule `rule` (ingress rules first).
    fn acl_action(rule: u32) -> Option<u8>;
}

struct Slot0;
struct Slot1;

impl Slot for Slot0 {
    #[inline(never)]
    fn first_match(table: u8, conn: &ConnKey, inbound: bool) -> u32 {
        first_match(
            &RULE_PREFIXES_0,
            &RULE_PORTS_0,
            join_0,
            table,
            conn,
            inbound,
        )
    }
    #[inline(always)]
    fn acl_action(rule: u32) -> Option<u8> {
        ACL_ACTIONS_0.get(rule).copied()
    }
}

impl Slot for Slot1 {
    #[inline(never)]
    fn first_match(table: u8, conn: &ConnKey, inbound: bool) -> u32 {
        first_match(
            &RULE_PREFIXES_1,
            &RULE_PORTS_1,
            join_1,
            table,
            conn,
            inbound,
        )
    }
    #[inline(always)]
    fn acl_action(rule: u32) -> Option<u8> {
        ACL_ACTIONS_1.get(rule).copied()
    }
}

/// [`Slot::first_match`] over one slot's maps: the first rule both in the list of the remote
/// address's prefix and in the list of the protocol's port, found by walking the two lists of
/// bitmap words side by side.
#[inline(always)]
fn first_match(
    prefixes: &LpmTrie<PrefixKeyData, RuleList>,
    ports: &LpmTrie<PortKeyData, RuleList>,
    join_callback: JoinCallback,
    table: u8,
    conn: &ConnKey,
    inbound: bool,
) -> u32 {
    let subject = RuleSubject::opening(conn, inbound);
    // Keys are built as aligned words (the stack takes no misaligned store), in the layout of
    // `lpm_trie::Key`: the prefix length, then the data (little-endian, as BPF is).
    let header = |bits: u32, bytes: [u8; 3]| {
        bits as u64 | (bytes[0] as u64) << 32 | (bytes[1] as u64) << 40 | (bytes[2] as u64) << 48
    };
    let prefix: [u64; 3] = [
        header(PREFIX_KEY_HEADER_BITS + 128, [table, subject.family, 0]),
        subject.remote[0],
        subject.remote[1],
    ];
    let Some(by_prefix) = prefixes.get(as_key::<PrefixKeyData, 3>(&prefix)).copied() else {
        return NO_MATCH;
    };
    let port = subject.port.to_be_bytes();
    let port_key = |scope: u8, protocol: u8| -> [u64; 2] {
        [
            header(PORT_KEY_HEADER_BITS + 16, [table, scope, protocol]) | (port[0] as u64) << 56,
            port[1] as u64,
        ]
    };
    let own = port_key(PORTS_OWN, subject.protocol);
    let other = port_key(PORTS_OTHER, 0);
    let by_port = match ports.get(as_key::<PortKeyData, 2>(&own)) {
        Some(list) => *list,
        None => match ports.get(as_key::<PortKeyData, 2>(&other)) {
            Some(list) => *list,
            None => return NO_MATCH,
        },
    };
    let mut join = Join {
        a: by_prefix.offset,
        a_end: by_prefix
            .offset
            .wrapping_add(by_prefix.len.min(RULE_BITMAP_WORDS)),
        b: by_port.offset,
        b_end: by_port
            .offset
            .wrapping_add(by_port.len.min(RULE_BITMAP_WORDS)),
        found: NO_MATCH,
    };
    let steps = (2 * RULE_BITMAP_WORDS).div_ceil(WORDS_PER_STEP);
    // SAFETY: the callback only reads and writes the `Join` it is given, which outlives the
    // call; the helper calls it at most `steps` times.
    unsafe {
        bpf_loop(
            steps,
            join_callback as *mut c_void,
            (&mut join as *mut Join).cast(),
            0,
        );
    }
    join.found
}

/// `words` as an LPM-trie key of data `D` (which they hold, in `Key`'s layout).
#[inline(always)]
fn as_key<D, const N: usize>(words: &[u64; N]) -> &Key<D> {
    const { assert!(core::mem::size_of::<Key<D>>() <= N * 8) };
    // SAFETY: `Key<D>` is packed (alignment 1) and no larger than the words, which are plain
    // integers; the reference borrows them.
    unsafe { &*words.as_ptr().cast::<Key<D>>() }
}

/// The walk over two rule lists, passed to its `bpf_loop` callback: positions `a` and `b` in
/// `RULE_WORDS_n`, each list ending before its `_end`.
#[repr(C)]
struct Join {
    a: u32,
    a_end: u32,
    b: u32,
    b_end: u32,
    /// The first rule in both lists, or [`NO_MATCH`].
    found: u32,
}

/// Words compared per callback call: the call and return cost more than a comparison.
const WORDS_PER_STEP: u32 = 4;

const NO_MATCH: u32 = u32::MAX;

type JoinCallback = unsafe extern "C" fn(u32, *mut c_void) -> i64;

/// One step of the walk: advances the list whose word comes first, or both on the same word,
/// which holds the answer if the two have a rule in common. 1 stops the loop.
#[inline(always)]
fn join_step(words: &Array<RuleWord>, join: *mut c_void) -> i64 {
    // SAFETY: `first_match` passes a live `Join`.
    let join = unsafe { &mut *join.cast::<Join>() };
    for _ in 0..WORDS_PER_STEP {
        if join.a >= join.a_end || join.b >= join.b_end {
            return 1;
        }
        let (Some(a), Some(b)) = (words.get(join.a), words.get(join.b)) else {
            return 1;
        };
        if a.index < b.index {
            join.a += 1;
        } else if a.index > b.index {
            join.b += 1;
        } else {
            let common = a.bits & b.bits;
            if common != 0 {
                join.found = a.index * 64 + common.trailing_zeros();
                return 1;
            }
            join.a += 1;
            join.b += 1;
        }
    }
    0
}

unsafe extern "C" fn join_0(_: u32, join: *mut c_void) -> i64 {
    join_step(&RULE_WORDS_0, join)
}
unsafe extern "C" fn join_1(_: u32, join: *mut c_void) -> i64 {
    join_step(&RULE_WORDS_1, join)
}

/// `conn` cleared with word stores (see `parse::zeroed_key`).
#[inline(always)]
fn zeroed_conn_key(conn: &mut ConnKey) -> &mut ConnKey {
    let words = (conn as *mut ConnKey).cast::<u64>();
    for i in 0..core::mem::size_of::<ConnKey>() / 8 {
        // SAFETY: ConnKey is 48 bytes and 8-byte aligned.
        unsafe { words.add(i).write_volatile(0) };
    }
    conn
}
