//! `flowlog-agent run`: load, attach, and every interval drain, build records and hand them to
//! the sinks; on SIGINT or SIGTERM detach, drain what is left, flush and stop.

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
    cli::{OnExit, TrafficType},
    collector::IntervalBuilder,
    config::RunConfig,
    datapath::{
        Datapath, DatapathConfig, DatapathError, DrainedEpoch, Hook, HookChoice, KernelLogger,
        TcMode, TcModeChoice,
    },
    interfaces::{self, Interface},
    metrics::{self, KindLabels, Metrics, SinkLabels},
    policy::{Exclusion, Policy},
    privileges::{self, MissingCapability},
    record::{IntervalRecords, RecordKind},
    sink::{
        self, Envelope, IpfixSink, LineRenderer, LogStreamSink, ObjectStoreSink, SinkHandle,
        SinkReport, SinkSpec, StdoutSink, object::ObjectSinkError,
    },
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
}

/// What a run did, for the last log line and for tests.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub intervals: u64,
    pub records: u64,
    pub sinks: Vec<(String, SinkReport)>,
}

pub async fn run(config: RunConfig) -> Result<RunSummary, AgentError> {
    privileges::check()?;
    let datapath_config = DatapathConfig {
        max_flows: config.max_flows,
    };
    let mut datapath = match &config.pin_dir {
        Some(dir) => Datapath::load_pinned(datapath_config, dir)?,
        None => Datapath::load(datapath_config)?,
    };
    // Statistics of pinned maps are running totals of earlier agents too: report from here on
    // (before anything is attached, so nothing this agent sees is missed).
    let mut stats = StatsDelta::default();
    stats.update(&datapath);
    let metrics = Arc::new(Metrics::default());
    metrics.map_capacity.set(i64::from(config.max_flows));
    if let Some(address) = config.metrics {
        // Flow logs matter more than their metrics: a port that cannot be bound (taken, or no
        // loopback) is reported, not fatal.
        match metrics::serve(address, Arc::clone(&metrics)).await {
            Ok(bound) => tracing::info!("metrics at http://{bound}/metrics"),
            Err(error) => tracing::error!(%address, %error, "metrics not served"),
        }
    }
    if datapath.reused_pinned_maps() {
        tracing::info!(
            pin_dir = %config.pin_dir.as_deref().unwrap_or(Path::new("")).display(),
            "adopted the maps of the previous agent: what it left undrained and what was counted since is in the first interval"
        );
    }
    tracing::info!(
        max_flows = config.max_flows,
        kernel_memory_mib_max = flow_maps_memory_bytes(config.max_flows) >> 20,
        "datapath loaded"
    );
    if let Some(logger) = datapath.take_logger() {
        spawn_kernel_log_reader(logger);
    }
    // Both before attaching: no packet is ever decided without the configured policy.
    let exclusions = Exclusion::compile(&config.exclusions).map_err(AgentError::Exclusions)?;
    datapath.set_exclusions(&exclusions)?;
    if let Some((path, policy)) = &config.policy {
        publish_policy(&mut datapath, path, policy)?;
    }
    let interfaces = select_interfaces(&config)?;
    let mut sinks = start_sinks(&config).await?;
    *metrics.sinks.lock().expect("metrics lock") = sinks
        .iter()
        .map(|sink| (sink.name().to_owned(), sink.live().clone()))
        .collect();
    let mut signals = Signals::install().map_err(AgentError::Signals)?;

    // Subscribed before the first listing, so no interface can appear unseen in between.
    let mut links = LinkWatcher::new().map_err(AgentError::LinkWatch)?;
    let mut builder = IntervalBuilder::new(SystemTime::now());
    attach_all(
        &mut datapath,
        &mut builder,
        &interfaces,
        config.hook,
        config.tc_mode,
    )?;

    // Everything that needs more than the running set is done: programs loaded, bpffs mounted,
    // sinks and the metrics port open.
    match privileges::drop_to_running_set() {
        Ok(kept) => tracing::info!(kept, "dropped every other capability"),
        Err(error) => tracing::warn!(%error, "could not drop capabilities"),
    }
    let stale = datapath.remove_stale_links()?;
    if !stale.is_empty() {
        tracing::info!(links = ?stale, "removed pinned links of interfaces no longer logged");
    }
    // A previous agent's undrained epoch (it was killed, or stopped with its programs kept)
    // joins the first interval.
    let mut leftovers = if datapath.reused_pinned_maps() {
        Some(tokio::task::block_in_place(|| datapath.drain_leftovers())?)
    } else {
        None
    };

    let mut summary = RunSummary::default();
    loop {
        let wait = until_next_boundary(SystemTime::now(), config.interval);
        let stopping = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            changed = links.changed() => {
                if let Err(error) = changed {
                    tracing::error!(%error, "watching interfaces failed; the interface set is frozen");
                    links.stop();
                }
                follow_interfaces(&mut datapath, &mut builder, &config)?;
                metrics.interfaces_attached.set(datapath.attached().count() as i64);
                continue;
            }
            signal = signals.next() => match signal {
                Signal::Reload => {
                    match reload_policy(&mut datapath, &config) {
                        true => metrics.policy_reloads.inc(),
                        false => metrics.policy_reload_failures.inc(),
                    };
                    continue;
                }
                Signal::Stop(name) => {
                    tracing::info!(signal = name, "stopping: final drain");
                    true
                }
            },
        };
        let started = std::time::Instant::now();
        let mut drained = if stopping {
            final_drain(&mut datapath, &config)?
        } else {
            tokio::task::block_in_place(|| datapath.drain_interval())?
        };
        if let Some(leftovers) = leftovers.take() {
            drained.absorb(leftovers);
        }
        let mut output = Output {
            builder: &mut builder,
            stats: &mut stats,
            metrics: &metrics,
            sinks: &mut sinks,
            summary: &mut summary,
            traffic_type: config.traffic_type,
        };
        output.publish(&datapath, drained, started.elapsed());
        if stopping {
            break;
        }
    }
    drop(datapath);

    for handle in sinks {
        let name = handle.name().to_owned();
        let report = handle.finish().await;
        tracing::info!(
            sink = %name,
            records = report.records_written,
            lost = report.records_lost,
            retries = report.retries,
            "sink finished"
        );
        summary.sinks.push((name, report));
    }
    Ok(summary)
}

