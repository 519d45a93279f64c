//! `flowlog-agent run`: load, attach, and every interval drain, build records and hand them to
//! the sinks; on SIGINT or SIGTERM detach, drain what is left, and let every sink finish within
//! [`SHUTDOWN_DEADLINE`] (a second signal exits at once).

use std::{
    collections::BTreeMap,
    io,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use flowlog_common::{flow::PacketCount, maps::flow_maps_memory_bytes, stats::Stat};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::OnExit,
    collector,
    config::RunConfig,
    datapath::{Datapath, DatapathError, DrainedEpoch, KernelLogger, owner::ForeignProgram},
    flow_log::{FlowLog, next_multiple},
    interfaces::{self, Interface},
    metrics::{self, KindLabels, Metrics},
    policy::{Exclusion, Policy},
    privileges::{self, MissingCapability},
    sink::{SHUTDOWN_DEADLINE, SinkReport, object::ObjectSinkError},
    startup::{self, Plan, Started},
    sys,
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
    #[error("sink {sink}: {error}")]
    Sink { sink: String, error: io::Error },
    #[error(transparent)]
    ObjectSink(#[from] ObjectSinkError),
    #[error("installing signal handlers: {0}")]
    Signals(io::Error),
    #[error("{0}")]
    Exclusions(String),
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
    #[error("{0}")]
    Unsupported(String),
}

/// What a run did, for the last log line and for tests.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub intervals: u64,
    pub records: u64,
    pub sinks: Vec<(String, SinkReport)>,
}

