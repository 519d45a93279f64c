//! The rounds without and with the agent that give the packet rate and flowlog's exactness, and
//! the pair with few flows that tells the program's cost from the memory's.

use crate::{
    rate::{
        FLOWS, GOAL_RATE_RATIO, HOT_FLOWS,
        bench::{RateBench, Round, Sending},
        coverage::Comparison,
        ratio_below_one,
    },
    report::{Goal, Outcome, Report},
    support::{Result, median, si},
};

/// The rounds without and with the agent, with flowlog's records of each.
#[derive(Default)]
pub struct Pairs {
    pub without: Vec<Round>,
    pub with: Vec<Sending>,
    flowlog: Vec<Comparison>,
}

impl Pairs {
    pub fn run(
        &mut self,
        bench: &RateBench,
        with_agent: bool,
        cycles: u64,
        label: &str,
    ) -> Result<()> {
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

    pub fn record_rate(&self, report: &mut Report, hot: &HotPair) {
        let steady: Vec<Round> = self.with.iter().map(|s| s.steady).collect();
        let first: Vec<Round> = self.with.iter().map(|s| s.first).collect();
        let rates = |rounds: &[Round]| -> Vec<f64> {
            rounds.iter().map(Round::delivered_per_second).collect()
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
        let (with_cpu, without_cpu) = (
            median_of(&steady, Round::per_cpu_second),
            median_of(&self.without, Round::per_cpu_second),
        );
        let first_rate = median_of(&first, Round::delivered_per_second);
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
                    median_of(&self.without, Round::busy_share) * 100.0,
                    median_of(&self.without, Round::kernel_share) * 100.0
                ),
            ],
        });
    }

    pub fn record_exactness(&self, report: &mut Report) {
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
pub struct HotPair {
    without: Round,
    with: Round,
}

impl HotPair {
    pub fn run(bench: &RateBench, cycles: u64) -> Result<Self> {
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

/// The median of `value` over `rounds`.
pub fn median_of(rounds: &[Round], value: impl Fn(&Round) -> f64) -> f64 {
    median(&rounds.iter().map(value).collect::<Vec<_>>())
}
