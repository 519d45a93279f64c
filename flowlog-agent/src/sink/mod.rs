//! Where records go. A sink implements [`Sink`]; [`spawn`] runs it as its own task behind its
//! own bounded queue, so a slow sink never stalls the drain or the other sinks, and retries
//! failed writes with capped exponential backoff and full jitter.
//!
//! Object-store sinks (`object`) batch intervals into objects and add a disk spool and an
//! uploader of their own behind the same driver, so a store outage never blocks the queue.

mod backoff;
pub mod ipfix;
mod log_stream;
pub mod object;
mod spec;
mod stdout;

use std::{future::Future, sync::Arc, time::Duration};

use prometheus_client::metrics::counter::Counter;
use tokio::{sync::mpsc, task::JoinHandle};

pub use backoff::Backoff;
pub use ipfix::IpfixSink;
pub use log_stream::LogStreamSink;
pub use object::{ObjectStoreSink, SpoolGauges};
pub use spec::{DEFAULT_LOG_DIR, SinkSpec, SinkSpecError, default_sinks};
pub use stdout::StdoutSink;

use crate::{
    format::{ColumnType, FieldValue, RecordFormat},
    record::{FlowRecord, IntervalRecords, Metadata},
};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again (I/O errors, an unreachable destination).
    #[error("{0}")]
    Retriable(String),
    /// Trying again cannot help (a bad destination): the batch is given up and counted.
    #[error("{0}")]
    Fatal(String),
}

impl From<std::io::Error> for SinkError {
    fn from(error: std::io::Error) -> Self {
        SinkError::Retriable(error.to_string())
    }
}

/// A destination for the records of a flow log.
pub trait Sink: Send + 'static {
    /// How the sink is named in logs (`stdout`, `dir:/var/log/flowlog`).
    fn name(&self) -> String;

    /// Writes the records of one interval.
    fn write(
        &mut self,
        interval: Arc<IntervalRecords>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Makes everything written so far durable where it goes; called at shutdown.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Records the sink accepted and later had to give up (an object-store sink dropping the
    /// oldest objects of a full spool), for the sink's final report.
    fn records_lost_after_write(&self) -> u64 {
        0
    }

    /// The counter the sink adds the bytes it delivers to, as they go out: rendered lines for
    /// stdout and log streams, IPFIX messages for collectors, stored objects for object stores
    /// (README's metrics table says exactly what each counts).
    fn bytes_written(&self) -> Counter;

    /// The size of the sink's disk spool, for sinks that have one.
    fn spool_gauges(&self) -> Option<SpoolGauges> {
        None
    }
}

/// Renders records as text lines in the flow log's format.
#[derive(Clone, Debug)]
pub struct LineRenderer {
    pub format: Arc<RecordFormat>,
    pub metadata: Arc<Metadata>,
    pub envelope: Envelope,
}

/// How each record line is wrapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Envelope {
    /// The record line as it is.
    #[default]
    Plain,
    /// One JSON object per line, `{"message":"<record line>"}`, as log shippers and
    /// Firehose-style streams take them.
    JsonMessage,
    /// One JSON object per line with a member per field, named as the Parquet columns
    /// (`account_id`), numbers as numbers; `-` is null in numeric fields and `"-"` in string
    /// fields, as in Parquet objects.
    JsonFields,
}

impl Envelope {
    /// How a `--sink` value asks for this envelope.
    pub fn sink_prefix(self) -> &'static str {
        match self {
            Envelope::Plain => "",
            Envelope::JsonMessage => "json:",
            Envelope::JsonFields => "json+fields:",
        }
    }
}

impl LineRenderer {
    pub fn new(format: Arc<RecordFormat>, metadata: Arc<Metadata>) -> Self {
        Self {
            format,
            metadata,
            envelope: Envelope::Plain,
        }
    }

    pub fn with_envelope(mut self, envelope: Envelope) -> Self {
        self.envelope = envelope;
        self
    }

