//! The configuration the rest of the agent trusts: the second of its two stages.
//!
//! A configuration is the settings of the one datapath (hook, map size, policy, exclusions,
//! pinning, metrics) and any number of flow logs, each with its scope, traffic type, interval,
//! format, metadata and sinks. They are given on the command line (`cli`), in `--config FILE`
//! (`file`), or both, first as raw values (`raw`: `None` where not given), then resolved here
//! in one place for both, with the defaults of `values`:
//!
//! - without `--config`, the flags define the one flow log;
//! - with `--config`, the file defines the flow logs and the host-wide settings; host-wide flags
//!   given on the command line override the file's `[agent]` values (`--exclude` adds to its
//!   list); flow-log flags given as well define one more flow log, named `cli`, and need
//!   `--sink`.

pub mod file;
pub mod raw;

use std::{path::PathBuf, sync::Arc, time::Duration};

pub use file::{ConfigFile, FileError};
pub use raw::{RawAgent, RawArchive, RawFlowLog, Setting};

use crate::{
    cli::RunArgs,
    datapath::{HookChoice, TcModeChoice},
    format::{DEFAULT_FORMAT, RecordFormat},
    interfaces::{InterfaceSelector, SelectorError},
    kernel_drops::KernelDropsMode,
    policy::{Exclusion, Policy, PolicyError},
    record::Metadata,
    sink::{
        LineRenderer, SinkContext, SinkSpec, check_duplicate_sinks,
        object::{ArchiveOptions, KeyLayout, ObjectUrl, derived_flow_log_id},
    },
    values::{
        DEFAULT_INTERVAL, DEFAULT_MAX_FLOWS, DEFAULT_SINKS, OnExit, TrafficType, default_pin_dir,
    },
};

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
    pub kernel_drops: KernelDropsMode,
    /// Where metrics are served, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    pub flow_logs: Vec<FlowLogConfig>,
    /// The `--config` file this came from, if any (SIGHUP reads it again).
    pub config_file: Option<PathBuf>,
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
    #[error("{}", .0.as_flag())]
    FlowLog(FlowLogError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Exclusions(String),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "{flag}: with --config, flow-log flags define one more flow log ({CLI_FLOW_LOG:?}), which needs --sink; or set it in the file"
    )]
    CliFlowLogWithoutSink { flag: String },
    #[error("{0} (hint: {hint})", hint = .0.hint())]
    SharedFiles(SharedFiles),
}

/// What resolving one flow log can find wrong, told as a flag ([`FlowLogError::as_flag`]) or a
/// file key ([`FlowLogError::as_key`]) by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowLogError {
    Scope(SelectorError),
    DuplicateSink(String),
    /// Object keys hold the account and region (`AWSLogs/<account-id>/vpcflowlogs/<region>/`).
    ObjectKeyNeeds {
        sink: String,
        missing: Vec<Setting>,
    },
}