pub async fn run(mut config: RunConfig) -> Result<RunSummary, AgentError> {
    // Everything is resolved and checked before the kernel is touched (see `startup`).
    let mut plan = Plan::make(&config)?;
    let datapath = plan.datapath_mut();
    // Statistics of pinned maps are running totals of earlier agents too: report from what they
    // reported, or else from here on (before anything is attached, so nothing is missed).
    let mut stats = StatsDelta::starting_from(datapath)?;
    let max_flows = datapath.flow_capacity().unwrap_or(config.max_flows);
    let metrics = Arc::new(Metrics::default());
    metrics.map_capacity.set(i64::from(max_flows));
    if datapath.reused_pinned_maps() {
        tracing::info!(
            pin_dir = %config.pin_dir.as_deref().unwrap_or(Path::new("")).display(),
            "adopted the maps of the previous agent: what it left undrained and what was counted since is in the first interval"
        );
    }
    tracing::info!(
        max_flows,
        kernel_memory_mib_max = flow_maps_memory_bytes(max_flows) >> 20,
        "datapath loaded"
    );
    if let Some(logger) = datapath.take_logger() {
        spawn_kernel_log_reader(logger);
    }
    let now = SystemTime::now();
    let mut flow_logs = Vec::new();
    for flow_log in &config.flow_logs {
        flow_logs.push(FlowLog::start(flow_log.clone(), now).await?);
    }
    let mut signals = Signals::install().map_err(AgentError::Signals)?;
    // Subscribed before the first listing, so no interface can appear unseen in between.
    let mut links = LinkWatcher::new().map_err(AgentError::LinkWatch)?;
    if let Some(address) = config.metrics {
        // Flow logs matter more than their metrics: a port that cannot be bound (taken, or no
        // loopback) is reported, not fatal.
        match metrics::serve(address, Arc::clone(&metrics)).await {
            Ok(bound) => tracing::info!("metrics at http://{bound}/metrics"),
            Err(error) => tracing::error!(%address, %error, "metrics not served"),
        }
    }
    publish_sink_metrics(&metrics, &flow_logs);

    let Started {
        mut datapath,
        committed,
        vanished,
    } = plan.commit()?;
    let attached: Vec<Interface> = interfaces::list()
        .map_err(AgentError::ListInterfaces)?
        .into_iter()
        .filter(|i| datapath.attached().any(|a| a.ifindex == i.ifindex))
        .collect();
    for flow_log in &mut flow_logs {
        flow_log.follow(&attached);
        for interface in &vanished {
            if flow_log.add_vanished(interface.ifindex, &interface.name) {
                tracing::info!(
                    flow_log = flow_log.name(),
                    interface = %interface.name,
                    ifindex = interface.ifindex,
                    "interface deleted while no agent ran: what was counted on it is written under its name"
                );
            }
        }
    }
    metrics
        .interfaces_attached
        .set(datapath.attached().count() as i64);
    if !committed.stale_links.is_empty() {
        tracing::info!(links = ?committed.stale_links, "removed pinned links of interfaces no longer logged");
    }

    // Everything that needs more than the running set is done: programs loaded, bpffs mounted,
    // sinks and the metrics port open.
    match privileges::drop_to_running_set() {
        Ok(kept) => tracing::info!(kept, "dropped every other capability"),
        Err(error) => tracing::warn!(%error, "could not drop capabilities"),
    }
    // A previous agent's undrained epoch (it was killed, or stopped with its programs kept)
    // joins the first interval, and so do flow maps replaced by maps of another size.
    let mut leftovers = if datapath.reused_pinned_maps() {
        Some(tokio::task::block_in_place(|| datapath.drain_leftovers())?)
    } else {
        None
    };
    if let Some((capacity, replaced)) = committed.replaced_flows {
        tracing::info!(
            from = capacity,
            to = max_flows,
            "flow maps resized: the previous agent's counts carry over"
        );
        match &mut leftovers {
            Some(leftovers) => leftovers.absorb(replaced),
            None => leftovers = Some(replaced),
        }
    }

    let mut summary = RunSummary::default();
    let mut stop_deadline = None;
    let mut drains = Drains {
        stats: &mut stats,
        metrics: &metrics,
        summary: &mut summary,
    };
    loop {
        let tick = config.tick();
        let now = SystemTime::now();
        let wait = until_next_boundary(now, tick);
        let boundary = next_multiple(collector::unix_seconds(now), tick.as_secs());
        let stopping = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            changed = links.changed() => {
                if let Err(error) = changed {
                    tracing::error!(%error, "watching interfaces failed; the interface set is frozen");
                    links.stop();
                }
                follow_interfaces(&mut datapath, &mut flow_logs, &config);
                metrics.interfaces_attached.set(datapath.attached().count() as i64);
                continue;
            }
            signal = signals.next() => match signal {
                Signal::Reload => {
                    let reload = Reload {
                        datapath: &mut datapath,
                        flow_logs: &mut flow_logs,
                        drains: &mut drains,
                        leftovers: &mut leftovers,
                    };
                    hangup(&mut config, reload, &metrics).await;
                    continue;
                }
                Signal::Stop(name) => {
                    tracing::info!(
                        signal = name,
                        deadline_s = SHUTDOWN_DEADLINE.as_secs(),
                        "stopping: final drain, then the sinks finish within the deadline (a second signal exits at once)"
                    );
                    true
                }
            },
        };
        let started = std::time::Instant::now();
        if stopping {
            stop_deadline = Some(tokio::time::Instant::now() + SHUTDOWN_DEADLINE);
        }
        let drained = if stopping {
            final_drain(&mut datapath, &config)?
        } else {
            tokio::task::block_in_place(|| datapath.drain_interval())?
        };
        drains.share_out(
            &mut datapath,
            &mut flow_logs,
            drained,
            &mut leftovers,
            started,
        );
        for flow_log in &mut flow_logs {
            if stopping || flow_log.is_due(boundary) {
                drains.summary.records += flow_log.publish(&metrics) as u64;
            }
        }
        if stopping {
            break;
        }
    }
    drop(datapath);
    signals.exit_on_next_stop();

    // Every sink of every flow log finishes at once, within the one deadline.
    let deadline = stop_deadline.unwrap_or_else(|| tokio::time::Instant::now() + SHUTDOWN_DEADLINE);
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
    Ok(summary)
}

/// Shares every drain out to the flow logs, and counts it for the metrics.
struct Drains<'a> {
    stats: &'a mut StatsDelta,
    metrics: &'a Metrics,
    summary: &'a mut RunSummary,
}

