//! `flowlog-agent run`: the [`Agent`] owns the datapath and the flow logs. It starts (plan,
//! then commit: `start.rs`), ends an interval at every tick (drain, share out to the flow logs,
//! publish those that are due), follows interfaces (`follow.rs`), reloads on SIGHUP
//! (`reload.rs`), and stops on SIGINT or SIGTERM: detach or leave the programs, drain what is
//! left, and let every sink finish within [`SHUTDOWN_DEADLINE`] (a second signal exits at once).

mod follow;
mod notify;
mod reload;
mod signals;
mod start;
mod stats;

use std::{
    io,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowlog_common::{flow::PacketCount, stats::Stat};

pub use start::{Plan, Started, VanishedInterface, attach_one};

use crate::{
    cli::RunArgs,
    config::RunConfig,
    datapath::{Datapath, DatapathError, DrainedEpoch, KernelLogger, owner::ForeignProgram},
    flow_log::{FlowLog, next_multiple},
    interval,
    metrics::{KindLabels, Metrics},
    privileges::MissingCapability,
    sink::{SHUTDOWN_DEADLINE, SinkReport, StartError},
    sys,
    values::OnExit,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Privileges(#[from] MissingCapability),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("no such interface: {}", .0.join(", "))]
    NoSuchInterface(Vec<String>),
    #[error("listing interfaces: {0}")]
    ListInterfaces(io::Error),
    #[error(transparent)]
    Sink(#[from] StartError),
    #[error("installing signal handlers: {0}")]
    Signals(io::Error),
    #[error("{0}")]
    Exclusions(String),
    #[error("{0}")]
    Plan(String),
    #[error("watching interfaces (rtnetlink): {0}")]
    LinkWatch(io::Error),
    #[error("--metrics {address}: {error}")]
    Metrics {
        address: std::net::SocketAddr,
        error: io::Error,
    },
    #[error(
        "flowlog programs this agent does not own are attached (another --pin-dir, or an agent without pins left them): {}; remove them with `flowlog-agent detach --pin-dir DIR` for their pin directory, or start with --take-over to replace them",
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Foreign(Vec<ForeignProgram>),
    #[error("interface {interface}: {message}")]
    Hook { interface: String, message: String },
}

/// What a run did, for the last log line and for tests.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub intervals: u64,
    pub records: u64,
    pub sinks: Vec<(String, SinkReport)>,
}

/// The running agent: its datapath, its flow logs and what it reports about them.
pub struct Agent {
    config: RunConfig,
    /// The command line, resolved again with the file on SIGHUP.
    args: RunArgs,
    datapath: Datapath,
    flow_logs: Vec<FlowLog>,
    stats: stats::StatsDelta,
    metrics: Arc<Metrics>,
    /// A previous agent's counts not yet written, for the first interval.
    leftovers: Option<DrainedEpoch>,
    summary: RunSummary,
}

/// Runs the agent on `config`, resolved from `args`, until SIGINT or SIGTERM.
pub async fn run(args: RunArgs, config: RunConfig) -> Result<RunSummary, AgentError> {
    let (agent, inputs) = Agent::start(args, config).await?;
    agent.run(inputs).await
}

/// What wakes the agent besides its tick.
struct Inputs {
    signals: signals::Signals,
    links: follow::LinkWatcher,
}

impl Agent {
    /// Until SIGINT or SIGTERM: an interval ends at every tick; interface changes and SIGHUP are
    /// handled as they come.
    async fn run(mut self, mut inputs: Inputs) -> Result<RunSummary, AgentError> {
        loop {
            let tick = self.config.tick();
            let now = SystemTime::now();
            let wait = until_next_boundary(now, tick);
            let boundary = next_multiple(interval::unix_seconds(now), tick.as_secs());
            tokio::select! {
                _ = tokio::time::sleep(wait) => self.end_interval(boundary)?,
                changed = inputs.links.changed() => {
                    if let Err(error) = changed {
                        tracing::error!(%error, "watching interfaces failed; the interface set is frozen");
                        inputs.links.stop();
                    }
                    self.follow_interfaces();
                }
                signal = inputs.signals.next() => match signal {
                    signals::Signal::Reload => {
                        notify::notify("RELOADING=1");
                        self.reload().await;
                        notify::notify("READY=1");
                    }
                    signals::Signal::Stop(name) => {
                        notify::notify("STOPPING=1");
                        tracing::info!(
                            signal = name,
                            deadline_s = SHUTDOWN_DEADLINE.as_secs(),
                            "stopping: final drain, then the sinks finish within the deadline (a second signal exits at once)"
                        );
                        break;
                    }
                },
            }
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
        let drained = self.final_drain()?;
        self.share_out(drained, Instant::now());
        for flow_log in &mut self.flow_logs {
            self.summary.records += flow_log.publish(&self.metrics) as u64;
        }
        inputs.signals.exit_on_next_stop();
        Ok(self.stop(deadline).await)
    }

    /// Ends the current epoch: drains it, shares it out, and publishes the flow logs whose
    /// interval ends at wall-clock second `boundary`.
    fn end_interval(&mut self, boundary: u64) -> Result<(), AgentError> {
        let started = Instant::now();
        let drained = tokio::task::block_in_place(|| self.datapath.drain_interval())?;
        self.share_out(drained, started);
        for flow_log in &mut self.flow_logs {
            if flow_log.is_due(boundary) {
                self.summary.records += flow_log.publish(&self.metrics) as u64;
            }
        }
        Ok(())
    }

    /// Shares a drain out to the flow logs (with a previous agent's leftovers, the first time),
    /// and counts it for the metrics.
    fn share_out(&mut self, mut drained: DrainedEpoch, started: Instant) {
        if let Some(leftovers) = self.leftovers.take() {
            drained.absorb(leftovers);
        }
        let drain_time = started.elapsed();
        let not_flows = self.stats.update(&mut self.datapath);
        let m = &self.metrics;
        m.record_drain(&drained);
        m.map_entries.set(drained.entries as i64);
        m.drain_seconds.set(drain_time.as_secs_f64());
        m.drain_seconds_total.inc_by(drain_time.as_secs_f64());
        for (stat, count) in &not_flows {
            let kind = match stat {
                Stat::NonIp => "non_ip",
                Stat::Malformed => "malformed",
                Stat::Excluded => "excluded",
            };
            m.not_flows
                .get_or_create(&KindLabels { kind: kind.into() })
                .inc_by(count.packets);
        }
        self.summary.intervals += 1;
        // Counts on an interface no flow log covers (left by a previous agent's configuration)
        // are reported, not silently dropped.
        let mut orphaned = PacketCount::default();
        for (key, counters) in &drained.flows {
            if !self.flow_logs.iter().any(|f| f.covers(key.ifindex)) {
                orphaned.add(&PacketCount {
                    packets: counters.packets,
                    bytes: counters.bytes,
                });
            }
        }
        drained.kernel_drops.log_losses();
        if orphaned.packets != 0 {
            tracing::warn!(
                packets = orphaned.packets,
                bytes = orphaned.bytes,
                "counted on interfaces no flow log covers any more (a previous configuration's): not written"
            );
        }
        if let Some((last, others)) = self.flow_logs.split_last_mut() {
            for flow_log in others {
                flow_log.interval().absorb(&drained, &not_flows, drain_time);
            }
            last.interval()
                .absorb_owned(drained, &not_flows, drain_time);
        }
    }

    /// The last drain. With the programs kept (`--on-exit keep` and a pin directory) they go on
    /// counting into the other epoch, which the next agent drains: everything counted before
    /// the switch is written now, the rest later. Otherwise nothing counts any more once the
    /// programs are detached, so both epochs are drained completely.
    fn final_drain(&mut self) -> Result<DrainedEpoch, AgentError> {
        let datapath = &mut self.datapath;
        let keep = self.config.on_exit == OnExit::Keep && datapath.has_pinned_links();
        // Its link is not pinned: stopped before the last switch, so the drops of the epoch the
        // programs leave behind are all in the maps drained now.
        datapath.detach_kernel_drops();
        if keep {
            datapath.detach_unpinned()?;
            let drained = tokio::task::block_in_place(|| datapath.drain_interval())?;
            datapath.leave_pinned_attached();
            tracing::info!(
                pin_dir = %self.config.pin_dir.as_deref().unwrap_or(Path::new("")).display(),
                "programs stay attached and keep counting until the next agent (`flowlog-agent detach` removes them)"
            );
            Ok(drained)
        } else {
            datapath.detach_all()?;
            Ok(tokio::task::block_in_place(|| {
                datapath.drain_all_after_detach()
            })?)
        }
    }

    /// Lets every sink of every flow log finish at once, within the one deadline.
    async fn stop(self, deadline: tokio::time::Instant) -> RunSummary {
        let Agent {
            datapath,
            flow_logs,
            mut summary,
            ..
        } = self;
        drop(datapath);
        let finishing: Vec<_> = flow_logs
            .into_iter()
            .map(|flow_log| tokio::spawn(flow_log.finish(deadline)))
            .collect();
        for task in finishing {
            summary.sinks.extend(task.await.unwrap_or_default());
        }
        let not_delivered: u64 = summary
            .sinks
            .iter()
            .map(|(_, r)| r.records_not_delivered)
            .sum();
        let lost: u64 = summary.sinks.iter().map(|(_, r)| r.records_lost).sum();
        if not_delivered > 0 {
            tracing::error!(
                records = not_delivered,
                "stopped with records not delivered (see each sink's line above)"
            );
        }
        tracing::info!(
            intervals = summary.intervals,
            records = summary.records,
            sink_records_lost = lost,
            "stopped"
        );
        summary
    }

    /// The sinks of every flow log, for the metrics endpoint.
    fn publish_sink_metrics(&self) {
        *self.metrics.sinks.lock().expect("metrics lock") = self
            .flow_logs
            .iter()
            .flat_map(FlowLog::sink_counters)
            .collect();
        self.metrics.flow_logs.set(self.flow_logs.len() as i64);
    }
}

/// Time until the next multiple of `interval` since the Unix epoch, so intervals line up with
/// the wall clock (a 60 s interval ends on every minute).
fn until_next_boundary(now: SystemTime, interval: Duration) -> Duration {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let period = interval.as_nanos().max(1);
    let into_period = since_epoch.as_nanos() % period;
    Duration::from_nanos((period - into_period) as u64)
}

/// Forwards the kernel programs' aya-log messages to the agent's log.
fn spawn_kernel_log_reader(logger: KernelLogger) {
    let Ok(mut readable) = sys::ready::readable(logger) else {
        tracing::warn!("cannot poll the eBPF log ring buffer; kernel-side messages are lost");
        return;
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = readable.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_end_on_wall_clock_multiples() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
        let minute = Duration::from_secs(60);
        assert_eq!(until_next_boundary(at(120, 0), minute), minute);
        assert_eq!(
            until_next_boundary(at(150, 500), minute),
            Duration::from_millis(29_500)
        );
        assert_eq!(
            until_next_boundary(at(3, 250), Duration::from_secs(2)),
            Duration::from_millis(750)
        );
    }
}