impl FlowLogError {
    /// The problem in the words of the command line.
    pub fn as_flag(&self) -> String {
        match self {
            FlowLogError::Scope(error) => error.to_string(),
            FlowLogError::DuplicateSink(message) => {
                format!(
                    "{}: {message} (hint: give each destination once)",
                    Setting::Sinks.flag()
                )
            }
            FlowLogError::ObjectKeyNeeds { sink, missing } => format!(
                "sink {sink}: object keys hold the account and region (AWSLogs/<account-id>/vpcflowlogs/<region>/...): give {}",
                missing
                    .iter()
                    .map(|s| s.flag())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        }
    }

    /// The problem in the words of the file, and the key it is about.
    pub fn as_key(&self) -> (Setting, String) {
        match self {
            FlowLogError::Scope(error) => (
                Setting::Interfaces,
                format!("{} {}", Setting::Interfaces.key(), error.describe()),
            ),
            FlowLogError::DuplicateSink(message) => (Setting::Sinks, message.clone()),
            FlowLogError::ObjectKeyNeeds { missing, .. } => (
                Setting::Sinks,
                format!(
                    "object keys hold the account and region (AWSLogs/<account-id>/vpcflowlogs/<region>/...): {} missing",
                    missing
                        .iter()
                        .map(|s| s.key())
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            ),
        }
    }
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

impl RunConfig {
    /// The command line, with the file it names (if any).
    pub fn from_args(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => Some(file::load(path)?),
            None => None,
        };
        Self::resolve(args, file)
    }

    /// Resolves the command line and a file already read: the file's values, the flags' in
    /// their place where given, the defaults where neither gives one.
    pub fn resolve(args: &RunArgs, file: Option<ConfigFile>) -> Result<Self, ConfigError> {
        let (agent, mut flow_logs) = match file {
            Some(file) => (file.agent, file.flow_logs),
            None => (RawAgent::default(), Vec::new()),
        };
        let agent = agent.overridden_by(RawAgent::from(args));
        let cli = RawFlowLog::from(args);
        if args.config.is_none() || !cli.sinks.is_empty() {
            flow_logs.push(FlowLogConfig::resolve(cli).map_err(ConfigError::FlowLog)?);
        } else if let Some(setting) = cli.first_given() {
            return Err(ConfigError::CliFlowLogWithoutSink {
                flag: setting.flag(),
            });
        }
        check_shared_files(flow_logs.iter()).map_err(ConfigError::SharedFiles)?;

        let policy = match agent.policy {
            Some(path) => {
                let policy = Policy::load(&path)?;
                Some((path, policy))
            }
            None => None,
        };
        let mut exclusions = if agent.default_exclusions.unwrap_or(true) {
            Exclusion::defaults()
        } else {
            Vec::new()
        };
        exclusions.extend(agent.exclude);
        Exclusion::compile(&exclusions).map_err(ConfigError::Exclusions)?;
        let pin_dir = agent.pin_dir.unwrap_or_else(default_pin_dir);
        Ok(Self {
            hook: agent.hook.unwrap_or_default(),
            tc_mode: agent.tc_mode.unwrap_or_default(),
            max_flows: agent.max_flows.unwrap_or(DEFAULT_MAX_FLOWS),
            policy,
            exclusions,
            pin_dir: agent.pin.unwrap_or(true).then_some(pin_dir),
            take_over: agent.take_over.unwrap_or(false),
            on_exit: agent.on_exit.unwrap_or_default(),
            kernel_drops: agent.kernel_drops.unwrap_or_default(),
            metrics: agent.metrics.unwrap_or_default().0,
            flow_logs,
            config_file: args.config.clone(),
        })
    }

    /// Files the agent reads what to log and enforce from that any local user could change
    /// (the `--config` file, the policy file), with why: warned about at start-up and by
    /// `check`.
    pub fn file_warnings(&self) -> Vec<String> {
        let files = self
            .config_file
            .iter()
            .chain(self.policy.as_ref().map(|(path, _)| path));
        files
            .filter_map(|path| crate::files::writable_by_others(path))
            .collect()
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

impl FlowLogConfig {
    /// Applies the defaults to a flow log as given and checks what needs the whole of it.
    pub fn resolve(raw: RawFlowLog) -> Result<Self, FlowLogError> {
        let sinks = if raw.sinks.is_empty() {
            DEFAULT_SINKS
                .iter()
                .map(|text| text.parse().expect("the default sinks parse"))
                .collect()
        } else {
            raw.sinks
        };
        check_duplicate_sinks(&sinks)
            .map_err(|(_, message)| FlowLogError::DuplicateSink(message))?;
        let (texts, networks): (Vec<String>, Vec<_>) = raw.cidrs.into_iter().unzip();
        let scope = InterfaceSelector::parse(&raw.interfaces)
            .map_err(FlowLogError::Scope)?
            .with_networks(networks);
        let id = raw.id;
        let archive = ArchiveOptions {
            flow_log_id: id.clone(),
            ..ArchiveOptions::from(raw.archive)
        };
        let flow_log = FlowLogConfig {
            id,
            scope,
            scope_text: raw.interfaces.into_iter().chain(texts).collect(),
            traffic_type: raw.traffic_type.unwrap_or_default(),
            interval: raw.interval.unwrap_or(DEFAULT_INTERVAL),
            format: Arc::new(
                raw.format
                    .unwrap_or_else(|| DEFAULT_FORMAT.parse().expect("the default parses")),
            ),
            sinks,
            metadata: Arc::new(raw.metadata),
            archive,
        };
        flow_log.object_keys_complete()?;
        Ok(flow_log)
    }

    /// What its sinks need of the flow log: its renderer, traffic type, object options and key
    /// layout.
    pub fn sink_context(&self) -> SinkContext {
        let this = self.clone();
        SinkContext {
            flow_log: self.name().to_owned(),
            renderer: LineRenderer::new(Arc::clone(&self.format), Arc::clone(&self.metadata)),
            traffic_type: self.traffic_type,
            archive: self.archive.clone(),
            key_layout: Box::new(move |url| this.key_layout(url)),
        }
    }

    /// How the flow log is named in logs, metrics and errors.
    pub fn name(&self) -> &str {
        self.id.as_deref().unwrap_or(CLI_FLOW_LOG)
    }

    /// Object keys hold the account and region: a flow log with an object sink needs both.
    fn object_keys_complete(&self) -> Result<(), FlowLogError> {
        let Some(SinkSpec::ObjectStore(url)) = self
            .sinks
            .iter()
            .find(|s| matches!(s, SinkSpec::ObjectStore(_)))
        else {
            return Ok(());
        };
        let missing: Vec<Setting> = [
            (&self.metadata.account_id, Setting::AccountId),
            (&self.metadata.region, Setting::Region),
        ]
        .into_iter()
        .filter(|(value, _)| value.is_none())
        .map(|(_, setting)| setting)
        .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(FlowLogError::ObjectKeyNeeds {
            sink: url.location().to_owned(),
            missing,
        })
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

impl From<RawArchive> for ArchiveOptions {
    fn from(raw: RawArchive) -> Self {
        let defaults = ArchiveOptions::default();
        ArchiveOptions {
            file_format: raw.file_format.unwrap_or(defaults.file_format),
            hive_partitions: raw.hive_partitions.unwrap_or(defaults.hive_partitions),
            per_hour_partition: raw
                .per_hour_partition
                .unwrap_or(defaults.per_hour_partition),
            rotate: raw.rotate.unwrap_or(defaults.rotate),
            max_object_size: raw.max_object_size.unwrap_or(defaults.max_object_size),
            flow_log_id: defaults.flow_log_id,
            spool_dir: raw.spool_dir.unwrap_or(defaults.spool_dir),
            spool_max_bytes: raw.spool_max_bytes.unwrap_or(defaults.spool_max_bytes),
        }
    }
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
        let config = RunConfig::from_args(&run_args(&[]).unwrap()).unwrap();
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
        let no_subcommand = RunConfig::from_args(&args).unwrap();
        assert_eq!(no_subcommand.flow_logs[0].interval, Duration::from_secs(60));
        assert_eq!(
            config.pin_dir.as_deref(),
            Some(Path::new("/sys/fs/bpf/flowlog"))
        );
        assert_eq!(config.on_exit, OnExit::Keep);
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
        let config = RunConfig::from_args(&args).unwrap();
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
        let config = RunConfig::from_args(&run_args(&["--config", path_text]).unwrap()).unwrap();
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
        let config = RunConfig::from_args(&args.unwrap()).unwrap();
        assert_eq!(config.hook, HookChoice::Tc);
        assert_eq!(config.max_flows, 8192, "not typed: the file's value");
        assert_eq!(config.metrics, Some("127.0.0.1:1".parse().unwrap()));

        // Flow-log flags add one more flow log; without --sink they are refused.
        let args = run_args(&["--config", path_text, "--sink", "stdout", "-i", "lo"]);
        let config = RunConfig::from_args(&args.unwrap()).unwrap();
        let names: Vec<&str> = config.flow_logs.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["fl-accepted", "fl-rejected", CLI_FLOW_LOG]);
        let error =
            RunConfig::from_args(&run_args(&["--config", path_text, "--interval", "5s"]).unwrap())
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
        let error = RunConfig::from_args(&args.unwrap())
            .unwrap_err()
            .to_string();
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
        let error = RunConfig::from_args(&run_args(&["--config", path.to_str().unwrap()]).unwrap())
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
        let config = RunConfig::from_args(&run_args(&[]).unwrap()).unwrap();
        assert_eq!(config.kernel_drops, KernelDropsMode::Refused, "the default");
        let args = run_args(&["--kernel-drops", "all"]).unwrap();
        assert_eq!(
            RunConfig::from_args(&args).unwrap().kernel_drops,
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
        let config = RunConfig::from_args(&run_args(&["--config", file]).unwrap()).unwrap();
        assert_eq!(config.kernel_drops, KernelDropsMode::Off);
        let args = run_args(&["--config", file, "--kernel-drops", "refused"]).unwrap();
        assert_eq!(
            RunConfig::from_args(&args).unwrap().kernel_drops,
            KernelDropsMode::Refused,
            "the flag typed wins"
        );
        std::fs::remove_file(path).unwrap();

        let path = config_file(
            "[agent]\nhook = \"tc\"\nkernel-drops = \"sometimes\"\n[[flow-log]]\nid = \"fl-a\"\nscope = \"all\"\nsinks = [\"stdout\"]\n",
        );
        let error = RunConfig::from_args(&run_args(&["--config", path.to_str().unwrap()]).unwrap())
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
