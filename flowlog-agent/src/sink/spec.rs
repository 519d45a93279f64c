//! `--sink` values.

use std::{fmt, path::PathBuf, str::FromStr};

use super::ipfix::{IpfixSpec, IpfixSpecError};
use super::secrets::redact;
use super::{
    Envelope,
    cloudwatch::{LogGroup, LogGroupError},
    object::{ObjectUrl, ObjectUrlError},
};

/// The embedded default log-stream directory.
pub const DEFAULT_LOG_DIR: &str = "/var/log/flowlog";

/// Where a flow log's records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkSpec {
    /// `stdout`: one record per line on standard output.
    Stdout,
    /// `dir:PATH`: one log stream (file) per interface in PATH, like CloudWatch log streams.
    LogStreams(PathBuf),
    /// `json:stdout`: one `{"message":"<record line>"}` object per line on standard output;
    /// `json+fields:stdout`: one object with a member per field.
    JsonStdout(Envelope),
    /// `json:dir:PATH`, `json+fields:dir:PATH`: the log streams of `dir:PATH`, each line a
    /// JSON object.
    JsonLogStreams(Envelope, PathBuf),
    /// `s3://`, `gs://`, `az://`, `file:///`: objects in the layout AWS writes to S3.
    ObjectStore(ObjectUrl),
    /// `ipfix+udp://HOST:PORT` or `ipfix+tcp://HOST:PORT`: IPFIX to a flow collector.
    Ipfix(IpfixSpec),
    /// `cloudwatch:LOG-GROUP`: a CloudWatch Logs log group, one log stream per interface.
    CloudWatch(LogGroup),
}

/// The sinks used when none is given: the log streams in [`DEFAULT_LOG_DIR`] and stdout.
pub fn default_sinks() -> Vec<SinkSpec> {
    vec![
        SinkSpec::LogStreams(PathBuf::from(DEFAULT_LOG_DIR)),
        SinkSpec::Stdout,
    ]
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SinkSpecError {
    #[error(
        "unknown sink {0:?}: expected stdout, dir:PATH, json[+fields]:stdout, \
         json[+fields]:dir:PATH, cloudwatch:LOG-GROUP, ipfix+udp://HOST:PORT, ipfix+tcp://HOST:PORT, \
         or an object-store URL (s3://BUCKET/PREFIX, gs://, az://, file:///PATH)"
    )]
    Unknown(String),
    #[error("sink {0:?}: dir: needs a directory path, as in dir:/var/log/flowlog")]
    EmptyPath(String),
    #[error(transparent)]
    ObjectUrl(#[from] ObjectUrlError),
    #[error(transparent)]
    Ipfix(#[from] IpfixSpecError),
    #[error("sink {text:?}: {error}")]
    LogGroup { text: String, error: LogGroupError },
}

impl FromStr for SinkSpec {
    type Err = SinkSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "stdout" {
            return Ok(SinkSpec::Stdout);
        }
        if let Some(path) = text.strip_prefix("dir:") {
            if path.is_empty() {
                return Err(SinkSpecError::EmptyPath(text.to_owned()));
            }
            return Ok(SinkSpec::LogStreams(PathBuf::from(path)));
        }
        for envelope in [Envelope::JsonMessage, Envelope::JsonFields] {
            let Some(rest) = text.strip_prefix(envelope.sink_prefix()) else {
                continue;
            };
            if rest == "stdout" {
                return Ok(SinkSpec::JsonStdout(envelope));
            }
            if let Some(path) = rest.strip_prefix("dir:") {
                if path.is_empty() {
                    return Err(SinkSpecError::EmptyPath(text.to_owned()));
                }
                return Ok(SinkSpec::JsonLogStreams(envelope, PathBuf::from(path)));
            }
        }
        if let Some(group) = text.strip_prefix("cloudwatch:") {
            return LogGroup::parse(group)
                .map(SinkSpec::CloudWatch)
                .map_err(|error| SinkSpecError::LogGroup {
                    text: text.to_owned(),
                    error,
                });
        }
        if ObjectUrl::claims(text) {
            return Ok(SinkSpec::ObjectStore(ObjectUrl::parse(text)?));
        }
        if let Some(ipfix) = IpfixSpec::parse(text) {
            return Ok(SinkSpec::Ipfix(ipfix?));
        }
        Err(SinkSpecError::Unknown(redact(text)))
    }
}

