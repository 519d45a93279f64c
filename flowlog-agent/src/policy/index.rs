//! The rule index: for each rule table, which rules can match a packet, as the kernel programs
//! look it up (`flowlog_common::policy`, "The rule index"; `flowlog-ebpf/src/decide.rs`).
//!
//! A rule matches a packet when both halves of it do: its family and network contain the
//! remote address, and its protocol and port range the packet's protocol and port. The index
//! answers each half with one longest-prefix lookup whose value is the set of rules that half
//! allows, as a bitmap over the table's rules; the first rule in both sets is the first rule
//! that matches, so the verdict is the linear scan's.
//!
//! - **Prefixes.** Every distinct rule network is a key; its set is every rule whose network
//!   contains it. The longest key containing an address is the innermost rule network around
//!   it, and every rule network containing the address contains that one: its set is exactly
//!   the rules whose network holds the address.
//! - **Ports.** Per protocol some rule names, the rule boundaries cut 0-65535 into ranges in
//!   which the same rules apply (that protocol's and those for all protocols); each range is
//!   keyed as aligned blocks of ports. Protocols no rule names share the ranges of the rules for
//!   all protocols.
//!
//! Bitmaps are stored as their nonzero words only, and equal ones once, so a table of rules on
//! distinct networks costs a word or two per network.

use std::collections::{BTreeSet, HashMap};

use flowlog_common::policy::{
    ANY_PROTOCOL, PORT_KEY_HEADER_BITS, PORTS_OTHER, PORTS_OWN, PREFIX_KEY_HEADER_BITS,
    PortKeyData, PrefixKeyData, RULE_PORT_ENTRIES, RULE_PREFIX_ENTRIES, RULE_WORD_ENTRIES, Rule,
    RuleList, RuleWord, port_key, prefix_key,
};

/// The index of one policy slot, in the layout of its kernel maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleIndex {
    /// `RULE_PREFIXES_n`: (prefix length, key data, rules).
    pub prefixes: Vec<(u32, PrefixKeyData, RuleList)>,
    /// `RULE_PORTS_n`: (prefix length, key data, rules).
    pub ports: Vec<(u32, PortKeyData, RuleList)>,
    /// `RULE_WORDS_n`.
    pub words: Vec<RuleWord>,
}

/// A policy whose index does not fit the kernel maps.
#[derive(Debug, thiserror::Error)]
#[error(
    "the rule index needs {needed} {what} and the kernel maps hold {limit}: use fewer distinct networks or port ranges"
)]
pub struct IndexFull {
    pub what: &'static str,
    pub needed: usize,
    pub limit: u32,
}

impl RuleIndex {
    /// The index of the rules of each table (`flowlog_common::policy::TABLE_*`).
    pub fn build(tables: &[(u8, &[Rule])]) -> Result<Self, IndexFull> {
        let mut builder = Builder::default();
        for (table, rules) in tables {
            if !rules.is_empty() {
                builder.add_prefixes(*table, rules);
                builder.add_ports(*table, rules);
                builder.index.check()?;
            }
        }
        Ok(builder.index)
    }

