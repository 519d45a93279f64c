//! What rules and packets are drawn from, and the seeded generator that draws them.

pub const ACL_RULES: usize = 1_000;
pub const SG_RULES_PER_DIRECTION: usize = 500;
/// Rules on a /24 or /64 or longer, in percent: most ACL rules, nearly every security-group
/// rule (a few hundred broad ones would allow nearly everything).
pub const ACL_NARROW_PERCENT: u64 = 75;
pub const SG_NARROW_PERCENT: u64 = 95;

/// Networks the rules use: nested and overlapping, with lengths an LPM trie must tell apart.
pub const NETWORKS: &[&str] = &[
    "0.0.0.0/0",
    "198.18.0.0/15",
    "198.18.0.0/16",
    "198.19.0.0/16",
    "198.18.0.0/23",
    "198.18.0.0/24",
    "198.18.1.0/24",
    "198.19.7.0/24",
    "198.18.0.0/28",
    "198.18.0.16/28",
    "198.18.1.240/28",
    "198.19.7.128/28",
    "198.18.0.4/30",
    "198.18.0.1/32",
    "198.18.0.17/32",
    "198.18.1.255/32",
    "198.19.7.130/32",
    "::/0",
    "fd00::/8",
    "fd00:1::/32",
    "fd00:2::/32",
    "fd00:1::/48",
    "fd00:1::/64",
    "fd00:1:0:1::/64",
    "fd00:2::/64",
    "fd00:1::/120",
    "fd00:1::1/128",
    "fd00:1::ff/128",
    "fd00:1:0:1::5/128",
    "fd00:2::9/128",
];

/// Ports of TCP and UDP rules: single ports, small ranges sharing bounds, wide ranges. Most
/// rules are narrow, so that few of them hide all later ones.
pub const SINGLE_PORTS: &[(u16, u16)] = &[
    (53, 53),
    (80, 80),
    (443, 443),
    (1000, 1000),
    (2000, 2000),
    (8000, 8000),
    (8005, 8005),
    (8010, 8010),
    (0, 0),
    (65535, 65535),
];
pub const SMALL_RANGES: &[(u16, u16)] = &[(1000, 2000), (8000, 8010), (8000, 8100), (1, 1023)];
pub const WIDE_RANGES: &[(u16, u16)] = &[(1024, 65535), (0, 65535)];

/// splitmix64: deterministic, good enough to spread draws, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Destination ports on the edges of every rule's range (one below, the bounds, one above).
pub fn edge_ports() -> Vec<u16> {
    let mut ports: Vec<u16> = [SINGLE_PORTS, SMALL_RANGES, WIDE_RANGES]
        .concat()
        .into_iter()
        .flat_map(|(min, max)| [min.checked_sub(1), Some(min), Some(max), max.checked_add(1)])
        .flatten()
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
