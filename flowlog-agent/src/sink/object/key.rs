//! Object keys exactly as AWS writes VPC Flow Logs to S3:
//!
//! ```text
//! <prefix>/AWSLogs/<account-id>/vpcflowlogs/<region>/<yyyy>/<mm>/<dd>/[<HH>/]<file>
//! <prefix>/AWSLogs/aws-account-id=<id>/aws-service=vpcflowlogs/aws-region=<region>/year=<yyyy>/month=<mm>/day=<dd>/[hour=<HH>/]<file>
//! file: <account-id>_vpcflowlogs_<region>_<flow-log-id>_<YYYYMMDDTHHmmZ>_<8 hex>.log.gz
//! ```

use std::fmt::Write as _;

/// What an object holds, and so its file name's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// Gzip text: a header line of field names, then the records.
    Text,
    /// Apache Parquet, one column per field.
    Parquet,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Text => "log.gz",
            FileFormat::Parquet => "log.parquet",
        }
    }
}

/// Everything that decides where an object goes, fixed for the life of a flow log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    /// Path inside the bucket before `AWSLogs/`, without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub account_id: String,
    pub region: String,
    pub flow_log_id: String,
    pub hive_partitions: bool,
    pub per_hour_partition: bool,
    pub file_format: FileFormat,
}

impl KeyLayout {
    /// The key of an object of the window starting at `window_start` (Unix seconds, UTC);
    /// `suffix` is the 8-hex tail that tells apart the objects of one window.
    pub fn key(&self, window_start: u64, suffix: u32) -> String {
        let t = UtcTime::from_unix(window_start);
        let mut key = String::with_capacity(160);
        if !self.prefix.is_empty() {
            key.push_str(&self.prefix);
            key.push('/');
        }
        let (account, region) = (&self.account_id, &self.region);
        if self.hive_partitions {
            let _ = write!(
                key,
                "AWSLogs/aws-account-id={account}/aws-service=vpcflowlogs/aws-region={region}/\
                 year={:04}/month={:02}/day={:02}/",
                t.year, t.month, t.day
            );
            if self.per_hour_partition {
                let _ = write!(key, "hour={:02}/", t.hour);
            }
        } else {
            let _ = write!(
                key,
                "AWSLogs/{account}/vpcflowlogs/{region}/{:04}/{:02}/{:02}/",
                t.year, t.month, t.day
            );
            if self.per_hour_partition {
                let _ = write!(key, "{:02}/", t.hour);
            }
        }
        let _ = write!(
            key,
            "{account}_vpcflowlogs_{region}_{}_{:04}{:02}{:02}T{:02}{:02}Z_{suffix:08x}.{}",
            self.flow_log_id,
            t.year,
            t.month,
            t.day,
            t.hour,
            t.minute,
            self.file_format.extension()
        );
        key
    }
}

/// A UTC calendar time to the minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
}

impl UtcTime {
    /// Howard Hinnant's `civil_from_days`: exact for every date, no time-zone database needed
    /// since keys are always UTC.
    pub fn from_unix(seconds: u64) -> Self {
        let days = (seconds / 86_400) as i64;
        let of_day = seconds % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        UtcTime {
            year,
            month,
            day,
            hour: (of_day / 3600) as u32,
            minute: (of_day % 3600 / 60) as u32,
        }
    }
}

/// A flow-log id a file name can carry: `_` separates the name's parts and `/` the key's.
pub fn parse_flow_log_id(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 64 {
        return Err(format!("{text:?}: a flow-log id has 1 to 64 characters"));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "{text:?} contains {bad:?}: a flow-log id is letters, digits and '-' (as in fl-1234567890abcdef0)"
        ));
    }
    Ok(text.to_owned())
}

/// The default flow-log id: `fl-` and 17 hex digits derived from what identifies the flow
/// log (destination, format, interfaces, account, region), so a restart with the same
/// configuration keeps writing under the same id. FNV-1a is used because its output never
/// changes between releases, unlike std's `DefaultHasher`.
pub fn derived_flow_log_id(identity: &[&str]) -> String {
    let mut low = Fnv1a::new(0xcbf2_9ce4_8422_2325);
    let mut high = Fnv1a::new(0x6c62_272e_07bb_0142);
    for part in identity {
        for hash in [&mut low, &mut high] {
            hash.write(part.as_bytes());
            // A separator, so ("ab", "c") and ("a", "bc") differ.
            hash.write(&[0xff]);
        }
    }
    let bits = (u128::from(high.0) << 64 | u128::from(low.0)) & ((1u128 << 68) - 1);
    format!("fl-{bits:017x}")
}

