//! Start-up in two steps, so a start that is refused leaves the kernel as it found it.
//!
//! 1. [`Plan::make`] resolves and checks every input: privileges, the interfaces each flow log
//!    selects and the hook of each, the exclusions and the policy, the pin directory (locked),
//!    the programs (loaded and verified; maps a previous agent pinned are opened, new ones are
//!    not pinned), and flowlog programs someone else left on the interfaces. Nothing that
//!    decides or counts a packet changes.
//! 2. [`Plan::commit`] changes the kernel: takes foreign programs over if told to, writes the
//!    exclusions, publishes the policy (or its absence, under a new generation), attaches every
//!    interface, then takes over the links a previous agent pinned and pins what is new. If an
//!    attach fails, what this start attached is detached and the previous policy and exclusions
//!    are put back; a previous agent's links were not touched yet.
//!
//! A plan that is dropped without committing (an error on the way) is undone the same way.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use flowlog_common::{maps::flow_maps_memory_bytes, policy::Rule};

use super::{
    Agent, AgentError, Inputs, RunSummary, follow::LinkWatcher, signals::Signals,
    spawn_kernel_log_reader, stats::StatsDelta,
};
use crate::{
    cli::RunArgs,
    config::RunConfig,
    datapath::{
        CommittedStart, Datapath, DatapathConfig, Hook, HookChoice, TcMode, hook,
        owner::{self, ForeignProgram},
    },
    flow_log::FlowLog,
    interfaces::{self, Interface},
    kernel_drops::{self, KernelDropsMode},
    metrics::{self, Metrics},
    policy::{CompiledPolicy, Exclusion},
    privileges,
};

/// Everything a start needs, resolved and checked; the datapath is loaded but changes nothing.
pub struct Plan {
    /// `None` once committed.
    datapath: Option<Datapath>,
    interfaces: Vec<(Interface, Hook)>,
    hook_choice: HookChoice,
    tc_mode: TcMode,
    exclusions: Vec<Rule>,
    policy: Option<PlannedPolicy>,
    foreign: Vec<ForeignProgram>,
    take_over: bool,
    vanished: Vec<VanishedInterface>,
}

struct PlannedPolicy {
    path: PathBuf,
    compiled: CompiledPolicy,
    audit: bool,
}

/// An interface a previous agent counted on through a pinned link, deleted while no agent ran:
/// its counts are written under the name it had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VanishedInterface {
    pub ifindex: u32,
    pub name: String,
}

/// A committed start: the datapath attached to every planned interface.
pub struct Started {
    pub datapath: Datapath,
    pub committed: CommittedStart,
    pub vanished: Vec<VanishedInterface>,
}

