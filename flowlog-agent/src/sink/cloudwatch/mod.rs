//! The CloudWatch Logs sink (`cloudwatch:LOG-GROUP`), delivering as VPC Flow Logs does: one
//! log stream per interface in the group (`eth0-all`, named as `dir:` names its files), one
//! event per record, its timestamp the record's `start`.
//!
//! Every interval is cut into batches PutLogEvents accepts (`batch`), each written to the
//! sink's spool (the object sinks' spool: durable, bounded, oldest first, kept across restarts
//! and kills) before `write` returns; the delivery loop (`delivery`) sends the spooled batches
//! and deletes each only once the service has it. The client is the official SDK's
//! (`client`).

mod batch;
mod client;
mod delivery;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use batch::{
    Batch, BatchKey, Batcher, EVENT_OVERHEAD, MAX_BATCH_BYTES, MAX_EVENTS, decode, stream_name,
    timestamp,
};
pub use delivery::DeliveryReport;

use aws_sdk_cloudwatchlogs::Client;
use prometheus_client::metrics::counter::Counter;

use self::{
    client::{Diagnosis, describe, diagnose},
    delivery::{Delivery, Destination},
};
use super::{
    LineRenderer, Sink, SinkError, SpoolGauges,
    object::{Fnv1a, Spool},
};
use crate::record::IntervalRecords;

/// How long a stopping agent keeps delivering before leaving the rest in the spool.
pub const SHUTDOWN_DELIVERY_TIME: Duration = Duration::from_secs(10);

/// A CloudWatch Logs log group name, checked as the service checks it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LogGroup(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogGroupError {
    #[error("cloudwatch: needs a log group name, as in cloudwatch:/flowlog/vpc-flow-logs")]
    Empty,
    #[error("log group {name:?} is longer than 512 characters")]
    TooLong { name: String },
    #[error(
        "log group {name:?} contains {found:?}: names hold letters, digits, '_', '-', '/', '.' and '#'"
    )]
    BadCharacter { name: String, found: char },
}

impl LogGroup {
    pub fn parse(name: &str) -> Result<Self, LogGroupError> {
        if name.is_empty() {
            return Err(LogGroupError::Empty);
        }
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_-/.#".contains(*c)))
        {
            return Err(LogGroupError::BadCharacter {
                name: name.to_owned(),
                found,
            });
        }
        if name.len() > 512 {
            return Err(LogGroupError::TooLong {
                name: name.to_owned(),
            });
        }
        Ok(LogGroup(name.to_owned()))
    }

    pub fn name(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LogGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cloudwatch:{}", self.0)
    }
}

/// Why a CloudWatch sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum CloudWatchError {
    #[error("sink {sink}: {reason}")]
    Configuration { sink: String, reason: String },
    #[error("sink {sink}: refusing to start: {reason}")]
    HealthCheck { sink: String, reason: String },
    #[error("sink {sink}: spool {path}: {error}")]
    Spool {
        sink: String,
        path: String,
        error: std::io::Error,
    },
}

/// What a CloudWatch sink needs of its flow log.
pub struct CloudWatchOptions<'a> {
    /// The flow log's name: with the group, names the sink's spool.
    pub flow_log: &'a str,
    pub traffic_type: &'static str,
    pub spool_dir: &'a std::path::Path,
    pub spool_max_bytes: u64,
}

pub struct CloudWatchSink {
    name: String,
    /// `None` while a blocking task encodes with it.
    batcher: Option<Batcher>,
    spool: Arc<Spool>,
    delivery: Option<Delivery>,
    bytes: Counter,
    lost: Arc<AtomicU64>,
    /// The interval being spooled: its batches, and how many the spool has.
    progress: Option<Progress>,
}

struct Progress {
    interval: Arc<IntervalRecords>,
    batches: Vec<Batch>,
    spooled: usize,
}

/// Whether the group exists, as far as a probe can tell.
enum Probe {
    Exists,
    Missing,
    Unreachable(String),
}

impl CloudWatchSink {
    /// Whether the sink could work here: credentials and region found, the group described
    /// (`check`). A group that does not exist yet is fine (it is created with the first
    /// events, which needs `logs:CreateLogGroup`).
    pub async fn check(group: &LogGroup, region: Option<&str>) -> Result<String, String> {
        let client = client::build(region).await?;
        match probe(&client, group).await? {
            Probe::Exists => Ok(format!("log group {} exists", group.name())),
            Probe::Missing => Ok(format!(
                "log group {} does not exist yet: it is created with the first records (needs logs:CreateLogGroup)",
                group.name()
            )),
            Probe::Unreachable(reason) => Err(format!(
                "CloudWatch Logs did not answer ({reason}); records would wait in the spool"
            )),
        }
    }

