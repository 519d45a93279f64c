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
//! - one round per libpcap exporter (softflowd, pmacct), with the agent attached as well: what
//!   each reports against what was sent, beside flowlog's records of the same packets;
//! - a drop round: the agent enforcing a policy whose ACL denies the traffic, every packet
//!   counted as REJECT and none reaching UDP.

mod bench;
mod counters;
mod coverage;
mod exporters;
mod flows;
mod sender;

use std::fs;

use crate::{
    agent,
    report::{Goal, Outcome, Report},
    support::{CpuPin, Result, median, si},
};
pub use bench::{RECEIVER_IF, RateBench};
use bench::{Round, Sending};
use coverage::Comparison;
use exporters::Exporter;

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
    for program in ["softflowd", "softflowctl", "pmacctd", "nfcapd", "nfdump"] {
        which(program)?;
    }
    let bench = RateBench::new(FLOWS, "rate")?;
    eprintln!(
        "rate: {FLOWS} flows of 64-byte UDP frames, {} frames per round, generator on CPU {}; \
         {} pairs of rounds without/with the agent, one with {HOT_FLOWS} flows, then \
         softflowd, pmacct, and a drop round",
        Sending::per_flow(settings.cycles) * FLOWS as u64,
        CpuPin::highest_allowed()?.cpu,
        settings.pairs
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

    let without = median(
        &pairs
            .without
            .iter()
            .map(Round::delivered_per_second)
            .collect::<Vec<_>>(),
    );
    let with = median(
        &pairs
            .with
            .iter()
            .map(|s| s.steady.delivered_per_second())
            .collect::<Vec<_>>(),
    );
    for exporter in Exporter::ALL {
        exporter_round(&bench, report, exporter, settings.cycles, [without, with])?;
    }
    drop_round(&bench, report, settings.cycles, [without, with])
}

fn which(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        Ok(())
    } else {
        Err(format!(
            "{program} is not installed (`cargo xtask bench` installs softflowd, pmacct and \
             nfdump from Debian)"
        ))
    }
}

/// The rounds without and with the agent, with flowlog's records of each.
#[derive(Default)]
struct Pairs {
    without: Vec<Round>,
    with: Vec<Sending>,
    flowlog: Vec<Comparison>,
}

impl Pairs {
    fn run(&mut self, bench: &RateBench, with_agent: bool, cycles: u64, label: &str) -> Result<()> {
        if !with_agent {
            let round = bench.send(cycles)?.steady;
            eprintln!(
                "rate: {label}: without agent: {} packets/s",
                si(round.delivered_per_second())
            );
            self.without.push(round);
            return Ok(());
        }
        let agent = bench.start_agent("agent", None)?;
        let sending = bench.send(cycles);
        let records = agent.stop()?;
        let sending = sending?;
        let comparison = bench.compare(&records, Sending::per_flow(cycles), false);
        eprintln!(
            "rate: {label}: with agent: {} packets/s (first cycle {}); flowlog: {}",
            si(sending.steady.delivered_per_second()),
            si(sending.first.delivered_per_second()),
            comparison.describe()
        );
        self.with.push(sending);
        self.flowlog.push(comparison);
        Ok(())
    }

