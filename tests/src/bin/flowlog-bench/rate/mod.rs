//! Figure 8: how many small packets a host takes with flowlog attached, and whether each is
//! counted, beside the libpcap exporters.
//!
//! A generator namespace sends 64-byte UDP frames from 100,000 flows over a veth pair, through
//! an AF_PACKET socket that bypasses the qdisc (`sender.rs`), as fast as the veth takes them, to
//! a closed port of the receiving namespace (the traffic ends in UDP's port lookup, counted as
//! `NoPorts`). The sending thread is pinned to one CPU and, since a veth delivers in the
//! sender's context, that CPU also runs the whole receive path: its speed is the host's packet
//! rate, and the other CPU is left to the agent and the exporters. One run measures, in rounds
//! of the same traffic (each flow's frame once, then `cycles` times more, measured apart):
//!
//! - rounds without and with the agent on the receiving veth (TC ingress), alternating: packets
//!   per second delivered (the receiving veth's counter), their ratio, and whether each agent's
//!   records hold exactly the packets of each flow; then one pair with 1,000 of the flows, whose
//!   flow-map entries stay in the CPU's caches, to tell the cost of the program from the cost of
//!   reaching 100k entries in memory;
//! - two rounds per libpcap exporter (softflowd, pmacct), with the agent attached as well: what
//!   each reports against what was sent, beside flowlog's records of the same packets; first
//!   with one CPU delivering, then with every CPU delivering (one sending thread each), where
//!   the exporter has to share the CPUs with the receive path;
//! - a drop round: the agent enforcing a policy whose ACL denies the traffic, every packet
//!   counted as REJECT and none reaching UDP.

mod bench;
mod counters;
mod coverage;
mod exporters;
mod flows;
mod pairs;
mod sender;

use std::fs;

use crate::{
    agent,
    report::{Goal, Outcome, Report},
    support::{Result, si},
};
pub use bench::{RECEIVER_IF, RateBench};
use bench::{Round, Sending};
use coverage::Comparison;
use exporters::Exporter;
use pairs::{HotPair, Pairs, median_of};

const GOAL_RATE_RATIO: f64 = 0.95;
const FLOWS: usize = 100_000;
/// Flows of the cache-resident pair: their entries (136 bytes each) fit in one core's L2.
const HOT_FLOWS: usize = 1_000;

struct Settings {
    /// Pairs of rounds without and with the agent.
    pairs: usize,
    /// Times each flow's frame is sent per round after the first.
    cycles: u64,
}

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    let settings = if quick {
        Settings {
            pairs: 1,
            cycles: 10,
        }
    } else {
        Settings {
            pairs: 3,
            cycles: 40,
        }
    };
    agent::binary()?;
    let mut bench = RateBench::new(FLOWS, "rate")?;
    eprintln!(
        "rate: {FLOWS} flows of 64-byte UDP frames, {} frames per round, generator on CPU {:?}; \
         {} pairs of rounds without/with the agent, one with {HOT_FLOWS} flows, then \
         softflowd and pmacct (one CPU delivering, then {}), and a drop round",
        Sending::per_flow(settings.cycles) * FLOWS as u64,
        bench.sender_cpus(),
        settings.pairs,
        bench.cpus()
    );
    // Once unmeasured, so caches and allocators are warm in every measured round.
    bench.send(1)?;

    let mut pairs = Pairs::default();
    for pair in 0..settings.pairs {
        let agent_first = pair % 2 == 1;
        for with_agent in [agent_first, !agent_first] {
            let label = format!("pair {}/{}", pair + 1, settings.pairs);
            pairs.run(&bench, with_agent, settings.cycles, &label)?;
        }
    }
    let hot = HotPair::run(&bench, settings.cycles)?;
    pairs.record_rate(report, &hot);
    pairs.record_exactness(report);

    let without = median_of(&pairs.without, Round::delivered_per_second);
    let steady: Vec<Round> = pairs.with.iter().map(|s| s.steady).collect();
    let with = median_of(&steady, Round::delivered_per_second);
    for exporter in Exporter::ALL {
        let figure = format!("packet-rate coverage {}", exporter.name());
        // A missing or failing exporter costs its own line, not the figures around it.
        if let Some(why) = exporter.missing() {
            report.skipped(figure, why);
            continue;
        }
        // One CPU delivering, as in the rounds above; then every CPU, as on a host whose NIC
        // spreads packets over its queues: the exporter shares the CPUs with the receive path.
        let mut rounds = Vec::new();
        for senders in [1, bench.cpus()] {
            bench.set_senders(senders);
            let round = exporter_round(&bench, exporter, settings.cycles);
            bench.set_senders(1);
            rounds.push(round);
        }
        match rounds.into_iter().collect::<Result<Vec<_>>>() {
            Ok(rounds) => record_exporter(report, exporter, &rounds, [without, with]),
            Err(error) => report.failed(figure, error),
        }
    }
    drop_round(&bench, report, settings.cycles, [without, with])
}

