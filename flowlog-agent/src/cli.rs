//! The command line as typed: the first of the configuration's two stages. Every value is an
//! `Option` (or a `Vec`, or a flag), `None` where it was not given, so "was it given" is in the
//! type; defaults are applied when `config` resolves it. Values are parsed by `values`, and
//! clap names the flag and the token it refuses.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    datapath::{HookChoice, TcModeChoice},
    format::RecordFormat,
    kernel_drops::KernelDropsMode,
    policy::Exclusion,
    sink::{SinkParser, SinkSpec, object::FileFormat},
    values::{
        self, MetricsAddress, OnExit, TrafficType, parse_byte_size, parse_interval,
        parse_max_flows, parse_metadata_value, parse_metrics_address, parse_rotate,
        parse_traffic_type,
    },
};

/// VPC Flow Logs for any Linux host: counts every IP flow of the selected interfaces in the
/// kernel and writes VPC Flow Logs records every aggregation interval.
#[derive(Debug, Parser)]
#[command(name = "flowlog-agent", version)]
pub struct Cli {
    /// The agent's own log on stderr: `text` for people, `json` (one object per line) for log
    /// pipelines.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Count flows and write records until SIGINT or SIGTERM (the default command).
    Run(Box<RunArgs>),
    /// Check whether `run` with these flags can work here (kernel, privileges, BPF filesystem,
    /// programs, interfaces, sinks), attaching nothing; exits non-zero if it cannot.
    Check(Box<RunArgs>),
    /// Detach the programs an agent left attached and remove its pinned maps (their counts not
    /// yet written are discarded).
    Detach(DetachArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DetachArgs {
    /// The pin directory the agent used.
    #[arg(long, value_name = "DIR", default_value = values::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

impl Cli {
    /// The command to carry out: `run` with its defaults when none is given.
    pub fn command(self) -> Command {
        self.command
            .unwrap_or_else(|| Command::Run(Box::new(RunArgs::parse_from(["run"]))))
    }
}

/// `run` and `check` as typed. With `--config`, the host-wide values given here override the
/// file's, and flow-log values given here define one more flow log (which needs `--sink`).
#[derive(Debug, Clone, Default, Parser)]
pub struct RunArgs {
    /// Configuration file (TOML): any number of flow logs and the host-wide settings (see
    /// README). Host-wide flags given as well override the file; flow-log flags given as well
    /// define one more flow log. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Interface name or glob to log (repeatable). Default: every non-loopback interface.
    #[arg(short = 'i', long = "interface", value_name = "NAME|GLOB")]
    pub interfaces: Vec<String>,

    /// Aggregation interval, 1s to 600s (e.g. 10s, 1m, 600s). Default: 60s.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    pub interval: Option<Duration>,

    /// Record format in the AWS syntax: `${field}` tokens separated by single spaces.
    /// Default: the version-2 format.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<RecordFormat>,

    /// Where records go (repeatable): `stdout`, `dir:PATH` (one log stream file per
    /// interface), `json:stdout` or `json:dir:PATH` (the same as JSON lines,
    /// {"message":"<record>"}; `json+fields:` for a member per field), an object store in the AWS S3 layout (`s3://BUCKET/PREFIX`,
    /// `gs://`, `az://`, `file:///PATH`), or IPFIX to a collector: `ipfix+udp://HOST:PORT` or
    /// `ipfix+tcp://HOST:PORT` (port 4739 by default; options `?domain=N&mtu=BYTES&
    /// template-refresh=60s&template-refresh-messages=100`). Default: dir:/var/log/flowlog and
    /// stdout.
    #[arg(long = "sink", value_name = "SINK", value_parser = SinkParser)]
    pub sinks: Vec<SinkSpec>,

    /// How to hook interfaces: TC, native XDP for ingress, or auto (XDP only where the driver
    /// runs it natively without losing receive offloads). Default: auto.
    #[arg(long, value_enum)]
    pub hook: Option<HookChoice>,

    /// How TC programs are attached: TCX links, clsact filters (visible to `tc filter show`),
    /// or auto (TCX when the kernel has it, Linux 6.6+). Default: auto.
    #[arg(long, value_enum)]
    pub tc_mode: Option<TcModeChoice>,

    /// Capacity of each of the two flow maps, in entries (one per flow and CPU that saw it).
    /// Default: 524288.
    #[arg(long, value_name = "N", value_parser = parse_max_flows)]
    pub max_flows: Option<u32>,

    /// Policy file (TOML): network ACL and security group enforced in the datapath (see
    /// README). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Records the flow log writes: ACCEPT, REJECT or ALL. Default: ALL.
    #[arg(long, value_name = "TYPE", value_parser = parse_traffic_type)]
    pub traffic_type: Option<TrafficType>,

    /// Traffic not to log, added to the defaults (repeatable): CIDR[/PROTO[:PORT]], matching
    /// either address and either port. The policy still applies to it.
    #[arg(long = "exclude", value_name = "CIDR[/PROTO[:PORT]]", value_parser = Exclusion::parse)]
    pub exclusions: Vec<Exclusion>,

    /// Do not exclude DHCP, DHCPv6 and the instance metadata and time services by default.
    #[arg(long)]
    pub no_default_exclusions: bool,

    /// BPF filesystem directory for the maps and links that outlive the agent (a restart or an
    /// upgrade then loses and double-counts nothing). `/sys/fs/bpf` is mounted if needed.
    /// Default: /sys/fs/bpf/flowlog.
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,

    /// Pin nothing: the programs and their counts go with the agent.
    #[arg(long)]
    pub no_pin: bool,

    /// Replace flowlog programs this agent does not own on the selected interfaces (left by an
    /// agent with another --pin-dir, or without pins) instead of refusing to start; what they
    /// counted is discarded.
    #[arg(long)]
    pub take_over: bool,

    /// On SIGINT/SIGTERM: `keep` pinned programs attached (counting, and enforcing the policy,
    /// until the next agent), or `detach` them and write every count. Default: keep.
    #[arg(long, value_enum)]
    pub on_exit: Option<OnExit>,

    /// Which packets the kernel itself drops become REJECT records with the kernel's reason
    /// (`netfilter-drop`, `no-socket`, ...): `refused` what the host refused (firewall rules, no
    /// socket, reverse path filter, routes; see README), `all` every drop, `off` none. Needs
    /// drop reasons (Linux 5.17+). Default: refused.
    #[arg(long, value_enum)]
    pub kernel_drops: Option<KernelDropsMode>,

    /// Where to serve Prometheus metrics (`GET /metrics`), or `off`. Default: 127.0.0.1:9753.
    #[arg(long, value_name = "ADDR|off", value_parser = parse_metrics_address)]
    pub metrics: Option<MetricsAddress>,

    #[command(flatten)]
    pub metadata: MetadataArgs,

    #[command(flatten)]
    pub archive: ArchiveArgs,
}

/// Values for the fields the host cannot know; each renders as `-` when not given.
#[derive(Debug, Clone, Default, Args)]
pub struct MetadataArgs {
    /// Value of the account-id field.
    #[arg(long, value_name = "ID", value_parser = parse_metadata_value)]
    pub account_id: Option<String>,
    /// Value of the region field.
    #[arg(long, value_name = "REGION", value_parser = parse_metadata_value)]
    pub region: Option<String>,
    /// Value of the vpc-id field.
    #[arg(long, value_name = "ID", value_parser = parse_metadata_value)]
    pub vpc_id: Option<String>,
    /// Value of the subnet-id field.
    #[arg(long, value_name = "ID", value_parser = parse_metadata_value)]
    pub subnet_id: Option<String>,
    /// Value of the instance-id field.
    #[arg(long, value_name = "ID", value_parser = parse_metadata_value)]
    pub instance_id: Option<String>,
    /// Value of the az-id field.
    #[arg(long, value_name = "ID", value_parser = parse_metadata_value)]
    pub az_id: Option<String>,
    /// Value of the sublocation-type field.
    #[arg(long, value_name = "TYPE", value_parser = parse_metadata_value)]
    pub sublocation_type: Option<String>,
    /// Value of the sublocation-id field.
    #[arg(long, value_name = "ID", value_parser = parse_metadata_value)]
    pub sublocation_id: Option<String>,
    /// Value of the resource-id field (version 9).
    #[arg(long, value_name = "ID", value_parser = parse_metadata_value)]
    pub resource_id: Option<String>,
    /// Value of the instance-tag field (version 11): the instance's value of the tag key you
    /// chose.
    #[arg(long, value_name = "VALUE", value_parser = parse_metadata_value)]
    pub instance_tag: Option<String>,
    /// Value of the instance-tag-2 field.
    #[arg(long, value_name = "VALUE", value_parser = parse_metadata_value)]
    pub instance_tag_2: Option<String>,
    /// Value of the interface-tag field (version 11).
    #[arg(long, value_name = "VALUE", value_parser = parse_metadata_value)]
    pub interface_tag: Option<String>,
    /// Value of the interface-tag-2 field.
    #[arg(long, value_name = "VALUE", value_parser = parse_metadata_value)]
    pub interface_tag_2: Option<String>,
    /// Value of the asg-tag field (version 11).
    #[arg(long, value_name = "VALUE", value_parser = parse_metadata_value)]
    pub asg_tag: Option<String>,
    /// Value of the asg-tag-2 field.
    #[arg(long, value_name = "VALUE", value_parser = parse_metadata_value)]
    pub asg_tag_2: Option<String>,
}

/// Options of the object-store sinks (`s3://`, `gs://`, `az://`, `file://`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ArchiveArgs {
    /// Object format: gzip text (header line, then records) or Parquet. Default: text.
    #[arg(long, value_enum)]
    pub file_format: Option<FileFormat>,

    /// Hive-compatible key prefixes (aws-account-id=.../year=.../month=...).
    #[arg(long)]
    pub hive_partitions: bool,

    /// An hourly partition below the day (`/<HH>/` or `hour=<HH>/`).
    #[arg(long)]
    pub per_hour_partition: bool,

    /// A new object every DURATION (windows aligned to the clock), 1s to 1h. Default: 5m.
    #[arg(long, value_name = "DURATION", value_parser = parse_rotate)]
    pub rotate: Option<Duration>,

    /// A new object once one reaches this size (e.g. 75MB, 64MiB, 1000000). Default: 75MB.
    #[arg(long, value_name = "BYTES", value_parser = parse_byte_size)]
    pub max_object_size: Option<u64>,

    /// The flow-log id in object names. Default: `fl-` and 17 hex digits derived from the
    /// destination, format, interfaces, account and region (stable across restarts).
    #[arg(long, value_name = "ID", value_parser = crate::sink::object::parse_flow_log_id)]
    pub flow_log_id: Option<String>,

    /// Where objects wait until the store has them (one subdirectory per sink); they survive
    /// restarts and are uploaded oldest first. Default: /var/lib/flowlog/spool.
    #[arg(long, value_name = "PATH")]
    pub spool_dir: Option<PathBuf>,

    /// Bound of each sink's spool; past it the oldest objects are dropped, counted and logged.
    /// Default: 1GiB.
    #[arg(long, value_name = "BYTES", value_parser = parse_byte_size)]
    pub spool_max_bytes: Option<u64>,
}
