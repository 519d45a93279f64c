//! The agent's metrics, served in the Prometheus/OpenMetrics text format on `--metrics ADDR`
//! (`GET /metrics`; loopback by default). Counters only grow; gauges hold the latest interval
//! (the spool gauges: the spool as it is).
//! Every metric is listed with its meaning in README.md.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    datapath::DrainedEpoch,
    record::{Verdict, action, reject_reason},
    sink::LiveCounters,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub action: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub flow_log: String,
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLogLabels {
    pub flow_log: String,
}

/// Every metric the agent exports.
#[derive(Default)]
pub struct Metrics {
    pub intervals: Counter,
    pub records: Counter,
    pub packets: Family<VerdictLabels, Counter>,
    pub bytes: Family<VerdictLabels, Counter>,
    pub skipped_packets: Counter,
    pub skipped_bytes: Counter,
    pub not_flows: Family<KindLabels, Counter>,
    pub kernel_drop_packets: Family<ReasonLabels, Counter>,
    pub kernel_drop_bytes: Family<ReasonLabels, Counter>,
    pub kernel_drops_uncovered: Counter,
    pub kernel_drops_unrecorded: Counter,
    pub kernel_drops_missed: Counter,
    pub flows: Gauge,
    pub map_entries: Gauge,
    pub map_capacity: Gauge,
    pub drain_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub drain_seconds_total: Counter<f64, std::sync::atomic::AtomicU64>,
    pub interfaces_attached: Gauge,
    pub policy_reloads: Counter,
    pub policy_reload_failures: Counter,
    pub flow_log_records: Family<FlowLogLabels, Counter>,
    pub flow_logs: Gauge,
    pub config_reloads: Counter,
    pub config_reload_failures: Counter,
    pub sink_intervals_offered: Family<SinkLabels, Counter>,
    pub sink_intervals_dropped: Family<SinkLabels, Counter>,
    /// Each sink's live counts, by flow log and sink name.
    pub sinks: std::sync::Mutex<Vec<(SinkLabels, LiveCounters)>>,
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("flowlog");
        r.register(
            "intervals",
            "Drains of the flow maps (every interval of the shortest flow log)",
            self.intervals.clone(),
        );
        r.register(
            "records",
            "Records handed to the sinks, all flow logs together",
            self.records.clone(),
        );
        r.register(
            "flow_log_records",
            "Records handed to a flow log's sinks (after its scope and traffic type)",
            self.flow_log_records.clone(),
        );
        r.register("flow_logs", "Flow logs running", self.flow_logs.clone());
        r.register(
            "config_reloads",
            "Configuration files applied by SIGHUP",
            self.config_reloads.clone(),
        );
        r.register(
            "config_reload_failures",
            "SIGHUP reloads refused (the previous configuration stayed)",
            self.config_reload_failures.clone(),
        );
        r.register(
            "packets",
            "Packets counted, by verdict (action and reject reason)",
            self.packets.clone(),
        );
        r.register("bytes", "IP bytes counted, by verdict", self.bytes.clone());
        r.register(
            "skipped_packets",
            "Packets that found the flow map full (SKIPDATA)",
            self.skipped_packets.clone(),
        );
        r.register(
            "skipped_bytes",
            "Bytes of those packets (SKIPDATA)",
            self.skipped_bytes.clone(),
        );
        r.register(
            "datapath_not_flow_packets",
            "Packets seen but not counted as flows: non_ip, malformed, excluded",
            self.not_flows.clone(),
        );
        r.register(
            "kernel_drop_packets",
            "Packets the kernel dropped on the logged interfaces (REJECT records), by the kernel's drop reason",
            self.kernel_drop_packets.clone(),
        );
        r.register(
            "kernel_drop_bytes",
            "IP bytes of those packets, by reason",
            self.kernel_drop_bytes.clone(),
        );
        r.register(
            "kernel_drops_uncovered_packets",
            "Kernel drops whose ACCEPT count was not in the same drain (counted in an earlier interval, or never seen by flowlog's programs)",
            self.kernel_drops_uncovered.clone(),
        );
        r.register(
            "kernel_drops_missed",
            "Drops the kernel did not show the drop program (it interrupted itself on a CPU and was not re-entered)",
            self.kernel_drops_missed.clone(),
        );
        r.register(
            "kernel_drops_unrecorded_packets",
            "Kernel drops that found the drop map full: not recorded",
            self.kernel_drops_unrecorded.clone(),
        );
        r.register(
            "flows",
            "Flows (summed over CPUs) in the last drain",
            self.flows.clone(),
        );
        r.register("flow_map_entries", "Entries read from the epoch map of the last interval (a flow has one per CPU that saw it)", self.map_entries.clone());
        r.register(
            "flow_map_capacity",
            "Entries each epoch map holds (--max-flows)",
            self.map_capacity.clone(),
        );
        r.register(
            "drain_duration_seconds",
            "Time the last drain took",
            self.drain_seconds.clone(),
        );
        r.register(
            "drain_seconds",
            "Time spent draining, in total",
            self.drain_seconds_total.clone(),
        );
        r.register(
            "interfaces_attached",
            "Interfaces with the programs attached",
            self.interfaces_attached.clone(),
        );
        r.register(
            "policy_reloads",
            "Policies published by SIGHUP",
            self.policy_reloads.clone(),
        );
        r.register(
            "policy_reload_failures",
            "SIGHUP reloads refused (the previous policy stayed)",
            self.policy_reload_failures.clone(),
        );
        r.register(
            "sink_intervals_offered",
            "Intervals handed to each sink's queue",
            self.sink_intervals_offered.clone(),
        );
        r.register(
            "sink_intervals_dropped",
            "Intervals a sink's full queue refused",
            self.sink_intervals_dropped.clone(),
        );
        let sinks = self.sinks.lock().expect("metrics lock");
        for (labels, live) in sinks.iter() {
            let sub = r
                .sub_registry_with_label(("flow_log".into(), labels.flow_log.clone().into()))
                .sub_registry_with_label(("sink".into(), labels.sink.clone().into()));
            sub.register(
                "sink_records_written",
                "Records a sink wrote (object stores: closed into an object for the spool)",
                live.records_written.clone(),
            );
            sub.register(
                "sink_retries",
                "Writes a sink retried after a retriable error",
                live.retries.clone(),
            );
            sub.register(
                "sink_write_errors",
                "Failed writes, retried or not",
                live.write_errors.clone(),
            );
            sub.register(
                "sink_records_lost",
                "Records a sink gave up (every attempt failed, or its queue was full)",
                live.records_lost.clone(),
            );
            sub.register(
                "sink_bytes_written",
                "Bytes a sink delivered: rendered lines (stdout, log streams), IPFIX messages \
                 (collectors), objects the store accepted (object stores)",
                live.bytes_written.clone(),
            );
            sub.register(
                "sink_records_waiting",
                "Records in a sink's queue or being retried, waiting to be written",
                live.records_waiting.clone(),
            );
            if let Some(spool) = &live.spool {
                sub.register(
                    "sink_spool_bytes",
                    "Bytes of the objects waiting in an object-store sink's spool directory",
                    spool.bytes.clone(),
                );
                sub.register(
                    "sink_spool_objects",
                    "Objects waiting in an object-store sink's spool directory",
                    spool.objects.clone(),
                );
            }
        }
        drop(sinks);
        r
    }

    /// Adds what one drain of the flow maps counted (before any flow log's scope or traffic
    /// type: every packet once).
    pub fn record_drain(&self, drained: &DrainedEpoch) {
        self.intervals.inc();
        for (key, counters) in &drained.flows {
            let Ok(verdict) = Verdict::try_from(key.verdict) else {
                continue;
            };
            let reason = match verdict {
                Verdict::KernelDrop => Some(crate::kernel_drops::reason_name(key.cpu)),
                verdict => reject_reason(verdict),
            };
            let labels = VerdictLabels {
                action: action(verdict).to_owned(),
                reason: reason.unwrap_or("-").to_owned(),
            };
            self.packets.get_or_create(&labels).inc_by(counters.packets);
            self.bytes.get_or_create(&labels).inc_by(counters.bytes);
        }
        let drops = &drained.kernel_drops;
        for (reason, count) in &drops.by_reason {
            let labels = ReasonLabels {
                reason: (*reason).to_owned(),
            };
            self.kernel_drop_packets
                .get_or_create(&labels)
                .inc_by(count.packets);
            self.kernel_drop_bytes
                .get_or_create(&labels)
                .inc_by(count.bytes);
        }
        self.kernel_drops_uncovered.inc_by(drops.uncovered.packets);
        self.kernel_drops_unrecorded
            .inc_by(drops.unrecorded.packets);
        for count in drained.skipped.values().chain([&drained.unattributed]) {
            self.skipped_packets.inc_by(count.packets);
            self.skipped_bytes.inc_by(count.bytes);
        }
        self.flows.set(drained.flows.len() as i64);
    }

    /// Adds the records a flow log handed to its sinks.
    pub fn record_published(&self, flow_log: &str, records: usize) {
        self.records.inc_by(records as u64);
        self.flow_log_records
            .get_or_create(&FlowLogLabels {
                flow_log: flow_log.to_owned(),
            })
            .inc_by(records as u64);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())
            .expect("writing to a String cannot fail");
        out
    }
}

