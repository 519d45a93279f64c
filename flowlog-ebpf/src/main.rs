//! flowlog's kernel programs: TC ingress and egress classifiers and an XDP ingress program that
//! count every IP packet into a per-interval flow map, plus two reference programs the benchmark
//! compares them with.
//!
//! Each counting program is built twice from the same code (`loops.rs`): for kernels with the
//! `bpf_loop` helper (5.17+), and with bounded loops and no policy (`_b`, for 5.10 to 5.16).
//!
//! A packet is dropped only when a loaded policy in enforce mode rejects it (`decide.rs`); a
//! parse error is counted in the statistics map, never turned into a drop.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod counting;
#[cfg(target_arch = "bpf")]
mod decide;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod frames;
#[cfg(target_arch = "bpf")]
mod loops;
#[cfg(target_arch = "bpf")]
mod maps;

#[cfg(target_arch = "bpf")]
mod programs {
    use core::mem::MaybeUninit;

    use aya_ebpf::{
        bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
        macros::{classifier, xdp},
        programs::{TcContext, XdpContext},
    };
    use flowlog_common::flow::Direction;
    use flowlog_ebpf::{
        account::{WireCount, wire_count},
        parse::{Frame, ParseError, parse, zeroed_key},
    };

    use crate::{
        counting::{clock_sample, count_flow, count_parse_error, count_reference, jiffies},
        decide::{counted_on_fast_path, decide, policy_word},
        frames::{SkbFrame, XdpFrame},
        loops::{BoundedLoops, HelperLoops, Loops},
    };

    /// Bytes pulled into the linear area of a socket buffer whose headers sit in paged data.
    const PULL_LEN: u32 = 256;

    /// Classifier verdict for every packet: "no opinion", so later TC programs still decide.
    const TC_PASS: i32 = TC_ACT_UNSPEC;

    // Kernel program names hold at most 15 characters: the variants without `bpf_loop` are
    // suffixed `_b` (bounded loops).
    #[classifier]
    pub fn flowlog_tc_in(ctx: TcContext) -> i32 {
        tc_action(count_skb::<HelperLoops>(&ctx, Direction::Ingress))
    }

    #[classifier]
    pub fn flowlog_tc_eg(ctx: TcContext) -> i32 {
        tc_action(count_skb::<HelperLoops>(&ctx, Direction::Egress))
    }

    #[xdp]
    pub fn flowlog_xdp(ctx: XdpContext) -> u32 {
        count_xdp::<HelperLoops>(&ctx)
    }

    #[classifier]
    pub fn flowlog_tc_in_b(ctx: TcContext) -> i32 {
        tc_action(count_skb::<BoundedLoops>(&ctx, Direction::Ingress))
    }

    #[classifier]
    pub fn flowlog_tc_eg_b(ctx: TcContext) -> i32 {
        tc_action(count_skb::<BoundedLoops>(&ctx, Direction::Egress))
    }

    #[xdp]
    pub fn flowlog_xdp_b(ctx: XdpContext) -> u32 {
        count_xdp::<BoundedLoops>(&ctx)
    }

    #[inline(always)]
    fn tc_action(drop: bool) -> i32 {
        if drop { TC_ACT_SHOT } else { TC_PASS }
    }

    #[inline(always)]
    fn count_xdp<L: Loops>(ctx: &XdpContext) -> u32 {
        let frame = XdpFrame::new(ctx);
        let mut storage = MaybeUninit::uninit();
        let key = zeroed_key(&mut storage);
        match parse(&frame, false, key) {
            Ok(parsed) => {
                key.ifindex = frame.ingress_ifindex();
                key.direction = Direction::Ingress as u8;
                let now = jiffies();
                let count = wire_count(&parsed, 0, 0);
                let policy = policy_word::<L>();
                if !counted_on_fast_path(policy, key, &parsed, &count, now) {
                    let decision = decide(policy, key, &parsed, now);
                    key.verdict = decision.verdict;
                    count_flow::<L, _>(ctx, key, count, parsed.tcp_flags, now, decision.stamp);
                    if decision.drop {
                        return xdp_action::XDP_DROP;
                    }
                }
            }
            Err(error) => count_parse_error(error, frame.len()),
        }
        xdp_action::XDP_PASS
    }