impl Drains<'_> {
    fn share_out(
        &mut self,
        datapath: &mut Datapath,
        flow_logs: &mut [FlowLog],
        mut drained: DrainedEpoch,
        leftovers: &mut Option<DrainedEpoch>,
        started: std::time::Instant,
    ) {
        if let Some(leftovers) = leftovers.take() {
            drained.absorb(leftovers);
        }
        let drain_time = started.elapsed();
        let not_flows = self.stats.update(datapath);
        let m = self.metrics;
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
            if !flow_logs.iter().any(|f| f.covers(key.ifindex)) {
                orphaned.add(&PacketCount {
                    packets: counters.packets,
                    bytes: counters.bytes,
                });
            }
        }
        let drops = &drained.kernel_drops;
        if drops.unrecorded.packets != 0 {
            tracing::warn!(
                packets = drops.unrecorded.packets,
                "kernel drops not recorded: the drop map was full (their ACCEPT counts stay)"
            );
        }
        if drops.missed != 0 {
            tracing::warn!(
                drops = drops.missed,
                "kernel drops the drop program did not see (a drop while it ran on the same CPU): not recorded"
            );
        }
        if drops.uncovered.packets != 0 {
            tracing::info!(
                packets = drops.uncovered.packets,
                "kernel drops of packets counted in an earlier interval or never seen by flowlog's programs: REJECT now, their ACCEPT (if any) is in an earlier interval"
            );
        }
        if orphaned.packets != 0 {
            tracing::warn!(
                packets = orphaned.packets,
                bytes = orphaned.bytes,
                "counted on interfaces no flow log covers any more (a previous configuration's): not written"
            );
        }
        if let Some((last, others)) = flow_logs.split_last_mut() {
            for flow_log in others {
                flow_log.absorb(&drained, &not_flows, drain_time);
            }
            last.absorb_owned(drained, &not_flows, drain_time);
        }
    }
}

/// SIGHUP: with `--config` the whole configuration is read again ([`Reload::apply`]), without
/// it the policy file.
async fn hangup(config: &mut RunConfig, mut reload: Reload<'_, '_>, metrics: &Metrics) {
    // Log streams are opened again (logrotate's `create`, then SIGHUP in postrotate).
    for flow_log in reload.flow_logs.iter() {
        flow_log.reopen_files();
    }
    if config.args.config.is_none() {
        match reload_policy(reload.datapath, config) {
            true => metrics.policy_reloads.inc(),
            false => metrics.policy_reload_failures.inc(),
        };
        return;
    }
    match reload.apply(config).await {
        Ok(new) => {
            if new.policy.is_some() {
                metrics.policy_reloads.inc();
            }
            *config = new;
            metrics.config_reloads.inc();
        }
        Err(error) => {
            tracing::error!(
                "SIGHUP: configuration not reloaded, the previous one stays in force: {error}"
            );
            metrics.config_reload_failures.inc();
        }
    }
    publish_sink_metrics(metrics, reload.flow_logs);
    metrics
        .interfaces_attached
        .set(reload.datapath.attached().count() as i64);
}

/// A SIGHUP with `--config`: the file is read and checked again; if it is good, flow logs
/// that were removed or changed write what they counted so far and stop, new and changed ones
/// start, and the others go on undisturbed (one drain is taken now, which they add to their
/// interval in progress).
struct Reload<'a, 'd> {
    datapath: &'a mut Datapath,
    flow_logs: &'a mut Vec<FlowLog>,
    drains: &'a mut Drains<'d>,
    leftovers: &'a mut Option<DrainedEpoch>,
}