/// 64-bit FNV-1a.
pub struct Fnv1a(pub u64);

impl Fnv1a {
    pub fn new(offset: u64) -> Self {
        Fnv1a(offset)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(hive: bool, hourly: bool, prefix: &str) -> KeyLayout {
        KeyLayout {
            prefix: prefix.to_owned(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            flow_log_id: "fl-1234567890abcdef0".into(),
            hive_partitions: hive,
            per_hour_partition: hourly,
            file_format: FileFormat::Text,
        }
    }

    // 2024-03-05 07:05:00 UTC
    const T: u64 = 1_709_622_300;

    #[test]
    fn keys_follow_the_aws_layout_exactly() {
        assert_eq!(
            layout(false, false, "").key(T, 0xab),
            "AWSLogs/123456789012/vpcflowlogs/us-east-1/2024/03/05/\
             123456789012_vpcflowlogs_us-east-1_fl-1234567890abcdef0_20240305T0705Z_000000ab.log.gz"
        );
        assert_eq!(
            layout(false, true, "logs/flow").key(T, 0xdeadbeef),
            "logs/flow/AWSLogs/123456789012/vpcflowlogs/us-east-1/2024/03/05/07/\
             123456789012_vpcflowlogs_us-east-1_fl-1234567890abcdef0_20240305T0705Z_deadbeef.log.gz"
        );
        assert_eq!(
            layout(true, false, "p").key(T, 1),
            "p/AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/\
             year=2024/month=03/day=05/\
             123456789012_vpcflowlogs_us-east-1_fl-1234567890abcdef0_20240305T0705Z_00000001.log.gz"
        );
        let mut parquet = layout(true, true, "");
        parquet.file_format = FileFormat::Parquet;
        assert_eq!(
            parquet.key(T, 2),
            "AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/\
             year=2024/month=03/day=05/hour=07/\
             123456789012_vpcflowlogs_us-east-1_fl-1234567890abcdef0_20240305T0705Z_00000002.log.parquet"
        );
    }

    #[test]
    fn calendar_is_exact_across_leap_years_and_centuries() {
        let cases = [
            (0, (1970, 1, 1, 0, 0)),
            (951_782_400, (2000, 2, 29, 0, 0)),
            (1_709_164_799, (2024, 2, 28, 23, 59)),
            (1_709_251_199, (2024, 2, 29, 23, 59)),
            (1_735_689_600, (2025, 1, 1, 0, 0)),
            (4_107_542_400, (2100, 3, 1, 0, 0)),
        ];
        for (seconds, (year, month, day, hour, minute)) in cases {
            assert_eq!(
                UtcTime::from_unix(seconds),
                UtcTime {
                    year,
                    month,
                    day,
                    hour,
                    minute
                },
                "{seconds}"
            );
        }
    }

    #[test]
    fn derived_ids_are_stable_and_differ_per_configuration() {
        let id = derived_flow_log_id(&["s3://b/p", "${version}", "eth0"]);
        // A fixed value (computed independently): the id must not change between releases
        // or restarts.
        assert_eq!(id, "fl-dd1d49a366b0e68dc");
        assert_eq!(id.len(), 3 + 17);
        assert!(id.starts_with("fl-"));
        assert!(id[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, derived_flow_log_id(&["s3://b/p", "${version}", "eth1"]));
        assert_ne!(
            derived_flow_log_id(&["ab", "c"]),
            derived_flow_log_id(&["a", "bc"])
        );
    }

    #[test]
    fn flow_log_ids_cannot_break_the_file_name() {
        assert_eq!(parse_flow_log_id("fl-0a1b").unwrap(), "fl-0a1b");
        assert!(parse_flow_log_id("fl_1").unwrap_err().contains("'_'"));
        assert!(parse_flow_log_id("a/b").unwrap_err().contains("'/'"));
        assert!(parse_flow_log_id("").is_err());
    }
}