    fn record_rate(&self, report: &mut Report, hot: &HotPair) {
        let steady: Vec<Round> = self.with.iter().map(|s| s.steady).collect();
        let first: Vec<Round> = self.with.iter().map(|s| s.first).collect();
        let rates = |rounds: &[Round]| {
            rounds
                .iter()
                .map(Round::delivered_per_second)
                .collect::<Vec<_>>()
        };
        let (with_rates, without_rates) = (rates(&steady), rates(&self.without));
        let (with, without) = (median(&with_rates), median(&without_rates));
        let ratio = with / without;
        let pair_ratios: Vec<String> = with_rates
            .iter()
            .zip(&without_rates)
            .map(|(w, wo)| format!("{:.3}", w / wo))
            .collect();
        let list = |values: &[f64]| values.iter().map(|v| si(*v)).collect::<Vec<_>>().join(" ");
        let per_cpu = |rounds: &[Round]| {
            median(&rounds.iter().map(Round::per_cpu_second).collect::<Vec<_>>())
        };
        let (with_cpu, without_cpu) = (per_cpu(&steady), per_cpu(&self.without));
        let first_rate = median(&rates(&first));
        let extra_ns = |with_cpu: f64, without_cpu: f64| (1.0 / with_cpu - 1.0 / without_cpu) * 1e9;
        let refused: u64 = steady
            .iter()
            .chain(&first)
            .chain(&self.without)
            .map(|r| r.sending.tx_dropped)
            .sum();
        report.record(Outcome {
            figure: "packet rate, agent vs none".into(),
            measured: format!(
                "{} packets/s with agent vs {} without = {ratio:.3}",
                si(with),
                si(without)
            ),
            value: ratio,
            goal: Goal::at_least(GOAL_RATE_RATIO, &format!("{GOAL_RATE_RATIO}")),
            details: vec![
                format!(
                    "{FLOWS} flows; packets/s delivered (the receiving veth's rx counter over \
                     the sending time), with: {}; without: {}; ratio within each pair: {}",
                    list(&with_rates),
                    list(&without_rates),
                    pair_ratios.join(" ")
                ),
                format!(
                    "per CPU-second of the sending thread (which runs the receive path too): {} \
                     packets with agent vs {} without = {:.3}, i.e. {:.0} ns more per packet",
                    si(with_cpu),
                    si(without_cpu),
                    with_cpu / without_cpu,
                    extra_ns(with_cpu, without_cpu)
                ),
                format!(
                    "with {HOT_FLOWS} flows (their entries stay in cache): {} vs {} packets/s = \
                     {:.3}; per CPU-second {:.3}, {:.0} ns more per packet",
                    si(hot.with.delivered_per_second()),
                    si(hot.without.delivered_per_second()),
                    hot.with.delivered_per_second() / hot.without.delivered_per_second(),
                    hot.with.per_cpu_second() / hot.without.per_cpu_second(),
                    extra_ns(hot.with.per_cpu_second(), hot.without.per_cpu_second())
                ),
                format!(
                    "each agent's first cycle, where every packet creates its flow's entry (as \
                     the first packet of each flow does after every drain): {} packets/s = \
                     {:.3} of the rate without the agent",
                    si(first_rate),
                    first_rate / without
                ),
                format!(
                    "the sending thread was on a CPU {:.0}% of the time, {:.0}% of it in the \
                     kernel; the veth refused {refused} frames over all rounds (each sent again)",
                    median(
                        &self
                            .without
                            .iter()
                            .map(Round::busy_share)
                            .collect::<Vec<_>>()
                    ) * 100.0,
                    median(
                        &self
                            .without
                            .iter()
                            .map(Round::kernel_share)
                            .collect::<Vec<_>>()
                    ) * 100.0
                ),
            ],
        });
    }

    fn record_exactness(&self, report: &mut Report) {
        let exact = self.flowlog.iter().filter(|c| c.exact()).count();
        let sent: u64 = self.flowlog.iter().map(|c| c.packets_sent).sum();
        let counted: u64 = self.flowlog.iter().map(|c| c.packets_reported).sum();
        let shown = self
            .flowlog
            .iter()
            .find(|c| !c.exact())
            .or(self.flowlog.first())
            .map(Comparison::describe)
            .unwrap_or_default();
        let rounds = self.with.iter().flat_map(|s| [s.first, s.steady]);
        let received: u64 = rounds.clone().map(|r| r.received.rx_packets).sum();
        let no_ports: u64 = rounds.map(|r| r.udp.no_ports).sum();
        report.record(Outcome {
            figure: "packet-rate exactness flowlog".into(),
            measured: format!(
                "{exact} of {} rounds exact: {counted} of {sent} packets, each of the {FLOWS} \
                 flows of each round checked",
                self.flowlog.len()
            ),
            value: if exact == self.flowlog.len() {
                1.0
            } else {
                ratio_below_one(counted, sent)
            },
            goal: Goal::at_least(1.0, "1 (every packet, every flow)"),
            details: vec![
                format!("the first inexact round (else the first): {shown}"),
                format!(
                    "the kernel agrees: the receiving veth received {received} packets and UDP \
                     counted {no_ports} for the closed port in these rounds; the generator sent \
                     {sent}"
                ),
            ],
        });
    }
}