impl Agent {
    /// Starts the agent: plans, starts the flow logs' sinks and the metrics endpoint, then
    /// commits the plan (attaches), and gathers what a previous agent left to write.
    pub(super) async fn start(
        args: RunArgs,
        config: RunConfig,
    ) -> Result<(Agent, Inputs), AgentError> {
        let mut plan = Plan::make(&config)?;
        let datapath = plan.datapath_mut();
        // Statistics of pinned maps are running totals of earlier agents too: report from what
        // they reported, or else from here on (before anything is attached, so nothing is
        // missed).
        let stats = StatsDelta::starting_from(datapath)?;
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
        let signals = Signals::install().map_err(AgentError::Signals)?;
        // Subscribed before the first listing, so no interface can appear unseen in between.
        let links = LinkWatcher::new().map_err(AgentError::LinkWatch)?;
        if let Some(address) = config.metrics {
            // Flow logs matter more than their metrics: a port that cannot be bound (taken, or
            // no loopback) is reported, not fatal.
            match metrics::serve(address, Arc::clone(&metrics)).await {
                Ok(bound) => tracing::info!("metrics at http://{bound}/metrics"),
                Err(error) => tracing::error!(%address, %error, "metrics not served"),
            }
        }

        let Started {
            datapath,
            committed,
            vanished,
        } = plan.commit()?;
        let mut agent = Agent {
            config,
            args,
            datapath,
            flow_logs,
            stats,
            metrics,
            leftovers: None,
            summary: RunSummary::default(),
        };
        agent.publish_sink_metrics();
        agent.follow_interfaces();
        for flow_log in &mut agent.flow_logs {
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
        if !committed.stale_links.is_empty() {
            tracing::info!(links = ?committed.stale_links, "removed pinned links of interfaces no longer logged");
        }
        // Everything that needs more than the running set is done: programs loaded, bpffs
        // mounted, sinks and the metrics port open.
        match privileges::drop_to_running_set() {
            Ok(kept) => tracing::info!(kept, "dropped every other capability"),
            Err(error) => tracing::warn!(%error, "could not drop capabilities"),
        }
        // A previous agent's undrained epoch (it was killed, or stopped with its programs kept)
        // joins the first interval, and so do flow maps replaced by maps of another size.
        let datapath = &mut agent.datapath;
        if datapath.reused_pinned_maps() {
            agent.leftovers = Some(tokio::task::block_in_place(|| datapath.drain_leftovers())?);
        }
        if let Some((capacity, replaced)) = committed.replaced_flows {
            tracing::info!(
                from = capacity,
                to = max_flows,
                "flow maps resized: the previous agent's counts carry over"
            );
            match &mut agent.leftovers {
                Some(leftovers) => leftovers.absorb(replaced),
                None => agent.leftovers = Some(replaced),
            }
        }
        super::notify::notify("READY=1");
        Ok((agent, Inputs { signals, links }))
    }
}

impl Plan {
    /// Resolves and checks everything `config` asks for.
    pub fn make(config: &RunConfig) -> Result<Self, AgentError> {
        privileges::check()?;
        let exclusions = Exclusion::compile(&config.exclusions).map_err(AgentError::Exclusions)?;
        let available = interfaces::list().map_err(AgentError::ListInterfaces)?;
        let selected = select_interfaces(config, &available)?;
        let tc_mode = hook::plan_tc_mode(config.tc_mode).map_err(AgentError::Plan)?;
        if config.tc_mode == crate::datapath::TcModeChoice::Auto && tc_mode == TcMode::Clsact {
            tracing::warn!(
                "this kernel has no TCX (Linux 6.6+): falling back to clsact for TC programs"
            );
        }
        let interfaces = selected
            .into_iter()
            .map(|interface| {
                let planned =
                    hook::plan(config.hook, &interface).map_err(|message| AgentError::Hook {
                        interface: interface.name.clone(),
                        message,
                    })?;
                Ok((interface, planned))
            })
            .collect::<Result<Vec<_>, AgentError>>()?;
        let datapath_config = DatapathConfig {
            max_flows: config.max_flows,
        };
        let kernel_drops = plan_kernel_drops(config.kernel_drops);
        let datapath = Datapath::load_full(
            datapath_config,
            config.pin_dir.as_deref(),
            kernel_drops.as_ref(),
        )?;
        let mut plan = Plan {
            datapath: Some(datapath),
            interfaces,
            hook_choice: config.hook,
            tc_mode,
            exclusions,
            policy: None,
            foreign: Vec::new(),
            take_over: config.take_over,
            vanished: Vec::new(),
        };
        // From here on an error drops the plan, which undoes the load (pin directories created).
        let datapath = plan.datapath.as_ref().expect("not committed");
        let attaching: Vec<Interface> = plan.interfaces.iter().map(|(i, _)| i.clone()).collect();
        plan.foreign =
            owner::find(&attaching, datapath.own_programs()).map_err(AgentError::ListInterfaces)?;
        if !plan.foreign.is_empty() && !plan.take_over {
            return Err(AgentError::Foreign(plan.foreign.clone()));
        }
        plan.vanished = vanished(datapath, &available);
        if let Some((path, policy)) = &config.policy {
            plan.policy = Some(PlannedPolicy {
                path: path.clone(),
                compiled: policy.compile(datapath.ns_per_jiffy()?),
                audit: policy.audit,
            });
        }
        Ok(plan)
    }

    /// The loaded datapath, before the start commits (statistics are read from it first).
    pub fn datapath_mut(&mut self) -> &mut Datapath {
        self.datapath.as_mut().expect("not committed")
    }

    /// Changes the kernel as planned; on failure, undoes what it did and returns the error.
    pub fn commit(mut self) -> Result<Started, AgentError> {
        let mut datapath = self.datapath.take().expect("committed once");
        let applied = self.apply(&mut datapath);
        if let Err(error) = applied {
            datapath.abort_start();
            tracing::error!("start refused: the datapath is left as it was");
            return Err(error);
        }
        let committed = datapath.commit_start()?;
        // Said once the start has committed: a start that is refused attached nothing.
        for attached in datapath.attached() {
            tracing::info!(interface = %attached.name, ifindex = attached.ifindex, hook = %attached.hook, tc_mode = %attached.tc_mode, "attached");
        }
        Ok(Started {
            datapath,
            committed,
            vanished: std::mem::take(&mut self.vanished),
        })
    }