/// Connections served at once; more are accepted and closed at once, so idle or slow clients
/// cannot hold more descriptors than this.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request head, and the response to go out.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits after a failed `accept` (out of descriptors, say): doubling from the first to the
/// last, so a listener that keeps failing never spins.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Serves `GET /metrics` on `address` until the runtime ends.
pub async fn serve(address: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, metrics));
    Ok(bound)
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut refused = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF.0;
                stream
            }
            Err(error) => {
                // The connection stays in the backlog; accepting again at once would spin.
                tracing::warn!(%error, retry_in = ?backoff, "metrics: accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    refused_total = refused,
                    max = MAX_CONNECTIONS,
                    "metrics: too many connections at once; closing new ones"
                );
            }
            drop(stream);
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            respond(stream, &metrics).await;
            drop(slot);
        });
    }
}

/// Reads one request head and answers it, each within [`IO_TIMEOUT`].
async fn respond(mut stream: TcpStream, metrics: &Metrics) {
    // The request head, up to its blank line (a client may send it in pieces).
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    if !matches!(tokio::time::timeout(IO_TIMEOUT, read_head).await, Ok(true)) {
        // Gone, or idle: close without an answer.
        return;
    }
    let line = String::from_utf8_lossy(&request);
    let (status, content_type, body) = if line.starts_with("GET /metrics ") {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        )
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.write_all(response.as_bytes())).await;
}
