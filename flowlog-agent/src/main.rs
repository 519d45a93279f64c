//! The `flowlog-agent` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use flowlog_agent::{
    agent,
    cli::{Cli, Command, LogFormat},
    config::RunConfig,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::try_parse_with_sources(std::env::args_os()).unwrap_or_else(|error| error.exit());
    let log_format = cli.log_format;
    let command = cli.command();
    // Records may go to stdout, so the agent's own log goes to stderr.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_env("FLOWLOG_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        );
    match log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flowlog-agent: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
            let config = RunConfig::from_args(*args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(agent::run(config))?;
            Ok(())
        }
        Command::Check(args) => {
            let config = RunConfig::from_args(*args)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(flowlog_agent::check::check(&config));
            for finding in &report.0 {
                println!("{finding}");
            }
            if report.failed() {
                anyhow::bail!("this configuration cannot run here (see FAIL above)");
            }
            Ok(())
        }
        Command::Detach(args) => {
            let removed = flowlog_agent::datapath::remove_pins(&args.pin_dir)?;
            eprintln!(
                "flowlog-agent: removed {removed} pinned maps and links from {}",
                args.pin_dir.display()
            );
            Ok(())
        }
    }
}
