//! The validated configuration the rest of the agent trusts, and the value parsers that refuse
//! bad input at start-up, naming the offending token.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    cli::{MetadataArgs, OnExit, RunArgs, TrafficType},
    datapath::{HookChoice, TcModeChoice},
    format::RecordFormat,
    interfaces::{InterfaceSelector, SelectorError},
    policy::{Exclusion, Policy, PolicyError},
    record::Metadata,
    sink::{
        SinkSpec, default_sinks,
        object::{ArchiveOptions, KeyLayout, ObjectUrl, derived_flow_log_id},
    },
};

pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);

/// Everything `run` needs, checked.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub interfaces: InterfaceSelector,
    pub interval: Duration,
    pub format: Arc<RecordFormat>,
    pub sinks: Vec<SinkSpec>,
    pub hook: HookChoice,
    pub tc_mode: TcModeChoice,
    pub max_flows: u32,
    pub metadata: Arc<Metadata>,
    /// Options of the object-store sinks.
    pub archive: ArchiveOptions,
    /// The `--interface` values as given: part of what identifies a flow log.
    interface_args: Vec<String>,
    /// The policy file and what it held at start-up (SIGHUP reads the file again).
    pub policy: Option<(PathBuf, Policy)>,
    pub traffic_type: TrafficType,
    /// Defaults first, unless turned off, then `--exclude`s.
    pub exclusions: Vec<Exclusion>,
    /// Where maps and links are pinned; `None` with `--no-pin`.
    pub pin_dir: Option<PathBuf>,
    pub on_exit: OnExit,
    /// Where metrics are served, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Interface(#[from] SelectorError),
    #[error(
        "sink {sink}: object keys hold the account and region (AWSLogs/<account-id>/vpcflowlogs/<region>/...): give {flag}"
    )]
    ObjectKeyNeeds { sink: String, flag: &'static str },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Exclusions(String),
}

impl RunConfig {
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        let sinks = if args.sinks.is_empty() {
            default_sinks()
        } else {
            args.sinks
        };
        for sink in &sinks {
            if let SinkSpec::ObjectStore(url) = sink {
                for (value, flag) in [
                    (&args.metadata.account_id, "--account-id"),
                    (&args.metadata.region, "--region"),
                ] {
                    if value.is_none() {
                        return Err(ConfigError::ObjectKeyNeeds {
                            sink: url.location().to_owned(),
                            flag,
                        });
                    }
                }
            }
        }
        let policy = match args.policy {
            Some(path) => {
                let policy = Policy::load(&path)?;
                Some((path, policy))
            }
            None => None,
        };
        let mut exclusions = if args.no_default_exclusions {
            Vec::new()
        } else {
            Exclusion::defaults()
        };
        exclusions.extend(args.exclusions);
        Exclusion::compile(&exclusions).map_err(ConfigError::Exclusions)?;
        Ok(Self {
            interfaces: InterfaceSelector::parse(&args.interfaces)?,
            interface_args: args.interfaces.clone(),
            archive: args.archive,
            interval: args.interval,
            format: Arc::new(args.format),
            sinks,
            hook: args.hook,
            tc_mode: args.tc_mode,
            max_flows: args.max_flows,
            metadata: Arc::new(metadata(args.metadata)),
            policy,
            traffic_type: args.traffic_type,
            exclusions,
            pin_dir: (!args.no_pin).then_some(args.pin_dir),
            on_exit: args.on_exit,
            metrics: args.metrics.0,
        })
    }
}

impl RunConfig {
    /// Where an object-store sink's objects go. The default flow-log id is derived from what
    /// identifies the flow log, so it survives restarts of the same configuration.
    pub fn key_layout(&self, url: &ObjectUrl) -> KeyLayout {
        let account_id = self.metadata.account_id.clone().unwrap_or_default();
        let region = self.metadata.region.clone().unwrap_or_default();
        let flow_log_id = self.archive.flow_log_id.clone().unwrap_or_else(|| {
            let format = self.format.to_string();
            let interfaces = self.interface_args.join(",");
            derived_flow_log_id(&[url.location(), &format, &interfaces, &account_id, &region])
        });
        KeyLayout {
            prefix: url.prefix().to_owned(),
            account_id,
            region,
            flow_log_id,
            hive_partitions: self.archive.hive_partitions,
            per_hour_partition: self.archive.per_hour_partition,
            file_format: self.archive.file_format,
        }
    }
}

fn metadata(args: MetadataArgs) -> Metadata {
    Metadata {
        account_id: args.account_id,
        vpc_id: args.vpc_id,
        subnet_id: args.subnet_id,
        instance_id: args.instance_id,
        region: args.region,
        az_id: args.az_id,
        sublocation_type: args.sublocation_type,
        sublocation_id: args.sublocation_id,
    }
}