/// What one round with an exporter found.
struct ExporterRound {
    /// The CPUs that delivered the packets.
    cpus: Vec<usize>,
    rate: f64,
    theirs: Comparison,
    flowlog: Comparison,
    details: Vec<String>,
}

/// One round with the agent and `exporter` on the receiving veth, the bench's current senders
/// delivering.
fn exporter_round(bench: &RateBench, exporter: Exporter, cycles: u64) -> Result<ExporterRound> {
    let name = exporter.name();
    let cpus = bench.sender_cpus();
    let label = format!("{name}-{}", cpus.len());
    let dir = bench.dir().join(&label);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let agent = bench.start_agent(&format!("flowlog-{label}"), None)?;
    let running = exporter.start(bench.receiver_ns(), RECEIVER_IF, &dir)?;
    let sending = bench
        .send(cycles)
        .and_then(|sending| bench.send_filler(FILLER_FRAMES).map(|()| sending));
    let outcome = running.finish();
    let mut records = agent.stop()?;
    let (sending, mut outcome) = (sending?, outcome?);
    let filler = bench.flows().tuple(bench.flows().filler());
    let (filler_flowlog, filler_theirs) = (
        records.accepted.take(&filler),
        outcome.reported.take(&filler),
    );
    let per_flow = Sending::per_flow(cycles);
    let flowlog = bench.compare(&records, per_flow, false);
    let theirs = Comparison::new(bench.flows(), 0..FLOWS, per_flow, &outcome.reported);
    let rate = sending.steady.delivered_per_second();
    eprintln!(
        "rate: {name}, CPUs {cpus:?} delivering: {} packets/s; {name}: {}",
        si(rate),
        theirs.describe()
    );
    let mut details = vec![
        format!("{name}: {}", theirs.describe()),
        format!("flowlog, on the same packets: {}", flowlog.describe()),
        format!(
            "after the round, {FILLER_FRAMES} frames of another flow (not counted above; {name} \
             reported {filler_theirs} of them, flowlog {filler_flowlog}) so that libpcap hands \
             over its last ring block, which here waits for the block to fill"
        ),
    ];
    details.extend(outcome.details);
    Ok(ExporterRound {
        cpus,
        rate,
        theirs,
        flowlog,
        details,
    })
}

