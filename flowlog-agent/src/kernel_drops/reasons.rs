//! The kernel's drop reasons (`enum skb_drop_reason`), named and classified.
//!
//! The enum grows and is renumbered between kernel versions, so numbers are mapped to names from
//! the running kernel's BTF at start-up; everything else (which reasons `refused` covers, which
//! egress drops happen after flowlog's TC egress program counted the packet) is decided by name.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use super::btf::Btf;

/// What `--kernel-drops refused` counts: the host decided not to take or send the packet. Each
/// is a policy decision someone configured or a destination that does not exist, which is what
/// REJECT means in a VPC; the rest (buffers full, bad checksums, TCP state, ...) are failures
/// or housekeeping, counted with `all`.
pub const REFUSED: &[(&str, &str)] = &[
    (
        "NETFILTER_DROP",
        "a netfilter rule (nftables, iptables; firewalld, ufw, Docker, kube-proxy)",
    ),
    (
        "NO_SOCKET",
        "no socket for the destination port (closed port)",
    ),
    ("IP_NOPROTO", "no handler for the IP protocol"),
    ("SOCKET_FILTER", "a socket's BPF filter"),
    ("IP_RPFILTER", "the reverse path filter (rp_filter)"),
    ("XFRM_POLICY", "an IPsec (xfrm) policy"),
    ("BPF_CGROUP_EGRESS", "a cgroup BPF program refused the send"),
    ("SECURITY_HOOK", "a Linux security module"),
    ("TC_INGRESS", "another TC program on ingress"),
    ("TC_EGRESS", "another TC program on egress"),
    ("IP_INNOROUTES", "no route for a received packet"),
    ("IP_OUTNOROUTES", "no route to send"),
    (
        "IP_INADDRERRORS",
        "an unreachable, prohibit or blackhole route",
    ),
    ("IPV6DISABLED", "IPv6 disabled on the interface"),
    (
        "IP_LOCAL_SOURCE",
        "a received packet with a local source address",
    ),
    ("IP_INVALID_SOURCE", "an invalid source address (martian)"),
    ("IP_LOCALNET", "a loopback address from outside"),
    ("IP_INVALID_DEST", "an invalid destination address"),
];

/// Drops that happen after flowlog's TC egress program has counted a packet (queueing
/// disciplines and the device): they are taken out of its ACCEPT count. Every other egress drop
/// (netfilter OUTPUT and POSTROUTING, routing, neighbours) happens before it, so the packet was
/// never counted.
const AFTER_TC_EGRESS: &[&str] = &[
    "QDISC_DROP",
    "QDISC_OVERLIMIT",
    "QDISC_CONGESTED",
    "CAKE_FLOOD",
    "FQ_BAND_LIMIT",
    "FQ_HORIZON_LIMIT",
    "FQ_FLOW_LIMIT",
    "DUALPI2_STEP_DROP",
    "TC_CHAIN_NOTFOUND",
    "TC_RECLASSIFY_LOOP",
    "DEV_READY",
    "FULL_RING",
];

const PREFIX: &str = "SKB_DROP_REASON_";

/// One reason of the running kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason {
    /// `netfilter-drop`, `no-socket`, ...: the enum name without its prefix, lower case, dashes.
    pub name: &'static str,
    /// Counted by `--kernel-drops refused`.
    pub refused: bool,
    /// An egress drop after flowlog's TC egress program (see [`AFTER_TC_EGRESS`]).
    pub after_tc_egress: bool,
}

/// The reasons of the running kernel, by number.
#[derive(Clone, Debug, Default)]
pub struct Reasons {
    by_number: BTreeMap<u32, Reason>,
}

impl Reasons {
    /// From the kernel's `enum skb_drop_reason`; `None` if it has none (before Linux 5.17).
    pub fn from_btf(btf: &Btf) -> Option<Self> {
        let values = btf.enum_values("skb_drop_reason")?;
        Some(Self::from_enum(values.iter().map(|(v, n)| (*v, *n))))
    }