    pub fn render<'a>(&self, records: impl IntoIterator<Item = &'a FlowRecord>, out: &mut Vec<u8>) {
        match self.envelope {
            Envelope::Plain => {
                for record in records {
                    self.format.render(record, &self.metadata, out);
                }
            }
            Envelope::JsonMessage => {
                let mut line = Vec::with_capacity(256);
                for record in records {
                    line.clear();
                    self.format.render(record, &self.metadata, &mut line);
                    line.pop(); // the '\n'
                    out.extend_from_slice(b"{\"message\":");
                    // Writing into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *out, &*String::from_utf8_lossy(&line));
                    out.extend_from_slice(b"}\n");
                }
            }
            Envelope::JsonFields => {
                let mut text = Vec::with_capacity(64);
                for record in records {
                    out.push(b'{');
                    for (i, &field) in self.format.fields().iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.push(b'"');
                        out.extend_from_slice(field.column_name().as_bytes());
                        out.extend_from_slice(b"\":");
                        let value = self.format.value(field, record, &self.metadata);
                        match (value, field.column_type()) {
                            (FieldValue::Int(n), ColumnType::Int32 | ColumnType::Int64) => {
                                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes())
                            }
                            (FieldValue::Absent, ColumnType::Int32 | ColumnType::Int64) => {
                                out.extend_from_slice(b"null")
                            }
                            (value, _) => {
                                text.clear();
                                value.write_to(&mut text);
                                let text = String::from_utf8_lossy(&text);
                                // Writing into a Vec cannot fail.
                                let _ = serde_json::to_writer(&mut *out, &*text);
                            }
                        }
                    }
                    out.extend_from_slice(b"}\n");
                }
            }
        }
    }
}

/// Intervals a sink may fall behind before new ones are dropped (and counted) for it.
pub const QUEUE_INTERVALS: usize = 16;
/// Attempts at writing one interval before it is given up.
const MAX_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A running sink: its queue and its task.
pub struct SinkHandle {
    name: String,
    queue: mpsc::Sender<Arc<IntervalRecords>>,
    task: JoinHandle<SinkReport>,
    /// Records of intervals that found the queue full.
    dropped_at_queue: u64,
    live: LiveCounters,
}

/// A sink's counts as they happen, for the metrics endpoint: the driver's (the same counts the
/// final [`SinkReport`] gives) and those the sink keeps itself. Clones share the values.
#[derive(Clone, Debug, Default)]
pub struct LiveCounters {
    pub records_written: Counter,
    pub retries: Counter,
    pub write_errors: Counter,
    pub records_lost: Counter,
    /// Kept by the sink: [`Sink::bytes_written`].
    pub bytes_written: Counter,
    /// Kept by the sink's spool, if it has one.
    pub spool: Option<SpoolGauges>,
}

/// What a sink did over its life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    pub intervals_written: u64,
    pub records_written: u64,
    pub retries: u64,
    /// Records given up: queue full, or every attempt failed.
    pub records_lost: u64,
}

/// Starts `sink` as its own task.
pub fn spawn<S: Sink>(mut sink: S) -> SinkHandle {
    let name = sink.name();
    let (queue, mut incoming) = mpsc::channel::<Arc<IntervalRecords>>(QUEUE_INTERVALS);
    let task_name = name.clone();
    let live = LiveCounters {
        bytes_written: sink.bytes_written(),
        spool: sink.spool_gauges(),
        ..LiveCounters::default()
    };
    let task_live = live.clone();
    let task = tokio::spawn(async move {
        let mut report = SinkReport::default();
        while let Some(interval) = incoming.recv().await {
            write_with_retries(&mut sink, &task_name, interval, &mut report, &task_live).await;
        }
        if let Err(error) = sink.flush().await {
            tracing::error!(sink = %task_name, %error, "final flush failed");
        }
        report.records_lost += sink.records_lost_after_write();
        report
    });
    SinkHandle {
        name,
        queue,
        task,
        dropped_at_queue: 0,
        live,
    }
}

