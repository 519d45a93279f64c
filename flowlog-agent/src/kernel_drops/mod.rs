//! Verdicts of the host itself: packets the kernel drops (netfilter, no socket, reverse path
//! filter, ...) on the agent's interfaces become REJECT records with the kernel's reason.
//!
//! - [`probe`] reads what the drop program needs from the running kernel's BTF: the offsets of
//!   the `sk_buff`, `net_device`, `net`, `dst_entry` and `skb_shared_info` fields it reads, the
//!   drop reasons and their numbers, and whether `skb:kfree_skb` carries a reason (Linux 5.17+).
//! - The datapath (`datapath/kernel_drops.rs`) loads and attaches the program and drains its
//!   maps with the flow maps.
//! - [`settle`] turns a drain's drops into REJECT flows and takes the drops of packets flowlog
//!   counted as ACCEPT out of those counts, so ACCEPT is what the stack delivered.

pub mod btf;
pub mod reasons;
mod settle;

use std::{os::unix::fs::MetadataExt, sync::OnceLock};

use flowlog_common::drops::{COUNT_REASON, DropConfig, REASON_SLOTS, SKB_READ_LEN};

pub use btf::Btf;
pub use reasons::{REFUSED, Reason, Reasons, intern};
pub use settle::{DropTotals, settle};

/// `--kernel-drops`: which of the kernel's drops become REJECT records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelDropsMode {
    /// None: records are what flowlog's own programs saw (a packet the host drops after TC
    /// ingress is ACCEPT; one it drops before TC egress has no record).
    Off,
    /// What the host refused (netfilter, no socket, reverse path filter, ...; see README).
    #[default]
    Refused,
    /// Every drop, also buffers full, bad checksums, TCP state, ...
    All,
}

impl std::fmt::Display for KernelDropsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Refused => "refused",
            Self::All => "all",
        })
    }
}

/// Why this kernel cannot report its drops.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("kernel drops are unavailable: {0}")]
pub struct Unavailable(pub String);

/// What the drop program needs, read from the running kernel.
#[derive(Clone, Debug)]
pub struct Setup {
    pub mode: KernelDropsMode,
    pub config: DropConfig,
    pub reasons: Reasons,
}

/// The tracepoint the drop program attaches to.
pub const TRACEPOINT: &str = "kfree_skb";

/// Reads the kernel's layout and drop reasons for `mode`; `Ok(None)` when it is off.
pub fn probe(mode: KernelDropsMode) -> Result<Option<Setup>, Unavailable> {
    if mode == KernelDropsMode::Off {
        return Ok(None);
    }
    let btf = Btf::from_sys_fs().map_err(|e| Unavailable(e.to_string()))?;
    let reasons = Reasons::from_btf(&btf).ok_or_else(|| {
        Unavailable(
            "this kernel has no drop reasons (enum skb_drop_reason, Linux 5.17+)".to_owned(),
        )
    })?;
    // kfree_skb(skb, location, reason, ...), behind the context argument.
    match btf.prototype_params("btf_trace_kfree_skb") {
        Some(params) if params >= 4 => {}
        _ => {
            return Err(Unavailable(
                "the skb:kfree_skb tracepoint carries no drop reason on this kernel".to_owned(),
            ));
        }
    }
    let netns = std::fs::metadata("/proc/self/ns/net")
        .map_err(|e| Unavailable(format!("reading /proc/self/ns/net: {e}")))?;
    let config = layout(&btf, netns.ino() as u32, mode == KernelDropsMode::All)?;
    Ok(Some(Setup {
        mode,
        config,
        reasons,
    }))
}

/// The offsets the drop program reads, checked against what it copies of the `sk_buff`.
fn layout(btf: &Btf, netns_inum: u32, all: bool) -> Result<DropConfig, Unavailable> {
    let offset = |name: &str, path: &[&str]| {
        btf.member_offset(name, path)
            .map_err(|e| Unavailable(e.to_string()))
    };
    let config = DropConfig {
        skb_dev: offset("sk_buff", &["dev"])?,
        skb_iif: offset("sk_buff", &["skb_iif"])?,
        skb_refdst: offset("sk_buff", &["_skb_refdst"])?,
        skb_len: offset("sk_buff", &["len"])?,
        skb_network_header: offset("sk_buff", &["network_header"])?,
        skb_end: offset("sk_buff", &["end"])?,
        skb_head: offset("sk_buff", &["head"])?,
        skb_data: offset("sk_buff", &["data"])?,
        dev_ifindex: offset("net_device", &["ifindex"])?,
        dev_net: offset("net_device", &["nd_net", "net"])?,
        net_inum: offset("net", &["ns", "inum"])?,
        dst_dev: offset("dst_entry", &["dev"])?,
        shinfo_gso_size: offset("skb_shared_info", &["gso_size"])?,
        shinfo_gso_segs: offset("skb_shared_info", &["gso_segs"])?,
        netns_inum,
        count_subsystem_reasons: all as u32,
    };
    // Pointers are 8 bytes, the rest at most 4.
    let fields = [
        (config.skb_dev, 8),
        (config.skb_iif, 4),
        (config.skb_refdst, 8),
        (config.skb_len, 4),
        (config.skb_network_header, 2),
        (config.skb_end, 4),
        (config.skb_head, 8),
        (config.skb_data, 8),
    ];
    if let Some((at, size)) = fields.iter().find(|(at, size)| at + size > SKB_READ_LEN) {
        return Err(Unavailable(format!(
            "an sk_buff field at byte {at} (+{size}) lies beyond the {SKB_READ_LEN} bytes the program copies"
        )));
    }
    Ok(config)
}

impl Setup {
    /// The `DROP_REASONS` slots to set: one per reason the mode counts.
    pub fn counted_slots(&self) -> Vec<u32> {
        self.reasons
            .iter()
            .filter(|(number, reason)| {
                *number < REASON_SLOTS
                    && match self.mode {
                        KernelDropsMode::Off => false,
                        KernelDropsMode::Refused => reason.refused,
                        KernelDropsMode::All => true,
                    }
            })
            .map(|(number, _)| number)
            .collect()
    }

    /// The value of a counted slot.
    pub const COUNTED: u8 = COUNT_REASON;
}

static REASONS: OnceLock<Reasons> = OnceLock::new();

/// Makes the running kernel's reasons known to the record builder (once, at start-up).
pub fn publish_reasons(reasons: &Reasons) {
    let _ = REASONS.set(reasons.clone());
}

/// The name of the kernel's drop reason `number` (see [`Reasons::name`]).
pub fn reason_name(number: u32) -> &'static str {
    match REASONS.get() {
        Some(reasons) => reasons.name(number),
        None => Reasons::default().name(number),
    }
}
