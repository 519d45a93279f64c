//! `--config FILE`: the flow logs and host-wide settings of a TOML file, checked as a whole.
//! Every problem is reported at once, each with its line and a hint, before anything is
//! attached.
//!
//! ```toml
//! [agent]                      # host-wide; flags typed on the command line override these
//! policy = "/etc/flowlog/policy.toml"
//!
//! [metadata]                   # values every flow log writes, unless it sets its own
//! account-id = "123456789012"
//! region = "eu-west-1"
//!
//! [[flow-log]]
//! id = "fl-accepted"
//! scope = { interfaces = ["eth0", "veth*"], cidrs = ["10.0.0.0/16"] }   # or "all"
//! traffic-type = "ACCEPT"
//! interval = "60s"
//! sinks = ["s3://flow-logs/host-a"]
//! ```

use std::{
    fmt,
    ops::Range,
    path::{Path, PathBuf},
    str::FromStr,
};

use clap::ValueEnum;
use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::{FlowLogConfig, RawAgent, RawArchive, RawFlowLog, Setting};
use crate::{
    datapath::{HookChoice, TcModeChoice},
    format::RecordFormat,
    interfaces::InterfaceSelector,
    kernel_drops::KernelDropsMode,
    policy::{Exclusion, parse_network},
    record::Metadata,
    sink::{
        SinkSpec,
        object::{FileFormat, parse_flow_log_id},
    },
    values::{
        OnExit, parse_byte_size, parse_interval, parse_max_flows, parse_metadata_value,
        parse_metrics_address, parse_rotate, parse_traffic_type,
    },
};

/// A configuration file, checked: its host-wide settings as given (the command line may
/// override them), and its flow logs, resolved.
#[derive(Clone, Debug)]
pub struct ConfigFile {
    pub agent: RawAgent,
    pub flow_logs: Vec<FlowLogConfig>,
}

/// Everything wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub struct FileError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "config {}: {count} problem{}",
            self.path.display(),
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            match problem.line {
                Some(line) => write!(f, "\n  {}:{line}: {}", self.path.display(), problem.message)?,
                None => write!(f, "\n  {}: {}", self.path.display(), problem.message)?,
            }
            if let Some(hint) = &problem.hint {
                write!(f, "\n    hint: {hint}")?;
            }
        }
        Ok(())
    }
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<ConfigFile, FileError> {
    let text = std::fs::read_to_string(path).map_err(|error| FileError {
        path: path.to_owned(),
        problems: vec![Problem {
            line: None,
            message: format!("cannot read: {error}"),
            hint: None,
        }],
    })?;
    parse(&text).map_err(|problems| FileError {
        path: path.to_owned(),
        problems,
    })
}

type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["agent", "metadata", "flow-log"];
const AGENT_KEYS: &[&str] = &[
    "hook",
    "tc-mode",
    "max-flows",
    "policy",
    "exclude",
    "default-exclusions",
    "pin",
    "pin-dir",
    "on-exit",
    "kernel-drops",
    "metrics",
];
const METADATA_KEYS: &[&str] = &[
    "account-id",
    "region",
    "vpc-id",
    "subnet-id",
    "instance-id",
    "az-id",
    "sublocation-type",
    "sublocation-id",
    "resource-id",
    "instance-tag",
    "instance-tag-2",
    "interface-tag",
    "interface-tag-2",
    "asg-tag",
    "asg-tag-2",
];
const FLOW_LOG_KEYS: &[&str] = &[
    "id",
    "scope",
    "traffic-type",
    "interval",
    "format",
    "sinks",
    "metadata",
    "object-store",
];
const SCOPE_KEYS: &[&str] = &["interfaces", "cidrs"];
const OBJECT_KEYS: &[&str] = &[
    "file-format",
    "hive-partitions",
    "per-hour-partition",
    "rotate",
    "max-object-size",
    "spool-dir",
    "spool-max-bytes",
];

