//! `flowlog-bench`: the figures of BENCHMARKS.md, each beside its goal, measured as a ratio or
//! an absolute within one run (variants alternate, medians are kept: the machine is shared).
//!
//! ```text
//! cargo xtask bench [-- [--only per-packet|throughput|drain|memory|ipfix|policy|encoders|rate|idle]... [--quick]]
//! ```
//!
//! Exits 0 when every figure asked for was measured, whether or not it met its goal; 1 when a
//! measurement could not be made; 2 on a bad command line. Needs root (BPF, network namespaces).

mod agent;
mod drain;
mod encoders;
mod idle;
mod ipfix;
mod memory;
mod per_packet;
mod policy;
mod rate;
mod report;
mod support;
mod throughput;

use std::{process::ExitCode, time::Instant};

use report::{Conditions, Report};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Figure {
    PerPacket,
    Throughput,
    Drain,
    Memory,
    Ipfix,
    Policy,
    Encoders,
    Rate,
    Idle,
}

impl Figure {
    const ALL: [Figure; 9] = [
        Figure::PerPacket,
        Figure::Throughput,
        Figure::Drain,
        Figure::Memory,
        Figure::Ipfix,
        Figure::Policy,
        Figure::Encoders,
        Figure::Rate,
        Figure::Idle,
    ];

    fn name(self) -> &'static str {
        match self {
            Figure::PerPacket => "per-packet",
            Figure::Throughput => "throughput",
            Figure::Drain => "drain",
            Figure::Memory => "memory",
            Figure::Ipfix => "ipfix",
            Figure::Policy => "policy",
            Figure::Encoders => "encoders",
            Figure::Rate => "rate",
            Figure::Idle => "idle",
        }
    }

    fn measure(self, quick: bool, report: &mut Report) -> support::Result<()> {
        match self {
            Figure::PerPacket => per_packet::measure(quick, report),
            Figure::Throughput => throughput::measure(quick, report),
            Figure::Drain => drain::measure(quick, report),
            Figure::Memory => memory::measure(quick, report),
            Figure::Ipfix => ipfix::measure(quick, report),
            Figure::Policy => policy::measure(quick, report),
            Figure::Encoders => encoders::measure(quick, report),
            Figure::Rate => rate::measure(quick, report),
            Figure::Idle => idle::measure(quick, report),
        }
    }
}

#[derive(Debug, PartialEq)]
struct Options {
    /// In the order of [`Figure::ALL`], each once.
    figures: Vec<Figure>,
    quick: bool,
}

const USAGE: &str = "usage: flowlog-bench [--only per-packet|throughput|drain|memory|ipfix|policy|encoders|rate|idle]... [--quick]";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut only = Vec::new();
    let mut quick = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let name = args.next().ok_or("--only needs a figure")?;
                let figure = Figure::ALL
                    .into_iter()
                    .find(|figure| figure.name() == name)
                    .ok_or_else(|| format!("--only {name:?}: no such figure"))?;
                only.push(figure);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let figures = Figure::ALL
        .into_iter()
        .filter(|figure| only.is_empty() || only.contains(figure))
        .collect();
    Ok(Options { figures, quick })
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) if error.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("flowlog-bench: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    support::TempDir::sweep_stale();
    let conditions = Conditions::now(options.quick);
    let mut report = Report::default();
    for figure in &options.figures {
        if let Err(error) = figure.measure(options.quick, &mut report) {
            report.failed(figure.name(), error);
        }
    }
    report.print_summary(&conditions, started.elapsed());
    if report.all_measured() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn every_figure_by_default_and_only_the_named_ones_otherwise() {
        assert_eq!(
            parse(&[]),
            Ok(Options {
                figures: Figure::ALL.to_vec(),
                quick: false
            })
        );
        assert_eq!(
            parse(&["--only", "memory", "--quick", "--only", "per-packet"]),
            Ok(Options {
                figures: vec![Figure::PerPacket, Figure::Memory],
                quick: true
            })
        );
        assert!(parse(&["--only", "speed"]).is_err());
        assert!(parse(&["--only"]).is_err());
        assert!(parse(&["--fast"]).is_err());
    }
}