impl Reload<'_, '_> {
    async fn apply(&mut self, old: &RunConfig) -> Result<RunConfig, String> {
        let mut new = old.reload().map_err(|error| error.to_string())?;
        keep_restart_only_settings(old, &mut new);
        let available =
            interfaces::list().map_err(|error| format!("listing interfaces: {error}"))?;
        for flow_log in &new.flow_logs {
            let missing = flow_log.scope.select(&available).missing;
            if !missing.is_empty() {
                return Err(format!(
                    "flow log {}: no such interface: {}",
                    flow_log.name(),
                    missing.join(", ")
                ));
            }
        }
        // The policy and exclusions first: they are host-wide and checked already.
        if new.exclusions != old.exclusions {
            let compiled = Exclusion::compile(&new.exclusions)?;
            self.datapath
                .set_exclusions(&compiled)
                .map_err(|error| error.to_string())?;
            tracing::info!(exclusions = new.exclusions.len(), "exclusions updated");
        }
        match &new.policy {
            Some((path, policy)) => {
                publish_policy(self.datapath, path, policy).map_err(|error| error.to_string())?
            }
            None if old.policy.is_some() => {
                self.datapath
                    .set_policy(None)
                    .map_err(|error| error.to_string())?;
                tracing::info!("policy removed: everything is accepted");
            }
            None => {}
        }

        // What was counted up to now belongs to the flow logs that counted it.
        let started = std::time::Instant::now();
        let drained = tokio::task::block_in_place(|| self.datapath.drain_interval())
            .map_err(|error| error.to_string())?;
        self.drains.share_out(
            self.datapath,
            self.flow_logs,
            drained,
            self.leftovers,
            started,
        );

        let (mut kept, mut stopped) = (Vec::new(), Vec::new());
        for flow_log in self.flow_logs.drain(..) {
            let unchanged = new.flow_logs.contains(&flow_log.config);
            if unchanged {
                kept.push(flow_log);
            } else {
                stopped.push(flow_log);
            }
        }
        for mut flow_log in stopped {
            self.drains.summary.records += flow_log.publish(self.drains.metrics) as u64;
            tracing::info!(flow_log = flow_log.name(), "flow log stopped by the reload");
            let reports = flow_log
                .finish(tokio::time::Instant::now() + SHUTDOWN_DEADLINE)
                .await;
            self.drains.summary.sinks.extend(reports);
        }
        let now = SystemTime::now();
        for config in &new.flow_logs {
            if kept.iter().any(|f| f.name() == config.name()) {
                continue;
            }
            match FlowLog::start(config.clone(), now).await {
                Ok(flow_log) => {
                    tracing::info!(flow_log = config.name(), "flow log started by the reload");
                    kept.push(flow_log);
                }
                // The others keep running; the next SIGHUP tries again.
                Err(error) => {
                    tracing::error!(flow_log = config.name(), %error, "flow log not started")
                }
            }
        }
        *self.flow_logs = kept;
        follow_interfaces(self.datapath, self.flow_logs, &new);
        tracing::info!(
            config = %new.args.config.as_deref().unwrap_or(Path::new("")).display(),
            flow_logs = self.flow_logs.len(),
            "configuration reloaded"
        );
        Ok(new)
    }
}

/// Settings of the loaded datapath, the pins and the metrics port only change at a restart:
/// the running values stay, with a warning.
fn keep_restart_only_settings(old: &RunConfig, new: &mut RunConfig) {
    let mut kept = Vec::new();
    if new.hook != old.hook {
        kept.push("hook");
        new.hook = old.hook;
    }
    if new.tc_mode != old.tc_mode {
        kept.push("tc-mode");
        new.tc_mode = old.tc_mode;
    }
    if new.max_flows != old.max_flows {
        kept.push("max-flows");
        new.max_flows = old.max_flows;
    }
    if new.pin_dir != old.pin_dir {
        kept.push("pin-dir");
        new.pin_dir = old.pin_dir.clone();
    }
    if new.on_exit != old.on_exit {
        kept.push("on-exit");
        new.on_exit = old.on_exit;
    }
    if new.kernel_drops != old.kernel_drops {
        kept.push("kernel-drops");
        new.kernel_drops = old.kernel_drops;
    }
    if new.metrics != old.metrics {
        kept.push("metrics");
        new.metrics = old.metrics;
    }
    if !kept.is_empty() {
        tracing::warn!(
            settings = %kept.join(", "),
            "SIGHUP: these settings change at the next restart; the running values stay"
        );
    }
}

