//! The values a configuration is made of: their types, parsers and defaults, in one place that
//! names no flag and no file key. The command line (`cli`) and the configuration file
//! (`config::file`) both parse with these; each adds its own name for a refused value (`--interval`
//! or `flowlog.toml:5: interval`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use flowlog_common::maps::DEFAULT_MAX_FLOWS;

/// Aggregation intervals flowlog accepts, as AWS: from 1 s (AWS: 60 s) to 10 minutes.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Where the agent pins its maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/flowlog";
/// Where Prometheus metrics are served.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9753";
/// Where the sinks go when none is given.
pub const DEFAULT_SINKS: [&str; 2] = ["dir:/var/log/flowlog", "stdout"];

/// Object-store sinks: a new object every 5 minutes or 75 MB, as AWS; a spool of 1 GiB.
pub const DEFAULT_ROTATE: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 75_000_000;
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/flowlog/spool";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

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

/// An aggregation interval: 1s to 600s.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(format!("{text:?} is outside 1s..600s"));
    }
    Ok(interval)
}

/// Flow-map capacity: at least 1024 entries (anything smaller is a typo), at most 2^28.
pub fn parse_max_flows(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of flow entries"))?;
    if !(1024..=1 << 28).contains(&n) {
        return Err(format!("{n} is outside 1024..268435456"));
    }
    Ok(n)
}

/// The longest metadata value: AWS's longest such value, a tag value, has 256 characters.
/// It also bounds a record line (one CloudWatch event) far below the service's event limit.
pub const MAX_METADATA_VALUE: usize = 256;

/// A metadata value becomes one field of a space-separated record, so it must be non-empty
/// printable ASCII without spaces, of at most [`MAX_METADATA_VALUE`] characters.
pub fn parse_metadata_value(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("empty value (leave it out to write -)".to_owned());
    }
    if text.len() > MAX_METADATA_VALUE {
        return Err(format!(
            "a value of {} characters: at most {MAX_METADATA_VALUE} (AWS's tag values)",
            text.len()
        ));
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{text:?} contains {bad:?}: values are written into space-separated records, so only printable ASCII without spaces is allowed"
        ));
    }
    Ok(text.to_owned())
}

/// The records a flow log writes, as AWS names the traffic types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficType {
    Accept,
    Reject,
    #[default]
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

/// `ACCEPT`, `REJECT` or `ALL`, in any case.
pub fn parse_traffic_type(text: &str) -> Result<TrafficType, String> {
    match text.to_ascii_uppercase().as_str() {
        "ACCEPT" => Ok(TrafficType::Accept),
        "REJECT" => Ok(TrafficType::Reject),
        "ALL" => Ok(TrafficType::All),
        _ => Err(format!("{text:?}: expected ACCEPT, REJECT or ALL")),
    }
}

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

/// Where metrics are served: an address, or nowhere (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddress(pub Option<SocketAddr>);

impl Default for MetricsAddress {
    fn default() -> Self {
        parse_metrics_address(DEFAULT_METRICS).expect("the default parses")
    }
}

/// `IP:PORT`, or `off`.
pub fn parse_metrics_address(text: &str) -> Result<MetricsAddress, String> {
    if text == "off" {
        return Ok(MetricsAddress(None));
    }
    text.parse()
        .map(|address| MetricsAddress(Some(address)))
        .map_err(|_| format!("{text:?}: expected IP:PORT (e.g. {DEFAULT_METRICS}) or off"))
}

/// The pin directory by default.
pub fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

/// An object rotation period: 1s to 1h.
pub fn parse_rotate(text: &str) -> Result<Duration, String> {
    let rotate = parse_duration(text)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&rotate) {
        return Err(format!("{text:?} is outside 1s..1h"));
    }
    Ok(rotate)
}

/// A size in bytes: a whole number with an optional unit, decimal (kB, MB, GB, as AWS's
/// "75 MB") or binary (KiB, MiB, GiB). At least 1024 bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a size: write a whole number and a unit, as in 75MB")
    })?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use B, kB, MB, GB, KiB, MiB or GiB)"
            ));
        }
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if bytes < 1024 {
        return Err(format!("{text:?} is below 1024 bytes"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_byte_size("75MB"), Ok(75_000_000));
        assert_eq!(parse_byte_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert!(parse_byte_size("12").unwrap_err().contains("below 1024"));
        assert!(
            parse_byte_size("5 MB")
                .unwrap_err()
                .contains("unknown unit \" MB\"")
        );
        assert!(parse_byte_size("MB").unwrap_err().contains("not a size"));
        assert!(
            parse_byte_size("99999999999GB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn metadata_values_are_one_short_printable_token() {
        assert_eq!(parse_metadata_value("i-0abc"), Ok("i-0abc".to_owned()));
        assert!(parse_metadata_value("").unwrap_err().contains("empty"));
        assert!(parse_metadata_value("a b").unwrap_err().contains("' '"));
        assert!(parse_metadata_value(&"x".repeat(256)).is_ok());
        assert!(
            parse_metadata_value(&"x".repeat(257))
                .unwrap_err()
                .contains("257 characters")
        );
    }

    #[test]
    fn rotation_is_between_a_second_and_an_hour() {
        assert_eq!(parse_rotate("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_rotate("2h").unwrap_err().contains("outside"));
        assert!(parse_rotate("0s").unwrap_err().contains("outside"));
    }
}
