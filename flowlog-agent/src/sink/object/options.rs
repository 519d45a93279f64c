//! The `run` options of object-store sinks, as typed and as checked.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::key::{FileFormat, parse_flow_log_id};
use crate::config::parse_duration;

/// The default spool directory.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/flowlog/spool";

/// Options that apply to object-store sinks (`s3://`, `gs://`, `az://`, `file://`).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ArchiveArgs {
    /// Object format: gzip text (header line, then records) or Parquet.
    #[arg(long, value_enum, default_value_t = FileFormat::Text)]
    pub file_format: FileFormat,

    /// Hive-compatible key prefixes (aws-account-id=.../year=.../month=...).
    #[arg(long)]
    pub hive_partitions: bool,

    /// An hourly partition below the day (`/<HH>/` or `hour=<HH>/`).
    #[arg(long)]
    pub per_hour_partition: bool,

    /// A new object every DURATION (windows aligned to the clock), 1s to 1h.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_rotate)]
    pub rotate: Duration,

    /// A new object once one reaches this size (e.g. 75MB, 64MiB, 1000000).
    #[arg(long, value_name = "BYTES", default_value = "75MB", value_parser = parse_byte_size)]
    pub max_object_size: u64,

    /// The flow-log id in object names. Default: `fl-` and 17 hex digits derived from the
    /// destination, format, interfaces, account and region (stable across restarts).
    #[arg(long, value_name = "ID", value_parser = parse_flow_log_id)]
    pub flow_log_id: Option<String>,

    /// Where objects wait until the store has them (one subdirectory per sink); they survive
    /// restarts and are uploaded oldest first.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SPOOL_DIR)]
    pub spool_dir: PathBuf,

    /// Bound of each sink's spool; past it the oldest objects are dropped, counted and logged.
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = parse_byte_size)]
    pub spool_max_bytes: u64,
}

/// The checked options ([`ArchiveArgs`] needs no further checks beyond its value parsers).
pub type ArchiveOptions = ArchiveArgs;

/// `--rotate`: 1s to 1h.
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
    fn rotation_is_between_a_second_and_an_hour() {
        assert_eq!(parse_rotate("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_rotate("2h").unwrap_err().contains("outside"));
        assert!(parse_rotate("0s").unwrap_err().contains("outside"));
    }
}
