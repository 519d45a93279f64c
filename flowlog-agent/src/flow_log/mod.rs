//! A flow log at run time: its interval in progress ([`Accumulator`]: the interfaces its scope
//! covers, what the drains counted for it since its interval began) and its sinks.

mod accumulator;

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use flowlog_common::stats::Stat;

pub use accumulator::{Accumulator, DrainTotals, next_multiple};

use crate::{
    config::FlowLogConfig,
    interfaces::Interface,
    metrics::{Metrics, SinkLabels},
    record::{IntervalRecords, RecordKind},
    sink::{self, SinkHandle, SinkReport, StartError},
};

pub struct FlowLog {
    pub config: FlowLogConfig,
    interval: Accumulator,
    sinks: Vec<SinkHandle>,
}

impl FlowLog {
    /// Starts the flow log's sinks; its first interval begins `now`.
    pub async fn start(config: FlowLogConfig, now: SystemTime) -> Result<Self, StartError> {
        let sinks = start_sinks(&config).await?;
        let interval = Accumulator::new(
            config.scope.clone(),
            config.traffic_type,
            config.interval,
            now,
        );
        Ok(Self {
            config,
            interval,
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

    /// Brings the flow log's interfaces in line with `attached` ([`Accumulator::follow`]).
    pub fn follow(&mut self, attached: &[Interface]) {
        self.interval.follow(attached);
    }

    /// See [`Accumulator::add_vanished`].
    pub fn add_vanished(&mut self, ifindex: u32, name: &str) -> bool {
        self.interval.add_vanished(ifindex, name)
    }

    /// Whether counts on this interface belong to the flow log.
    pub fn covers(&self, ifindex: u32) -> bool {
        self.interval.covers(ifindex)
    }

    /// The flow log's interval in progress, to share drains out to.
    pub fn interval(&mut self) -> &mut Accumulator {
        &mut self.interval
    }

    /// Whether the interval ends at the drain of wall-clock second `boundary`.
    pub fn is_due(&self, boundary: u64) -> bool {
        self.interval.is_due(boundary)
    }

    /// Builds the interval's records and hands them to the sinks; the next interval begins.
    /// Returns how many records it published.
    pub fn publish(&mut self, metrics: &Metrics) -> usize {
        let Some((records, drains)) = self.interval.end_interval() else {
            return 0;
        };
        let interval = Arc::new(records);
        log_interval(self.config.name(), &interval, &drains);
        metrics.record_published(self.config.name(), interval.records.len());
        for sink in self.sinks.iter_mut() {
            let labels = SinkLabels {
                flow_log: self.config.name().to_owned(),
                sink: sink.name().to_owned(),
            };
            // A full queue is logged and counted by the handle; the drain never waits for a sink.
            match sink.offer(&interval) {
                Ok(()) => metrics.sink_intervals_offered.get_or_create(&labels).inc(),
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

async fn start_sinks(config: &FlowLogConfig) -> Result<Vec<SinkHandle>, StartError> {
    let context = config.sink_context();
    let mut handles = Vec::new();
    for spec in &config.sinks {
        handles.push(spec.start(&context).await?);
    }
    Ok(handles)
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
