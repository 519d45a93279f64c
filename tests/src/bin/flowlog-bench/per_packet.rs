//! Figure 1: per-packet cost of the real TC and XDP programs against the reference program of
//! the same type in the same object (nothing but one per-CPU hash update per packet), with
//! BPF_PROG_TEST_RUN on one pinned CPU, real and reference alternating round by round.

use std::time::Duration;

use ::tests::frames::{CraftedFrame, FrameBuilder};
use aya::{
    Ebpf,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp},
};
use flowlog_agent::{
    datapath::{CountingProgram, Datapath, DatapathConfig, ProgramSet, programs},
    record::RecordKind,
    sys::thread_cpu_time,
};
use flowlog_common::maps::DEFAULT_MAX_FLOWS;

use crate::{
    report::{Goal, Outcome, Report},
    support::{Context, CpuPin, Result, median},
};

const GOAL_RATIO: f64 = 1.25;

/// `TC_ACT_UNSPEC` (-1) as the kernel reports it, and `XDP_PASS`.
const TC_PASS: u32 = u32::MAX;
const XDP_PASS: u32 = 2;
/// `TC_ACT_SHOT` and `XDP_DROP`.
const TC_SHOT: u32 = 2;
const XDP_DROP: u32 = 1;

pub struct Settings {
    pub rounds: usize,
    pub repeat: u32,
}

/// A program of either type, run the same way.
#[derive(Clone, Copy)]
pub enum Runnable<'a> {
    Tc(&'a SchedClassifier),
    Xdp(&'a Xdp),
}

impl Runnable<'_> {
    pub fn run(self, data: &[u8], repeat: u32) -> std::result::Result<TestRunResult, ProgramError> {
        let options = TestRunOptions {
            data_in: Some(data),
            repeat,
            ..TestRunOptions::default()
        };
        match self {
            Runnable::Tc(program) => program.test_run(options),
            Runnable::Xdp(program) => program.test_run(options),
        }
    }

    pub fn pass_verdict(self) -> u32 {
        match self {
            Runnable::Tc(_) => TC_PASS,
            Runnable::Xdp(_) => XDP_PASS,
        }
    }

    /// What the program returns for a packet a policy drops.
    pub fn drop_verdict(self) -> u32 {
        match self {
            Runnable::Tc(_) => TC_SHOT,
            Runnable::Xdp(_) => XDP_DROP,
        }
    }
}

/// Medians over the rounds, in nanoseconds per packet.
pub struct Costs {
    /// What BPF_PROG_TEST_RUN reports: the kernel's average per repeat, whole nanoseconds.
    pub kernel_ns: f64,
    /// The calling thread's CPU time over the call, per repeat: finer-grained, and a cross-check
    /// (it also includes the call's one-off set-up, negligible over the repeats).
    pub cpu_ns: f64,
}

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    let settings = if quick {
        Settings {
            rounds: 3,
            repeat: 200_000,
        }
    } else {
        Settings {
            rounds: 9,
            repeat: 1_000_000,
        }
    };
    let pin = CpuPin::highest_allowed()?;
    eprintln!(
        "per-packet: BPF_PROG_TEST_RUN on CPU {}, {} rounds x {} repeats, real and reference \
         alternating",
        pin.cpu, settings.rounds, settings.repeat
    );
    // The build this kernel calls for, and on kernels that get the `bpf_loop` build, the
    // bounded-loop build older kernels get (same machine, same reference).
    let kernels_build = ProgramSet::for_running_kernel();
    let mut builds = vec![(kernels_build, "")];
    if kernels_build != ProgramSet::BoundedLoops {
        builds.push((ProgramSet::BoundedLoops, ", bounded-loop build"));
    }
    for (build, build_label) in builds {
        measure_build(report, &settings, build, build_label)?;
    }
    Ok(())
}

fn measure_build(
    report: &mut Report,
    settings: &Settings,
    build: ProgramSet,
    build_label: &str,
) -> Result<()> {
    let mut datapath = Datapath::load_programs(
        DatapathConfig {
            max_flows: DEFAULT_MAX_FLOWS,
        },
        build,
    )
    .context("loading the datapath")?;
    let frames = [("", ipv4_udp_frame()), (" IPv6/TCP", ipv6_tcp_frame())];
    let mut real_runs = 0u64;
    {
        let ebpf: &Ebpf = datapath.ebpf_mut();
        let pairs = [
            (
                "TC",
                Runnable::Tc(program(ebpf, build.name(CountingProgram::TcIngress))?),
                Runnable::Tc(program(ebpf, programs::REFERENCE_TC)?),
                programs::REFERENCE_TC,
            ),
            (
                "XDP",
                Runnable::Xdp(program(ebpf, build.name(CountingProgram::Xdp))?),
                Runnable::Xdp(program(ebpf, programs::REFERENCE_XDP)?),
                programs::REFERENCE_XDP,
            ),
        ];
        for (frame_label, frame) in &frames {
            for (hook, real, reference, reference_name) in pairs {
                let (real_cost, reference_cost) = compare(real, reference, &frame.bytes, settings)?;
                real_runs += (settings.rounds as u64 + 1) * settings.repeat as u64;
                let ratio = real_cost.kernel_ns / reference_cost.kernel_ns;
                let cpu_ratio = real_cost.cpu_ns / reference_cost.cpu_ns;
                let mut details = vec![format!(
                    "{}-byte frame; thread CPU time per packet: {:.1} ns vs {:.1} ns = \
                     {cpu_ratio:.3}",
                    frame.frame_len(),
                    real_cost.cpu_ns,
                    reference_cost.cpu_ns
                )];
                if reference_cost.kernel_ns > real_cost.kernel_ns {
                    details.push(format!(
                        "WARNING: the reference costs more than the real program, so it is not \
                         the floor it should be and the ratio flatters the real program \
                         (`bpftool prog dump xlated name {}`)",
                        reference_name
                    ));
                }
                report.record(Outcome {
                    figure: format!("per-packet {hook}{frame_label}{build_label}"),
                    measured: format!(
                        "{:.0} ns vs reference {:.0} ns = {ratio:.3}",
                        real_cost.kernel_ns, reference_cost.kernel_ns
                    ),
                    value: ratio,
                    goal: Goal::at_most(GOAL_RATIO, &format!("{GOAL_RATIO}")),
                    details,
                });
            }
        }
    }
    check_counted(&mut datapath, frames.len(), real_runs)
}