    pub fn from_enum<'a>(values: impl Iterator<Item = (u64, &'a str)>) -> Self {
        let mut by_number = BTreeMap::new();
        for (value, full_name) in values {
            let Some(short) = full_name.strip_prefix(PREFIX) else {
                // SKB_NOT_DROPPED_YET, SKB_CONSUMED: never a drop.
                continue;
            };
            if short == "MAX" || short.starts_with("SUBSYS") || value >= 1 << 16 {
                continue;
            }
            by_number.insert(
                value as u32,
                Reason {
                    name: intern(&short.to_ascii_lowercase().replace('_', "-")),
                    refused: REFUSED.iter().any(|(r, _)| *r == short),
                    after_tc_egress: AFTER_TC_EGRESS.contains(&short),
                },
            );
        }
        Self { by_number }
    }

    pub fn get(&self, number: u32) -> Option<&Reason> {
        self.by_number.get(&number)
    }

    /// The name of a reason number; reasons of a subsystem (upper 16 bits) or unknown ones get
    /// a made-up name that keeps the number.
    pub fn name(&self, number: u32) -> &'static str {
        match self.by_number.get(&number) {
            Some(reason) => reason.name,
            None if number >> 16 != 0 => {
                intern(&format!("subsystem-{}-{}", number >> 16, number & 0xffff))
            }
            None => intern(&format!("reason-{number}")),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &Reason)> {
        self.by_number.iter().map(|(n, r)| (*n, r))
    }
}

/// A reason name as `&'static str`: names come from the kernel (or a journal) at run time, and
/// there are a few hundred at most, so each is kept once for the life of the process.
pub fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_with_dashes_and_numbers_come_from_the_kernel() {
        // Two kernels number the same reason differently.
        let older = Reasons::from_enum(
            [
                (0, "SKB_NOT_DROPPED_YET"),
                (2, "SKB_DROP_REASON_NOT_SPECIFIED"),
                (3, "SKB_DROP_REASON_NO_SOCKET"),
                (5, "SKB_DROP_REASON_NETFILTER_DROP"),
                (9, "SKB_DROP_REASON_QDISC_DROP"),
                (10, "SKB_DROP_REASON_MAX"),
                (0xffff0000, "SKB_DROP_REASON_SUBSYS_MASK"),
            ]
            .into_iter(),
        );
        let newer = Reasons::from_enum(
            [
                (12, "SKB_DROP_REASON_NETFILTER_DROP"),
                (16, "SKB_DROP_REASON_IP_RPFILTER"),
            ]
            .into_iter(),
        );
        assert_eq!(older.name(5), "netfilter-drop");
        assert_eq!(newer.name(12), "netfilter-drop");
        assert_eq!(newer.name(16), "ip-rpfilter");
        assert_eq!(older.name(3), "no-socket");
        assert!(older.get(5).unwrap().refused);
        assert!(!older.get(2).unwrap().refused);
        assert!(older.get(9).unwrap().after_tc_egress);
        assert!(older.get(0).is_none() && older.get(10).is_none());
        assert_eq!(older.name(0x0003_0002), "subsystem-3-2");
        assert_eq!(older.iter().count(), 4);
        assert!(std::ptr::eq(intern("no-socket"), older.name(3)));
    }

    #[test]
    fn the_running_kernel_has_the_reasons_refused_names() {
        let Ok(btf) = Btf::from_sys_fs() else { return };
        let Some(reasons) = Reasons::from_btf(&btf) else {
            eprintln!("kernel without drop reasons: skipped");
            return;
        };
        let names: Vec<&str> = reasons.iter().map(|(_, r)| r.name).collect();
        for name in ["netfilter-drop", "no-socket", "ip-rpfilter"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }

    /// README's table of what `refused` counts lists exactly [`REFUSED`], with its words.
    #[test]
    fn the_readme_lists_what_refused_counts() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("| reason | what refused the packet |")
            .expect("README's refused table");
        let rows: Vec<&str> = readme[start..]
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .collect();
        let expected: Vec<String> = REFUSED
            .iter()
            .map(|(reason, what)| {
                let name = reason.to_ascii_lowercase().replace('_', "-");
                format!("| `{name}` | {what} |")
            })
            .collect();
        assert_eq!(rows, expected);
    }
}
