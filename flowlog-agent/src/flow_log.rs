//! A flow log at run time: the interfaces its scope covers, what the drains counted for it
//! since its interval began, and its sinks.
//!
//! The datapath counts every packet once, whatever the flow logs: every drain is shared out,
//! each flow log taking the flows of its interfaces and traffic type. A flow log whose interval
//! is longer than the drain period adds drains up until its interval ends on the wall clock.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use flowlog_common::{
    flow::{FlowKey, PacketCount, Verdict},
    stats::Stat,
};

use crate::{
    agent::AgentError,
    cli::TrafficType,
    collector::{IntervalBuilder, unix_seconds},
    config::FlowLogConfig,
    datapath::DrainedEpoch,
    interfaces::Interface,
    metrics::{Metrics, SinkLabels},
    record::{IntervalRecords, RecordKind},
    sink::{
        self, Envelope, IpfixSink, LineRenderer, LogStreamSink, ObjectStoreSink, SinkHandle,
        SinkReport, SinkSpec, StdoutSink,
    },
};

pub struct FlowLog {
    pub config: FlowLogConfig,
    builder: IntervalBuilder,
    /// What the drains since the interval began counted for this flow log.
    pending: Option<DrainedEpoch>,
    /// Datapath-wide figures of those drains, for the interval's log line.
    drains: DrainTotals,
    /// Unix second at which the current interval ends.
    due: u64,
    sinks: Vec<SinkHandle>,
}

#[derive(Default)]
struct DrainTotals {
    entries: usize,
    time: Duration,
    not_flows: BTreeMap<Stat, PacketCount>,
}

impl FlowLog {
    /// Starts the flow log's sinks; its first interval begins `now`.
    pub async fn start(config: FlowLogConfig, now: SystemTime) -> Result<Self, AgentError> {
        let sinks = start_sinks(&config).await?;
        let due = next_multiple(unix_seconds(now), config.interval.as_secs());
        Ok(Self {
            builder: IntervalBuilder::new(now),
            config,
            pending: None,
            drains: DrainTotals::default(),
            due,
            sinks,
        })
    }

    pub fn name(&self) -> &str {
        self.config.name()
    }