/// A loaded program of the object, as its type.
pub fn program<'a, P>(ebpf: &'a Ebpf, name: &str) -> Result<&'a P>
where
    &'a P: TryFrom<&'a aya::programs::Program, Error = ProgramError>,
{
    ebpf.program(name)
        .context(format!("the object has no program {name}"))?
        .try_into()
        .context(format!("program {name}"))
}

/// Runs real and reference alternately (which goes first alternates too), after one warm-up
/// round, and returns the medians of each.
pub fn compare(
    real: Runnable<'_>,
    reference: Runnable<'_>,
    frame: &[u8],
    settings: &Settings,
) -> Result<(Costs, Costs)> {
    let mut real_samples = Samples::default();
    let mut reference_samples = Samples::default();
    // Round 0 warms caches and branch predictors and creates the flow entry; it is not kept.
    for round in 0..=settings.rounds {
        let order = if round % 2 == 0 {
            [(real, true), (reference, false)]
        } else {
            [(reference, false), (real, true)]
        };
        for (program, is_real) in order {
            let cpu_before = thread_cpu_time();
            let result = program
                .run(frame, settings.repeat)
                .context("BPF_PROG_TEST_RUN")?;
            let cpu = thread_cpu_time().saturating_sub(cpu_before);
            if result.return_value != program.pass_verdict() {
                return Err(format!(
                    "the program returned {:#x}, not its pass verdict {:#x}",
                    result.return_value,
                    program.pass_verdict()
                ));
            }
            if round == 0 {
                continue;
            }
            let samples = if is_real {
                &mut real_samples
            } else {
                &mut reference_samples
            };
            samples.push(result.duration, cpu, settings.repeat);
        }
    }
    Ok((real_samples.medians(), reference_samples.medians()))
}

#[derive(Default)]
struct Samples {
    kernel_ns: Vec<f64>,
    cpu_ns: Vec<f64>,
}

impl Samples {
    fn push(&mut self, kernel_average: Duration, cpu_total: Duration, repeat: u32) {
        self.kernel_ns.push(kernel_average.as_nanos() as f64);
        self.cpu_ns
            .push(cpu_total.as_nanos() as f64 / f64::from(repeat.max(1)));
    }

    fn medians(&self) -> Costs {
        Costs {
            kernel_ns: median(&self.kernel_ns),
            cpu_ns: median(&self.cpu_ns),
        }
    }
}

/// The real programs must have counted every run into one flow per frame (TC ingress and XDP see
/// a frame on the same device, the test run's loopback, in the same direction, so they share
/// its flow): otherwise they took a cheaper path (a parse error, a full map) and the figure
/// would flatter them.
fn check_counted(datapath: &mut Datapath, frames: usize, runs: u64) -> Result<()> {
    let drained = datapath
        .drain_interval()
        .context("draining the flows the real programs counted")?;
    let mut flows = 0;
    let mut packets = 0;
    let interval =
        flowlog_agent::interval::IntervalBuilder::new(drained.switched_at).build(drained);
    for record in &interval.records {
        if let RecordKind::Flow(flow) = &record.kind {
            flows += 1;
            packets += flow.packets;
        }
    }
    if flows != frames || packets != runs {
        return Err(format!(
            "the real programs counted {packets} packets in {flows} flows, expected {runs} \
             packets in {frames} flows"
        ));
    }
    Ok(())
}

/// 64 bytes: Ethernet, IPv4, UDP and 22 bytes of payload.
fn ipv4_udp_frame() -> CraftedFrame {
    let frame = FrameBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2])
        .udp(40000, 53)
        .payload(22)
        .build();
    debug_assert_eq!(frame.frame_len(), 64);
    frame
}

/// 74 bytes: Ethernet, IPv6, TCP (ACK), no payload.
fn ipv6_tcp_frame() -> CraftedFrame {
    FrameBuilder::ipv6([0xfd00, 0, 0, 0, 0, 0, 0, 1], [0xfd00, 0, 0, 0, 0, 0, 0, 2])
        .tcp(40000, 443)
        .build()
}