/// Checks a whole file: every problem found, sorted by line.
pub fn parse(text: &str) -> Result<ConfigFile, Vec<Problem>> {
    let mut checker = Checker {
        text,
        problems: Vec::new(),
    };
    let (document, syntax) = DeTable::parse_recoverable(text);
    // What follows a syntax error is guesswork: report only those.
    let syntax_errors = !syntax.is_empty();
    for error in syntax {
        let line = error.span().map(|span| checker.line(span.start));
        checker.problems.push(Problem {
            line,
            message: error.message().trim().to_owned(),
            hint: Some("see https://toml.io for the syntax".to_owned()),
        });
    }
    if syntax_errors {
        return Err(checker.problems);
    }
    let document = document.into_inner();
    checker.unknown_keys(&document, TOP_KEYS, "at the top level");

    let agent = match document.get("agent") {
        Some(value) => checker.agent(value),
        None => RawAgent::default(),
    };
    let defaults = match document.get("metadata") {
        Some(value) => checker.metadata(value, &Metadata::default()),
        None => Metadata::default(),
    };
    // Each with the span of its id, where problems between flow logs are shown.
    let mut flow_logs = Vec::new();
    match document.get("flow-log") {
        Some(value) => match value.get_ref() {
            DeValue::Array(array) => {
                for entry in array.iter() {
                    if let Some(flow_log) = checker.flow_log(entry, &defaults) {
                        let id_span = match entry.get_ref() {
                            DeValue::Table(table) => table.get("id").map(|id| id.span()),
                            _ => None,
                        };
                        flow_logs.push((id_span.unwrap_or(0..0), flow_log));
                    }
                }
            }
            _ => checker.at(
                value.span(),
                "flow-log must be an array of tables",
                "write each flow log as a [[flow-log]] table",
            ),
        },
        None => checker.problems.push(Problem {
            line: None,
            message: "no [[flow-log]]: the agent would log nothing".to_owned(),
            hint: Some("add a [[flow-log]] table with an id, a scope and sinks".to_owned()),
        }),
    }
    checker.across_flow_logs(&flow_logs);

    if checker.problems.is_empty() {
        let flow_logs = flow_logs.into_iter().map(|(_, f)| f).collect();
        Ok(ConfigFile { agent, flow_logs })
    } else {
        let mut problems = checker.problems;
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(problems)
    }
}

