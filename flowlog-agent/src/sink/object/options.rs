//! The options of object-store sinks, checked: every value present, defaults applied.

use std::{path::PathBuf, time::Duration};

use super::key::FileFormat;
use crate::values::{
    DEFAULT_MAX_OBJECT_SIZE, DEFAULT_ROTATE, DEFAULT_SPOOL_DIR, DEFAULT_SPOOL_MAX_BYTES,
};

/// How a flow log's object-store sinks batch and name their objects, and where they spool them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveOptions {
    pub file_format: FileFormat,
    /// Hive-compatible key prefixes (`aws-account-id=.../year=...`).
    pub hive_partitions: bool,
    /// An hourly partition below the day.
    pub per_hour_partition: bool,
    /// A new object every `rotate` (windows aligned to the clock).
    pub rotate: Duration,
    /// A new object once one reaches this size.
    pub max_object_size: u64,
    /// The flow-log id in object names; derived from the flow log when `None`.
    pub flow_log_id: Option<String>,
    pub spool_dir: PathBuf,
    /// Bound of each sink's spool.
    pub spool_max_bytes: u64,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        Self {
            file_format: FileFormat::Text,
            hive_partitions: false,
            per_hour_partition: false,
            rotate: DEFAULT_ROTATE,
            max_object_size: DEFAULT_MAX_OBJECT_SIZE,
            flow_log_id: None,
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
        }
    }
}
