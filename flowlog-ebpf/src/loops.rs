//! The two builds of each counting program, told apart by how they walk tables of rules.
//!
//! - [`HelperLoops`]: the `bpf_loop` helper (Linux 5.17). Its callback is verified once, so
//!   the rule index's walk fits; the callback is referenced by a `BPF_PSEUDO_FUNC`
//!   load (5.13), which older verifiers do not count as a subprogram ("number of funcs in
//!   func_info doesn't match number of subprogs" on 5.10).
//! - [`BoundedLoops`]: plain loops with a constant bound, which every kernel from 5.3 verifies
//!   iteration by iteration. The exclusion scan (64 entries) fits; the policy's walk does not,
//!   so these programs enforce no policy and the agent refuses one on such kernels.
//!
//! The agent probes for `bpf_loop` and loads one build or the other (`datapath/programs.rs`).
//! Counting is the same code in both.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_loop;
use flowlog_common::{flow::FlowKey, policy::MAX_EXCLUSIONS};
use flowlog_ebpf::policy::exclusion_matches;

use crate::maps::{EXCLUSION_COUNT, EXCLUSIONS};

/// What differs between the two builds of a program.
pub trait Loops {
    /// Whether the program decides packets by the policy (else every packet is ACCEPT).
    const POLICY: bool;

    /// Whether the packet is excluded from logging.
    fn excluded(key: &FlowKey) -> bool;
}

/// Programs for kernels with `bpf_loop` (5.17 and later).
pub enum HelperLoops {}

/// Programs for kernels without `bpf_loop` (5.10 to 5.16): no policy.
pub enum BoundedLoops {}

impl Loops for HelperLoops {
    const POLICY: bool = true;

    #[inline(always)]
    fn excluded(key: &FlowKey) -> bool {
        let count = exclusion_count();
        if count == 0 {
            return false;
        }
        let mut scan = ExclusionScan {
            key: key as *const FlowKey,
            matched: 0,
        };
        // SAFETY: the callback only reads the key and writes the `ExclusionScan`, both of which
        // outlive the call.
        unsafe {
            bpf_loop(
                count,
                scan_exclusions as *mut c_void,
                (&mut scan as *mut ExclusionScan).cast(),
                0,
            );
        }
        scan.matched != 0
    }
}

impl Loops for BoundedLoops {
    const POLICY: bool = false;

    #[inline(always)]
    fn excluded(key: &FlowKey) -> bool {
        let count = exclusion_count();
        for index in 0..MAX_EXCLUSIONS {
            if index >= count {
                return false;
            }
            match EXCLUSIONS.get(index) {
                Some(rule) if exclusion_matches(rule, key) => return true,
                Some(_) => {}
                None => return false,
            }
        }
        false
    }
}

/// Entries of `EXCLUSIONS` in use, at most [`MAX_EXCLUSIONS`].
#[inline(always)]
fn exclusion_count() -> u32 {
    EXCLUSION_COUNT
        .get(0)
        .copied()
        .unwrap_or(0)
        .min(MAX_EXCLUSIONS)
}

#[repr(C)]
struct ExclusionScan {
    key: *const FlowKey,
    matched: u32,
}

unsafe extern "C" fn scan_exclusions(index: u32, scan: *mut c_void) -> i64 {
    // SAFETY: `HelperLoops::excluded` passes a live `ExclusionScan` whose key outlives the loop.
    let scan = unsafe { &mut *scan.cast::<ExclusionScan>() };
    let key = unsafe { &*scan.key };
    match EXCLUSIONS.get(index) {
        Some(rule) if exclusion_matches(rule, key) => {
            scan.matched = 1;
            1
        }
        Some(_) => 0,
        None => 1,
    }
}
