//! What the running kernel offers the datapath, probed once at start-up, and the build of the
//! counting programs that follows from it.
//!
//! | feature | first kernel | without it |
//! |---|---|---|
//! | policy: `bpf_loop` helper (5.17) and a verifier that tracks precision through its callbacks (6.5) | 6.5 | the bounded-loop programs (`_b`): counting and exclusions, no policy |
//! | TCX links | 6.6 | clsact filters, which stay attached across restarts too (their programs pinned) |
//! | XDP feature query (netdev netlink) | 6.3 | `check` cannot say whether a driver runs XDP natively |

use std::fmt;

use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
    util::KernelVersion,
};

use super::programs;

/// The counting programs of one build (`flowlog-ebpf/src/loops.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramSet {
    /// Rule and exclusion scans in `bpf_loop` (Linux 5.17+): everything, the policy included.
    HelperLoops,
    /// Bounded loops, which older verifiers accept: counting and exclusions, no policy.
    BoundedLoops,
}

/// A counting program, by where it hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountingProgram {
    TcIngress,
    TcEgress,
    Xdp,
}

impl ProgramSet {
    /// The build the running kernel verifies (see [`why_no_policy`]).
    pub fn for_running_kernel() -> Self {
        if why_no_policy().is_some() {
            ProgramSet::BoundedLoops
        } else {
            ProgramSet::HelperLoops
        }
    }

    /// The name of `program` in the eBPF object.
    pub fn name(self, program: CountingProgram) -> &'static str {
        use CountingProgram::*;
        match (self, program) {
            (ProgramSet::HelperLoops, TcIngress) => programs::TC_INGRESS,
            (ProgramSet::HelperLoops, TcEgress) => programs::TC_EGRESS,
            (ProgramSet::HelperLoops, Xdp) => programs::XDP_INGRESS,
            (ProgramSet::BoundedLoops, TcIngress) => programs::TC_INGRESS_BOUNDED,
            (ProgramSet::BoundedLoops, TcEgress) => programs::TC_EGRESS_BOUNDED,
            (ProgramSet::BoundedLoops, Xdp) => programs::XDP_INGRESS_BOUNDED,
        }
    }

    /// Whether these programs enforce a policy.
    pub fn has_policy(self) -> bool {
        self == ProgramSet::HelperLoops
    }
}

impl fmt::Display for ProgramSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgramSet::HelperLoops => "bpf_loop",
            ProgramSet::BoundedLoops => "bounded loops",
        })
    }
}

/// Why the running kernel cannot verify the programs that enforce the policy, if it cannot.
///
/// They need `bpf_loop` (probed the way libbpf does: a two-instruction program calling it) and
/// a verifier that tracks register precision through its callbacks (6.5): 6.1's gives up on
/// them at its limit of a million instructions, having to treat every value as precise.
pub fn why_no_policy() -> Option<&'static str> {
    if !has_bpf_loop() {
        return Some(
            "its rule lookups need the bpf_loop helper (Linux 5.17), which this kernel lacks",
        );
    }
    match KernelVersion::current() {
        Ok(version) if version < KernelVersion::new(6, 5, 0) => Some(
            "its rule lookups need a verifier that tracks precision through bpf_loop callbacks (Linux 6.5); older ones give up at a million instructions",
        ),
        _ => None,
    }
}

/// Whether the kernel has the `bpf_loop` helper (5.17, or a backport).
pub fn has_bpf_loop() -> bool {
    // A probe that cannot run (no CAP_BPF) says nothing: assume the helper, so the load that
    // follows fails with the real reason.
    is_helper_supported(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_loop).unwrap_or(true)
}

/// Whether the kernel has TCX links (6.6). aya attaches with TCX from that version on.
pub fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}
