//! Figure 4: the agent's resident memory while it writes 100k flows per interval.
//!
//! The agent runs in one namespace on a veth with a 2 s interval; a generator in the peer
//! namespace sweeps UDP datagrams over 100k distinct (destination address, port) pairs, one
//! sweep every 1.8 s, so every aligned 2 s interval holds all of them. The agent's peak (VmHWM)
//! and current (VmRSS) resident memory come from /proc, and its own log says how many flows each
//! interval really had.

use std::{
    fs,
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use ::tests::netns::in_netns;

use crate::{
    agent::{self, Agent},
    report::{Goal, Outcome, Report},
    support::{Context, Result, TempDir, VethEnd, median, si, unix_now, veth_topology},
};

const GOAL_MIB: f64 = 64.0;
const AGENT_IF: &str = "fbma0";
const GENERATOR_IF: &str = "fbmg0";
const GENERATOR_ADDR: [u8; 4] = [198, 18, 2, 1];
/// The agent's side has two addresses, so 100k destinations fit in the port space.
const AGENT_ADDRS: [[u8; 4]; 2] = [[198, 18, 2, 2], [198, 18, 2, 3]];
const PORTS_PER_ADDRESS: u16 = 50_000;
const FIRST_PORT: u16 = 10_000;
const INTERVAL_SECONDS: u64 = 2;
/// One sweep over every destination takes this long, a little less than an interval, so each
/// interval sees every destination at least once.
const SWEEP: Duration = Duration::from_millis(1800);
/// An interval must hold at least this share of the destinations to count as loaded.
const MIN_LOAD: f64 = 0.95;

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    let full_intervals: u64 = if quick { 2 } else { 4 };
    let destinations: Vec<SocketAddr> = AGENT_ADDRS
        .iter()
        .flat_map(|&address| {
            (FIRST_PORT..FIRST_PORT + PORTS_PER_ADDRESS)
                .map(move |port| SocketAddr::V4(SocketAddrV4::new(address.into(), port)))
        })
        .collect();
    // Fail before building a topology if there is no agent to run.
    agent::binary()?;
    eprintln!(
        "memory: agent with a {INTERVAL_SECONDS} s interval, {} UDP destinations swept every \
         {SWEEP:?}, {full_intervals} full intervals",
        destinations.len()
    );

    let (agent_ns, generator_ns) = veth_topology(
        VethEnd {
            ifname: AGENT_IF,
            addresses: &AGENT_ADDRS,
        },
        VethEnd {
            ifname: GENERATOR_IF,
            addresses: &[GENERATOR_ADDR],
        },
    )?;

    let sinks = TempDir::new("memory")?;
    let sink = format!("dir:{}", sinks.path().display());
    let interval = format!("{INTERVAL_SECONDS}s");
    let mut agent = Agent::start(
        &agent_ns,
        &[
            "--interface",
            AGENT_IF,
            "--hook",
            "tc",
            "--interval",
            &interval,
            "--sink",
            &sink,
        ],
    )?;

    let socket = in_netns(&generator_ns, || {
        UdpSocket::bind(SocketAddrV4::new(GENERATOR_ADDR.into(), 0))
    })
    .context("entering the generator's namespace")?
    .context("binding the generator's socket")?;
    // Resolve both neighbours before the sweep, so no datagram waits on ARP (and is dropped).
    for address in AGENT_ADDRS {
        let _ = socket.send_to(
            b"warm-up",
            SocketAddrV4::new(address.into(), FIRST_PORT - 1),
        );
    }
    thread::sleep(Duration::from_millis(200));

    // Generate from now until a little after the end of the last full interval.
    let first_boundary = (unix_now() / INTERVAL_SECONDS as f64).ceil() as u64 * INTERVAL_SECONDS;
    let last_boundary = first_boundary + full_intervals * INTERVAL_SECONDS;
    let stop_in = Duration::from_secs_f64((last_boundary as f64 - unix_now()).max(0.0) + 0.3);
    let sampled = generate(&socket, &destinations, stop_in, agent.pid())?;

    // Wait for the interval ending at the last boundary to be written, then read the memory
    // before the agent's shutdown can change it.
    agent.wait_for(
        |line| {
            line.contains("interval written")
                && agent::field(line, "end").is_some_and(|end| end >= last_boundary)
        },
        Duration::from_secs(15),
    )?;
    let memory = read_memory(agent.pid())?;
    let peak_sampled_kib = sampled.max(memory.rss_kib);

    let flows: Vec<u64> = agent
        .log()
        .iter()
        .filter(|line| line.contains("interval written"))
        .filter(|line| {
            agent::field(line, "start").is_some_and(|start| start >= first_boundary)
                && agent::field(line, "end").is_some_and(|end| end <= last_boundary)
        })
        .filter_map(|line| agent::field(line, "flows"))
        .collect();
    agent.stop().context("stopping the agent")?;

    let wanted = destinations.len() as f64;
    if flows.is_empty() {
        return Err(format!(
            "the agent logged no interval within {first_boundary}..{last_boundary}"
        ));
    }
    let loaded = flows
        .iter()
        .filter(|&&n| n as f64 >= MIN_LOAD * wanted)
        .count();
    if loaded == 0 {
        return Err(format!(
            "no interval had ~{} flows (flows per interval: {flows:?}): the generator fell short",
            si(wanted)
        ));
    }
    let hwm_mib = memory.hwm_kib as f64 / 1024.0;
    let flows_f: Vec<f64> = flows.iter().map(|&n| n as f64).collect();
    report.record(Outcome {
        figure: "agent memory".into(),
        measured: format!(
            "peak RSS (VmHWM) {hwm_mib:.1} MiB, RSS {:.1} MiB, with {} flows per interval",
            memory.rss_kib as f64 / 1024.0,
            si(median(&flows_f))
        ),
        value: hwm_mib,
        goal: Goal::at_most(GOAL_MIB, "64 MiB"),
        details: vec![format!(
            "flows in the {} full intervals: {flows:?} ({loaded} with >= {:.0}% of the {} \
             destinations); highest RSS sampled every 100 ms: {:.1} MiB",
            flows.len(),
            MIN_LOAD * 100.0,
            destinations.len(),
            peak_sampled_kib as f64 / 1024.0
        )],
    });
    Ok(())
}