fn publish_sink_metrics(metrics: &Metrics, flow_logs: &[FlowLog]) {
    *metrics.sinks.lock().expect("metrics lock") =
        flow_logs.iter().flat_map(FlowLog::sink_counters).collect();
    metrics.flow_logs.set(flow_logs.len() as i64);
}

/// Interfaces come and go (containers, VMs), and gain and lose addresses: attaches every
/// interface a flow log's scope selects that is not attached yet, detaches the ones that are
/// gone or selected by none, and tells each flow log which of the attached ones are its own. A
/// departed interface's last counts are still drained and written under its name.
fn follow_interfaces(datapath: &mut Datapath, flow_logs: &mut [FlowLog], config: &RunConfig) {
    let available = match interfaces::list() {
        Ok(available) => available,
        Err(error) => {
            // Try again at the next notification rather than stop counting.
            tracing::warn!(%error, "listing interfaces failed");
            return;
        }
    };
    let wanted: Vec<&Interface> = available.iter().filter(|i| config.covers(i)).collect();
    let gone: Vec<(u32, String)> = datapath
        .attached()
        .filter(|a| {
            !wanted
                .iter()
                .any(|w| w.ifindex == a.ifindex && w.name == a.name)
        })
        .map(|a| (a.ifindex, a.name.clone()))
        .collect();
    for (ifindex, name) in gone {
        if let Err(error) = datapath.detach(ifindex) {
            // The kernel already removed what hung on a deleted device.
            tracing::debug!(interface = %name, %error, "detaching a departed interface");
        }
        tracing::info!(interface = %name, ifindex, "detached");
    }
    let tc_mode = config.tc_mode.resolve();
    for interface in &wanted {
        if datapath.attached().any(|a| a.ifindex == interface.ifindex) {
            continue;
        }
        let hook = interfaces::hook_for(config.hook, interface);
        match startup::attach_one(datapath, interface, hook, config.hook, tc_mode) {
            Ok(hook) => {
                tracing::info!(interface = %interface.name, ifindex = interface.ifindex, %hook, %tc_mode, "attached");
            }
            // It may be gone again already; the next notification tells.
            Err(error) => tracing::warn!(interface = %interface.name, %error, "not attached"),
        }
    }
    let attached: Vec<Interface> = wanted
        .into_iter()
        .filter(|w| datapath.attached().any(|a| a.ifindex == w.ifindex))
        .cloned()
        .collect();
    for flow_log in flow_logs {
        flow_log.follow(&attached);
    }
}

/// Link notifications from the kernel (rtnetlink).
struct LinkWatcher {
    socket: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl LinkWatcher {
    fn new() -> io::Result<Self> {
        let socket = sys::link_notifications()?;
        Ok(Self {
            socket: Some(socket),
        })
    }

    /// Waits until an interface appeared, changed or went away (never returns once stopped).
    async fn changed(&mut self) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return std::future::pending().await;
        };
        loop {
            let mut ready = socket.readable().await?;
            let any = sys::drain_socket(std::os::fd::AsFd::as_fd(socket.get_ref()))?;
            ready.clear_ready();
            if any {
                return Ok(());
            }
        }
    }

    fn stop(&mut self) {
        self.socket = None;
    }
}