struct Checker<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|b| *b == b'\n')
            .count()
            + 1
    }

    fn at(&mut self, span: Range<usize>, message: impl Into<String>, hint: impl Into<String>) {
        let hint: String = hint.into();
        self.problems.push(Problem {
            line: Some(self.line(span.start)),
            message: message.into(),
            hint: (!hint.is_empty()).then_some(hint),
        });
    }

    fn table<'v, 'i>(&mut self, value: &'v Value<'i>, name: &str) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            _ => {
                self.at(
                    value.span(),
                    format!("{name} must be a table"),
                    format!("write [{name}] or {name} = {{ ... }}"),
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self, table: &DeTable<'_>, allowed: &[&str], place: &str) {
        for (key, _) in table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                self.at(
                    key.span(),
                    format!("unknown key {:?} {place}", key.get_ref()),
                    format!("expected one of: {}", allowed.join(", ")),
                );
            }
        }
    }

    fn string<'v>(&mut self, value: &'v Value<'_>, key: &str) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(text) => Some(text.as_ref()),
            _ => {
                self.at(
                    value.span(),
                    format!("{key} must be a string"),
                    format!("quote it: {key} = \"...\""),
                );
                None
            }
        }
    }

    fn boolean(&mut self, value: &Value<'_>, key: &str) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(flag) => Some(*flag),
            _ => {
                self.at(value.span(), format!("{key} must be true or false"), "");
                None
            }
        }
    }

    /// A string or an array of strings, with the span of each.
    fn strings<'v>(&mut self, value: &'v Value<'_>, key: &str) -> Vec<(&'v str, Range<usize>)> {
        let wrong = |checker: &mut Self, span| {
            checker.at(
                span,
                format!("{key} must be a string or an array of strings"),
                format!("as in {key} = [\"...\", \"...\"]"),
            )
        };
        match value.get_ref() {
            DeValue::String(text) => vec![(text.as_ref(), value.span())],
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(text) => out.push((text.as_ref(), item.span())),
                        _ => wrong(self, item.span()),
                    }
                }
                out
            }
            _ => {
                wrong(self, value.span());
                Vec::new()
            }
        }
    }

    /// A string checked by `parse`; its refusal becomes the problem, with `hint`.
    fn parsed<T>(
        &mut self,
        value: &Value<'_>,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
        hint: &str,
    ) -> Option<T> {
        let text = self.string(value, key)?;
        match parse(text) {
            Ok(parsed) => Some(parsed),
            Err(reason) => {
                self.at(value.span(), format!("{key}: {reason}"), hint);
                None
            }
        }
    }

    fn choice<T: ValueEnum>(&mut self, value: &Value<'_>, key: &str) -> Option<T> {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        self.parsed(
            value,
            key,
            |text| T::from_str(text, true).map_err(|_| format!("{text:?} is not a choice")),
            &format!("expected one of: {}", names.join(", ")),
        )
    }

    fn agent(&mut self, value: &Value<'_>) -> RawAgent {
        let mut settings = RawAgent::default();
        let Some(table) = self.table(value, "agent") else {
            return settings;
        };
        self.unknown_keys(table, AGENT_KEYS, "in [agent]");
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "hook" => settings.hook = self.choice::<HookChoice>(value, "hook"),
                "tc-mode" => settings.tc_mode = self.choice::<TcModeChoice>(value, "tc-mode"),
                "max-flows" => {
                    let text = match value.get_ref() {
                        DeValue::Integer(number) => Some(number.as_str().replace('_', "")),
                        _ => self.string(value, "max-flows").map(str::to_owned),
                    };
                    if let Some(text) = text {
                        match parse_max_flows(&text) {
                            Ok(n) => settings.max_flows = Some(n),
                            Err(reason) => self.at(
                                value.span(),
                                format!("max-flows: {reason}"),
                                "a whole number of entries, as in max-flows = 524288",
                            ),
                        }
                    }
                }
                "policy" => {
                    if let Some(path) = self.string(value, "policy") {
                        let path = PathBuf::from(path);
                        // Read now so its problems are reported with the rest.
                        match crate::policy::Policy::load(&path) {
                            Ok(_) => settings.policy = Some(path),
                            Err(error) => self.at(
                                value.span(),
                                error.to_string(),
                                "fix the policy file (`flowlog-agent check` reads it too)",
                            ),
                        }
                    }
                }
                "exclude" => {
                    for (text, span) in self.strings(value, "exclude") {
                        match Exclusion::parse(text) {
                            Ok(exclusion) => settings.exclude.push(exclusion),
                            Err(reason) => self.at(
                                span,
                                format!("exclude: {reason}"),
                                "CIDR[/PROTO[:PORT]], as in \"10.0.0.0/8/udp:53\"",
                            ),
                        }
                    }
                }
                "default-exclusions" => {
                    settings.default_exclusions = self.boolean(value, "default-exclusions")
                }
                "pin" => settings.pin = self.boolean(value, "pin"),
                "pin-dir" => settings.pin_dir = self.string(value, "pin-dir").map(PathBuf::from),
                "on-exit" => settings.on_exit = self.choice::<OnExit>(value, "on-exit"),
                "kernel-drops" => {
                    settings.kernel_drops = self.choice::<KernelDropsMode>(value, "kernel-drops")
                }
                "metrics" => {
                    settings.metrics = self.parsed(
                        value,
                        "metrics",
                        parse_metrics_address,
                        "as in metrics = \"127.0.0.1:9753\", or \"off\"",
                    )
                }
                _ => {}
            }
        }
        settings
    }

    fn metadata(&mut self, value: &Value<'_>, defaults: &Metadata) -> Metadata {
        let mut metadata = defaults.clone();
        let Some(table) = self.table(value, "metadata") else {
            return metadata;
        };
        self.unknown_keys(table, METADATA_KEYS, "in metadata");
        for (key, value) in table.iter() {
            let name = key.get_ref().as_ref();
            let slot = match name {
                "account-id" => &mut metadata.account_id,
                "region" => &mut metadata.region,
                "vpc-id" => &mut metadata.vpc_id,
                "subnet-id" => &mut metadata.subnet_id,
                "instance-id" => &mut metadata.instance_id,
                "az-id" => &mut metadata.az_id,
                "sublocation-type" => &mut metadata.sublocation_type,
                "sublocation-id" => &mut metadata.sublocation_id,
                "resource-id" => &mut metadata.resource_id,
                "instance-tag" => &mut metadata.instance_tag,
                "instance-tag-2" => &mut metadata.instance_tag_2,
                "interface-tag" => &mut metadata.interface_tag,
                "interface-tag-2" => &mut metadata.interface_tag_2,
                "asg-tag" => &mut metadata.asg_tag,
                "asg-tag-2" => &mut metadata.asg_tag_2,
                _ => continue,
            };
            let parsed = self.parsed(
                value,
                name,
                parse_metadata_value,
                "printable ASCII without spaces",
            );
            if parsed.is_some() {
                *slot = parsed;
            }
        }
        metadata
    }

    fn flow_log(&mut self, value: &Value<'_>, defaults: &Metadata) -> Option<FlowLogConfig> {
        let table = self.table(value, "flow-log")?;
        self.unknown_keys(table, FLOW_LOG_KEYS, "in [[flow-log]]");
        let header = value.span();
        let mut ok = true;
        let mut required = |checker: &mut Self, key: &str, hint: &str| {
            let found = table.get(key);
            if found.is_none() {
                checker.at(
                    header.clone(),
                    format!("this [[flow-log]] has no {key}"),
                    hint,
                );
                ok = false;
            }
            found
        };
        let id = required(self, "id", "give it an id, as in id = \"fl-web-accept\"")
            .and_then(|v| self.parsed(v, "id", parse_flow_log_id, ""));
        let scope = required(
            self,
            "scope",
            "scope = \"all\", or scope = { interfaces = [\"eth0\"] }, or scope = { cidrs = [\"10.0.0.0/16\"] }",
        )
        .and_then(|v| self.scope(v));
        let sinks = required(
            self,
            "sinks",
            "as in sinks = [\"dir:/var/log/flowlog\"] or [\"s3://bucket/prefix\"]",
        )
        .map(|v| self.sinks(v));
        let before = self.problems.len();
        let mut raw = RawFlowLog {
            id,
            metadata: match table.get("metadata") {
                Some(v) => self.metadata(v, defaults),
                None => defaults.clone(),
            },
            ..RawFlowLog::default()
        };
        if let Some(v) = table.get("traffic-type") {
            raw.traffic_type = self.parsed(v, "traffic-type", parse_traffic_type, "");
        }
        if let Some(v) = table.get("interval") {
            raw.interval = self.parsed(v, "interval", parse_interval, "1s to 600s, as in \"60s\"");
        }
        if let Some(v) = table.get("format") {
            raw.format = self.parsed(
                v,
                "format",
                |text| RecordFormat::from_str(text).map_err(|e| e.to_string()),
                "${field} tokens separated by single spaces, as AWS writes them",
            );
        }
        if let Some(v) = table.get("object-store") {
            raw.archive = self.object_options(v);
        }
        let (Some(_), Some((interfaces, cidrs)), Some(Some(sinks))) = (&raw.id, scope, sinks)
        else {
            return None;
        };
        if !ok || self.problems.len() > before {
            return None;
        }
        raw.interfaces = interfaces;
        raw.cidrs = cidrs;
        raw.sinks = sinks;
        match FlowLogConfig::resolve(raw) {
            Ok(flow_log) => Some(flow_log),
            Err(error) => {
                let (setting, message) = error.as_key();
                let span = match setting {
                    Setting::Interfaces => table.get("scope").map(|v| v.span()),
                    _ => table.get(setting.key()).map(|v| v.span()),
                };
                self.at(
                    span.unwrap_or(header),
                    message,
                    match setting {
                        Setting::Sinks => {
                            "set account-id and region in [metadata] or in this flow log's metadata"
                        }
                        _ => "",
                    },
                );
                None
            }
        }
    }

    /// `"all"`, or `{ interfaces = [...], cidrs = [...] }`: the names and globs, and the
    /// networks with their text.
    #[allow(clippy::type_complexity)]
    fn scope(
        &mut self,
        value: &Value<'_>,
    ) -> Option<(Vec<String>, Vec<(String, crate::policy::Network)>)> {
        let hint = "scope = \"all\", or { interfaces = [\"eth0\", \"veth*\"] }, or { cidrs = [\"10.0.0.0/16\"] }";
        match value.get_ref() {
            DeValue::String(text) if text.as_ref() == "all" => Some((Vec::new(), Vec::new())),
            DeValue::Table(table) => {
                self.unknown_keys(table, SCOPE_KEYS, "in scope");
                let names = table
                    .get("interfaces")
                    .map(|v| self.strings(v, "interfaces"))
                    .unwrap_or_default();
                let cidrs = table
                    .get("cidrs")
                    .map(|v| self.strings(v, "cidrs"))
                    .unwrap_or_default();
                if names.is_empty() && cidrs.is_empty() {
                    self.at(value.span(), "the scope selects nothing", hint);
                    return None;
                }
                let mut ok = true;
                let mut networks = Vec::new();
                for (text, span) in &cidrs {
                    match parse_network(text) {
                        Ok(network) => networks.push(((*text).to_owned(), network)),
                        Err(reason) => {
                            self.at(span.clone(), format!("cidrs: {text:?}: {reason}"), "");
                            ok = false;
                        }
                    }
                }
                for (name, span) in &names {
                    if let Err(error) = InterfaceSelector::parse(&[name]) {
                        self.at(
                            span.clone(),
                            format!("interfaces {}", error.describe()),
                            "names, or globs with * ? [..]",
                        );
                        ok = false;
                    }
                }
                let names = names.iter().map(|(n, _)| (*n).to_owned()).collect();
                ok.then_some((names, networks))
            }
            _ => {
                self.at(value.span(), "scope must be \"all\" or a table", hint);
                None
            }
        }
    }

    fn sinks(&mut self, value: &Value<'_>) -> Option<Vec<SinkSpec>> {
        let mut sinks = Vec::new();
        let mut ok = true;
        for (text, span) in self.strings(value, "sinks") {
            match SinkSpec::from_str(text) {
                Ok(sink) => sinks.push(sink),
                Err(error) => {
                    self.at(span, error.to_string(), "");
                    ok = false;
                }
            }
        }
        // (Indices match the strings only when every one parsed.)
        if ok
            && let Err((at, message)) = crate::sink::check_duplicate_sinks(&sinks)
            && let Some((_, span)) = self.strings(value, "sinks").get(at).cloned()
        {
            self.at(span, message, "give each destination once");
            ok = false;
        }
        if sinks.is_empty() && ok {
            self.at(
                value.span(),
                "no sinks: the records would go nowhere",
                "as in sinks = [\"dir:/var/log/flowlog\"]",
            );
            return None;
        }
        ok.then_some(sinks)
    }

    fn object_options(&mut self, value: &Value<'_>) -> RawArchive {
        let mut options = RawArchive::default();
        let Some(table) = self.table(value, "object-store") else {
            return options;
        };
        self.unknown_keys(table, OBJECT_KEYS, "in object-store");
        for (key, value) in table.iter() {
            match key.get_ref().as_ref() {
                "file-format" => {
                    options.file_format = self.choice::<FileFormat>(value, "file-format")
                }
                "hive-partitions" => {
                    options.hive_partitions = self.boolean(value, "hive-partitions")
                }
                "per-hour-partition" => {
                    options.per_hour_partition = self.boolean(value, "per-hour-partition")
                }
                "rotate" => options.rotate = self.parsed(value, "rotate", parse_rotate, "1s to 1h"),
                "max-object-size" => {
                    options.max_object_size =
                        self.parsed(value, "max-object-size", parse_byte_size, "as in \"75MB\"")
                }
                "spool-dir" => {
                    options.spool_dir = self.string(value, "spool-dir").map(PathBuf::from)
                }
                "spool-max-bytes" => {
                    options.spool_max_bytes =
                        self.parsed(value, "spool-max-bytes", parse_byte_size, "as in \"1GiB\"")
                }
                _ => {}
            }
        }
        options
    }

    /// What no single flow log can see: repeated ids, and two flow logs writing the same files.
    fn across_flow_logs(&mut self, flow_logs: &[(Range<usize>, FlowLogConfig)]) {
        let span_of = |name: &str| {
            flow_logs
                .iter()
                .rev()
                .find(|(_, f)| f.name() == name)
                .map_or(0..0, |(span, _)| span.clone())
        };
        let mut found = Vec::new();
        for (i, (span, flow_log)) in flow_logs.iter().enumerate() {
            let id = flow_log.name();
            if flow_logs[..i].iter().any(|(_, f)| f.name() == id) {
                found.push((
                    span.clone(),
                    format!("flow log id {id:?} is used twice"),
                    "ids identify flow logs across reloads and in object keys: make them unique"
                        .to_owned(),
                ));
            }
        }
        if let Err(conflict) = super::check_shared_files(flow_logs.iter().map(|(_, f)| f)) {
            found.push((
                span_of(&conflict.second),
                conflict.to_string(),
                conflict.hint(),
            ));
        }
        for (span, message, hint) in found {
            self.at(span, message, hint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::values::{MetricsAddress, TrafficType};

    fn problems(text: &str) -> Vec<(Option<usize>, String)> {
        parse(text)
            .unwrap_err()
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect()
    }

    const TWO: &str = r#"
[agent]
metrics = "off"

[metadata]
account-id = "123456789012"
region = "eu-west-1"

[[flow-log]]
id = "fl-accepted"
scope = { interfaces = ["eth0", "veth*"] }
traffic-type = "ACCEPT"
interval = "10s"
sinks = ["s3://bucket/a", "stdout"]
object-store = { file-format = "parquet" }

[[flow-log]]
id = "fl-rejected"
scope = { cidrs = ["198.18.0.0/15"] }
traffic-type = "REJECT"
sinks = "dir:/var/log/flowlog"
metadata = { vpc-id = "vpc-1" }
"#;

    #[test]
    fn a_two_flow_log_file_reads_as_written() {
        let file = parse(TWO).unwrap();
        assert_eq!(file.agent.metrics, Some(MetricsAddress(None)));
        let [accepted, rejected] = &file.flow_logs[..] else {
            panic!("{:?}", file.flow_logs)
        };
        assert_eq!(accepted.name(), "fl-accepted");
        assert_eq!(accepted.traffic_type, TrafficType::Accept);
        assert_eq!(accepted.interval, Duration::from_secs(10));
        assert_eq!(accepted.sinks.len(), 2);
        assert_eq!(accepted.archive.file_format, FileFormat::Parquet);
        assert_eq!(accepted.archive.flow_log_id.as_deref(), Some("fl-accepted"));
        assert_eq!(accepted.scope_text, ["eth0", "veth*"]);
        assert_eq!(rejected.traffic_type, TrafficType::Reject);
        assert_eq!(rejected.interval, Duration::from_secs(60));
        assert_eq!(rejected.metadata.vpc_id.as_deref(), Some("vpc-1"));
        assert_eq!(rejected.metadata.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            rejected.sinks,
            [SinkSpec::LogStreams("/var/log/flowlog".into())]
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = r#"[agent]
hook = "ebpf"
max-flows = 12
colour = "blue"

[[flow-log]]
id = "fl-a"
scope = { interfaces = ["eth0"], cidrs = ["10.0.0.1/8"] }
interval = "90x"
sinks = ["kafka://x"]

[[flow-log]]
scope = "all"
sinks = ["stdout"]
format = "${version} ${srcadr}"
"#;
        let found = problems(text);
        let lines: Vec<Option<usize>> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            lines,
            [
                Some(2),
                Some(3),
                Some(4),
                Some(8),
                Some(9),
                Some(10),
                Some(12),
                Some(15)
            ],
            "{found:#?}"
        );
        let all = format!("{found:?}");
        for token in [
            "ebpf",
            "12",
            "colour",
            "10.0.0.1/8",
            "90x",
            "kafka://x",
            "no id",
            "srcadr",
        ] {
            assert!(all.contains(token), "{token} not named in {all}");
        }
    }

    #[test]
    fn ids_must_be_unique_and_files_not_shared() {
        let text = r#"
[[flow-log]]
id = "fl-a"
scope = "all"
sinks = ["dir:/tmp/x"]

[[flow-log]]
id = "fl-a"
scope = "all"
sinks = ["dir:/tmp/x"]
"#;
        let found = problems(text);
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found.iter().all(|(line, _)| *line == Some(8)), "{found:#?}");
        assert!(found[0].1.contains("used twice") || found[1].1.contains("used twice"));
        assert!(
            found.iter().any(|(_, m)| m.contains("dir:/tmp/x")),
            "{found:#?}"
        );
    }

    #[test]
    fn a_sink_given_twice_is_refused_at_its_line() {
        let text = "[[flow-log]]\nid = \"fl-a\"\nscope = \"all\"\nsinks = [\n  \"stdout\",\n  \"dir:/tmp/x\",\n  \"stdout\",\n]\n";
        let found = problems(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, Some(7));
        assert!(
            found[0].1.contains("sink stdout is given twice"),
            "{found:?}"
        );
    }

    #[test]
    fn object_sinks_need_the_account_and_region() {
        let text = "[[flow-log]]\nid = \"fl-a\"\nscope = \"all\"\nsinks = [\"s3://b/p\"]\n";
        let found = problems(text);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, Some(4));
        assert!(found[0].1.contains("account-id"), "{found:?}");
    }

    #[test]
    fn syntax_errors_and_an_empty_file_are_explained() {
        let found = problems("[[flow-log]\nid = 1\n");
        assert_eq!(found.len(), 1, "only the syntax error: {found:?}");
        assert_eq!(found[0].0, Some(1), "{found:?}");
        let found = problems("");
        assert!(found[0].1.contains("no [[flow-log]]"), "{found:?}");
    }
}