    /// Counts a socket buffer seen by a TC program and returns whether the policy drops it. If
    /// its headers reach into paged data the parser cannot see, they are pulled into the linear
    /// area once and parsed again.
    ///
    /// Straight-line code, not a loop around the pull: before Linux 6.3 the verifier's control
    /// flow check refuses a back-edge that leaves a helper call ("back-edge from insn X to Y").
    #[inline(always)]
    fn count_skb<L: Loops>(ctx: &TcContext, direction: Direction) -> bool {
        // Length, interface and GSO metadata are the same before and after a pull.
        let frame = SkbFrame::new(ctx);
        let gso = frame.gso();
        let mut storage = MaybeUninit::uninit();
        let key = zeroed_key(&mut storage);
        let mut parsed = parse(&frame, gso.size != 0, key);
        if parsed == Err(ParseError::Truncated) && frame.has_paged_data() {
            if ctx.pull_data(PULL_LEN.min(frame.len() as u32)).is_err() {
                count_parse_error(ParseError::Truncated, frame.len());
                return false;
            }
            // The same packet with more of it readable: the parser takes the same path further
            // and writes again every key field it wrote the first time.
            parsed = parse(&SkbFrame::new(ctx), gso.size != 0, key);
        }
        match parsed {
            Ok(parsed) => {
                key.ifindex = frame.ifindex();
                key.direction = direction as u8;
                let count: WireCount = wire_count(&parsed, gso.size, gso.segs);
                let now = jiffies();
                let policy = policy_word::<L>();
                if counted_on_fast_path(policy, key, &parsed, &count, now) {
                    return false;
                }
                let decision = decide(policy, key, &parsed, now);
                key.verdict = decision.verdict;
                count_flow::<L, _>(ctx, key, count, parsed.tcp_flags, now, decision.stamp);
                if decision.drop {
                    crate::drops::note_own_drop(key.ifindex, count.bytes);
                }
                decision.drop
            }
            Err(error) => {
                count_parse_error(error, frame.len());
                false
            }
        }
    }

    /// Not attached anywhere: the agent runs it with BPF_PROG_TEST_RUN to read jiffies and the
    /// monotonic clock at the same instant; it writes them into the first 16 bytes of its input.
    #[xdp]
    pub fn flowlog_clock(ctx: XdpContext) -> u32 {
        let (data, data_end) = (ctx.data(), ctx.data_end());
        if data + 16 <= data_end {
            let [jiffies, monotonic_ns] = clock_sample();
            // SAFETY: the 16 bytes at `data` are in the packet (checked above); unaligned
            // writes make no alignment assumption.
            unsafe {
                (data as *mut u64).write_unaligned(jiffies);
                ((data + 8) as *mut u64).write_unaligned(monotonic_ns);
            }
        }
        xdp_action::XDP_PASS
    }

    /// Benchmark reference: nothing but one per-CPU hash update per packet.
    #[xdp]
    pub fn flowlog_ref_xdp(ctx: XdpContext) -> u32 {
        count_reference(XdpFrame::new(&ctx).len() as u64);
        xdp_action::XDP_PASS
    }

    /// Benchmark reference for the TC programs.
    #[classifier]
    pub fn flowlog_ref_tc(ctx: TcContext) -> i32 {
        count_reference(ctx.len() as u64);
        TC_PASS
    }

    /// `skb:kfree_skb`: packets the kernel drops on the agent's interfaces (`drops.rs`).
    ///
    /// Written out rather than with aya's `#[raw_tracepoint]`, whose entry takes `*mut c_void`:
    /// 6.1's verifier wants the context argument's BTF type to be the program type's context
    /// struct ("reg type unsupported for arg#0"); 6.12's accepts either.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "raw_tp/kfree_skb")]
    pub fn flowlog_kernel_drops(ctx: *mut aya_ebpf::bindings::bpf_raw_tracepoint_args) -> u32 {
        crate::drops::count_drop(&aya_ebpf::programs::RawTracePointContext::new(ctx.cast()));
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // The verifier rejects programs that can reach a panic, so this is never called.
        loop {}
    }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// On the host the crate builds (for `cargo test` of its library) but has no program to run.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