/// The last drain. With pinned links kept (`--on-exit keep`), the pinned programs go on
/// counting into the other epoch, which the next agent drains: everything counted before the
/// switch is written now, the rest later. Otherwise nothing counts any more once the programs
/// are detached, so both epochs are drained completely.
fn final_drain(datapath: &mut Datapath, config: &RunConfig) -> Result<DrainedEpoch, AgentError> {
    let keep = config.on_exit == OnExit::Keep && datapath.has_pinned_links();
    // Its link is not pinned: stopped before the last switch, so the drops of the epoch the
    // programs leave behind are all in the maps drained now.
    datapath.detach_kernel_drops();
    if keep {
        datapath.detach_unpinned()?;
        let drained = tokio::task::block_in_place(|| datapath.drain_interval())?;
        datapath.leave_pinned_attached();
        tracing::info!(
            pin_dir = %config.pin_dir.as_deref().unwrap_or(Path::new("")).display(),
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

/// Time until the next multiple of `interval` since the Unix epoch, so intervals line up with
/// the wall clock (a 60 s interval ends on every minute).
fn until_next_boundary(now: SystemTime, interval: Duration) -> Duration {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let period = interval.as_nanos().max(1);
    let into_period = since_epoch.as_nanos() % period;
    Duration::from_nanos((period - into_period) as u64)
}

/// Turns the datapath's running totals into per-interval differences.
struct StatsDelta {
    previous: BTreeMap<Stat, PacketCount>,
}

impl StatsDelta {
    fn starting_from(datapath: &Datapath) -> Result<Self, AgentError> {
        let previous = match datapath.stats_reported()? {
            Some(reported) => reported,
            None => datapath.stats()?,
        };
        Ok(Self { previous })
    }

    /// What was counted since the last call; the new totals are recorded in the datapath as
    /// reported.
    fn update(&mut self, datapath: &mut Datapath) -> BTreeMap<Stat, PacketCount> {
        let Ok(now) = datapath.stats() else {
            return BTreeMap::new();
        };
        let delta = now
            .iter()
            .map(|(stat, count)| {
                let before = self.previous.get(stat).copied().unwrap_or_default();
                let diff = PacketCount {
                    packets: count.packets.saturating_sub(before.packets),
                    bytes: count.bytes.saturating_sub(before.bytes),
                };
                (*stat, diff)
            })
            .collect();
        if let Err(error) = datapath.set_stats_reported(&now) {
            tracing::warn!(%error, "cannot record the statistics reported (a restart may miss some)");
        }
        self.previous = now;
        delta
    }
}

/// Compiles and publishes a policy; the tick length converts its idle timeouts.
fn publish_policy(datapath: &mut Datapath, path: &Path, policy: &Policy) -> Result<(), AgentError> {
    let compiled = policy.compile(datapath.ns_per_jiffy()?);
    let generation = datapath.set_policy(Some(&compiled))?;
    startup::log_policy(path, policy.audit, &compiled, generation);
    Ok(())
}

/// SIGHUP: reads the policy file again and swaps it in atomically. A file that does not check
/// leaves the running policy in place.
fn reload_policy(datapath: &mut Datapath, config: &RunConfig) -> bool {
    let Some((path, _)) = &config.policy else {
        tracing::warn!("SIGHUP: no --policy file to reload");
        return false;
    };
    let result = Policy::load(path)
        .map_err(|error| error.to_string())
        .and_then(|policy| {
            publish_policy(datapath, path, &policy).map_err(|error| error.to_string())
        });
    if let Err(error) = &result {
        tracing::error!(%error, "SIGHUP: policy not reloaded, the previous one stays in force");
    }
    result.is_ok()
}

enum Signal {
    /// SIGINT or SIGTERM.
    Stop(&'static str),
    /// SIGHUP.
    Reload,
}

/// SIGINT and SIGTERM stop the agent; SIGHUP reloads the policy.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.hangup.recv() => Signal::Reload,
        }
    }

    /// While the agent stops, a second SIGINT or SIGTERM ends it at once (the operator does
    /// not want to wait for the sinks).
    fn exit_on_next_stop(mut self) {
        tokio::spawn(async move {
            loop {
                if let Signal::Stop(name) = self.next().await {
                    tracing::error!(
                        signal = name,
                        "second stop signal: exiting now; records the sinks had not delivered are lost"
                    );
                    std::process::exit(1);
                }
            }
        });
    }
}

/// Forwards the kernel programs' aya-log messages to the agent's log.
fn spawn_kernel_log_reader(logger: KernelLogger) {
    let Ok(mut readable) = sys::poll_kernel_logger(logger) else {
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
