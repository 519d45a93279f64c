//! The validated configuration the rest of the agent trusts, and the value parsers that refuse
//! bad input at start-up, naming the offending token.
//!
//! A configuration is the settings of the one datapath (hook, map size, policy, exclusions,
//! pinning, metrics) and any number of flow logs, each with its scope, traffic type, interval,
//! format, metadata and sinks. They come from the command line, from `--config FILE`, or both:
//!
//! - without `--config`, the flags define the one flow log;
//! - with `--config`, the file defines the flow logs and the host-wide settings; host-wide flags
//!   typed on the command line override the file's `[agent]` values (`--exclude` adds to its
//!   list); flow-log flags typed as well define one more flow log, named `cli`, and need
//!   `--sink`.

pub mod file;

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{
    cli::{MetadataArgs, OnExit, RunArgs, TrafficType},
    datapath::{HookChoice, TcModeChoice},
    format::RecordFormat,
    interfaces::{InterfaceSelector, SelectorError},
    policy::{Exclusion, Policy, PolicyError},
    record::Metadata,
    sink::{
        SinkSpec, check_duplicate_sinks, default_sinks,
        object::{ArchiveOptions, KeyLayout, ObjectUrl, derived_flow_log_id},
    },
};

pub use file::{AgentSettings, ConfigFile, FileError};

pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);

/// The name of the flow log the command-line flags define.
pub const CLI_FLOW_LOG: &str = "cli";

/// Everything `run` needs, checked.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub hook: HookChoice,
    pub tc_mode: TcModeChoice,
    pub max_flows: u32,
    /// The policy file and what it held at start-up (SIGHUP reads the file again).
    pub policy: Option<(PathBuf, Policy)>,
    /// Defaults first, unless turned off, then the file's and the flags' exclusions.
    pub exclusions: Vec<Exclusion>,
    /// Where maps and links are pinned; `None` with `--no-pin`.
    pub pin_dir: Option<PathBuf>,
    /// Replace flowlog programs of another owner on the selected interfaces (`--take-over`).
    pub take_over: bool,
    pub on_exit: OnExit,
    /// Which of the kernel's own drops become REJECT records (`--kernel-drops`).
    pub kernel_drops: crate::kernel_drops::KernelDropsMode,
    /// Where metrics are served, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    pub flow_logs: Vec<FlowLogConfig>,
    /// The command line, kept so SIGHUP can combine it with the file again.
    pub args: RunArgs,
}

/// One flow log: which interfaces, which records, how often, in what format, to where.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowLogConfig {
    /// The id given (`--flow-log-id`, or `id` in the file); the command line's flow log may
    /// have none (object keys then derive one per sink).
    pub id: Option<String>,
    pub scope: InterfaceSelector,
    /// The scope as written: part of what identifies the flow log.
    pub scope_text: Vec<String>,
    pub traffic_type: TrafficType,
    pub interval: Duration,
    pub format: Arc<RecordFormat>,
    pub sinks: Vec<SinkSpec>,
    pub metadata: Arc<Metadata>,
    /// Options of the object-store sinks.
    pub archive: ArchiveOptions,
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
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "--{flag}: with --config, flow-log flags define one more flow log ({CLI_FLOW_LOG:?}), which needs --sink; or set it in the file"
    )]
    CliFlowLogWithoutSink { flag: String },
    #[error("{0} (hint: {hint})", hint = .0.hint())]
    SharedFiles(SharedFiles),
    #[error("--sink: {0} (hint: give each destination once)")]
    DuplicateSink(String),
}

/// Two flow logs that would write the same log-stream files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "flow logs {first:?} and {second:?} would both write {sink} files named <interface>-{traffic}.log"
)]
pub struct SharedFiles {
    pub first: String,
    pub second: String,
    pub sink: String,
    pub traffic: &'static str,
}

impl SharedFiles {
    pub fn hint(&self) -> String {
        "give each flow log its own directory (or different traffic types)".to_owned()
    }
}

