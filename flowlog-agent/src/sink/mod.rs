//! Where records go. A sink implements [`Sink`]; [`spawn`] runs it as its own task behind its
//! own bounded queue (`driver`), so a slow sink never stalls the drain or the other sinks.
//!
//! The delivery contract every sink keeps, so that counts are exact under faults:
//! - a write is all-or-nothing per record line (per object for object stores): a failed
//!   attempt leaves no torn line behind, and a retry of the same interval delivers only what
//!   the earlier attempts did not (log streams remember which streams they wrote, IPFIX which
//!   messages, stdout how many bytes);
//! - transient errors are retried by the driver with capped backoff and full jitter until they
//!   clear, while later intervals wait in the queue; permanent ones give the interval up at
//!   once; either way [`Sink::give_up`] says what of it was delivered, so "lost" is exactly
//!   what is missing.
//!
//! Object-store sinks (`object`) batch intervals into objects and add a disk spool and an
//! uploader of their own behind the same driver, so a store outage never blocks the queue; the
//! CloudWatch Logs sink (`cloudwatch`) spools its PutLogEvents batches the same way.

mod backoff;
pub mod cloudwatch;
mod driver;
pub mod ipfix;
mod log_stream;
pub mod object;
pub mod secrets;
mod spec;
mod start;
mod stdout;

use std::{future::Future, sync::Arc};

use prometheus_client::metrics::counter::Counter;

pub use backoff::Backoff;
pub use cloudwatch::CloudWatchSink;
pub use driver::{
    FIRST_BACKOFF, LiveCounters, MAX_BACKOFF, QUEUE_INTERVALS, SHUTDOWN_DEADLINE, SinkHandle,
    SinkReport, spawn,
};
pub use ipfix::IpfixSink;
pub use log_stream::LogStreamSink;
pub use object::{ObjectStoreSink, SpoolGauges};
pub use spec::{
    DEFAULT_LOG_DIR, SinkParser, SinkSpec, SinkSpecError, check_duplicate_sinks, default_sinks,
};
pub use start::{Health, SinkContext};
pub use stdout::StdoutSink;

use crate::{
    format::{ColumnType, FieldValue, RecordFormat},
    record::{FlowRecord, IntervalRecords, Metadata},
};

/// A sink that could not start (the agent, or a reload, refuses to run it).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("sink {sink}: {error}")]
    Io { sink: String, error: std::io::Error },
    #[error(transparent)]
    Object(#[from] object::ObjectSinkError),
    #[error(transparent)]
    CloudWatch(#[from] cloudwatch::CloudWatchError),
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// May clear by itself (a full disk, a collector away, a directory being recreated): the
    /// driver retries the interval until it is written.
    #[error("{0}")]
    Retriable(String),
    /// Trying again cannot help (standard output closed, a bad destination): the interval is
    /// given up at once and its undelivered records counted lost.
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
    /// How the sink is named in logs and metrics (`stdout`, `dir:/var/log/flowlog`); never
    /// holds a secret.
    fn name(&self) -> String;

    /// Writes the records of one interval. After an error the driver calls `write` again with
    /// the same interval (the same `Arc`), and the sink delivers only what earlier attempts
    /// did not.
    fn write(
        &mut self,
        interval: Arc<IntervalRecords>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The driver gives `interval` up (a permanent error, or the agent stopping): how many of
    /// its records earlier attempts delivered. The sink forgets its progress on it.
    fn give_up(&mut self, interval: &IntervalRecords) -> u64 {
        let _ = interval;
        0
    }

    /// Makes everything written so far durable where it goes, by `deadline`; called at
    /// shutdown.
    fn flush(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Files should be opened again before the next write (SIGHUP, after logrotate).
    fn reopen(&mut self) {}

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
                interface_type: None,
                start: 1418530010,
                end: 1418530070,
                kind: RecordKind::Flow(flow),
            },
            FlowRecord {
                interface: Arc::from("eth1"),
                ifindex: 3,
                interface_type: None,
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

    /// Fields of versions 7 to 11 carry AWS's column names: strings as strings (`-` where
    /// flowlog has no value), `encryption-status` (INT_32) as null.
    #[test]
    fn json_fields_carry_the_fields_of_versions_7_to_11() {
        let renderer = LineRenderer::new(
            Arc::new(
                "${version} ${ecs-task-id} ${resource-id} ${encryption-status} ${instance-tag} \
                 ${interface-type} ${next-hop-vpc-id}"
                    .parse::<RecordFormat>()
                    .unwrap(),
            ),
            Arc::new(Metadata {
                resource_id: Some("i-0123456789abcdef0".into()),
                instance_tag: Some("web".into()),
                ..Metadata::default()
            }),
        )
        .with_envelope(Envelope::JsonFields);
        let mut records = records();
        records.truncate(1);
        records[0].interface_type = Some("veth");
        let mut out = Vec::new();
        renderer.render(&records, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"version\":11,\"ecs_task_id\":\"-\",\"resource_id\":\"i-0123456789abcdef0\",\
             \"encryption_status\":null,\"instance_tag\":\"web\",\"interface_type\":\"veth\",\
             \"next_hop_vpc_id\":\"-\"}\n"
        );
    }
}
