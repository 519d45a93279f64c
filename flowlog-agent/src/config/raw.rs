//! The configuration as given: the first of its two stages. The command line (`cli::RunArgs`)
//! and the file (`file.rs`) both end up here, every value an `Option` (`None`: not given), each
//! already parsed by `values`. [`super::RunConfig::resolve`] and [`super::FlowLogConfig::resolve`]
//! apply the defaults and check the whole.

use std::path::PathBuf;

use crate::{
    cli::{ArchiveArgs, MetadataArgs, RunArgs},
    datapath::{HookChoice, TcModeChoice},
    format::RecordFormat,
    kernel_drops::KernelDropsMode,
    policy::{Exclusion, Network},
    record::Metadata,
    sink::{SinkSpec, object::FileFormat},
    values::{MetricsAddress, OnExit, TrafficType},
};

/// The host-wide settings (the one datapath, its policy and pins), as given on the command line
/// or in the file's `[agent]` table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawAgent {
    pub hook: Option<HookChoice>,
    pub tc_mode: Option<TcModeChoice>,
    pub max_flows: Option<u32>,
    pub policy: Option<PathBuf>,
    /// Added to the default exclusions (unless those are turned off).
    pub exclude: Vec<Exclusion>,
    pub default_exclusions: Option<bool>,
    pub pin: Option<bool>,
    pub pin_dir: Option<PathBuf>,
    pub take_over: Option<bool>,
    pub on_exit: Option<OnExit>,
    pub kernel_drops: Option<KernelDropsMode>,
    pub metrics: Option<MetricsAddress>,
}

impl RawAgent {
    /// These settings, with every value given in `over` in place of this one (exclusions are
    /// added): the command line over the file.
    pub fn overridden_by(self, over: RawAgent) -> RawAgent {
        let mut exclude = self.exclude;
        exclude.extend(over.exclude);
        RawAgent {
            hook: over.hook.or(self.hook),
            tc_mode: over.tc_mode.or(self.tc_mode),
            max_flows: over.max_flows.or(self.max_flows),
            policy: over.policy.or(self.policy),
            exclude,
            default_exclusions: over.default_exclusions.or(self.default_exclusions),
            pin: over.pin.or(self.pin),
            pin_dir: over.pin_dir.or(self.pin_dir),
            take_over: over.take_over.or(self.take_over),
            on_exit: over.on_exit.or(self.on_exit),
            kernel_drops: over.kernel_drops.or(self.kernel_drops),
            metrics: over.metrics.or(self.metrics),
        }
    }
}

impl From<&RunArgs> for RawAgent {
    fn from(args: &RunArgs) -> Self {
        RawAgent {
            hook: args.hook,
            tc_mode: args.tc_mode,
            max_flows: args.max_flows,
            policy: args.policy.clone(),
            exclude: args.exclusions.clone(),
            default_exclusions: args.no_default_exclusions.then_some(false),
            pin: args.no_pin.then_some(false),
            pin_dir: args.pin_dir.clone(),
            take_over: args.take_over.then_some(true),
            on_exit: args.on_exit,
            kernel_drops: args.kernel_drops,
            metrics: args.metrics,
        }
    }
}

/// One flow log as given: by the command line's flow-log flags, or by a `[[flow-log]]` table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawFlowLog {
    pub id: Option<String>,
    /// Interface names and globs of the scope.
    pub interfaces: Vec<String>,
    /// Networks of the scope, with their text.
    pub cidrs: Vec<(String, Network)>,
    pub traffic_type: Option<TrafficType>,
    pub interval: Option<std::time::Duration>,
    pub format: Option<RecordFormat>,
    pub sinks: Vec<SinkSpec>,
    pub metadata: Metadata,
    pub archive: RawArchive,
}