/// One pair of rounds with [`HOT_FLOWS`] flows and as many packets as the others.
struct HotPair {
    without: Round,
    with: Round,
}

impl HotPair {
    fn run(bench: &RateBench, cycles: u64) -> Result<Self> {
        let hot = 0..HOT_FLOWS;
        let hot_cycles = cycles * (FLOWS / HOT_FLOWS) as u64;
        let without = bench.round(hot.clone(), hot_cycles)?;
        let agent = bench.start_agent("hot", None)?;
        let with = bench
            .round(hot.clone(), 1)
            .and_then(|_| bench.round(hot.clone(), hot_cycles));
        let records = agent.stop()?;
        let with = with?;
        let comparison = Comparison::new(bench.flows(), hot, hot_cycles + 1, &records.accepted);
        if !comparison.exact() {
            return Err(format!(
                "with {HOT_FLOWS} flows, flowlog counted {}",
                comparison.describe()
            ));
        }
        eprintln!(
            "rate: {HOT_FLOWS} flows: without agent {} packets/s, with {}",
            si(without.delivered_per_second()),
            si(with.delivered_per_second())
        );
        Ok(Self { without, with })
    }
}

/// One round with the agent and `exporter` on the receiving veth; `rates` are the medians
/// without and with the agent alone.
fn exporter_round(
    bench: &RateBench,
    report: &mut Report,
    exporter: Exporter,
    cycles: u64,
    [without, with]: [f64; 2],
) -> Result<()> {
    let name = exporter.name();
    let dir = bench.dir().join(name);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let agent = bench.start_agent(&format!("with-{name}"), None)?;
    let running = exporter.start(bench.receiver_ns(), RECEIVER_IF, &dir)?;
    let sending = bench
        .send(cycles)
        .and_then(|sending| bench.send_filler(FILLER_FRAMES).map(|()| sending));
    let outcome = running.finish();
    let records = agent.stop()?;
    let (sending, mut outcome) = (sending?, outcome?);
    let mut records = records;
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
        "rate: {name} round: {} packets/s; {name}: {}",
        si(rate),
        theirs.describe()
    );
    let mut details = vec![
        format!("{name}: {}", theirs.describe()),
        format!("flowlog, on the same packets: {}", flowlog.describe()),
        format!(
            "{} packets/s delivered with {name} and flowlog attached = {:.3} of the rate with \
             flowlog alone, {:.3} of the rate with neither (libpcap's capture runs in the \
             receive path, on the delivering CPU)",
            si(rate),
            rate / with,
            rate / without
        ),
    ];
    details.push(format!(
        "after the round, {FILLER_FRAMES} frames of another flow (not counted above; {name} \
         reported {filler_theirs} of them, flowlog {filler_flowlog}) so that libpcap hands \
         over its last ring block: here it waits for a block to fill"
    ));
    details.extend(outcome.details);
    report.record(Outcome {
        figure: format!("packet-rate coverage {name}"),
        measured: format!(
            "{:.4} of packets ({} of {}) vs flowlog {:.6}",
            theirs.coverage(),
            theirs.packets_reported,
            theirs.packets_sent,
            flowlog.coverage()
        ),
        value: exact_value(&theirs),
        goal: Goal::at_least(1.0, "1 (every packet)"),
        details,
    });
    Ok(())
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