/// Where a sink writes: two sinks of one flow log with the same destination would write every
/// record twice there.
#[derive(PartialEq)]
enum Destination<'a> {
    StandardOutput,
    LogStreams(&'a std::path::Path),
    Objects(&'a str),
    Collector(String),
    LogGroup(&'a str),
}

impl SinkSpec {
    fn destination(&self) -> Destination<'_> {
        match self {
            SinkSpec::Stdout | SinkSpec::JsonStdout(_) => Destination::StandardOutput,
            SinkSpec::LogStreams(dir) | SinkSpec::JsonLogStreams(_, dir) => {
                Destination::LogStreams(dir)
            }
            SinkSpec::ObjectStore(url) => Destination::Objects(url.location()),
            SinkSpec::Ipfix(spec) => Destination::Collector(spec.address()),
            SinkSpec::CloudWatch(group) => Destination::LogGroup(group.name()),
        }
    }
}

impl fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::StandardOutput => f.write_str("standard output"),
            Destination::LogStreams(dir) => write!(f, "the log streams in {}", dir.display()),
            Destination::Objects(location) => write!(f, "the objects under {location}"),
            Destination::Collector(address) => write!(f, "the collector at {address}"),
            Destination::LogGroup(group) => write!(f, "the log group {group}"),
        }
    }
}

/// Refuses two sinks of one flow log with the same destination (`--sink stdout --sink stdout`
/// writes every record twice). Returns the index of the second and why.
pub fn check_duplicate_sinks(sinks: &[SinkSpec]) -> Result<(), (usize, String)> {
    for (i, sink) in sinks.iter().enumerate() {
        let destination = sink.destination();
        if let Some(first) = sinks[..i].iter().find(|s| s.destination() == destination) {
            let message = if first == sink {
                format!("sink {sink} is given twice: every record would be written twice")
            } else {
                format!(
                    "sinks {first} and {sink} both write {destination}: every record would be written twice there"
                )
            };
            return Err((i, message));
        }
    }
    Ok(())
}

/// `--sink`'s value parser: its errors show the value redacted ([`redact`]), where clap's own
/// would repeat it as typed, secrets included.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkParser;

impl clap::builder::TypedValueParser for SinkParser {
    type Value = SinkSpec;

    fn parse_ref(
        &self,
        command: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SinkSpec, clap::Error> {
        let flag = arg.map_or_else(|| "--sink".to_owned(), ToString::to_string);
        let refuse = |message: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("{message}\n"),
            )
            .with_cmd(command)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse(format!("invalid value for '{flag}': not UTF-8")))?;
        text.parse().map_err(|error: SinkSpecError| {
            refuse(format!(
                "invalid value {:?} for '{flag}': {error}",
                redact(text)
            ))
        })
    }
}