/// An exporter's coverage over its rounds, beside flowlog's; `rates` are the medians without
/// and with the agent alone (one CPU delivering).
fn record_exporter(
    report: &mut Report,
    exporter: Exporter,
    rounds: &[ExporterRound],
    [without, with]: [f64; 2],
) {
    let name = exporter.name();
    let delivering = |round: &ExporterRound| match round.cpus.len() {
        1 => "one CPU delivering".to_string(),
        n => format!("{n} CPUs delivering"),
    };
    let measured = rounds
        .iter()
        .map(|round| {
            format!(
                "{}: {:.4} at {} packets/s",
                delivering(round),
                round.theirs.coverage(),
                si(round.rate)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let flowlog_exact = rounds.iter().all(|round| round.flowlog.exact());
    let mut details = Vec::new();
    for round in rounds {
        details.push(format!("{} (CPUs {:?}):", delivering(round), round.cpus));
        details.extend(round.details.iter().map(|detail| format!("  {detail}")));
        if round.cpus.len() == 1 {
            details.push(format!(
                "  {} packets/s delivered with {name} and flowlog attached = {:.3} of the rate \
                 with flowlog alone, {:.3} of the rate with neither: libpcap copies every \
                 packet in the receive path, on the delivering CPU",
                si(round.rate),
                round.rate / with,
                round.rate / without
            ));
        }
    }
    report.record(Outcome {
        figure: format!("packet-rate coverage {name}"),
        measured: format!(
            "{measured}; flowlog {} in the same rounds",
            if flowlog_exact { "exact" } else { "NOT exact" }
        ),
        value: rounds
            .iter()
            .map(|round| exact_value(&round.theirs))
            .fold(1.0, f64::min),
        goal: Goal::at_least(1.0, "1 (every packet)"),
        details,
    });
}

/// Frames of the filler flow sent after an exporter's round: more than a libpcap ring block
/// holds, so the block with the round's last packets is handed to the exporter.
const FILLER_FRAMES: u64 = 20_000;

/// An ACL that denies the generated traffic (every source is in 198.19.0.0/16), enforced.
const DENY_POLICY: &str = "mode = \"enforce\"\n\n[acl]\ndefault = \"allow\"\n\n[[acl.rule]]\n\
                           number = 100\ndirection = \"ingress\"\nprotocol = \"udp\"\n\
                           cidr = \"198.19.0.0/16\"\naction = \"deny\"\n";

fn drop_round(
    bench: &RateBench,
    report: &mut Report,
    cycles: u64,
    [without, with]: [f64; 2],
) -> Result<()> {
    let policy = bench.dir().join("deny.toml");
    fs::write(&policy, DENY_POLICY).map_err(|e| format!("writing the policy: {e}"))?;
    let agent = bench.start_agent("drop", Some(&policy))?;
    let sending = bench.send(cycles);
    let records = agent.stop()?;
    let sending = sending?;
    let comparison = bench.compare(&records, Sending::per_flow(cycles), true);
    let reached_udp = sending.first.udp.no_ports + sending.steady.udp.no_ports;
    if reached_udp != 0 {
        return Err(format!(
            "{reached_udp} denied packets reached UDP in the receiving namespace"
        ));
    }
    let rate = sending.steady.delivered_per_second();
    eprintln!(
        "rate: drop round: {} packets/s; REJECT: {}",
        si(rate),
        comparison.describe()
    );
    report.record(Outcome {
        figure: "packet-rate drop test".into(),
        measured: format!(
            "{:.6} of packets counted as REJECT ({} of {}) at {} packets/s",
            comparison.coverage(),
            comparison.packets_reported,
            comparison.packets_sent,
            si(rate)
        ),
        value: exact_value(&comparison),
        goal: Goal::at_least(1.0, "1 (every packet, every flow)"),
        details: vec![
            format!("REJECT records: {}", comparison.describe()),
            format!(
                "{} packets/s delivered to the veth and dropped by the policy's ACL (TC ingress) \
                 = {:.3} of the rate without the agent (where they end in UDP's port lookup), \
                 {:.3} of the rate with the agent and no policy; UDP NoPorts +0: none got past \
                 the program",
                si(rate),
                rate / without,
                rate / with
            ),
        ],
    });
    Ok(())
}

/// 1 when exact, else the coverage kept below 1 (an over-count must not read as met).
fn exact_value(comparison: &Comparison) -> f64 {
    if comparison.exact() {
        1.0
    } else {
        ratio_below_one(comparison.packets_reported, comparison.packets_sent)
    }
}

fn ratio_below_one(counted: u64, sent: u64) -> f64 {
    (counted as f64 / sent as f64).min(0.999_999)
}