/// Refuses two flow logs whose log streams would be the same files.
pub fn check_shared_files<'a>(
    flow_logs: impl Iterator<Item = &'a FlowLogConfig>,
) -> Result<(), SharedFiles> {
    let mut seen: Vec<(PathBuf, &'static str, &str, usize)> = Vec::new();
    for (index, flow_log) in flow_logs.enumerate() {
        for sink in &flow_log.sinks {
            let (SinkSpec::LogStreams(dir) | SinkSpec::JsonLogStreams(_, dir)) = sink else {
                continue;
            };
            let traffic = flow_log.traffic_type.file_name_part();
            // Within one flow log that is a duplicate sink, refused as such.
            if let Some((_, _, first, _)) = seen
                .iter()
                .find(|(d, t, _, i)| d == dir && *t == traffic && *i != index)
            {
                return Err(SharedFiles {
                    first: (*first).to_owned(),
                    second: flow_log.name().to_owned(),
                    sink: sink.to_string(),
                    traffic,
                });
            }
            seen.push((dir.clone(), traffic, flow_log.name(), index));
        }
    }
    Ok(())
}

/// The ids of the flags that describe the command line's flow log (clap's argument ids).
const FLOW_LOG_FLAGS: &[&str] = &[
    "interfaces",
    "interval",
    "format",
    "sinks",
    "traffic_type",
    "account_id",
    "region",
    "vpc_id",
    "subnet_id",
    "instance_id",
    "az_id",
    "sublocation_type",
    "sublocation_id",
    "file_format",
    "hive_partitions",
    "per_hour_partition",
    "rotate",
    "max_object_size",
    "flow_log_id",
    "spool_dir",
    "spool_max_bytes",
];

impl RunConfig {
    /// The command line, with the file it names (if any).
    pub fn from_args(args: RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(file::load(path)?),
            None => None,
        };
        Self::combine(args, file)
    }

    /// Combines the command line with a file already read (SIGHUP reads it again).
    pub fn combine(args: RunArgs, file: Option<ConfigFile>) -> Result<Self, ConfigError> {
        let (agent, mut flow_logs) = match file {
            Some(file) => (file.agent, file.flow_logs),
            None => (AgentSettings::default(), Vec::new()),
        };
        let from_file = args.config.is_some();
        // A flag typed on the command line wins; then the file; then the flag's default.
        let pick = |id: &str| !from_file || args.was_given(id);
        if !from_file || args.was_given("sinks") {
            let flow_log = cli_flow_log(&args)?;
            flow_logs.push(flow_log);
        } else if let Some(flag) = FLOW_LOG_FLAGS.iter().find(|id| args.was_given(id)) {
            return Err(ConfigError::CliFlowLogWithoutSink {
                flag: flag.replace('_', "-").replace("interfaces", "interface"),
            });
        }
        check_shared_files(flow_logs.iter()).map_err(ConfigError::SharedFiles)?;

        let policy_path = match (&args.policy, agent.policy) {
            (Some(path), _) => Some(path.clone()),
            (None, from_file) => from_file,
        };
        let policy = match policy_path {
            Some(path) => {
                let policy = Policy::load(&path)?;
                Some((path, policy))
            }
            None => None,
        };
        let default_exclusions = if args.was_given("no_default_exclusions") || !from_file {
            !args.no_default_exclusions
        } else {
            agent.default_exclusions.unwrap_or(true)
        };
        let mut exclusions = if default_exclusions {
            Exclusion::defaults()
        } else {
            Vec::new()
        };
        exclusions.extend(agent.exclude);
        exclusions.extend(args.exclusions.iter().cloned());
        Exclusion::compile(&exclusions).map_err(ConfigError::Exclusions)?;

        let pin = if pick("no_pin") {
            !args.no_pin
        } else {
            agent.pin.unwrap_or(true)
        };
        let pin_dir = match agent.pin_dir {
            Some(dir) if !pick("pin_dir") => dir,
            _ => args.pin_dir.clone(),
        };
        Ok(Self {
            hook: agent.hook.filter(|_| !pick("hook")).unwrap_or(args.hook),
            tc_mode: agent
                .tc_mode
                .filter(|_| !pick("tc_mode"))
                .unwrap_or(args.tc_mode),
            max_flows: agent
                .max_flows
                .filter(|_| !pick("max_flows"))
                .unwrap_or(args.max_flows),
            policy,
            exclusions,
            pin_dir: pin.then_some(pin_dir),
            take_over: args.take_over,
            on_exit: agent
                .on_exit
                .filter(|_| !pick("on_exit"))
                .unwrap_or(args.on_exit),
            kernel_drops: agent
                .kernel_drops
                .filter(|_| !pick("kernel_drops"))
                .unwrap_or(args.kernel_drops),
            metrics: agent
                .metrics
                .filter(|_| !pick("metrics"))
                .unwrap_or(args.metrics)
                .0,
            flow_logs,
            args,
        })
    }

    /// Files the agent reads what to log and enforce from that any local user could change
    /// (the `--config` file, the policy file), with why: warned about at start-up and by
    /// `check`.
    pub fn file_warnings(&self) -> Vec<String> {
        let files = self
            .args
            .config
            .iter()
            .chain(self.policy.as_ref().map(|(path, _)| path));
        files
            .filter_map(|path| crate::files::writable_by_others(path))
            .collect()
    }

    /// Reads the `--config` file again and combines it with the same command line (SIGHUP).
    pub fn reload(&self) -> Result<Self, ConfigError> {
        Self::from_args(self.args.clone())
    }

    /// How often the datapath is drained: the greatest common divisor of the flow logs'
    /// intervals, so every flow log's interval ends on a drain.
    pub fn tick(&self) -> Duration {
        let gcd = |mut a: u64, mut b: u64| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        let seconds = self
            .flow_logs
            .iter()
            .map(|f| f.interval.as_secs())
            .fold(0, gcd);
        Duration::from_secs(seconds.max(1))
    }

    /// Whether any flow log covers this interface (the datapath is attached to it).
    pub fn covers(&self, interface: &crate::interfaces::Interface) -> bool {
        self.flow_logs.iter().any(|f| f.scope.matches(interface))
    }
}

