//! The command line as typed: clap parses it, `config` validates it. Every value parser names
//! the flag and the token it refuses.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use flowlog_common::maps::DEFAULT_MAX_FLOWS;

use crate::{
    config::{parse_interval, parse_max_flows, parse_metadata_value},
    datapath::{HookChoice, TcModeChoice},
    format::{DEFAULT_FORMAT, RecordFormat},
    policy::Exclusion,
    sink::{SinkParser, SinkSpec, object::ArchiveArgs},
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
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Where the agent pins its maps and links by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/flowlog";

/// What happens to the programs when the agent stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Pinned programs stay attached and keep counting (and enforcing the policy); the next
    /// agent reports what they counted meanwhile.
    #[default]
    Keep,
    /// Detach everything and write every count before exiting.
    Detach,
}

impl Cli {
    /// Parses the command line and remembers which `run`/`check` arguments were typed (as
    /// opposed to defaulted), which is how flags and `--config` combine.
    pub fn try_parse_with_sources<I, T>(arguments: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
        let matches = <Self as CommandFactory>::command().try_get_matches_from(arguments)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if let Some((_, sub)) = matches.subcommand() {
            let given = sub
                .ids()
                .filter(|id| sub.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.as_str().to_owned())
                .collect();
            if let Some(Command::Run(args) | Command::Check(args)) = &mut cli.command {
                args.given = given;
            }
        }
        Ok(cli)
    }

    /// The command to carry out: `run` with its defaults when none is given.
    pub fn command(self) -> Command {
        self.command
            .unwrap_or_else(|| Command::Run(Box::new(RunArgs::parse_from(["run"]))))
    }
}

#[derive(Debug, Clone, Parser)]
pub struct RunArgs {
    /// Configuration file (TOML): any number of flow logs and the host-wide settings (see
    /// README). Host-wide flags given as well override the file; flow-log flags given as well
    /// define one more flow log. Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Interface name or glob to log (repeatable). Default: every non-loopback interface.
    #[arg(short = 'i', long = "interface", value_name = "NAME|GLOB")]
    pub interfaces: Vec<String>,

    /// Aggregation interval, 1s to 600s (e.g. 10s, 1m, 600s).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Record format in the AWS syntax: `${field}` tokens separated by single spaces.
    #[arg(long, value_name = "FORMAT", default_value = DEFAULT_FORMAT)]
    pub format: RecordFormat,

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
    /// runs it natively without losing receive offloads).
    #[arg(long, value_enum, default_value_t = HookChoice::Auto)]
    pub hook: HookChoice,

    /// How TC programs are attached: TCX links, clsact filters (visible to `tc filter show`),
    /// or auto (TCX when the kernel has it, Linux 6.6+).
    #[arg(long, value_enum, default_value_t = TcModeChoice::Auto)]
    pub tc_mode: TcModeChoice,

    /// Capacity of each of the two flow maps, in entries (one per flow and CPU that saw it).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FLOWS, value_parser = parse_max_flows)]
    pub max_flows: u32,

    /// Policy file (TOML): network ACL and security group enforced in the datapath (see
    /// README). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Records the flow log writes: ACCEPT, REJECT or ALL.
    #[arg(long, value_name = "TYPE", default_value = "ALL", value_parser = parse_traffic_type)]
    pub traffic_type: TrafficType,

    /// Traffic not to log, added to the defaults (repeatable): CIDR[/PROTO[:PORT]], matching
    /// either address and either port. The policy still applies to it.
    #[arg(long = "exclude", value_name = "CIDR[/PROTO[:PORT]]", value_parser = parse_exclusion)]
    pub exclusions: Vec<Exclusion>,

    /// Do not exclude DHCP, DHCPv6 and the instance metadata and time services by default.
    #[arg(long)]
    pub no_default_exclusions: bool,

    /// BPF filesystem directory for the maps and links that outlive the agent (a restart or an
    /// upgrade then loses and double-counts nothing). `/sys/fs/bpf` is mounted if needed.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,

    /// Pin nothing: the programs and their counts go with the agent.
    #[arg(long)]
    pub no_pin: bool,

    /// Replace flowlog programs this agent does not own on the selected interfaces (left by an
    /// agent with another --pin-dir, or without pins) instead of refusing to start; what they
    /// counted is discarded.
    #[arg(long)]
    pub take_over: bool,

    /// On SIGINT/SIGTERM: `keep` pinned programs attached (counting, and enforcing the policy,
    /// until the next agent), or `detach` them and write every count.
    #[arg(long, value_enum, default_value_t = OnExit::Keep)]
    pub on_exit: OnExit,

    /// Which packets the kernel itself drops become REJECT records with the kernel's reason
    /// (`netfilter-drop`, `no-socket`, ...): `refused` what the host refused (firewall rules, no
    /// socket, reverse path filter, routes; see README), `all` every drop, `off` none. Needs
    /// drop reasons (Linux 5.17+).
    #[arg(long, value_enum, default_value_t = crate::kernel_drops::KernelDropsMode::Refused)]
    pub kernel_drops: crate::kernel_drops::KernelDropsMode,

    /// Where to serve Prometheus metrics (`GET /metrics`), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9753", value_parser = parse_metrics_address)]
    pub metrics: MetricsAddress,

    #[command(flatten)]
    pub metadata: MetadataArgs,

    #[command(flatten)]
    pub archive: ArchiveArgs,

    /// The ids of the arguments given on the command line (not defaulted), filled by
    /// [`Cli::try_parse_with_sources`]: with `--config`, only these override or add to the file.
    #[arg(skip)]
    pub given: Vec<String>,
}

impl RunArgs {
    /// Whether the argument with this id (its field name) was typed on the command line.
    pub fn was_given(&self, id: &str) -> bool {
        self.given.iter().any(|given| given == id)
    }
}

/// `--metrics`: an address, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddress(pub Option<std::net::SocketAddr>);

pub fn parse_metrics_address(text: &str) -> Result<MetricsAddress, String> {
    if text == "off" {
        return Ok(MetricsAddress(None));
    }
    text.parse()
        .map(|address| MetricsAddress(Some(address)))
        .map_err(|_| format!("{text:?}: expected IP:PORT (e.g. 127.0.0.1:9753) or off"))
}

/// The records a flow log writes, as `--traffic-type` and AWS name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficType {
    Accept,
    Reject,
    All,
}

impl TrafficType {
    /// As it appears in log-stream file names (`eth0-reject.log`).
    pub fn file_name_part(self) -> &'static str {
        match self {
            TrafficType::Accept => "accept",
            TrafficType::Reject => "reject",
            TrafficType::All => "all",
        }
    }
}

pub fn parse_traffic_type(text: &str) -> Result<TrafficType, String> {
    match text.to_ascii_uppercase().as_str() {
        "ACCEPT" => Ok(TrafficType::Accept),
        "REJECT" => Ok(TrafficType::Reject),
        "ALL" => Ok(TrafficType::All),
        _ => Err(format!("{text:?}: expected ACCEPT, REJECT or ALL")),
    }
}

fn parse_exclusion(text: &str) -> Result<Exclusion, String> {
    Exclusion::parse(text)
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
}