    /// Builds the client, probes the group (a refusal stops the start; no answer is only
    /// warned about, the events wait in the spool), opens the spool and starts delivery.
    pub async fn start(
        group: &LogGroup,
        renderer: LineRenderer,
        options: &CloudWatchOptions<'_>,
    ) -> Result<Self, CloudWatchError> {
        let name = group.to_string();
        let client = client::build(renderer.metadata.region.as_deref())
            .await
            .map_err(|reason| CloudWatchError::Configuration {
                sink: name.clone(),
                reason,
            })?;
        match probe(&client, group).await {
            Ok(Probe::Exists) => {}
            Ok(Probe::Missing) => tracing::info!(sink = %name,
                "the log group does not exist yet; it is created with the first records"),
            Ok(Probe::Unreachable(reason)) => tracing::warn!(sink = %name, %reason,
                "CloudWatch Logs unreachable at start-up; starting anyway, records wait in the spool"),
            Err(reason) => {
                return Err(CloudWatchError::HealthCheck { sink: name, reason });
            }
        }
        let directory = options
            .spool_dir
            .join(spool_name(options.flow_log, group.name()));
        let spool = Spool::open(directory.clone(), options.spool_max_bytes).map_err(|error| {
            CloudWatchError::Spool {
                sink: name.clone(),
                path: directory.display().to_string(),
                error,
            }
        })?;
        if !spool.pending().is_empty() {
            tracing::info!(sink = %name, batches = spool.pending().len(), events = spool.pending_records(),
                "batches left in the spool by an earlier run are delivered first");
        }
        let spool = Arc::new(spool);
        let bytes = Counter::default();
        let lost = Arc::new(AtomicU64::new(0));
        let delivery = Delivery::spawn(Destination {
            name: name.clone(),
            client,
            group: group.name().to_owned(),
            spool: Arc::clone(&spool),
            bytes: bytes.clone(),
            lost: Arc::clone(&lost),
        });
        tracing::info!(sink = %name, spool = %directory.display(), "CloudWatch Logs sink ready");
        Ok(CloudWatchSink {
            name,
            batcher: Some(Batcher::new(renderer, options.traffic_type)),
            spool,
            delivery: Some(delivery),
            bytes,
            lost,
            progress: None,
        })
    }
}

impl Sink for CloudWatchSink {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// Spools the interval's batches (each durable before the next); a retry after a failure
    /// (a full disk) spools only the batches not spooled yet.
    async fn write(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        if interval.records.is_empty() {
            return Ok(());
        }
        let progress = match self.progress.take() {
            Some(progress) if Arc::ptr_eq(&progress.interval, &interval) => progress,
            _ => {
                let mut batcher = self.batcher.take().expect("the batcher is back");
                let records = Arc::clone(&interval);
                let (batcher, batches) = tokio::task::spawn_blocking(move || {
                    let batches = batcher.batches(&records);
                    (batcher, batches)
                })
                .await
                .map_err(|e| SinkError::Fatal(e.to_string()))?;
                self.batcher = Some(batcher);
                Progress {
                    interval,
                    batches,
                    spooled: 0,
                }
            }
        };
        let spool = Arc::clone(&self.spool);
        let (progress, spooled) = tokio::task::spawn_blocking(move || {
            let mut progress = progress;
            let result = progress.batches[progress.spooled..]
                .iter()
                .try_for_each(|batch| {
                    spool.push(&batch.spool_key(), batch.events as u64, &batch.bytes)?;
                    progress.spooled += 1;
                    Ok::<_, std::io::Error>(())
                });
            (progress, result)
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))?;
        if let Some(delivery) = &self.delivery
            && progress.spooled > 0
        {
            delivery.wake();
        }
        match spooled {
            Ok(()) => Ok(()),
            Err(error) => {
                let message = format!(
                    "spooling in {}: {error}; {} of {} batches spooled, the rest wait",
                    self.spool.directory().display(),
                    progress.spooled,
                    progress.batches.len()
                );
                self.progress = Some(progress);
                Err(SinkError::Retriable(message))
            }
        }
    }

    /// The events of the batches the spool took are written (they will be delivered).
    fn give_up(&mut self, interval: &IntervalRecords) -> u64 {
        match self.progress.take() {
            Some(progress) if std::ptr::eq(&*progress.interval, interval) => progress.batches
                [..progress.spooled]
                .iter()
                .map(|b| b.events as u64)
                .sum(),
            _ => 0,
        }
    }