    /// The flow log's sinks, for the metrics endpoint.
    pub fn sink_counters(&self) -> impl Iterator<Item = (SinkLabels, sink::LiveCounters)> + '_ {
        self.sinks.iter().map(|sink| {
            let labels = SinkLabels {
                flow_log: self.name().to_owned(),
                sink: sink.name().to_owned(),
            };
            (labels, sink.live().clone())
        })
    }

    /// Brings the flow log's interfaces in line with `attached` (those the datapath counts
    /// on now): the ones its scope matches join; the others leave, their counts so far still
    /// written under their names.
    pub fn follow(&mut self, attached: &[Interface]) {
        let wanted: Vec<&Interface> = attached
            .iter()
            .filter(|i| self.config.scope.matches(i))
            .collect();
        let leaving: Vec<u32> = self
            .builder
            .interfaces()
            .filter(|(ifindex, name)| {
                !wanted
                    .iter()
                    .any(|w| w.ifindex == *ifindex && *w.name == ***name)
            })
            .map(|(ifindex, _)| ifindex)
            .collect();
        for ifindex in leaving {
            self.builder.interface_detached(ifindex);
        }
        for interface in wanted {
            if !self.builder.has_interface(interface.ifindex) {
                self.builder
                    .interface_attached(interface.ifindex, &interface.name);
            }
        }
    }

    /// An interface a previous agent counted on that was deleted while no agent ran: if the
    /// scope would have selected it by its name, what was counted on it is this flow log's and
    /// is written under that name in the first interval. Returns whether it is.
    pub fn add_vanished(&mut self, ifindex: u32, name: &str) -> bool {
        let interface = Interface {
            name: name.to_owned(),
            ifindex,
            loopback: false,
            addresses: Vec::new(),
        };
        if !self.config.scope.matches(&interface) || self.builder.covers(ifindex) {
            return false;
        }
        self.builder.interface_attached(ifindex, name);
        self.builder.interface_detached(ifindex);
        true
    }

    /// Whether counts on this interface belong to the flow log.
    pub fn covers(&self, ifindex: u32) -> bool {
        self.builder.covers(ifindex)
    }

    /// Takes the flow log's share of a drain: the flows of its interfaces and traffic type,
    /// the SKIPDATA of its interfaces, and what no interface can be named for.
    pub fn absorb(
        &mut self,
        drained: &DrainedEpoch,
        not_flows: &BTreeMap<Stat, PacketCount>,
        drain_time: Duration,
    ) {
        let traffic_type = self.config.traffic_type;
        let share = DrainedEpoch {
            flows: drained
                .flows
                .iter()
                .filter(|(key, _)| self.covers(key.ifindex) && wanted(traffic_type, key))
                .map(|(key, counters)| (*key, *counters))
                .collect(),
            skipped: drained
                .skipped
                .iter()
                .filter(|(ifindex, _)| self.covers(**ifindex))
                .map(|(ifindex, count)| (*ifindex, *count))
                .collect(),
            ..drained.clone_without_flows()
        };
        self.take(share, drained.entries, not_flows, drain_time);
    }

    /// [`FlowLog::absorb`] for the last flow log, which may keep the drain itself (with a
    /// single flow log, nothing is copied).
    pub fn absorb_owned(
        &mut self,
        mut drained: DrainedEpoch,
        not_flows: &BTreeMap<Stat, PacketCount>,
        drain_time: Duration,
    ) {
        let traffic_type = self.config.traffic_type;
        let builder = &self.builder;
        drained
            .flows
            .retain(|key, _| builder.covers(key.ifindex) && wanted(traffic_type, key));
        drained
            .skipped
            .retain(|ifindex, _| builder.covers(*ifindex));
        let entries = drained.entries;
        self.take(drained, entries, not_flows, drain_time);
    }

    fn take(
        &mut self,
        mut share: DrainedEpoch,
        entries: usize,
        not_flows: &BTreeMap<Stat, PacketCount>,
        drain_time: Duration,
    ) {
        self.drains.entries += entries;
        self.drains.time += drain_time;
        for (stat, count) in not_flows {
            self.drains.not_flows.entry(*stat).or_default().add(count);
        }
        // The newer drain carries the times the interval ends with.
        if let Some(older) = self.pending.take() {
            share.absorb(older);
        }
        self.pending = Some(share);
    }

    /// Whether the interval ends at the drain of wall-clock second `boundary`.
    pub fn is_due(&self, boundary: u64) -> bool {
        boundary >= self.due
    }

    /// Builds the interval's records and hands them to the sinks; the next interval begins.
    /// Returns how many records it published.
    pub fn publish(&mut self, metrics: &Metrics) -> usize {
        let Some(pending) = self.pending.take() else {
            return 0;
        };
        let interval_secs = self.config.interval.as_secs();
        self.due = next_multiple(unix_seconds(pending.switched_at), interval_secs);
        let interval = Arc::new(self.builder.build(pending));
        let drains = std::mem::take(&mut self.drains);
        log_interval(self.config.name(), &interval, &drains);
        metrics.record_published(self.config.name(), interval.records.len());
        for sink in self.sinks.iter_mut() {
            let labels = SinkLabels {
                flow_log: self.config.name().to_owned(),
                sink: sink.name().to_owned(),
            };
            // A full queue is logged and counted by the handle; the drain never waits for a sink.
            match sink.offer(&interval) {
                Ok(()) => metrics.sink_records_offered.get_or_create(&labels).inc(),
                Err(_) => metrics.sink_intervals_dropped.get_or_create(&labels).inc(),
            };
        }
        interval.records.len()
    }

    /// Asks the sinks to open their files again before their next write (SIGHUP).
    pub fn reopen_files(&self) {
        for sink in &self.sinks {
            sink.reopen();
        }
    }

    /// Flushes and stops the sinks (after the last [`FlowLog::publish`]), all at once, by
    /// `deadline`: a sink still busy then is abandoned and what it could not deliver reported.
    pub async fn finish(self, deadline: tokio::time::Instant) -> Vec<(String, SinkReport)> {
        let flow_log = self.config.name().to_owned();
        let finishing: Vec<_> = self
            .sinks
            .into_iter()
            .map(|handle| {
                let name = handle.name().to_owned();
                (name, tokio::spawn(handle.finish(deadline)))
            })
            .collect();
        let mut reports = Vec::new();
        for (name, task) in finishing {
            let report = task.await.unwrap_or_default();
            tracing::info!(
                sink = %name,
                records = report.records_written,
                lost = report.records_lost,
                retries = report.retries,
                flow_log,
                "sink finished"
            );
            if report.records_not_delivered > 0 {
                tracing::error!(
                    sink = %name,
                    records = report.records_not_delivered,
                    flow_log,
                    "records not delivered: the sink was still retrying when the shutdown deadline passed"
                );
            }
            reports.push((name, report));
        }
        reports
    }
}