impl RawFlowLog {
    /// The first setting given, if any (with `--config`, a flow-log flag given defines one more
    /// flow log, which then needs sinks).
    pub fn first_given(&self) -> Option<Setting> {
        let m = &self.metadata;
        let a = &self.archive;
        [
            (!self.interfaces.is_empty(), Setting::Interfaces),
            (self.interval.is_some(), Setting::Interval),
            (self.format.is_some(), Setting::Format),
            (!self.sinks.is_empty(), Setting::Sinks),
            (self.traffic_type.is_some(), Setting::TrafficType),
            (m.account_id.is_some(), Setting::AccountId),
            (m.region.is_some(), Setting::Region),
            (m.vpc_id.is_some(), Setting::Metadata("vpc-id")),
            (m.subnet_id.is_some(), Setting::Metadata("subnet-id")),
            (m.instance_id.is_some(), Setting::Metadata("instance-id")),
            (m.az_id.is_some(), Setting::Metadata("az-id")),
            (
                m.sublocation_type.is_some(),
                Setting::Metadata("sublocation-type"),
            ),
            (
                m.sublocation_id.is_some(),
                Setting::Metadata("sublocation-id"),
            ),
            (m.resource_id.is_some(), Setting::Metadata("resource-id")),
            (m.instance_tag.is_some(), Setting::Metadata("instance-tag")),
            (
                m.instance_tag_2.is_some(),
                Setting::Metadata("instance-tag-2"),
            ),
            (
                m.interface_tag.is_some(),
                Setting::Metadata("interface-tag"),
            ),
            (
                m.interface_tag_2.is_some(),
                Setting::Metadata("interface-tag-2"),
            ),
            (m.asg_tag.is_some(), Setting::Metadata("asg-tag")),
            (m.asg_tag_2.is_some(), Setting::Metadata("asg-tag-2")),
            (a.file_format.is_some(), Setting::ObjectStore("file-format")),
            (
                a.hive_partitions.is_some(),
                Setting::ObjectStore("hive-partitions"),
            ),
            (
                a.per_hour_partition.is_some(),
                Setting::ObjectStore("per-hour-partition"),
            ),
            (a.rotate.is_some(), Setting::ObjectStore("rotate")),
            (
                a.max_object_size.is_some(),
                Setting::ObjectStore("max-object-size"),
            ),
            (self.id.is_some(), Setting::ObjectStore("flow-log-id")),
            (a.spool_dir.is_some(), Setting::ObjectStore("spool-dir")),
            (
                a.spool_max_bytes.is_some(),
                Setting::ObjectStore("spool-max-bytes"),
            ),
        ]
        .into_iter()
        .find_map(|(given, setting)| given.then_some(setting))
    }
}

impl From<&RunArgs> for RawFlowLog {
    fn from(args: &RunArgs) -> Self {
        RawFlowLog {
            id: args.archive.flow_log_id.clone(),
            interfaces: args.interfaces.clone(),
            cidrs: Vec::new(),
            traffic_type: args.traffic_type,
            interval: args.interval,
            format: args.format.clone(),
            sinks: args.sinks.clone(),
            metadata: Metadata::from(&args.metadata),
            archive: RawArchive::from(&args.archive),
        }
    }
}

impl From<&MetadataArgs> for Metadata {
    fn from(args: &MetadataArgs) -> Self {
        Metadata {
            account_id: args.account_id.clone(),
            vpc_id: args.vpc_id.clone(),
            subnet_id: args.subnet_id.clone(),
            instance_id: args.instance_id.clone(),
            region: args.region.clone(),
            az_id: args.az_id.clone(),
            sublocation_type: args.sublocation_type.clone(),
            sublocation_id: args.sublocation_id.clone(),
            resource_id: args.resource_id.clone(),
            instance_tag: args.instance_tag.clone(),
            instance_tag_2: args.instance_tag_2.clone(),
            interface_tag: args.interface_tag.clone(),
            interface_tag_2: args.interface_tag_2.clone(),
            asg_tag: args.asg_tag.clone(),
            asg_tag_2: args.asg_tag_2.clone(),
        }
    }
}

/// The object-store options as given (the flow-log id is the flow log's own `id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawArchive {
    pub file_format: Option<FileFormat>,
    pub hive_partitions: Option<bool>,
    pub per_hour_partition: Option<bool>,
    pub rotate: Option<std::time::Duration>,
    pub max_object_size: Option<u64>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: Option<u64>,
}

impl From<&ArchiveArgs> for RawArchive {
    fn from(args: &ArchiveArgs) -> Self {
        RawArchive {
            file_format: args.file_format,
            hive_partitions: args.hive_partitions.then_some(true),
            per_hour_partition: args.per_hour_partition.then_some(true),
            rotate: args.rotate,
            max_object_size: args.max_object_size,
            spool_dir: args.spool_dir.clone(),
            spool_max_bytes: args.spool_max_bytes,
        }
    }
}

/// A flow-log setting, named as a flag and as a file key, so a problem found while resolving
/// is told in the words of where it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    Interfaces,
    Interval,
    Format,
    Sinks,
    TrafficType,
    AccountId,
    Region,
    /// Another metadata field, by its key.
    Metadata(&'static str),
    /// An object-store option, by its key.
    ObjectStore(&'static str),
}

impl Setting {
    /// As a command-line flag.
    pub fn flag(self) -> String {
        match self {
            Setting::Interfaces => "--interface".into(),
            Setting::Sinks => "--sink".into(),
            Setting::Metadata(key) | Setting::ObjectStore(key) => format!("--{key}"),
            other => format!("--{}", other.key()),
        }
    }

    /// As a key of a `[[flow-log]]` table (`scope`'s `interfaces`, `metadata`'s keys, ...).
    pub fn key(self) -> &'static str {
        match self {
            Setting::Interfaces => "interfaces",
            Setting::Interval => "interval",
            Setting::Format => "format",
            Setting::Sinks => "sinks",
            Setting::TrafficType => "traffic-type",
            Setting::AccountId => "account-id",
            Setting::Region => "region",
            Setting::Metadata(key) | Setting::ObjectStore(key) => key,
        }
    }
}