    /// Delivers what is spooled until `deadline` (at most [`SHUTDOWN_DELIVERY_TIME`]); what is
    /// left stays in the spool for the next run.
    async fn flush(&mut self, deadline: tokio::time::Instant) -> Result<(), SinkError> {
        let Some(delivery) = self.delivery.take() else {
            return Ok(());
        };
        let until = deadline
            .into_std()
            .min(Instant::now() + SHUTDOWN_DELIVERY_TIME);
        let report = delivery.finish(until).await;
        let left = self.spool.pending();
        tracing::info!(
            sink = %self.name,
            calls = report.calls,
            events_delivered = report.events,
            failed_attempts = report.failed_attempts,
            ambiguous_attempts = report.ambiguous,
            spooled_batches = left.len(),
            spooled_events = self.spool.pending_records(),
            events_lost = self.records_lost_after_write(),
            "CloudWatch delivery finished"
        );
        if !left.is_empty() {
            tracing::warn!(sink = %self.name, spool = %self.spool.directory().display(), batches = left.len(),
                "batches not delivered stay in the spool and go first at the next start");
        }
        Ok(())
    }

    fn records_lost_after_write(&self) -> u64 {
        self.spool.lost().records + self.lost.load(Ordering::Relaxed)
    }

    /// Message bytes CloudWatch accepted.
    fn bytes_written(&self) -> Counter {
        self.bytes.clone()
    }

    fn spool_gauges(&self) -> Option<SpoolGauges> {
        Some(self.spool.gauges())
    }
}

/// Describes the group: refused (credentials, a denied action) is an error; no answer is
/// `Unreachable`.
async fn probe(client: &Client, group: &LogGroup) -> Result<Probe, String> {
    let described = tokio::time::timeout(
        Duration::from_secs(30),
        client
            .describe_log_groups()
            .log_group_name_prefix(group.name())
            .limit(50)
            .send(),
    )
    .await;
    let answer = match described {
        Ok(answer) => answer,
        Err(_) => return Ok(Probe::Unreachable("no answer in 30 s".into())),
    };
    match answer {
        Ok(groups) => Ok(
            if groups
                .log_groups()
                .iter()
                .any(|g| g.log_group_name() == Some(group.name()))
            {
                Probe::Exists
            } else {
                Probe::Missing
            },
        ),
        Err(error) => match diagnose(&error) {
            Diagnosis::AccessDenied => Err(format!(
                "the credentials lack logs:DescribeLogGroups ({})",
                describe(&error)
            )),
            Diagnosis::Credentials => Err(format!(
                "the AWS credentials are missing or refused ({})",
                describe(&error)
            )),
            Diagnosis::InvalidParameter => Err(describe(&error)),
            _ => Ok(Probe::Unreachable(describe(&error))),
        },
    }
}

/// The spool directory of one sink: the flow log and a hash of the group, so two sinks never
/// share one and a renamed group does not inherit another's batches.
fn spool_name(flow_log: &str, group: &str) -> String {
    let mut hash = Fnv1a::new(0xcbf2_9ce4_8422_2325);
    hash.write(group.as_bytes());
    format!("cloudwatch-{flow_log}-{:08x}", hash.0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_are_checked_as_the_service_does() {
        for name in ["/aws/vpc/flow-logs", "flowlog.prod#1", "a_b-c", "x"] {
            assert_eq!(LogGroup::parse(name).unwrap().name(), name);
        }
        assert_eq!(LogGroup::parse(""), Err(LogGroupError::Empty));
        assert_eq!(
            LogGroup::parse("a b"),
            Err(LogGroupError::BadCharacter {
                name: "a b".into(),
                found: ' '
            })
        );
        assert!(matches!(
            LogGroup::parse(&"a".repeat(513)),
            Err(LogGroupError::TooLong { .. })
        ));
        assert_eq!(
            LogGroup::parse("/flowlog").unwrap().to_string(),
            "cloudwatch:/flowlog"
        );
    }

    #[test]
    fn spools_are_named_by_flow_log_and_group() {
        assert_ne!(spool_name("cli", "/a"), spool_name("cli", "/b"));
        assert_ne!(spool_name("fl-1", "/a"), spool_name("fl-2", "/a"));
        assert!(spool_name("cli", "/a").starts_with("cloudwatch-cli-"));
    }
}
