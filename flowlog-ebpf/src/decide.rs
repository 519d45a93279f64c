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

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_loop, maps::Array};
use flowlog_common::{
    flow::{Direction, FlowKey, RejectLayer, Verdict},
    policy::{
        CACHED_ALLOW, CACHED_DENY, CACHED_UNKNOWN, ConnKey, ConnState, MAX_ACL_RULES, MAX_SG_RULES,
        MODE_AUDIT, PolicyConfig, RULE_ALLOW, Rule, conn_version_slot, fast_path_stamp,
        timeout_class, word_generation,
    },
    tcp::{FIN, RST, SYN},
};
use flowlog_ebpf::{
    account::WireCount,
    parse::Parsed,
    policy::{
        Packet, RuleSubject, cached, closed_connection, fill_conn_key, reset_cache, reset_tracking,
        rule_matches, security_group, sg_rule_direction, track_close,
    },
};

use crate::{
    counting::{add_to_entry, flow_entry},
    loops::Loops,
    maps::{
        ACL_RULES_0, ACL_RULES_1, CONN_VERSIONS, CONNECTIONS, POLICY_ACTIVE, POLICY_CONFIG_0,
        POLICY_CONFIG_1, SG_RULES_0, SG_RULES_1,
    },
};

/// A packet's verdict ([`Verdict`] as its integer), whether to drop it, and the fast-path stamp
/// its flow entry gets (0 for none).
pub struct Decision {
    pub verdict: u8,
    pub drop: bool,
    pub stamp: u32,
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
/// returns false, and the packet goes to [`decide`] and `count_flow`. `key` arrives with the
/// ACCEPT verdict.
///
/// Cost: the flow lookup the packet needs anyway, plus array reads the verifier inlines.
///
/// A function of its own (a BPF-to-BPF call), not inlined: after its return the verifier sees
/// one state (its answer), where the inlined branches multiplied the states that reach the
/// rule scans' callbacks and took the TC egress program past the verifier's million
/// instructions on 7.3. Only the programs with a policy ([`Loops::POLICY`]) call it.
#[inline(never)]
pub fn counted_on_fast_path(
    key: &mut FlowKey,
    parsed: &Parsed,
    count: &WireCount,
    now: u64,
) -> bool {
    if parsed.tcp_header_flags & CONNECTION_FLAGS != 0 {
        return false;
    }
    let word = POLICY_ACTIVE.get(0).copied().unwrap_or(0);
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
    let version = conn_version(conn_version_slot(key));
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

/// The connection version in `slot`. Not inlined, for the verifier: its found and not-found
/// branches end in one returned value rather than two states reaching the rule scans.
#[inline(never)]
fn conn_version(slot: u32) -> u32 {
    CONN_VERSIONS.get(slot).copied().unwrap_or(0)
}

/// Decides a parsed packet (`key` complete but for `cpu` and `verdict`). Programs built
/// without the policy ([`Loops::POLICY`]) accept everything.
#[inline(always)]
pub fn decide<L: Loops>(key: &FlowKey, parsed: &Parsed, now: u64) -> Decision {
    if !L::POLICY {
        return ACCEPT;
    }
    let word = POLICY_ACTIVE.get(0).copied().unwrap_or(0);
    // No live slot: no policy (the generation above the slot bits is kept for the next one).
    if word & 3 == 0 {
        return ACCEPT;
    }
    let generation = word_generation(word);
    // One call site per slot, so each rule lookup sees one constant map.
    if word & 3 == 1 {
        decide_with(
            &POLICY_CONFIG_0,
            scan_acl_0,
            scan_sg_0,
            generation,
            key,
            parsed,
            now,
        )
    } else {
        decide_with(
            &POLICY_CONFIG_1,
            scan_acl_1,
            scan_sg_1,
            generation,
            key,
            parsed,
            now,
        )
    }
}

#[inline(always)]
fn decide_with(
    config: &Array<PolicyConfig>,
    acl: ScanCallback,
    sg: ScanCallback,
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
    let mut storage = MaybeUninit::uninit();
    let conn: &ConnKey = {
        let conn = zeroed_conn_key(&mut storage);
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
            let (start, count) = if inbound {
                (0, config.acl_in_count)
            } else {
                (config.acl_in_count, config.acl_eg_count)
            };
            let action = first_match(acl, MAX_ACL_RULES, start, count, conn, inbound)
                .unwrap_or(config.acl_default);
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

    let sg_rejects = if config.sg_present == 0 {
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
                        let (start, count) = if rule_inbound {
                            (0, config.sg_in_count)
                        } else {
                            (config.sg_in_count, config.sg_eg_count)
                        };
                        cached(
                            first_match(sg, MAX_SG_RULES, start, count, conn, rule_inbound)
                                .is_some(),
                        )
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
                security_group(&mut state, packet, allowed, config.mode == MODE_AUDIT)
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
    let audit = config.mode == MODE_AUDIT;
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

/// A rule scan's state, passed to its `bpf_loop` callback.
#[repr(C)]
struct Scan {
    subject: RuleSubject,
    start: u32,
    count: u32,
    /// The action of the first matching rule, or [`NO_MATCH`].
    action: u32,
}

/// Rules checked per callback call: the call and return (through the kernel's return thunk)
/// cost more than checking a rule, so each call checks a block.
const RULES_PER_STEP: u32 = 4;

const NO_MATCH: u32 = u32::MAX;

/// The action of the first of `count` rules from `start` that matches the packet opening `conn`
/// in the given direction.
///
/// The scan runs in `bpf_loop`, whose callback the verifier checks once: a plain loop over 1,024
/// rules is verified iteration by iteration and exceeds the verifier's branch limit.
#[inline(always)]
fn first_match(
    callback: ScanCallback,
    bound: u32,
    start: u32,
    count: u32,
    conn: &ConnKey,
    inbound: bool,
) -> Option<u8> {
    let count = count.min(bound);
    let mut scan = Scan {
        subject: RuleSubject::opening(conn, inbound),
        start,
        count,
        action: NO_MATCH,
    };
    // SAFETY: the callback only reads and writes the `Scan` it is given, which outlives the
    // call; the helper calls it at most `count` times.
    unsafe {
        bpf_loop(
            count.div_ceil(RULES_PER_STEP),
            callback as *mut c_void,
            (&mut scan as *mut Scan).cast(),
            0,
        );
    }
    (scan.action != NO_MATCH).then_some(scan.action as u8)
}

type ScanCallback = unsafe extern "C" fn(u32, *mut c_void) -> i64;

/// One step of a scan over `rules`: checks block `step` (up to [`RULES_PER_STEP`] rules); 1
/// stops the loop (a rule matched, or the table ended), 0 goes on.
#[inline(always)]
fn scan_step(rules: &Array<Rule>, step: u32, scan: *mut c_void) -> i64 {
    // SAFETY: `first_match` passes a live `Scan`.
    let scan = unsafe { &mut *scan.cast::<Scan>() };
    let first = step * RULES_PER_STEP;
    for offset in 0..RULES_PER_STEP {
        let i = first + offset;
        if i >= scan.count {
            return 1;
        }
        match rules.get(scan.start + i) {
            Some(rule) if rule_matches(rule, &scan.subject) => {
                scan.action = rule.action as u32;
                return 1;
            }
            Some(_) => {}
            None => return 1,
        }
    }
    0
}

unsafe extern "C" fn scan_acl_0(index: u32, scan: *mut c_void) -> i64 {
    scan_step(&ACL_RULES_0, index, scan)
}
unsafe extern "C" fn scan_acl_1(index: u32, scan: *mut c_void) -> i64 {
    scan_step(&ACL_RULES_1, index, scan)
}
unsafe extern "C" fn scan_sg_0(index: u32, scan: *mut c_void) -> i64 {
    scan_step(&SG_RULES_0, index, scan)
}
unsafe extern "C" fn scan_sg_1(index: u32, scan: *mut c_void) -> i64 {
    scan_step(&SG_RULES_1, index, scan)
}

/// A zeroed connection key, cleared with word stores (see `parse::zeroed_key`).
#[inline(always)]
fn zeroed_conn_key(storage: &mut MaybeUninit<ConnKey>) -> &mut ConnKey {
    let words = storage.as_mut_ptr().cast::<u64>();
    for i in 0..core::mem::size_of::<ConnKey>() / 8 {
        // SAFETY: ConnKey is 48 bytes and 8-byte aligned.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: every byte was written; all-zero is a valid ConnKey.
    unsafe { storage.assume_init_mut() }
}
