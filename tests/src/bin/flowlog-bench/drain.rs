//! Figure 3: time to drain N active flows out of the kernel and render them as records, what
//! the agent does at the end of every interval.
//!
//! The flow map is filled by the real TC ingress program (BPF_PROG_TEST_RUN, one run per frame,
//! each frame a different flow, all on one pinned CPU), then `drain_interval`,
//! `IntervalBuilder::build` and rendering every record in the default format are timed, in wall
//! and CPU time, unpinned as in the agent (the drain reads the kernel on a second thread while
//! it sums; CPU time is the whole process's). The fill and drain repeat a few times on the same datapath (the epochs
//! alternate, as in the agent); the medians are reported.

use std::time::{Duration, Instant, SystemTime};

use ::tests::frames::FrameBuilder;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use flowlog_agent::{
    datapath::{Datapath, DatapathConfig, programs},
    format::RecordFormat,
    interval::IntervalBuilder,
    record::{Metadata, RecordKind},
    sys,
};
use flowlog_common::maps::DEFAULT_MAX_FLOWS;

use crate::{
    report::{Goal, Outcome, Report},
    support::{Context, CpuPin, Result, median, process_cpu_time, process_user_system_time, si},
};

const GOAL_RECORDS_PER_SECOND: f64 = 1e6;
/// Filling a million flows takes a few seconds; this is far beyond.
const FILL_TIMEOUT: Duration = Duration::from_secs(300);
/// Distinct source ports per source address in the generated flows.
const PORTS_PER_ADDRESS: usize = 60_000;
/// Below this much drain CPU time, the kernel/user split (sampled at the scheduler tick) means
/// little and is not printed.
const MIN_CPU_FOR_SPLIT: Duration = Duration::from_millis(80);

/// One timed drain: wall and CPU time of each step.
#[derive(Clone, Copy, Default)]
struct Timing {
    drain: Step,
    build: Step,
    render: Step,
    /// Part of the drain's wall time spent waiting for running programs (the RCU grace period).
    grace: Duration,
    /// Part of the drain's CPU time spent in the kernel (the batch lookup-and-delete calls, and
    /// page faults); the rest is merging the entries in user space.
    drain_kernel: Duration,
}

#[derive(Clone, Copy, Default)]
struct Step {
    wall: Duration,
    cpu: Duration,
}

impl Timing {
    fn wall(&self) -> Duration {
        self.drain.wall + self.build.wall + self.render.wall
    }

    fn cpu(&self) -> Duration {
        self.drain.cpu + self.build.cpu + self.render.cpu
    }
}

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    let (sizes, rounds): (&[usize], usize) = if quick {
        (&[10_000, 50_000], 1)
    } else {
        (&[10_000, 100_000, 1_000_000], 3)
    };
    for &flows in sizes {
        let (max_flows, timings) = measure_size(flows, rounds)?;
        report.record(outcome(flows, max_flows, &timings));
    }
    Ok(())
}

fn outcome(flows: usize, max_flows: u32, timings: &[Timing]) -> Outcome {
    let seconds = |pick: fn(&Timing) -> Duration| {
        median(
            &timings
                .iter()
                .map(|t| pick(t).as_secs_f64())
                .collect::<Vec<_>>(),
        )
    };
    let wall = seconds(Timing::wall);
    let cpu = seconds(Timing::cpu);
    let drain = seconds(|t| t.drain.wall);
    let drain_cpu = seconds(|t| t.drain.cpu);
    let drain_kernel = seconds(|t| t.drain_kernel);
    let grace = seconds(|t| t.grace);
    let build = seconds(|t| t.build.wall);
    let render = seconds(|t| t.render.wall);
    let rate = flows as f64 / wall;
    let share = |part: f64| 100.0 * part / wall;
    let mut details = vec![
        format!(
            "drain {:.1} ms ({:.0}%, of which {:.1} ms waiting for the RCU grace period), \
             build {:.1} ms ({:.0}%), render {:.1} ms ({:.0}%); median of {} round(s)",
            drain * 1e3,
            share(drain),
            grace * 1e3,
            build * 1e3,
            share(build),
            render * 1e3,
            share(render),
            timings.len()
        ),
        format!(
            "without the grace period: {} records/s; map capacity (--max-flows) {max_flows}",
            si(flows as f64 / (wall - grace).max(f64::MIN_POSITIVE))
        ),
    ];
    // The kernel/user split comes from tick-sampled accounting: only meaningful over many ticks.
    if drain_cpu >= MIN_CPU_FOR_SPLIT.as_secs_f64() {
        details.push(format!(
            "drain CPU {:.0} ms, about {:.0} ms of it in the kernel (batch lookup-and-delete, \
             ~{:.2} us per flow), the rest merging the entries, both threads",
            drain_cpu * 1e3,
            drain_kernel * 1e3,
            drain_kernel * 1e6 / flows as f64,
        ));
    }
    Outcome {
        figure: format!("drain {}", si(flows as f64)),
        measured: format!(
            "{:.1} ms wall, {:.1} ms CPU = {} records/s",
            wall * 1e3,
            cpu * 1e3,
            si(rate)
        ),
        value: rate,
        goal: Goal::at_least(GOAL_RECORDS_PER_SECOND, "1M records/s"),
        details,
    }
}