    fn check(&self) -> Result<(), IndexFull> {
        for (what, needed, limit) in [
            ("bitmap words", self.words.len(), RULE_WORD_ENTRIES),
            ("prefix entries", self.prefixes.len(), RULE_PREFIX_ENTRIES),
            ("port entries", self.ports.len(), RULE_PORT_ENTRIES),
        ] {
            if needed > limit as usize {
                return Err(IndexFull {
                    what,
                    needed,
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// A [`RuleIndex`] being built, with the lists already stored (each is stored once).
#[derive(Default)]
struct Builder {
    index: RuleIndex,
    lists: HashMap<Vec<RuleWord>, RuleList>,
}

impl Builder {
    fn add_prefixes(&mut self, table: u8, rules: &[Rule]) {
        // Rules by network (family, masked address, length).
        let mut by_network: HashMap<(u8, [u8; 16], u32), Vec<usize>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            by_network
                .entry((rule.family, rule.prefix, prefix_len(rule)))
                .or_default()
                .push(i);
        }
        let networks: BTreeSet<_> = by_network.keys().copied().collect();
        for (family, prefix, len) in networks {
            let mut bitmap = Bitmap::new(rules.len());
            for outer in 0..=len {
                let key = (family, masked(&prefix, outer), outer);
                for &i in by_network.get(&key).into_iter().flatten() {
                    bitmap.set(i);
                }
            }
            let list = self.store(&bitmap);
            self.index.prefixes.push((
                PREFIX_KEY_HEADER_BITS + len,
                prefix_key(table, family, prefix),
                list,
            ));
        }
    }

    fn add_ports(&mut self, table: u8, rules: &[Rule]) {
        let named: BTreeSet<u16> = rules
            .iter()
            .map(|r| r.protocol)
            .filter(|p| *p != ANY_PROTOCOL)
            .collect();
        for protocol in named {
            let applies = |r: &Rule| r.protocol == protocol || r.protocol == ANY_PROTOCOL;
            self.add_port_ranges(table, PORTS_OWN, protocol as u8, rules, applies);
        }
        self.add_port_ranges(table, PORTS_OTHER, 0, rules, |r| r.protocol == ANY_PROTOCOL);
    }

    /// Keys the ranges between the boundaries of the rules `applies` selects, each with the
    /// rules that cover it (ranges no rule covers are left out: a lookup there finds nothing).
    fn add_port_ranges(
        &mut self,
        table: u8,
        scope: u8,
        protocol: u8,
        rules: &[Rule],
        applies: impl Fn(&Rule) -> bool,
    ) {
        // Rules starting and ending (one past their last port) at each boundary.
        let mut starts: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut ends: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut boundaries = BTreeSet::new();
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| applies(r)) {
            let (first, end) = (rule.port_min as u32, rule.port_max as u32 + 1);
            starts.entry(first).or_default().push(i);
            ends.entry(end).or_default().push(i);
            boundaries.insert(first);
            boundaries.insert(end);
        }
        let boundaries: Vec<u32> = boundaries.into_iter().collect();
        let mut active = Bitmap::new(rules.len());
        for pair in boundaries.windows(2) {
            let (first, end) = (pair[0], pair[1]);
            for &i in ends.get(&first).into_iter().flatten() {
                active.clear(i);
            }
            for &i in starts.get(&first).into_iter().flatten() {
                active.set(i);
            }
            if active.is_empty() {
                continue;
            }
            let list = self.store(&active);
            for (block, bits) in port_blocks(first, end) {
                self.index.ports.push((
                    PORT_KEY_HEADER_BITS + 16 - bits,
                    port_key(table, scope, protocol, block as u16),
                    list,
                ));
            }
        }
    }

    /// The list of `bitmap`'s nonzero words, stored once.
    fn store(&mut self, bitmap: &Bitmap) -> RuleList {
        let words = bitmap.nonzero_words();
        if let Some(list) = self.lists.get(&words) {
            return *list;
        }
        let list = RuleList {
            offset: self.index.words.len() as u32,
            len: words.len() as u32,
        };
        self.index.words.extend_from_slice(&words);
        self.lists.insert(words, list);
        list
    }
}

/// The length of a rule's network (its mask is contiguous).
fn prefix_len(rule: &Rule) -> u32 {
    rule.mask.iter().map(|b| b.count_ones()).sum()
}

/// `address` with only its first `len` bits kept.
fn masked(address: &[u8; 16], len: u32) -> [u8; 16] {
    let mut out = *address;
    for (i, byte) in out.iter_mut().enumerate() {
        let keep = len.saturating_sub(8 * i as u32).min(8);
        *byte &= !(0xffu16 >> keep) as u8;
    }
    out
}

/// The aligned blocks covering ports `first..end` (end up to 65,536): (first port, log2 of the
/// block's size), largest first where alignment allows.
fn port_blocks(mut first: u32, end: u32) -> Vec<(u32, u32)> {
    let mut blocks = Vec::new();
    while first < end {
        let mut bits = if first == 0 {
            16
        } else {
            first.trailing_zeros().min(16)
        };
        while first + (1 << bits) > end {
            bits -= 1;
        }
        blocks.push((first, bits));
        first += 1 << bits;
    }
    blocks
}

/// A set of rule positions.
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn new(rules: usize) -> Self {
        Self(vec![0; rules.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    fn nonzero_words(&self) -> Vec<RuleWord> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, bits)| **bits != 0)
            .map(|(index, bits)| RuleWord {
                bits: *bits,
                index: index as u32,
                _pad: 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use flowlog_common::policy::{RULE_ALLOW, port_key};

    use super::*;

    /// The index looked up as the kernel does: the longest prefix key containing the address,
    /// the port key of the protocol (or of the other protocols), the first rule in both lists.
    fn indexed(index: &RuleIndex, table: u8, packet: &Packet) -> Option<usize> {
        fn longest<const N: usize>(
            entries: &[(u32, [u8; N], RuleList)],
            key: &[u8; N],
        ) -> Option<RuleList> {
            entries
                .iter()
                .filter(|(len, data, _)| {
                    (0..*len as usize).all(|bit| {
                        let mask = 0x80 >> (bit % 8);
                        data[bit / 8] & mask == key[bit / 8] & mask
                    })
                })
                .max_by_key(|(len, _, _)| *len)
                .map(|(_, _, list)| *list)
        }
        let words = |list: RuleList| {
            index.words[list.offset as usize..(list.offset + list.len) as usize].to_vec()
        };
        let by_prefix = longest(
            &index.prefixes,
            &prefix_key(table, packet.family, packet.remote),
        )?;
        let own = port_key(table, PORTS_OWN, packet.protocol, packet.port);
        let other = port_key(table, PORTS_OTHER, 0, packet.port);
        let by_port = longest(&index.ports, &own).or_else(|| longest(&index.ports, &other))?;
        let ports = words(by_port);
        words(by_prefix).iter().find_map(|a| {
            let b = ports.iter().find(|b| b.index == a.index)?;
            let common = a.bits & b.bits;
            (common != 0).then(|| a.index as usize * 64 + common.trailing_zeros() as usize)
        })
    }

    #[derive(Debug)]
    struct Packet {
        family: u8,
        remote: [u8; 16],
        protocol: u8,
        port: u16,
    }

    /// The linear scan: the first rule whose every field matches.
    fn linear(rules: &[Rule], packet: &Packet) -> Option<usize> {
        rules.iter().position(|rule| {
            rule.family == packet.family
                && (rule.protocol == ANY_PROTOCOL || rule.protocol == packet.protocol as u16)
                && (rule.port_min..=rule.port_max).contains(&packet.port)
                && (0..16).all(|i| packet.remote[i] & rule.mask[i] == rule.prefix[i])
        })
    }

    /// splitmix64: a small deterministic generator.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len() as u64) as usize]
        }
    }

    /// Addresses near each other so networks nest: IPv4 in 198.18.0.0/15, IPv6 in fd00::/8,
    /// with a few bits varied in each byte range a prefix length may cut.
    fn address(random: &mut Random, family: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        if family == 4 {
            a[..4].copy_from_slice(&[198, 18 + random.below(2) as u8, 0, 0]);
            a[2] = random.pick(&[0, 1, 2, 128]);
            a[3] = random.below(256) as u8 & random.pick(&[0x0f, 0xff, 0x81]);
        } else {
            a[0] = 0xfd;
            a[1] = random.pick(&[0, 1]);
            a[7] = random.pick(&[0, 1, 2]);
            a[15] = random.below(256) as u8 & random.pick(&[0x0f, 0xff]);
        }
        a
    }

    const PORTS: [u16; 10] = [0, 1, 53, 80, 443, 1000, 2000, 8000, 8100, 65535];

    fn random_rule(random: &mut Random) -> Rule {
        let family = random.pick(&[4u8, 6]);
        let max_len = if family == 4 { 32 } else { 128 };
        let len = random.pick(&[0, 8, 15, 16, 24, 28, max_len - 1, max_len]);
        let mut mask = [0u8; 16];
        for bit in 0..len as usize {
            mask[bit / 8] |= 0x80 >> (bit % 8);
        }
        let mut prefix = address(random, family);
        for (p, m) in prefix.iter_mut().zip(mask) {
            *p &= m;
        }
        let protocol = random.pick(&[6u16, 17, 1, 58, ANY_PROTOCOL]);
        let (port_min, port_max) = match random.below(4) {
            0 => (0, u16::MAX),
            1 => {
                let p = random.pick(&PORTS);
                (p, p)
            }
            _ => {
                let (a, b) = (random.pick(&PORTS), random.pick(&PORTS));
                (a.min(b), a.max(b))
            }
        };
        Rule {
            prefix,
            mask,
            port_min,
            port_max,
            protocol,
            family,
            action: RULE_ALLOW,
        }
    }

    fn random_packet(random: &mut Random) -> Packet {
        let family = random.pick(&[4u8, 6]);
        let port = match random.below(3) {
            0 => random.pick(&PORTS),
            1 => random
                .pick(&PORTS)
                .wrapping_add(random.pick(&[1, u16::MAX])),
            _ => random.below(65536) as u16,
        };
        Packet {
            family,
            remote: address(random, family),
            protocol: random.pick(&[6u8, 17, 1, 58, 132]),
            port,
        }
    }

    #[test]
    fn the_index_finds_the_linear_scans_first_match_on_100k_random_packets() {
        let mut random = Random(0x5eed_2026_1201);
        let mut matched = 0;
        for tables in 0..4 {
            let rules: Vec<Rule> = (0..[10, 200, 1000, 3000][tables])
                .map(|_| random_rule(&mut random))
                .collect();
            let index = RuleIndex::build(&[(1, &rules)]).expect("fits");
            for _ in 0..25_000 {
                let packet = random_packet(&mut random);
                let want = linear(&rules, &packet);
                assert_eq!(indexed(&index, 1, &packet), want, "{packet:?}");
                assert_eq!(indexed(&index, 2, &packet), None, "another table");
                matched += usize::from(want.is_some());
            }
        }
        assert!(
            (20_000..80_000).contains(&matched),
            "a meaningful mix of matches and misses: {matched}"
        );
    }

    #[test]
    fn port_blocks_cover_a_range_exactly_with_aligned_blocks() {
        assert_eq!(port_blocks(0, 65536), vec![(0, 16)]);
        assert_eq!(port_blocks(80, 81), vec![(80, 0)]);
        assert_eq!(
            port_blocks(1000, 2001),
            vec![
                (1000, 3),
                (1008, 4),
                (1024, 9),
                (1536, 8),
                (1792, 7),
                (1920, 6),
                (1984, 4),
                (2000, 0)
            ]
        );
        for (first, end) in [(1, 65536), (65535, 65536), (3, 700)] {
            let blocks = port_blocks(first, end);
            let mut next = first;
            for (start, bits) in blocks {
                assert_eq!(start, next);
                assert_eq!(start % (1 << bits), 0);
                next = start + (1 << bits);
            }
            assert_eq!(next, end);
        }
    }

    #[test]
    fn rules_on_distinct_networks_cost_a_word_or_two_each() {
        // 10,000 rules on distinct /32s of one port, the shape of a large allow list.
        let rules: Vec<Rule> = (0..10_000u32)
            .map(|i| {
                let mut prefix = [0u8; 16];
                prefix[..4].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
                let mut mask = [0u8; 16];
                mask[..4].fill(0xff);
                Rule {
                    prefix,
                    mask,
                    port_min: 443,
                    port_max: 443,
                    protocol: 6,
                    family: 4,
                    action: RULE_ALLOW,
                }
            })
            .collect();
        let index = RuleIndex::build(&[(0, &rules)]).expect("fits");
        assert_eq!(index.prefixes.len(), 10_000);
        assert!(index.words.len() < 10_000 + 200, "{}", index.words.len());
    }

    #[test]
    fn masking_keeps_the_first_bits() {
        let a = [0xff; 16];
        assert_eq!(masked(&a, 0), [0; 16]);
        assert_eq!(masked(&a, 12)[..3], [0xff, 0xf0, 0]);
        assert_eq!(masked(&a, 128), a);
    }
}
