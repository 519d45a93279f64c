//! SIGHUP. Log streams are opened again (logrotate's `create`, then SIGHUP in postrotate).
//! With `--config` the whole configuration is read again: if it checks, flow logs that were
//! removed or changed write what they counted so far and stop, new and changed ones start, and
//! the others go on undisturbed (one drain is taken now, which they add to their interval in
//! progress). Without it, the policy file is read again. A configuration or policy that does not
//! check leaves everything as it was.

use std::{path::Path, time::SystemTime};

use super::{Agent, AgentError, start::log_policy};
use crate::{
    config::RunConfig,
    datapath::Datapath,
    flow_log::FlowLog,
    interfaces,
    policy::{Exclusion, Policy},
    sink::SHUTDOWN_DEADLINE,
};

impl Agent {
    pub(super) async fn reload(&mut self) {
        for flow_log in &self.flow_logs {
            flow_log.reopen_files();
        }
        let metrics = std::sync::Arc::clone(&self.metrics);
        if self.config.config_file.is_none() {
            match reload_policy(&mut self.datapath, &self.config) {
                true => metrics.policy_reloads.inc(),
                false => metrics.policy_reload_failures.inc(),
            };
            return;
        }
        match self.reload_config().await {
            Ok(()) => {
                if self.config.policy.is_some() {
                    metrics.policy_reloads.inc();
                }
                metrics.config_reloads.inc();
            }
            Err(error) => {
                tracing::error!(
                    "SIGHUP: configuration not reloaded, the previous one stays in force: {error}"
                );
                metrics.config_reload_failures.inc();
            }
        }
        self.publish_sink_metrics();
        metrics
            .interfaces_attached
            .set(self.datapath.attached().count() as i64);
    }

    /// Reads the file again and applies it.
    async fn reload_config(&mut self) -> Result<(), String> {
        let old = self.config.clone();
        let mut new = RunConfig::from_args(&self.args).map_err(|error| error.to_string())?;
        keep_restart_only_settings(&old, &mut new);
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
            Some((path, policy)) => publish_policy(&mut self.datapath, path, policy)
                .map_err(|error| error.to_string())?,
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
        self.share_out(drained, started);

        let (mut kept, mut stopped) = (Vec::new(), Vec::new());
        for flow_log in self.flow_logs.drain(..) {
            if new.flow_logs.contains(&flow_log.config) {
                kept.push(flow_log);
            } else {
                stopped.push(flow_log);
            }
        }
        for mut flow_log in stopped {
            self.summary.records += flow_log.publish(&self.metrics) as u64;
            tracing::info!(flow_log = flow_log.name(), "flow log stopped by the reload");
            let reports = flow_log
                .finish(tokio::time::Instant::now() + SHUTDOWN_DEADLINE)
                .await;
            self.summary.sinks.extend(reports);
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
        self.flow_logs = kept;
        self.config = new;
        self.follow_interfaces();
        tracing::info!(
            config = %self.config.config_file.as_deref().unwrap_or(Path::new("")).display(),
            flow_logs = self.flow_logs.len(),
            "configuration reloaded"
        );
        Ok(())
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

/// Compiles and publishes a policy; the tick length converts its idle timeouts.
fn publish_policy(datapath: &mut Datapath, path: &Path, policy: &Policy) -> Result<(), AgentError> {
    let compiled = policy.compile(datapath.ns_per_jiffy()?);
    let generation = datapath.set_policy(Some(&compiled))?;
    log_policy(path, policy.audit, &compiled, generation);
    Ok(())
}

/// Reads the policy file again and swaps it in atomically. A file that does not check leaves
/// the running policy in place.
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
