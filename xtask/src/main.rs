//! `cargo xtask`: how flowlog is built, run and tested (the alias is in `.cargo/config.toml`).
mod agent;
mod apt;
mod bench;
mod bpf_linker;
mod cmd;
mod guest;
mod initramfs;
mod kernels;
mod lint;
mod matrix;
mod run;
mod setup;
mod test;
mod test_deps;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "Build, run and test flowlog")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug, PartialEq)]
enum Task {
    /// Install what building flowlog needs and is missing: rust-src for the nightly, and
    /// bpf-linker built against the nightly's libLLVM. Changes nothing when all is there.
    Setup,
    /// Set up, build the agent (release) and run `flowlog-agent run ARGS...` in the foreground.
    Run {
        /// Arguments for `flowlog-agent run`, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build the agent, and run every test in release mode (integration tests one at a
    /// time, with FLOWLOG_AGENT_BIN set to the built agent), then the kernel matrix: the
    /// privileged tests in qemu on each of Debian's kernels.
    Test {
        /// Only these, comma-separated: `host` (the machine's kernel, every test) and kernels of
        /// the matrix (5.10, 6.1, 6.12, newest). Default: all of them.
        #[arg(long, value_name = "LIST")]
        kernels: Option<String>,
        /// Arguments for every test harness, after `--` (a filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, install iperf3 if missing, build, and run the `flowlog-bench` binary.
    Bench {
        /// Arguments for flowlog-bench, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt --check, and clippy with warnings as errors (host crates and the eBPF crate).
    Lint,
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::setup(),
        Task::Run { args } => run::run(&args),
        Task::Test { kernels, args } => test::test(kernels.as_deref(), &args),
        Task::Bench { args } => bench::bench(&args),
        Task::Lint => lint::lint(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Task {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
            .unwrap()
            .task
    }

    #[test]
    fn arguments_after_the_separator_go_to_the_agent() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse(&["run", "--", "--help"]),
            Task::Run {
                args: args(&["--help"])
            }
        );
        assert_eq!(
            parse(&["run", "--", "--interface", "veth0", "--", "x"]),
            Task::Run {
                args: args(&["--interface", "veth0", "--", "x"])
            }
        );
        assert_eq!(parse(&["run"]), Task::Run { args: vec![] });
        assert_eq!(
            parse(&["test", "--", "--nocapture", "flow"]),
            Task::Test {
                kernels: None,
                args: args(&["--nocapture", "flow"])
            }
        );
        assert_eq!(
            parse(&["test", "--kernels", "5.10,host", "--", "flow"]),
            Task::Test {
                kernels: Some("5.10,host".into()),
                args: args(&["flow"])
            }
        );
        assert_eq!(
            parse(&["bench", "--", "-t", "5"]),
            Task::Bench {
                args: args(&["-t", "5"])
            }
        );
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