/// Sends one datagram to each destination per sweep, paced evenly, for `duration`; samples the
/// agent's VmRSS meanwhile and returns the highest sample (KiB).
fn generate(
    socket: &UdpSocket,
    destinations: &[SocketAddr],
    duration: Duration,
    agent_pid: u32,
) -> Result<u64> {
    let started = Instant::now();
    let payload = [0x5a_u8; 16];
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    let mut peak_rss_kib = 0;
    let mut next_sample = started;
    // Bounded by time, and by count: never more sweeps than the duration allows.
    let sweeps = duration.as_secs_f64() / SWEEP.as_secs_f64();
    let limit = (sweeps.ceil() as u64 + 1) * destinations.len() as u64;
    while started.elapsed() < duration && sent < limit {
        let due = (started.elapsed().as_secs_f64() / SWEEP.as_secs_f64()
            * destinations.len() as f64) as u64;
        while sent < due.min(limit) {
            let destination = destinations[(sent % destinations.len() as u64) as usize];
            if socket.send_to(&payload, destination).is_err() {
                errors += 1;
            }
            sent += 1;
        }
        if Instant::now() >= next_sample {
            peak_rss_kib = peak_rss_kib.max(read_memory(agent_pid)?.rss_kib);
            next_sample += Duration::from_millis(100);
        }
        thread::sleep(Duration::from_millis(2));
    }
    let expected =
        (duration.as_secs_f64() / SWEEP.as_secs_f64() * destinations.len() as f64) as u64;
    if sent < expected * 9 / 10 {
        return Err(format!(
            "the generator sent {sent} datagrams in {duration:?}, fewer than 90% of {expected}"
        ));
    }
    if errors * 100 > sent {
        return Err(format!("{errors} of {sent} datagrams could not be sent"));
    }
    Ok(peak_rss_kib)
}

struct Memory {
    hwm_kib: u64,
    rss_kib: u64,
}

fn read_memory(pid: u32) -> Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .context(format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|number| number.trim().parse().ok())
            .with_context(|| {
                let state = status
                    .lines()
                    .find_map(|line| line.strip_prefix("State:"))
                    .unwrap_or("unknown")
                    .trim();
                format!("the agent (pid {pid}, state {state}) has no {key}: did it exit?")
            })
    };
    Ok(Memory {
        hwm_kib: kib("VmHWM:")?,
        rss_kib: kib("VmRSS:")?,
    })
}