/// Loads a datapath sized for `flows`, then fills and drains it `rounds` times.
fn measure_size(flows: usize, rounds: usize) -> Result<(u32, Vec<Timing>)> {
    let fill_cpu = CpuPin::highest_allowed()?.cpu;
    eprintln!(
        "drain: {flows} flows filled on CPU {fill_cpu}, {rounds} round(s) of fill \
         (BPF_PROG_TEST_RUN) and drain"
    );
    // The agent's default capacity, as deployed (the drain walks every bucket, used or not),
    // or more for N beyond it, with headroom: with many CPUs the kernel counts a hash map's
    // entries per CPU and compares the total with the capacity only approximately.
    let max_flows = u32::try_from(flows + flows / 4 + 1024)
        .context("flow count")?
        .max(DEFAULT_MAX_FLOWS);
    let mut datapath =
        Datapath::load(DatapathConfig { max_flows }).context("loading the datapath")?;
    // The programs run under BPF_PROG_TEST_RUN see the loopback device: name it, as the agent
    // names its attached interfaces, so every record refers to a known interface.
    let loopback = sys::list_links()
        .context("listing interfaces")?
        .into_iter()
        .find(|link| link.loopback)
        .context("no loopback interface")?;
    let mut builder = IntervalBuilder::new(SystemTime::now());
    builder.interface_attached(loopback.ifindex, &loopback.name, None);
    let format = RecordFormat::default();
    let metadata = Metadata::default();

    let mut timings = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        {
            let _pin = CpuPin::to(fill_cpu)?;
            fill(&mut datapath, flows)?;
        }
        timings.push(drain_and_render(
            &mut datapath,
            &mut builder,
            &format,
            &metadata,
            flows,
            &loopback.name,
        )?);
    }
    Ok((max_flows, timings))
}

/// Runs the real TC ingress program once on each of `flows` different frames.
fn fill(datapath: &mut Datapath, flows: usize) -> Result<()> {
    let program: &SchedClassifier = datapath
        .ebpf_mut()
        .program(programs::TC_INGRESS)
        .context("the object has no TC ingress program")?
        .try_into()
        .context("the TC ingress program")?;
    let deadline = Instant::now() + FILL_TIMEOUT;
    for i in 0..flows {
        let frame = flow_frame(i);
        program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::default()
            })
            .context(format!("running the TC program on frame {i}"))?;
        if i % 4096 == 0 && Instant::now() > deadline {
            return Err(format!(
                "filling {flows} flows took longer than {FILL_TIMEOUT:?} ({i} done)"
            ));
        }
    }
    Ok(())
}

/// Frame `i` of a fill: UDP from 198.18.0.<i / 60000>:<1 + i % 60000> to 198.19.0.1:53, 64
/// bytes. Distinct for every `i` below 60000 * 256.
fn flow_frame(i: usize) -> Vec<u8> {
    let host = (i / PORTS_PER_ADDRESS) as u8;
    let port = (1 + i % PORTS_PER_ADDRESS) as u16;
    FrameBuilder::ipv4([198, 18, 0, host], [198, 19, 0, 1])
        .udp(port, 53)
        .payload(22)
        .build()
        .bytes
}

fn drain_and_render(
    datapath: &mut Datapath,
    builder: &mut IntervalBuilder,
    format: &RecordFormat,
    metadata: &Metadata,
    flows: usize,
    interface: &str,
) -> Result<Timing> {
    let (_, kernel_before) = process_user_system_time();
    let mut clock = Clock::start();
    let drained = datapath.drain_interval().context("draining")?;
    let drain = clock.lap();
    let drain_kernel = process_user_system_time().1.saturating_sub(kernel_before);
    let grace = drained
        .quiescent_at
        .duration_since(drained.switched_at)
        .unwrap_or_default();
    let entries = drained.entries;
    let interval = builder.build(drained);
    let build = clock.lap();
    let mut out = Vec::new();
    for record in &interval.records {
        format.render(record, metadata, &mut out);
    }
    let render = clock.lap();

    // A figure for the wrong number of records would be meaningless: check before reporting.
    let ok = interval
        .records
        .iter()
        .filter(|record| {
            matches!(record.kind, RecordKind::Flow(_)) && &*record.interface == interface
        })
        .count();
    let lines = out.iter().filter(|&&byte| byte == b'\n').count();
    if entries != flows || interval.records.len() != flows || ok != flows || lines != flows {
        let other: Vec<String> = interval
            .records
            .iter()
            .filter(|record| !matches!(record.kind, RecordKind::Flow(_)))
            .take(3)
            .map(|record| format!("{record:?}"))
            .collect();
        return Err(format!(
            "expected {flows} OK records on {interface}; got {entries} map entries, {} records \
             ({ok} OK on {interface}), {lines} lines; other records: {other:?}",
            interval.records.len()
        ));
    }
    Ok(Timing {
        drain,
        build,
        render,
        grace,
        drain_kernel,
    })
}

/// Wall and process CPU time since the last lap.
struct Clock {
    wall: Instant,
    cpu: Duration,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_time(),
        }
    }

    fn lap(&mut self) -> Step {
        let now = Self::start();
        let step = Step {
            wall: now.wall - self.wall,
            cpu: now.cpu.saturating_sub(self.cpu),
        };
        *self = now;
        step
    }
}