/// Whether the flow log's traffic type keeps a flow with this key.
fn wanted(traffic_type: TrafficType, key: &FlowKey) -> bool {
    let reject = Verdict::try_from(key.verdict).is_ok_and(|v| v.is_reject());
    match traffic_type {
        TrafficType::All => true,
        TrafficType::Accept => !reject,
        TrafficType::Reject => reject,
    }
}

/// The first multiple of `period` seconds after `now` (intervals end on the wall clock: a 60 s
/// interval on every minute).
pub fn next_multiple(now: u64, period: u64) -> u64 {
    let period = period.max(1);
    (now / period + 1) * period
}

async fn start_sinks(config: &FlowLogConfig) -> Result<Vec<SinkHandle>, AgentError> {
    let renderer = LineRenderer::new(Arc::clone(&config.format), Arc::clone(&config.metadata));
    let traffic_type = config.traffic_type.file_name_part();
    let log_streams = |directory: &std::path::PathBuf, renderer: &LineRenderer| {
        LogStreamSink::new(directory.clone(), traffic_type, renderer.clone())
            .map(sink::spawn)
            .map_err(|error| AgentError::Sink {
                sink: spec_name(directory, renderer),
                error,
            })
    };
    let mut handles = Vec::new();
    for spec in &config.sinks {
        let handle = match spec {
            SinkSpec::Stdout => sink::spawn(StdoutSink::new(renderer.clone())),
            SinkSpec::JsonStdout(envelope) => {
                sink::spawn(StdoutSink::new(renderer.clone().with_envelope(*envelope)))
            }
            SinkSpec::LogStreams(directory) => log_streams(directory, &renderer)?,
            SinkSpec::JsonLogStreams(envelope, directory) => {
                log_streams(directory, &renderer.clone().with_envelope(*envelope))?
            }
            SinkSpec::ObjectStore(url) => {
                let layout = config.key_layout(url);
                let sink =
                    ObjectStoreSink::start(url, layout, &config.archive, renderer.clone()).await?;
                sink::spawn(sink)
            }
            SinkSpec::Ipfix(spec) => sink::spawn(IpfixSink::new(spec.clone())),
        };
        handles.push(handle);
    }
    Ok(handles)
}

fn spec_name(directory: &std::path::Path, renderer: &LineRenderer) -> String {
    match renderer.envelope {
        Envelope::Plain => format!("dir:{}", directory.display()),
        json => format!("{}dir:{}", json.sink_prefix(), directory.display()),
    }
}

fn log_interval(flow_log: &str, interval: &IntervalRecords, drains: &DrainTotals) {
    let (mut flows, mut idle, mut skipped) = (0, 0, 0u64);
    let mut kernel_drops: BTreeMap<&str, u64> = BTreeMap::new();
    for record in &interval.records {
        match &record.kind {
            RecordKind::Flow(flow) => {
                flows += 1;
                if let Some(reason) = flow.drop_reason {
                    *kernel_drops.entry(reason).or_default() += flow.packets;
                }
            }
            RecordKind::NoData => idle += 1,
            RecordKind::SkipData { packets, .. } => skipped += packets,
        }
    }
    let stat = |s: Stat| drains.not_flows.get(&s).map_or(0, |c| c.packets);
    tracing::info!(
        flow_log,
        start = interval.start,
        end = interval.end,
        records = interval.records.len(),
        flows,
        idle_interfaces = idle,
        skipped_packets = skipped,
        map_entries = drains.entries,
        non_ip_packets = stat(Stat::NonIp),
        malformed_packets = stat(Stat::Malformed),
        excluded_packets = stat(Stat::Excluded),
        kernel_drop_packets = kernel_drops.values().sum::<u64>(),
        kernel_drops = %KernelDrops(&kernel_drops),
        drain_ms = drains.time.as_millis() as u64,
        "interval written"
    );
}

/// Kernel drops by reason in the interval log line: `netfilter-drop:400,no-socket:3`, or `-`.
struct KernelDrops<'a>(&'a BTreeMap<&'a str, u64>);

impl std::fmt::Display for KernelDrops<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("-");
        }
        for (i, (reason, packets)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{reason}:{packets}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_end_on_wall_clock_multiples() {
        assert_eq!(next_multiple(120, 60), 180);
        assert_eq!(next_multiple(150, 60), 180);
        assert_eq!(next_multiple(3, 2), 4);
        assert_eq!(next_multiple(7, 1), 8);
    }
}
