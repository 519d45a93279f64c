//! Figure 9: what the agent costs a host with little traffic but many flows. The agent runs on
//! the receiving veth of the rate figure's topology with a short interval; each interval, every
//! one of N flows sends one packet (a steady trickle), so each drain finds N flows in the map.
//! Its CPU time (utime + stime of `/proc/<pid>/stat`, all threads) is read at interval
//! boundaries over several intervals, with N = 0 (the agent's own background: timers, the
//! metrics endpoint, interface watching), 10k and 100k.
//!
//! The goal is stated for the default 60 s interval: the drain, records and sink writes cost the
//! same per interval whatever its length, the background costs per second, so the share of one
//! core at 60 s is `background + (per-interval cost - background x interval) / 60 s`. The share
//! at the measured (shorter) interval is printed too: it bounds the 60 s figure from above.

use std::time::Duration;

use flowlog_agent::datapath::Hook;

use crate::{
    agent::{self, Agent},
    rate::{RECEIVER_IF, RateBench},
    report::{Goal, Outcome, Report},
    support::{Context, Result, clock_ticks_per_second, process_cpu_ticks, si, unix_now},
};

/// The share of one core the agent may take at the default 60 s interval, holding 100k flows:
/// an agent meant for every host should vanish beside the host's own work. 1% of one core is
/// 0.5% of this 2-core machine.
const GOAL_SHARE: f64 = 0.01;
const DEFAULT_INTERVAL_SECONDS: f64 = 60.0;
const LOADS: [usize; 3] = [0, 10_000, 100_000];

struct Settings {
    interval_seconds: u64,
    intervals: u64,
}

/// The agent's CPU over the intervals of one load.
struct Measured {
    flows: usize,
    /// CPU seconds per interval.
    per_interval: f64,
    /// Flows each interval's drain found, from the agent's log.
    drained: Vec<u64>,
}

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    let settings = if quick {
        Settings {
            interval_seconds: 5,
            intervals: 2,
        }
    } else {
        Settings {
            interval_seconds: 10,
            intervals: 4,
        }
    };
    agent::binary()?;
    let largest = LOADS.into_iter().max().unwrap_or(0);
    let bench = RateBench::new(largest, "idle")?;
    eprintln!(
        "idle: agent CPU per {} s interval over {} intervals, holding {:?} flows (one packet per \
         flow per interval)",
        settings.interval_seconds, settings.intervals, LOADS
    );
    let sink = format!("dir:{}", bench.dir().display());
    let interval = format!("{}s", settings.interval_seconds);
    let hook = Hook::Tc.to_string();
    let mut agent = Agent::start(
        bench.receiver_ns(),
        &[
            "--interface",
            RECEIVER_IF,
            "--hook",
            &hook,
            "--interval",
            &interval,
            "--sink",
            &sink,
            "--on-exit",
            "detach",
        ],
    )?;
    let mut measured = Vec::new();
    for flows in LOADS {
        let load = measure_load(&bench, &mut agent, &settings, flows)?;
        eprintln!(
            "idle: {} flows: {:.1} ms CPU per interval; flows drained per interval {:?}",
            si(flows as f64),
            load.per_interval * 1e3,
            load.drained
        );
        measured.push(load);
    }
    agent.stop().context("stopping the agent")?;

    let interval = settings.interval_seconds as f64;
    let background = measured[0].per_interval / interval;
    for load in measured.iter().skip(1) {
        let per_flows = (load.per_interval - background * interval).max(0.0);
        let share_default = background + per_flows / DEFAULT_INTERVAL_SECONDS;
        report.record(Outcome {
            figure: format!("idle agent CPU, {} flows", si(load.flows as f64)),
            measured: format!(
                "{:.2}% of one core at the 60 s interval ({:.1} ms per interval beyond the \
                 background)",
                share_default * 100.0,
                per_flows * 1e3
            ),
            value: share_default,
            goal: Goal::at_most(GOAL_SHARE, "1% of one core at 60 s"),
            details: vec![
                format!(
                    "measured at a {interval:.0} s interval: {:.1} ms CPU per interval = {:.2}% \
                     of one core; with no flows {:.1} ms per interval = {:.3}% (the \
                     background); flows drained per interval: {:?}",
                    load.per_interval * 1e3,
                    load.per_interval / interval * 100.0,
                    measured[0].per_interval * 1e3,
                    background * 100.0,
                    load.drained
                ),
                format!(
                    "utime + stime of /proc/<pid>/stat over {} intervals, in ticks of {} ms",
                    settings.intervals,
                    1000 / clock_ticks_per_second()
                ),
            ],
        });
    }
    Ok(())
}

/// Sends the trickle of `flows` for `settings.intervals` whole intervals and returns the agent's
/// CPU over them.
fn measure_load(
    bench: &RateBench,
    agent: &mut Agent,
    settings: &Settings,
    flows: usize,
) -> Result<Measured> {
    let interval = settings.interval_seconds;
    // Start at a boundary whose interval has been written: from there on, every interval is
    // this load's.
    let first = next_boundary(interval);
    wait_written(agent, first, interval)?;
    let before = process_cpu_ticks(agent.pid()).context("reading the agent's CPU time")?;
    for k in 0..settings.intervals {
        // Each interval's trickle goes once the previous interval is written, i.e. once the
        // agent has switched to this interval's map (a busy machine may wake it late).
        let start = first + k * interval;
        wait_written(agent, start, interval)?;
        if flows > 0 {
            let sent = bench.send_first(flows)?;
            if sent != flows as u64 {
                return Err(format!("sent {sent} of {flows} trickle packets"));
            }
        }
    }
    let last = first + settings.intervals * interval;
    wait_written(agent, last, interval)?;
    let after = process_cpu_ticks(agent.pid()).context("reading the agent's CPU time")?;
    let drained: Vec<u64> = agent
        .log()
        .iter()
        .filter(|line| line.contains("interval written"))
        .filter(|line| {
            agent::field(line, "start").is_some_and(|start| start >= first)
                && agent::field(line, "end").is_some_and(|end| end <= last)
        })
        .filter_map(|line| agent::field(line, "flows"))
        .collect();
    if drained.len() as u64 != settings.intervals || drained.iter().any(|&n| n != flows as u64) {
        return Err(format!(
            "expected {} intervals of {flows} flows, the agent logged {drained:?}",
            settings.intervals
        ));
    }
    Ok(Measured {
        flows,
        per_interval: (after - before) as f64
            / clock_ticks_per_second() as f64
            / settings.intervals as f64,
        drained,
    })
}

/// The next multiple of `interval` seconds at least one second away.
fn next_boundary(interval: u64) -> u64 {
    ((unix_now() + 1.0) / interval as f64).ceil() as u64 * interval
}

/// Waits until the agent logs that the interval ending at `end` is written.
fn wait_written(agent: &mut Agent, end: u64, interval: u64) -> Result<()> {
    let timeout =
        Duration::from_secs_f64((end as f64 - unix_now()).max(0.0) + interval as f64 + 15.0);
    agent.wait_for(
        |line| {
            line.contains("interval written") && agent::field(line, "end").is_some_and(|e| e >= end)
        },
        timeout,
    )
}