impl fmt::Display for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkSpec::Stdout => f.write_str("stdout"),
            SinkSpec::LogStreams(path) => write!(f, "dir:{}", path.display()),
            SinkSpec::JsonStdout(envelope) => write!(f, "{}stdout", envelope.sink_prefix()),
            SinkSpec::JsonLogStreams(envelope, path) => {
                write!(f, "{}dir:{}", envelope.sink_prefix(), path.display())
            }
            SinkSpec::ObjectStore(url) => write!(f, "{url}"),
            SinkSpec::Ipfix(spec) => spec.fmt(f),
            SinkSpec::CloudWatch(group) => group.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_prints_it_back() {
        for text in [
            "stdout",
            "dir:/var/log/flowlog",
            "dir:relative/logs",
            "json:stdout",
            "json:dir:/var/log/flowlog-json",
            "json+fields:stdout",
            "json+fields:dir:/var/log/flowlog-json",
            "s3://bucket/prefix",
            "s3://bucket/prefix?endpoint=http://127.0.0.1:9000&allow_http=true",
            "gs://bucket",
            "az://container/p",
            "file:///var/lib/flowlog/archive",
            "ipfix+udp://127.0.0.1:4739",
            "ipfix+tcp://[::1]:9995?domain=3",
            "cloudwatch:/flowlog/vpc-flow-logs",
            "cloudwatch:flowlog.prod#1_a-b",
        ] {
            let spec: SinkSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn two_sinks_with_one_destination_are_refused() {
        let sinks = |texts: &[&str]| -> Vec<SinkSpec> {
            texts.iter().map(|t| t.parse().unwrap()).collect()
        };
        assert_eq!(
            check_duplicate_sinks(&sinks(&["stdout", "dir:/x", "stdout"])),
            Err((
                2,
                "sink stdout is given twice: every record would be written twice".into()
            ))
        );
        let (at, message) = check_duplicate_sinks(&sinks(&["dir:/x/", "json:dir:/x"])).unwrap_err();
        assert_eq!(at, 1);
        assert!(
            message.contains("both write the log streams in /x:"),
            "{message}"
        );
        assert!(check_duplicate_sinks(&sinks(&["json:stdout", "stdout"])).is_err());
        assert!(
            check_duplicate_sinks(&sinks(&["ipfix+udp://h:9?domain=2", "ipfix+udp://h:9"]))
                .is_err()
        );
        assert!(check_duplicate_sinks(&sinks(&["s3://b/p?region=x", "s3://b/p"])).is_err());
        assert!(
            check_duplicate_sinks(&sinks(&[
                "stdout",
                "dir:/x",
                "dir:/y",
                "s3://b/p",
                "s3://b/q",
                "cloudwatch:/a",
                "cloudwatch:/b"
            ]))
            .is_ok()
        );
        assert_eq!(
            check_duplicate_sinks(&sinks(&["cloudwatch:/a", "stdout", "cloudwatch:/a"])),
            Err((
                2,
                "sink cloudwatch:/a is given twice: every record would be written twice".into()
            ))
        );
        assert_eq!(
            "cloudwatch:".parse::<SinkSpec>().unwrap_err().to_string(),
            "sink \"cloudwatch:\": cloudwatch: needs a log group name, as in cloudwatch:/flowlog/vpc-flow-logs"
        );
        assert!(
            "cloudwatch:my group"
                .parse::<SinkSpec>()
                .unwrap_err()
                .to_string()
                .contains("contains ' '")
        );
    }

    #[test]
    fn refuses_what_it_does_not_know_naming_it() {
        let unknown = "stdot".parse::<SinkSpec>().unwrap_err().to_string();
        assert!(
            unknown.starts_with("unknown sink \"stdot\": expected stdout, dir:PATH"),
            "{unknown}"
        );
        let scheme = "ftp://host/x".parse::<SinkSpec>().unwrap_err().to_string();
        assert!(
            scheme.starts_with("unknown sink \"ftp://host/x\""),
            "{scheme}"
        );
        assert!(matches!(
            "s3://".parse::<SinkSpec>().unwrap_err(),
            SinkSpecError::ObjectUrl(ObjectUrlError::NoBucket { .. })
        ));
        assert_eq!(
            "json:dir:".parse::<SinkSpec>().unwrap_err(),
            SinkSpecError::EmptyPath("json:dir:".into())
        );
        assert_eq!(
            "stdot".parse::<SinkSpec>().unwrap_err().to_string(),
            "unknown sink \"stdot\": expected stdout, dir:PATH, json[+fields]:stdout, \
             json[+fields]:dir:PATH, cloudwatch:LOG-GROUP, ipfix+udp://HOST:PORT, ipfix+tcp://HOST:PORT, \
             or an object-store URL (s3://BUCKET/PREFIX, gs://, az://, file:///PATH)"
        );
        assert_eq!(
            "dir:".parse::<SinkSpec>().unwrap_err(),
            SinkSpecError::EmptyPath("dir:".into())
        );
        assert!(
            "ipfix+udp://h:99999"
                .parse::<SinkSpec>()
                .unwrap_err()
                .to_string()
                .contains("port \"99999\"")
        );
    }
}