fn select_interfaces(config: &RunConfig) -> Result<Vec<Interface>, AgentError> {
    let available = interfaces::list().map_err(AgentError::ListInterfaces)?;
    let selection = config.interfaces.select(&available);
    if !selection.missing.is_empty() {
        return Err(AgentError::NoSuchInterface(selection.missing));
    }
    for glob in &selection.unmatched_globs {
        tracing::warn!(glob = %glob, "--interface glob matches no interface");
    }
    if selection.matched.is_empty() {
        tracing::warn!("no interface selected: every interval will be empty");
    }
    Ok(selection.matched)
}

async fn start_sinks(config: &RunConfig) -> Result<Vec<SinkHandle>, AgentError> {
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

fn attach_all(
    datapath: &mut Datapath,
    builder: &mut IntervalBuilder,
    interfaces: &[Interface],
    choice: HookChoice,
    tc_choice: TcModeChoice,
) -> Result<(), AgentError> {
    let tc_mode = tc_choice.resolve();
    if tc_choice == TcModeChoice::Auto && tc_mode == TcMode::Clsact {
        tracing::warn!(
            "this kernel has no TCX (Linux 6.6+): falling back to clsact for TC programs"
        );
    }
    for interface in interfaces {
        let hook = attach_one(datapath, interface, choice, tc_mode)?;
        builder.interface_attached(interface.ifindex, &interface.name);
        tracing::info!(interface = %interface.name, ifindex = interface.ifindex, %hook, %tc_mode, "attached");
    }
    Ok(())
}

/// Interfaces come and go (containers, VMs): attaches every selected interface that is not
/// attached yet, and detaches the ones that are gone or no longer match. A departed interface's
/// last counts are still drained and written under its name.
fn follow_interfaces(
    datapath: &mut Datapath,
    builder: &mut IntervalBuilder,
    config: &RunConfig,
) -> Result<(), AgentError> {
    let available = match interfaces::list() {
        Ok(available) => available,
        Err(error) => {
            // Try again at the next notification rather than stop counting.
            tracing::warn!(%error, "listing interfaces failed");
            return Ok(());
        }
    };
    let wanted: Vec<&Interface> = available
        .iter()
        .filter(|i| config.interfaces.matches(i))
        .collect();
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
        builder.interface_detached(ifindex);
        tracing::info!(interface = %name, ifindex, "detached");
    }
    let tc_mode = config.tc_mode.resolve();
    for interface in wanted {
        if datapath.attached().any(|a| a.ifindex == interface.ifindex) {
            continue;
        }
        match attach_one(datapath, interface, config.hook, tc_mode) {
            Ok(hook) => {
                builder.interface_attached(interface.ifindex, &interface.name);
                tracing::info!(interface = %interface.name, ifindex = interface.ifindex, %hook, %tc_mode, "attached");
            }
            // It may be gone again already; the next notification tells.
            Err(error) => tracing::warn!(interface = %interface.name, %error, "not attached"),
        }
    }
    Ok(())
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

/// Attaches with the hook the operator chose; `auto` tries native XDP where it pays and falls
/// back to TC if the driver refuses.
fn attach_one(
    datapath: &mut Datapath,
    interface: &Interface,
    choice: HookChoice,
    tc_mode: TcMode,
) -> Result<Hook, DatapathError> {
    let hook = interfaces::hook_for(choice, interface);
    let attached = datapath.attach(&interface.name, interface.ifindex, hook, tc_mode);
    match attached {
        Ok(_) => Ok(hook),
        Err(error) if choice == HookChoice::Auto && hook == Hook::Xdp => {
            tracing::info!(interface = %interface.name, %error, "native XDP unavailable; using TC");
            datapath.attach(&interface.name, interface.ifindex, Hook::Tc, tc_mode)?;
            Ok(Hook::Tc)
        }
        Err(error) => Err(error),
    }
}

/// The last drain. With pinned links kept (`--on-exit keep`), the pinned programs go on
/// counting into the other epoch, which the next agent drains: everything counted before the
/// switch is written now, the rest later. Otherwise nothing counts any more once the programs
/// are detached, so both epochs are drained completely.
fn final_drain(datapath: &mut Datapath, config: &RunConfig) -> Result<DrainedEpoch, AgentError> {
    let keep = config.on_exit == OnExit::Keep && datapath.has_pinned_links();
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

/// Where an interval's records go: the log line, the metrics and the sinks.
struct Output<'a> {
    builder: &'a mut IntervalBuilder,
    stats: &'a mut StatsDelta,
    metrics: &'a Metrics,
    sinks: &'a mut [SinkHandle],
    summary: &'a mut RunSummary,
    traffic_type: TrafficType,
}

impl Output<'_> {
    /// Builds the interval's records from what was drained and hands them on.
    fn publish(&mut self, datapath: &Datapath, drained: DrainedEpoch, drain_time: Duration) {
        let entries = drained.entries;
        let built = self.builder.build(drained);
        let not_flows = self.stats.update(datapath);
        let m = self.metrics;
        m.record_interval(&built);
        m.map_entries.set(entries as i64);
        m.drain_seconds.set(drain_time.as_secs_f64());
        m.drain_seconds_total.inc_by(drain_time.as_secs_f64());
        m.interfaces_attached
            .set(datapath.attached().count() as i64);
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
        let interval = Arc::new(select_traffic(built, self.traffic_type));
        log_interval(&interval, entries, drain_time, not_flows);
        self.summary.intervals += 1;
        self.summary.records += interval.records.len() as u64;
        for sink in self.sinks.iter_mut() {
            let labels = SinkLabels {
                sink: sink.name().to_owned(),
            };
            // A full queue is logged and counted by the handle; the drain never waits for a sink.
            match sink.offer(&interval) {
                Ok(()) => m.sink_records_offered.get_or_create(&labels).inc(),
                Err(_) => m.sink_intervals_dropped.get_or_create(&labels).inc(),
            };
        }
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

fn log_interval(
    interval: &IntervalRecords,
    entries: usize,
    drain_time: Duration,
    not_flows: BTreeMap<Stat, PacketCount>,
) {
    use crate::record::RecordKind;
    let (mut flows, mut idle, mut skipped) = (0, 0, 0u64);
    for record in &interval.records {
        match &record.kind {
            RecordKind::Flow(_) => flows += 1,
            RecordKind::NoData => idle += 1,
            RecordKind::SkipData { packets, .. } => skipped += packets,
        }
    }
    let stat = |s: Stat| not_flows.get(&s).map_or(0, |c| c.packets);
    tracing::info!(
        start = interval.start,
        end = interval.end,
        records = interval.records.len(),
        flows,
        idle_interfaces = idle,
        skipped_packets = skipped,
        map_entries = entries,
        non_ip_packets = stat(Stat::NonIp),
        malformed_packets = stat(Stat::Malformed),
        excluded_packets = stat(Stat::Excluded),
        drain_ms = drain_time.as_millis() as u64,
        "interval written"
    );
}

/// Turns the datapath's running totals into per-interval differences.
#[derive(Default)]
struct StatsDelta {
    previous: BTreeMap<Stat, PacketCount>,
}

impl StatsDelta {
    fn update(&mut self, datapath: &Datapath) -> BTreeMap<Stat, PacketCount> {
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
        self.previous = now;
        delta
    }
}

/// Keeps the records the flow log's traffic type selects. NODATA and SKIPDATA records are
/// always kept: they say what the log could not show.
fn select_traffic(mut interval: IntervalRecords, traffic_type: TrafficType) -> IntervalRecords {
    let keep_reject = match traffic_type {
        TrafficType::All => return interval,
        TrafficType::Accept => false,
        TrafficType::Reject => true,
    };
    interval.records.retain(|record| match &record.kind {
        RecordKind::Flow(flow) => flow.verdict.is_reject() == keep_reject,
        RecordKind::NoData | RecordKind::SkipData { .. } => true,
    });
    interval
}

/// Compiles and publishes a policy; the tick length converts its idle timeouts.
fn publish_policy(datapath: &mut Datapath, path: &Path, policy: &Policy) -> Result<(), AgentError> {
    let compiled = policy.compile(datapath.ns_per_jiffy()?);
    let generation = datapath.set_policy(Some(&compiled))?;
    tracing::info!(
        policy = %path.display(),
        generation,
        mode = if policy.audit { "audit" } else { "enforce" },
        acl_rules = compiled.acl_rules.len(),
        security_group_rules = compiled.sg_rules.len(),
        "policy in force"
    );
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
