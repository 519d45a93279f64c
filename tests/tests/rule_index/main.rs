//! The kernel's policy verdicts against a linear scan written here, on 100,000 random
//! connection-opening packets and one random policy of 1,000 ACL and 1,000 security-group
//! rules whose networks nest and overlap and whose port ranges share their edges.
//!
//! This is the oracle for any change to how the programs find the matching rule (an LPM trie on
//! the remote prefix, port and protocol lookups, bitmap intersection): whatever the kernel does
//! inside, its verdicts must stay those of the first matching ACL rule by number and of "any
//! security-group rule allows it". The reference here shares no code with the agent's policy
//! compiler or the programs' matcher.
//!
//! Every packet opens a new connection (a TCP SYN, a UDP datagram, an ICMP or ICMPv6 echo), so
//! the rules decide it rather than a verdict cached for its connection: no connection occurs
//! twice between two clearings of the connection table.
//!
//! `FLOWLOG_TEST_SEED` (decimal or 0x-hex) replays a run; the seed is printed, and every
//! mismatch names it with the packet, both verdicts and the rules the reference applied.

mod packet;
mod random;
mod reference;

use std::collections::{BTreeMap, HashSet};

use flowlog_common::flow::{FlowKey, Verdict};
use tests::test_run::TestDatapath;

use crate::{
    packet::Opening,
    random::{ACL_RULES, Rng, edge_ports},
    reference::{Expected, PolicyModel},
};

const SEED_ENV: &str = "FLOWLOG_TEST_SEED";
const DEFAULT_SEED: u64 = 0x0f10_7106_5eed_0001;
const PACKETS: usize = 100_000;
/// Packets between two drains: the flow map holds exactly this many flows (one per packet).
const BATCH: usize = 5_000;

fn seed() -> u64 {
    let Ok(text) = std::env::var(SEED_ENV) else {
        return DEFAULT_SEED;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("{SEED_ENV}={text}: expected a decimal or 0x-hex u64"))
}

fn mismatch(seed: u64, index: usize, packet: &Opening, expected: &Expected, got: &str) -> String {
    let acl = match expected.acl_rule {
        Some(rule) => format!(
            "rule {} ({}, {})",
            rule.number,
            rule.matcher,
            if rule.allow { "allow" } else { "deny" }
        ),
        None => "no rule matched: the default".into(),
    };
    let sg = match expected.sg_rule {
        Some(rule) => format!("allowed by {rule}"),
        None => "no rule allows it".into(),
    };
    format!(
        "{SEED_ENV}={seed:#x}, packet {index}: {packet}: the kernel said {got}, the linear scan \
         {:?} (ACL: {acl}; security group: {sg})",
        expected.verdict
    )
}

#[test]
fn the_kernel_decides_as_a_linear_scan_of_the_rules() {
    let seed = seed();
    println!("{SEED_ENV}={seed:#x}");
    let mut rng = Rng(seed);
    let policy = PolicyModel::random(&mut rng);
    let ports = edge_ports();
    let mut datapath = TestDatapath::load(BATCH as u32);
    datapath.set_policy(&policy.toml());

    let started = std::time::Instant::now();
    let mut verdicts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut acl_rules_deciding = HashSet::new();
    let mut acl_defaults = 0;
    let mut sent = 0;
    while sent < PACKETS {
        let mut batch: BTreeMap<FlowKey, (usize, Opening)> = BTreeMap::new();
        let mut connections = HashSet::new();
        while batch.len() < BATCH.min(PACKETS - sent) {
            let packet = Opening::random(&mut rng, &ports);
            // A connection seen before would be judged by its state, not by the rules.
            if !connections.insert(packet.connection()) {
                continue;
            }
            let index = sent + batch.len();
            let expected = policy.decide(&packet);
            let hook = packet.program();
            let returned = datapath
                .try_run(hook, &packet.frame(index as u16), 1)
                .unwrap_or_else(|error| panic!("{packet}: test run: {error:?}"));
            let dropped = match returned {
                r if r == hook.drop_verdict() => true,
                r if r == hook.pass_verdict() => false,
                other => panic!("{packet}: unexpected program result {other}"),
            };
            let expect_drop = expected.verdict != Verdict::Accept;
            assert!(
                dropped == expect_drop,
                "{}",
                mismatch(
                    seed,
                    index,
                    &packet,
                    &expected,
                    if dropped { "drop" } else { "pass" }
                )
            );
            *verdicts.entry(verdict_name(expected.verdict)).or_default() += 1;
            *kinds.entry(packet_kind(&packet)).or_default() += 1;
            match expected.acl_rule {
                Some(rule) => _ = acl_rules_deciding.insert(rule.number),
                None => acl_defaults += 1,
            }
            // Keyed without the verdict: the drained flow's verdict is what is compared.
            let earlier = batch.insert(packet.flow_key(Verdict::Accept), (index, packet));
            assert!(earlier.is_none(), "distinct connections, distinct flows");
        }
        let flows = datapath.drain_flows();
        assert_eq!(flows.len(), batch.len(), "one flow per packet");
        for (key, counts) in &flows {
            let (index, packet) = batch
                .get(&FlowKey {
                    verdict: Verdict::Accept as u8,
                    ..*key
                })
                .unwrap_or_else(|| panic!("{SEED_ENV}={seed:#x}: a flow nobody sent: {key:?}"));
            assert_eq!(counts.packets, 1, "{packet}");
            let expected = policy.decide(packet);
            let got = Verdict::try_from(key.verdict).expect("a known verdict");
            assert!(
                got == expected.verdict,
                "{}",
                mismatch(seed, *index, packet, &expected, &format!("{got:?}"))
            );
        }
        sent += batch.len();
        datapath.forget_connections();
    }
    println!(
        "{sent} packets in {:.1?}: {verdicts:?}; {kinds:?}; {} ACL rules decided some packet, \
         the default {acl_defaults}",
        started.elapsed(),
        acl_rules_deciding.len()
    );

    // Not vacuous: every verdict, family, protocol and direction is well represented, and the
    // ACL's decisions come from many rules.
    for verdict in ["Accept", "RejectAcl", "RejectSecurityGroup"] {
        let count = verdicts.get(verdict).copied().unwrap_or(0);
        assert!(count * 10 >= PACKETS, "{verdict}: {count} of {PACKETS}");
    }
    let kinds_expected = [
        "IPv4 tcp",
        "IPv4 udp",
        "IPv4 icmp",
        "IPv6 tcp",
        "IPv6 udp",
        "IPv6 icmpv6",
    ];
    for kind in kinds_expected {
        for direction in ["inbound", "outbound"] {
            let count = kinds
                .get(&format!("{kind} {direction}"))
                .copied()
                .unwrap_or(0);
            assert!(
                count * 100 >= PACKETS,
                "{kind} {direction}: {count} packets"
            );
        }
    }
    assert!(
        (PACKETS / 50..=PACKETS * 9 / 10).contains(&acl_defaults),
        "the ACL default decided {acl_defaults} packets"
    );
    assert!(
        acl_rules_deciding.len() * 10 >= ACL_RULES,
        "only {} ACL rules decided a packet",
        acl_rules_deciding.len()
    );
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Accept => "Accept",
        Verdict::RejectAcl => "RejectAcl",
        Verdict::RejectSecurityGroup => "RejectSecurityGroup",
        other => unreachable!("the reference never says {other:?}"),
    }
}

fn packet_kind(packet: &Opening) -> String {
    let family = if packet.remote.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    let direction = if packet.inbound {
        "inbound"
    } else {
        "outbound"
    };
    format!("{family} {} {direction}", packet.protocol.name())
}