    fn apply(&self, datapath: &mut Datapath) -> Result<(), AgentError> {
        datapath.begin_start()?;
        if self.take_over {
            // Not undone by a refusal: the operator asked for them to go.
            owner::remove(&self.foreign)?;
        }
        // Both before attaching: no packet is ever decided without the configured policy.
        datapath.set_exclusions(&self.exclusions)?;
        match &self.policy {
            Some(policy) => {
                let generation = datapath.set_policy(Some(&policy.compiled))?;
                log_policy(&policy.path, policy.audit, &policy.compiled, generation);
            }
            None => {
                let generation = datapath.set_policy(None)?;
                tracing::info!(generation, "no policy: every packet is accepted");
            }
        }
        for (interface, hook) in &self.interfaces {
            attach_one(datapath, interface, *hook, self.hook_choice, self.tc_mode)?;
        }
        // After the interfaces: a drop is only counted on an interface the agent attached.
        datapath.attach_kernel_drops()?;
        Ok(())
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        if let Some(datapath) = &mut self.datapath {
            datapath.abort_start();
        }
    }
}

/// What the kernel drop program needs on this kernel, said once: `None` when `--kernel-drops
/// off`, or when the kernel cannot report drops (then the agent runs without, and says why).
fn plan_kernel_drops(mode: KernelDropsMode) -> Option<kernel_drops::Setup> {
    match kernel_drops::probe(mode) {
        Ok(Some(setup)) => {
            kernel_drops::publish_reasons(&setup.reasons);
            tracing::info!(
                kernel_drops = %mode,
                reasons = setup.counted_slots().len(),
                "the kernel's own drops on the logged interfaces become REJECT records"
            );
            Some(setup)
        }
        Ok(None) => {
            tracing::info!(
                "kernel drops off: packets the host drops are recorded as flowlog's programs saw them"
            );
            None
        }
        Err(unavailable) => {
            tracing::warn!(
                "{unavailable}; packets the host drops are recorded as flowlog's programs saw them"
            );
            None
        }
    }
}

/// Logs a policy that has just been published.
pub fn log_policy(path: &std::path::Path, audit: bool, compiled: &CompiledPolicy, generation: u32) {
    tracing::info!(
        policy = %path.display(),
        generation,
        mode = if audit { "audit" } else { "enforce" },
        acl_rules = compiled.acl_rules.len(),
        security_group_rules = compiled.sg_rules.len(),
        "policy in force"
    );
}

/// The interfaces the flow logs select now; a name that does not exist is an error.
pub fn select_interfaces(
    config: &RunConfig,
    available: &[Interface],
) -> Result<Vec<Interface>, AgentError> {
    let mut selected: Vec<Interface> = Vec::new();
    let mut missing = Vec::new();
    for flow_log in &config.flow_logs {
        let selection = flow_log.scope.select(available);
        missing.extend(selection.missing);
        for glob in &selection.unmatched_globs {
            tracing::warn!(flow_log = flow_log.name(), glob = %glob, "interface glob matches no interface");
        }
        for interface in selection.matched {
            if !selected.iter().any(|s| s.ifindex == interface.ifindex) {
                selected.push(interface);
            }
        }
    }
    if !missing.is_empty() {
        missing.dedup();
        return Err(AgentError::NoSuchInterface(missing));
    }
    if selected.is_empty() {
        tracing::warn!("no interface selected: every interval will be empty");
    }
    Ok(selected)
}

/// Attaches with the hook planned; `auto` falls back to TC if the driver refuses native XDP.
pub fn attach_one(
    datapath: &mut Datapath,
    interface: &Interface,
    hook: Hook,
    choice: HookChoice,
    tc_mode: TcMode,
) -> Result<Hook, crate::datapath::DatapathError> {
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

/// Interfaces a previous agent's pinned links name that no longer exist.
fn vanished(datapath: &Datapath, available: &[Interface]) -> Vec<VanishedInterface> {
    let mut vanished: Vec<VanishedInterface> = Vec::new();
    for link in datapath.pinned_links() {
        let exists = available.iter().any(|i| i.ifindex == link.ifindex);
        if !exists && !vanished.iter().any(|v| v.ifindex == link.ifindex) {
            vanished.push(VanishedInterface {
                ifindex: link.ifindex,
                name: link.interface,
            });
        }
    }
    vanished
}