async fn write_with_retries<S: Sink>(
    sink: &mut S,
    name: &str,
    interval: Arc<IntervalRecords>,
    report: &mut SinkReport,
    live: &LiveCounters,
) {
    let records = interval.records.len() as u64;
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    for attempt in 1..=MAX_ATTEMPTS {
        match sink.write(Arc::clone(&interval)).await {
            Ok(()) => {
                report.intervals_written += 1;
                report.records_written += records;
                live.records_written.inc_by(records);
                return;
            }
            Err(SinkError::Retriable(error)) if attempt < MAX_ATTEMPTS => {
                tracing::warn!(sink = name, attempt, %error, retry_within = ?backoff.ceiling(), "write failed");
                report.retries += 1;
                live.retries.inc();
                live.write_errors.inc();
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => {
                tracing::error!(sink = name, %error, records, "write failed; records lost");
                report.records_lost += records;
                live.write_errors.inc();
                live.records_lost.inc_by(records);
                return;
            }
        }
    }
}

impl SinkHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sink's counts so far, updated as it writes.
    pub fn live(&self) -> &LiveCounters {
        &self.live
    }

    /// Queues an interval for this sink without waiting. If the sink is that far behind, the
    /// interval is not queued for it, and the loss is logged and returned.
    pub fn offer(&mut self, interval: &Arc<IntervalRecords>) -> Result<(), u64> {
        match self.queue.try_send(Arc::clone(interval)) {
            Ok(()) => Ok(()),
            Err(_) => {
                let lost = interval.records.len() as u64;
                self.dropped_at_queue += lost;
                self.live.records_lost.inc_by(lost);
                tracing::error!(
                    sink = %self.name,
                    records = lost,
                    "sink queue full; interval dropped for this sink"
                );
                Err(lost)
            }
        }
    }

    /// Closes the queue, lets the sink write what is queued and flush, and returns its report.
    pub async fn finish(self) -> SinkReport {
        drop(self.queue);
        match self.task.await {
            Ok(mut report) => {
                report.records_lost += self.dropped_at_queue;
                report
            }
            Err(error) => {
                tracing::error!(sink = %self.name, %error, "sink task failed");
                SinkReport::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::record::{Direction, Flow, RecordKind, Verdict};

    fn records() -> Vec<FlowRecord> {
        let flow = Flow {
            direction: Direction::Egress,
            src_addr: IpAddr::V4(Ipv4Addr::new(172, 31, 16, 139)),
            dst_addr: IpAddr::V4(Ipv4Addr::new(172, 31, 16, 21)),
            src_port: 20641,
            dst_port: 22,
            protocol: 6,
            packets: 20,
            bytes: 4249,
            verdict: Verdict::Accept,
            tcp_flags: 19,
            drop_reason: None,
        };
        vec![
            FlowRecord {
                interface: Arc::from("eth\"0"),
                ifindex: 2,
                start: 1418530010,
                end: 1418530070,
                kind: RecordKind::Flow(flow),
            },
            FlowRecord {
                interface: Arc::from("eth1"),
                ifindex: 3,
                start: 1431280876,
                end: 1431280934,
                kind: RecordKind::NoData,
            },
        ]
    }

    fn render(envelope: Envelope) -> String {
        let renderer = LineRenderer::new(
            Arc::new(RecordFormat::default()),
            Arc::new(Metadata {
                account_id: Some("123456789010".into()),
                ..Metadata::default()
            }),
        )
        .with_envelope(envelope);
        let mut out = Vec::new();
        renderer.render(&records(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_message_wraps_the_record_line_escaped() {
        assert_eq!(
            render(Envelope::JsonMessage),
            "{\"message\":\"2 123456789010 eth\\\"0 172.31.16.139 172.31.16.21 20641 22 6 20 \
             4249 1418530010 1418530070 ACCEPT OK\"}\n\
             {\"message\":\"2 123456789010 eth1 - - - - - - - 1431280876 1431280934 - NODATA\"}\n"
        );
    }

    #[test]
    fn json_fields_has_a_member_per_field_with_nulls_for_numeric_dashes() {
        assert_eq!(
            render(Envelope::JsonFields),
            "{\"version\":2,\"account_id\":\"123456789010\",\"interface_id\":\"eth\\\"0\",\
             \"srcaddr\":\"172.31.16.139\",\"dstaddr\":\"172.31.16.21\",\"srcport\":20641,\
             \"dstport\":22,\"protocol\":6,\"packets\":20,\"bytes\":4249,\"start\":1418530010,\
             \"end\":1418530070,\"action\":\"ACCEPT\",\"log_status\":\"OK\"}\n\
             {\"version\":2,\"account_id\":\"123456789010\",\"interface_id\":\"eth1\",\
             \"srcaddr\":\"-\",\"dstaddr\":\"-\",\"srcport\":null,\"dstport\":null,\
             \"protocol\":null,\"packets\":null,\"bytes\":null,\"start\":1431280876,\
             \"end\":1431280934,\"action\":\"-\",\"log_status\":\"NODATA\"}\n"
        );
    }
}
