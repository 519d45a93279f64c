//! The `flowlog-agent` binary: parse the command line, set up logging, run.

use std::{io::IsTerminal, process::ExitCode};

use flowlog_agent::{
    agent,
    cli::{Cli, Command, LogFormat},
    config::RunConfig,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    let log_format = cli.log_format;
    let command = cli.command();
    // Records may go to stdout, so the agent's own log goes to stderr; colours only on a
    // terminal (journald and log files get plain text).
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
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
            let config = RunConfig::from_args(&args)?;
            for warning in config.file_warnings() {
                tracing::warn!("{warning}");
            }
            // One mode policy for every file the agent creates (files::FILE_MODE, DIR_MODE).
            flowlog_agent::sys::set_umask(flowlog_agent::files::UMASK);
            // A log stream per interface and a metrics connection each take a descriptor.
            match flowlog_agent::sys::raise_open_files_limit() {
                Ok((before, after)) if before != after => {
                    tracing::debug!(before, after, "raised the open-files limit")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let result = runtime.block_on(agent::run(*args, config));
            // A sink abandoned at the shutdown deadline may still be blocked in a write
            // (standard output nobody reads): do not wait for it.
            runtime.shutdown_timeout(std::time::Duration::from_millis(200));
            result?;
            Ok(())
        }
        Command::Check(args) => {
            let config = RunConfig::from_args(&args)?;
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
