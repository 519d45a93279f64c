//! `--sink` values.

use std::{fmt, path::PathBuf, str::FromStr};

use super::ipfix::{IpfixSpec, IpfixSpecError};
use super::secrets::redact;
use super::{
    Envelope,
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
         json[+fields]:dir:PATH, ipfix+udp://HOST:PORT, ipfix+tcp://HOST:PORT, or an object-store URL \
         (s3://BUCKET/PREFIX, gs://, az://, file:///PATH)"
    )]
    Unknown(String),
    #[error("sink {0:?}: dir: needs a directory path, as in dir:/var/log/flowlog")]
    EmptyPath(String),
    #[error(transparent)]
    ObjectUrl(#[from] ObjectUrlError),
    #[error(transparent)]
    Ipfix(#[from] IpfixSpecError),
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
        if ObjectUrl::claims(text) {
            return Ok(SinkSpec::ObjectStore(ObjectUrl::parse(text)?));
        }
        if let Some(ipfix) = IpfixSpec::parse(text) {
            return Ok(SinkSpec::Ipfix(ipfix?));
        }
        Err(SinkSpecError::Unknown(redact(text)))
    }
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
        ] {
            let spec: SinkSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
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
             json[+fields]:dir:PATH, ipfix+udp://HOST:PORT, ipfix+tcp://HOST:PORT, or an object-store URL \
             (s3://BUCKET/PREFIX, gs://, az://, file:///PATH)"
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