/// A duration written as a whole number with a unit: `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: write a whole number and a unit, as in 60s or 5m")
    })?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "" => return Err(format!("{text:?} has no unit: write {text}s or {text}m")),
        other => return Err(format!("{text:?}: unknown unit {other:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(seconds))
}

/// `--interval`: 1s to 600s.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(format!("{text:?} is outside 1s..600s"));
    }
    Ok(interval)
}

/// `--max-flows`: at least 1024 entries (anything smaller is a typo), at most 2^28.
pub fn parse_max_flows(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of flow entries"))?;
    if !(1024..=1 << 28).contains(&n) {
        return Err(format!("{n} is outside 1024..268435456"));
    }
    Ok(n)
}

/// A metadata value becomes one field of a space-separated record, so it must be non-empty
/// printable ASCII without spaces.
pub fn parse_metadata_value(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("empty value (leave the flag out to write -)".to_owned());
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{text:?} contains {bad:?}: values are written into space-separated records, so only printable ASCII without spaces is allowed"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use std::path::Path;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(args: &[&str]) -> Result<RunArgs, String> {
        let cli = Cli::try_parse_from(["flowlog-agent", "run"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match cli.command() {
            Command::Run(args) => Ok(*args),
            other => Err(format!("not run: {other:?}")),
        }
    }

    #[test]
    fn defaults_are_the_embedded_default() {
        let config = RunConfig::from_args(run_args(&[]).unwrap()).unwrap();
        assert!(config.interfaces.is_default());
        assert_eq!(config.interval, Duration::from_secs(60));
        assert_eq!(config.format.version(), 2);
        assert_eq!(
            config.sinks,
            [
                SinkSpec::LogStreams("/var/log/flowlog".into()),
                SinkSpec::Stdout
            ]
        );
        assert_eq!(config.hook, HookChoice::Auto);
        assert_eq!(config.metadata.account_id, None);
        // No subcommand at all means `run` with these defaults.
        let Command::Run(args) = Cli::try_parse_from(["flowlog-agent"]).unwrap().command() else {
            panic!("no subcommand must mean run");
        };
        assert_eq!(args.interval, Duration::from_secs(60));
        assert_eq!(
            config.pin_dir.as_deref(),
            Some(Path::new("/sys/fs/bpf/flowlog"))
        );
        assert_eq!(config.on_exit, OnExit::Keep);
    }

    #[test]
    fn durations_need_a_unit_and_a_range() {
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("10m"), Ok(Duration::from_secs(600)));
        assert!(
            parse_interval("11m")
                .unwrap_err()
                .contains("outside 1s..600s")
        );
        assert!(parse_interval("0s").unwrap_err().contains("outside"));
        assert!(parse_interval("60").unwrap_err().contains("no unit"));
        assert!(
            parse_interval("1.5s")
                .unwrap_err()
                .contains("unknown unit \".5s\"")
        );
        assert!(
            parse_interval("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_token() {
        let error = run_args(&["--interval", "90x"]).unwrap_err();
        assert!(
            error.contains("--interval") && error.contains("90x"),
            "{error}"
        );
        let error = run_args(&["--format", "${version} ${srcadr}"]).unwrap_err();
        assert!(
            error.contains("--format") && error.contains("srcadr"),
            "{error}"
        );
        let error = run_args(&["--sink", "kafka://x"]).unwrap_err();
        assert!(
            error.contains("--sink") && error.contains("kafka://x"),
            "{error}"
        );
        let error = run_args(&["--max-flows", "12"]).unwrap_err();
        assert!(
            error.contains("--max-flows") && error.contains("12"),
            "{error}"
        );
        let error = run_args(&["--hook", "ebpf"]).unwrap_err();
        assert!(
            error.contains("--hook") && error.contains("ebpf"),
            "{error}"
        );
        let error = run_args(&["--account-id", "12 34"]).unwrap_err();
        assert!(
            error.contains("--account-id") && error.contains("12 34"),
            "{error}"
        );
        let error = run_args(&["--frobnicate"]).unwrap_err();
        assert!(error.contains("--frobnicate"), "{error}");
    }

    #[test]
    fn flags_reach_the_config() {
        let args = run_args(&[
            "-i",
            "eth0",
            "--interface",
            "veth*",
            "--interval",
            "2s",
            "--sink",
            "dir:/tmp/x",
            "--hook",
            "tc",
            "--max-flows",
            "4096",
            "--account-id",
            "123456789010",
            "--region",
            "eu-west-1",
        ])
        .unwrap();
        let config = RunConfig::from_args(args).unwrap();
        assert!(!config.interfaces.is_default());
        assert_eq!(config.interval, Duration::from_secs(2));
        assert_eq!(config.sinks, [SinkSpec::LogStreams("/tmp/x".into())]);
        assert_eq!(config.hook, HookChoice::Tc);
        assert_eq!(config.max_flows, 4096);
        assert_eq!(config.metadata.account_id.as_deref(), Some("123456789010"));
        assert_eq!(config.metadata.region.as_deref(), Some("eu-west-1"));
    }
}
