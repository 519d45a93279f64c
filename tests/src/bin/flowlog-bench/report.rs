//! Figures against their goals: one line as each completes, a table at the end, and the
//! conditions they were measured in.

use std::{fmt, fs, process::Command, time::Duration};

/// What a figure must reach.
#[derive(Clone, Debug)]
pub struct Goal {
    bound: Bound,
    limit: f64,
    /// How the goal reads, e.g. `<= 1.25` or `>= 1M records/s`.
    shown: String,
}

#[derive(Clone, Copy, Debug)]
enum Bound {
    AtMost,
    AtLeast,
}

impl Goal {
    pub fn at_most(limit: f64, unit: &str) -> Self {
        Self::new(Bound::AtMost, limit, unit)
    }

    pub fn at_least(limit: f64, unit: &str) -> Self {
        Self::new(Bound::AtLeast, limit, unit)
    }

    fn new(bound: Bound, limit: f64, shown: &str) -> Self {
        let sign = match bound {
            Bound::AtMost => "<=",
            Bound::AtLeast => ">=",
        };
        Self {
            bound,
            limit,
            shown: format!("{sign} {shown}"),
        }
    }

    fn met_by(&self, value: f64) -> bool {
        match self.bound {
            Bound::AtMost => value <= self.limit,
            Bound::AtLeast => value >= self.limit,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What was measured, e.g. `per-packet TC`.
    pub figure: String,
    /// The measurement as a sentence, e.g. `48 ns vs reference 41 ns = 1.17`.
    pub measured: String,
    /// The number compared with the goal, in the goal's unit.
    pub value: f64,
    pub goal: Goal,
    /// Further facts, printed indented under the figure's line.
    pub details: Vec<String>,
}

impl Outcome {
    pub fn met(&self) -> bool {
        self.goal.met_by(self.value)
    }

    fn verdict(&self) -> &'static str {
        if self.met() { "MET" } else { "MISSED" }
    }
}

/// A figure that could not be measured.
#[derive(Clone, Debug)]
struct Failure {
    figure: String,
    error: String,
}

/// A figure left out because a tool it compares with is not on this machine.
#[derive(Clone, Debug)]
struct Skipped {
    figure: String,
    why: String,
}

/// The figures of one run, printed as they come.
#[derive(Default)]
pub struct Report {
    outcomes: Vec<Outcome>,
    failures: Vec<Failure>,
    skipped: Vec<Skipped>,
}

impl Report {
    /// Prints the figure's line (and its details) at once, and keeps it for the table.
    pub fn record(&mut self, outcome: Outcome) {
        println!(
            "{}: {} (goal {}) {}",
            outcome.figure,
            outcome.measured,
            outcome.goal,
            outcome.verdict()
        );
        for detail in &outcome.details {
            println!("    {detail}");
        }
        self.outcomes.push(outcome);
    }

    pub fn failed(&mut self, figure: impl Into<String>, error: String) {
        let figure = figure.into();
        println!("{figure}: NOT MEASURED: {error}");
        self.failures.push(Failure { figure, error });
    }

    /// One line for a figure left out on purpose (a comparison tool missing); the run still
    /// counts as measured.
    pub fn skipped(&mut self, figure: impl Into<String>, why: String) {
        let figure = figure.into();
        println!("{figure}: SKIPPED: {why}");
        self.skipped.push(Skipped { figure, why });
    }

    /// Every figure asked for was measured (whether or not it met its goal).
    pub fn all_measured(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn print_summary(&self, conditions: &Conditions, elapsed: Duration) {
        let mut rows: Vec<[String; 4]> = vec![[
            "figure".into(),
            "measured".into(),
            "goal".into(),
            "verdict".into(),
        ]];
        for outcome in &self.outcomes {
            rows.push([
                outcome.figure.clone(),
                outcome.measured.clone(),
                outcome.goal.to_string(),
                outcome.verdict().into(),
            ]);
        }
        for failure in &self.failures {
            let first_line = failure.error.lines().next().unwrap_or_default();
            rows.push([
                failure.figure.clone(),
                format!("NOT MEASURED: {first_line}"),
                "-".into(),
                "ERROR".into(),
            ]);
        }
        for skipped in &self.skipped {
            rows.push([
                skipped.figure.clone(),
                skipped.why.clone(),
                "-".into(),
                "SKIPPED".into(),
            ]);
        }
        let widths: Vec<usize> = (0..4)
            .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
            .collect();
        let rule: String = widths
            .iter()
            .map(|&w| "-".repeat(w))
            .collect::<Vec<_>>()
            .join("-+-");
        println!();
        println!("summary");
        for (i, row) in rows.iter().enumerate() {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, &width)| format!("{cell:<width$}"))
                .collect();
            println!("{}", cells.join(" | ").trim_end());
            if i == 0 {
                println!("{rule}");
            }
        }
        let met = self.outcomes.iter().filter(|o| o.met()).count();
        println!(
            "{met} of {} goals met; {} figure(s) not measured; {} skipped",
            self.outcomes.len(),
            self.failures.len(),
            self.skipped.len()
        );
        println!();
        println!("conditions");
        println!("  date:     {}", conditions.date);
        println!("  kernel:   {}", conditions.kernel);
        println!("  CPU:      {}", conditions.cpu_model);
        println!("  nproc:    {}", conditions.nproc);
        println!(
            "  load:     {} at start, {} at end (1/5/15 min)",
            conditions.load_at_start,
            load_average()
        );
        println!("  mode:     {}", conditions.mode);
        println!("  duration: {:.0} s", elapsed.as_secs_f64());
    }
}

/// The machine and moment of a run, printed under the table.
pub struct Conditions {
    date: String,
    kernel: String,
    cpu_model: String,
    nproc: usize,
    load_at_start: String,
    mode: &'static str,
}

impl Conditions {
    pub fn now(quick: bool) -> Self {
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
        Self {
            date,
            kernel,
            cpu_model,
            nproc,
            load_at_start: load_average(),
            mode: if quick {
                "--quick (smoke run: fewer rounds, smaller N)"
            } else {
                "full"
            },
        }
    }
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_compare_inclusively() {
        assert!(Goal::at_most(1.25, "1.25").met_by(1.25));
        assert!(!Goal::at_most(1.25, "1.25").met_by(1.26));
        assert!(Goal::at_least(0.97, "0.97").met_by(0.97));
        assert!(!Goal::at_least(0.97, "0.97").met_by(0.96));
        assert_eq!(
            Goal::at_least(1e6, "1M records/s").to_string(),
            ">= 1M records/s"
        );
    }

    #[test]
    fn a_skipped_figure_still_counts_as_measured() {
        let mut report = Report::default();
        report.skipped(
            "packet-rate coverage pmacct",
            "pmacctd not installed".into(),
        );
        assert!(report.all_measured());
        report.failed("rate", "no agent binary".into());
        assert!(!report.all_measured());
    }
}