/// The flow log the command-line flags describe.
fn cli_flow_log(args: &RunArgs) -> Result<FlowLogConfig, ConfigError> {
    let sinks = if args.sinks.is_empty() {
        default_sinks()
    } else {
        args.sinks.clone()
    };
    check_duplicate_sinks(&sinks).map_err(|(_, message)| ConfigError::DuplicateSink(message))?;
    let flow_log = FlowLogConfig {
        id: args.archive.flow_log_id.clone(),
        scope: InterfaceSelector::parse(&args.interfaces)?,
        scope_text: args.interfaces.clone(),
        traffic_type: args.traffic_type,
        interval: args.interval,
        format: Arc::new(args.format.clone()),
        sinks,
        metadata: Arc::new(metadata(args.metadata.clone())),
        archive: args.archive.clone(),
    };
    for sink in &flow_log.sinks {
        if let SinkSpec::ObjectStore(url) = sink {
            for (value, flag) in [
                (&flow_log.metadata.account_id, "--account-id"),
                (&flow_log.metadata.region, "--region"),
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
    Ok(flow_log)
}

impl FlowLogConfig {
    /// How the flow log is named in logs, metrics and errors.
    pub fn name(&self) -> &str {
        self.id.as_deref().unwrap_or(CLI_FLOW_LOG)
    }

    /// Object keys hold the account and region: a flow log with an object sink needs both.
    pub fn object_keys_complete(&self) -> Result<(), String> {
        let needs_keys = self
            .sinks
            .iter()
            .any(|s| matches!(s, SinkSpec::ObjectStore(_)));
        let missing: Vec<&str> = [
            (&self.metadata.account_id, "account-id"),
            (&self.metadata.region, "region"),
        ]
        .into_iter()
        .filter(|(value, _)| value.is_none())
        .map(|(_, name)| name)
        .collect();
        if needs_keys && !missing.is_empty() {
            return Err(format!(
                "object keys hold the account and region (AWSLogs/<account-id>/vpcflowlogs/<region>/...): {} missing",
                missing.join(" and ")
            ));
        }
        Ok(())
    }

    /// Where an object-store sink's objects go. Without an id, one is derived from what
    /// identifies the flow log, so it survives restarts of the same configuration.
    pub fn key_layout(&self, url: &ObjectUrl) -> KeyLayout {
        let account_id = self.metadata.account_id.clone().unwrap_or_default();
        let region = self.metadata.region.clone().unwrap_or_default();
        let flow_log_id = self.archive.flow_log_id.clone().unwrap_or_else(|| {
            let format = self.format.to_string();
            let interfaces = self.scope_text.join(",");
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
        let cli = Cli::try_parse_with_sources(["flowlog-agent", "run"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match cli.command() {
            Command::Run(args) => Ok(*args),
            other => Err(format!("not run: {other:?}")),
        }
    }

    #[test]
    fn defaults_are_the_embedded_default() {
        let config = RunConfig::from_args(run_args(&[]).unwrap()).unwrap();
        let [flow_log] = &config.flow_logs[..] else {
            panic!("one flow log: {:?}", config.flow_logs)
        };
        assert_eq!(flow_log.name(), CLI_FLOW_LOG);
        assert!(flow_log.scope.is_default());
        assert_eq!(flow_log.interval, Duration::from_secs(60));
        assert_eq!(config.tick(), Duration::from_secs(60));
        assert_eq!(flow_log.format.version(), 2);
        assert_eq!(
            flow_log.sinks,
            [
                SinkSpec::LogStreams("/var/log/flowlog".into()),
                SinkSpec::Stdout
            ]
        );
        assert_eq!(config.hook, HookChoice::Auto);
        assert_eq!(flow_log.metadata.account_id, None);
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
        let flow_log = &config.flow_logs[0];
        assert!(!flow_log.scope.is_default());
        assert_eq!(flow_log.interval, Duration::from_secs(2));
        assert_eq!(flow_log.sinks, [SinkSpec::LogStreams("/tmp/x".into())]);
        assert_eq!(config.hook, HookChoice::Tc);
        assert_eq!(config.max_flows, 4096);
        assert_eq!(
            flow_log.metadata.account_id.as_deref(),
            Some("123456789010")
        );
        assert_eq!(flow_log.metadata.region.as_deref(), Some("eu-west-1"));
    }

    /// A config file in a fresh temporary directory.
    fn config_file(text: &str) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("flowlog-config-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    const FILE: &str = r#"
[agent]
hook = "xdp"
max-flows = 8192
metrics = "off"

[[flow-log]]
id = "fl-accepted"
scope = "all"
traffic-type = "ACCEPT"
interval = "10s"
sinks = ["dir:/tmp/flowlog-a"]

[[flow-log]]
id = "fl-rejected"
scope = { interfaces = ["veth*"] }
traffic-type = "REJECT"
interval = "15s"
sinks = ["dir:/tmp/flowlog-a"]
"#;

    #[test]
    fn the_file_defines_the_flow_logs_and_typed_flags_override_it() {
        let path = config_file(FILE);
        let path_text = path.to_str().unwrap();
        let config = RunConfig::from_args(run_args(&["--config", path_text]).unwrap()).unwrap();
        let names: Vec<&str> = config.flow_logs.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["fl-accepted", "fl-rejected"]);
        assert_eq!(config.hook, HookChoice::Xdp);
        assert_eq!(config.max_flows, 8192);
        assert_eq!(config.metrics, None);
        // Drained every 5 s: both intervals end on a drain.
        assert_eq!(config.tick(), Duration::from_secs(5));

        // Host-wide flags typed on the command line win over the file.
        let args = run_args(&[
            "--config",
            path_text,
            "--hook",
            "tc",
            "--metrics",
            "127.0.0.1:1",
        ]);
        let config = RunConfig::from_args(args.unwrap()).unwrap();
        assert_eq!(config.hook, HookChoice::Tc);
        assert_eq!(config.max_flows, 8192, "not typed: the file's value");
        assert_eq!(config.metrics, Some("127.0.0.1:1".parse().unwrap()));

        // Flow-log flags add one more flow log; without --sink they are refused.
        let args = run_args(&["--config", path_text, "--sink", "stdout", "-i", "lo"]);
        let config = RunConfig::from_args(args.unwrap()).unwrap();
        let names: Vec<&str> = config.flow_logs.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["fl-accepted", "fl-rejected", CLI_FLOW_LOG]);
        let error =
            RunConfig::from_args(run_args(&["--config", path_text, "--interval", "5s"]).unwrap())
                .unwrap_err()
                .to_string();
        assert!(error.starts_with("--interval: with --config"), "{error}");

        // The command line's flow log may not write the file's log streams.
        let args = run_args(&[
            "--config",
            path_text,
            "--sink",
            "dir:/tmp/flowlog-a",
            "--traffic-type",
            "accept",
        ]);
        let error = RunConfig::from_args(args.unwrap()).unwrap_err().to_string();
        assert!(
            error.contains("\"fl-accepted\" and \"cli\"") && error.contains("dir:/tmp/flowlog-a"),
            "{error}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_bad_file_reports_every_problem_with_the_path() {
        let path = config_file(
            "[agent]\nhook = \"ebpf\"\n[[flow-log]]\nid = \"fl-a\"\nscope = \"all\"\nsinks = [\"kafka://x\"]\n",
        );
        let error = RunConfig::from_args(run_args(&["--config", path.to_str().unwrap()]).unwrap())
            .unwrap_err()
            .to_string();
        let shown = path.display().to_string();
        assert!(error.contains(&format!("{shown}:2: hook")), "{error}");
        assert!(
            error.contains(&format!("{shown}:6: unknown sink \"kafka://x\"")),
            "{error}"
        );
        assert!(
            error.contains("hint: expected one of: auto, tc, xdp"),
            "{error}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn kernel_drops_comes_from_the_flag_or_the_file_and_a_bad_value_names_its_line() {
        use crate::kernel_drops::KernelDropsMode;
        let config = RunConfig::from_args(run_args(&[]).unwrap()).unwrap();
        assert_eq!(config.kernel_drops, KernelDropsMode::Refused, "the default");
        let args = run_args(&["--kernel-drops", "all"]).unwrap();
        assert_eq!(
            RunConfig::from_args(args).unwrap().kernel_drops,
            KernelDropsMode::All
        );
        let error = run_args(&["--kernel-drops", "some"]).unwrap_err();
        assert!(
            error.contains("--kernel-drops") && error.contains("some"),
            "{error}"
        );

        let path = config_file(&FILE.replace(
            "metrics = \"off\"",
            "metrics = \"off\"\nkernel-drops = \"off\"",
        ));
        let file = path.to_str().unwrap();
        let config = RunConfig::from_args(run_args(&["--config", file]).unwrap()).unwrap();
        assert_eq!(config.kernel_drops, KernelDropsMode::Off);
        let args = run_args(&["--config", file, "--kernel-drops", "refused"]).unwrap();
        assert_eq!(
            RunConfig::from_args(args).unwrap().kernel_drops,
            KernelDropsMode::Refused,
            "the flag typed wins"
        );
        std::fs::remove_file(path).unwrap();

        let path = config_file(
            "[agent]\nhook = \"tc\"\nkernel-drops = \"sometimes\"\n[[flow-log]]\nid = \"fl-a\"\nscope = \"all\"\nsinks = [\"stdout\"]\n",
        );
        let error = RunConfig::from_args(run_args(&["--config", path.to_str().unwrap()]).unwrap())
            .unwrap_err()
            .to_string();
        let shown = path.display().to_string();
        assert!(
            error.contains(&format!("{shown}:3: kernel-drops")),
            "{error}"
        );
        assert!(
            error.contains("expected one of: off, refused, all"),
            "{error}"
        );
        std::fs::remove_file(path).unwrap();
    }
}
