//! From the programs' timestamps (kernel jiffies) to Unix seconds.
//!
//! The programs stamp flows with `bpf_jiffies64`, which the verifier inlines into one load; a
//! clock helper would cost more than the rest of the flow update (measured: ~14 ns per packet).
//! The agent reads jiffies and the monotonic clock at the same instant by running the
//! `flowlog_clock` program with BPF_PROG_TEST_RUN, learns the tick length from two such samples,
//! and converts. Records need seconds; a tick is 1 to 10 ms.

use aya::{
    Ebpf,
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};

use super::{DatapathError, programs};

/// Jiffies and CLOCK_MONOTONIC nanoseconds read together in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSample {
    pub jiffies: u64,
    pub monotonic_ns: u64,
}

/// Tick rates a kernel can be built with (CONFIG_HZ).
const KERNEL_HZ: [u64; 4] = [100, 250, 300, 1000];
/// Assumed until two samples are far enough apart to tell the rates apart.
const DEFAULT_HZ: u64 = 250;

/// Converts jiffies to Unix seconds around one clock sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JiffiesClock {
    /// Jiffies at the sample.
    pub jiffies: u64,
    /// Unix time at the sample, in nanoseconds.
    pub unix_ns: i128,
    /// Length of one jiffy.
    pub ns_per_jiffy: u64,
}

impl JiffiesClock {
    /// The clock at `now`, with the tick length measured since `first` (the sample taken at
    /// load), and `monotonic_to_unix_ns` the offset between CLOCK_MONOTONIC and the wall clock.
    pub fn new(first: ClockSample, now: ClockSample, monotonic_to_unix_ns: i128) -> Self {
        Self {
            jiffies: now.jiffies,
            unix_ns: now.monotonic_ns as i128 + monotonic_to_unix_ns,
            ns_per_jiffy: ns_per_jiffy(first, now),
        }
    }

    /// Unix seconds at `jiffies`.
    pub fn unix_seconds(&self, jiffies: u64) -> u64 {
        let ticks = jiffies as i128 - self.jiffies as i128;
        let unix_ns = self.unix_ns + ticks * self.ns_per_jiffy as i128;
        (unix_ns.max(0) / 1_000_000_000) as u64
    }
}

/// The kernel tick rate closest to what two samples show (at least 20 ticks apart, which tells
/// 250 from 300 Hz); the default rate before that.
fn ns_per_jiffy(first: ClockSample, now: ClockSample) -> u64 {
    let ticks = now.jiffies.saturating_sub(first.jiffies);
    let hz = if ticks < 20 {
        DEFAULT_HZ
    } else {
        let measured = now.monotonic_ns.saturating_sub(first.monotonic_ns) as f64 / ticks as f64;
        KERNEL_HZ
            .into_iter()
            .min_by(|a, b| {
                let off = |hz: u64| (1e9 / hz as f64 - measured).abs();
                off(*a).total_cmp(&off(*b))
            })
            .unwrap_or(DEFAULT_HZ)
    };
    1_000_000_000 / hz
}

/// Runs the clock program once.
pub(super) fn sample(ebpf: &Ebpf) -> Result<ClockSample, DatapathError> {
    let name = programs::CLOCK;
    let error = |source| DatapathError::Program { name, source };
    let program: &Xdp = ebpf
        .program(name)
        .ok_or(ProgramError::NotLoaded)
        .map_err(error)?
        .try_into()
        .map_err(error)?;
    // XDP test runs need at least an Ethernet header's worth of input.
    let input = [0u8; 64];
    let mut output = [0u8; 64];
    program
        .test_run(TestRunOptions {
            data_in: Some(&input),
            data_out: Some(&mut output),
            ..TestRunOptions::default()
        })
        .map_err(error)?;
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&output[at..at + 8]);
        u64::from_ne_bytes(bytes)
    };
    Ok(ClockSample {
        jiffies: word(0),
        monotonic_ns: word(8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn sample(jiffies: u64, monotonic_ms: u64) -> ClockSample {
        ClockSample {
            jiffies,
            monotonic_ns: monotonic_ms * MS,
        }
    }

    #[test]
    fn the_tick_rate_is_recognised_from_two_samples() {
        for hz in KERNEL_HZ {
            let tick_ms = 1000 / hz;
            // 60 s apart, plus almost a tick of phase error.
            let first = sample(1_000, 10_000);
            let now = sample(1_000 + 60 * hz, 10_000 + 60_000 + tick_ms.saturating_sub(1));
            assert_eq!(ns_per_jiffy(first, now), 1_000_000_000 / hz, "{hz} Hz");
        }
        // 250 and 300 Hz apart after 0.1 s (25 vs 30 ticks).
        assert_eq!(
            ns_per_jiffy(sample(0, 0), sample(30, 100)),
            1_000_000_000 / 300
        );
        assert_eq!(
            ns_per_jiffy(sample(0, 0), sample(25, 100)),
            1_000_000_000 / 250
        );
        // Too close together: the default.
        assert_eq!(
            ns_per_jiffy(sample(0, 0), sample(3, 12)),
            1_000_000_000 / DEFAULT_HZ
        );
    }

    #[test]
    fn jiffies_convert_to_unix_seconds_around_the_sample() {
        let offset = 1_700_000_000_000 * MS as i128; // Unix ms at monotonic 0, in ns
        let clock = JiffiesClock::new(sample(0, 0), sample(250_000, 1_000_000), offset);
        assert_eq!(clock.ns_per_jiffy, 4 * MS);
        // The sample itself: monotonic 1000 s.
        assert_eq!(clock.unix_seconds(250_000), 1_700_000_000 + 1_000);
        // 250 ticks (1 s) earlier and 2500 ticks (10 s) later.
        assert_eq!(clock.unix_seconds(249_750), 1_700_000_000 + 999);
        assert_eq!(clock.unix_seconds(252_500), 1_700_000_000 + 1_010);
    }
}
