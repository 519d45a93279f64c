//! Interfaces come and go (containers, VMs) and gain and lose addresses: the agent follows
//! rtnetlink's notifications, attaching what a flow log's scope selects and detaching what is
//! gone.

use std::io;

use super::{Agent, start::attach_one};
use crate::{
    datapath::hook,
    interfaces::{self, Interface},
    sys,
};

impl Agent {
    /// Attaches every interface a flow log's scope selects that is not attached yet, detaches
    /// the ones that are gone or selected by none, and tells each flow log which of the attached
    /// ones are its own. A departed interface's last counts are still drained and written under
    /// its name.
    pub(super) fn follow_interfaces(&mut self) {
        let available = match interfaces::list() {
            Ok(available) => available,
            Err(error) => {
                // Try again at the next notification rather than stop counting.
                tracing::warn!(%error, "listing interfaces failed");
                return;
            }
        };
        let config = &self.config;
        let datapath = &mut self.datapath;
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
            let planned = hook::for_interface(config.hook, interface);
            match attach_one(datapath, interface, planned, config.hook, tc_mode) {
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
        for flow_log in &mut self.flow_logs {
            flow_log.follow(&attached);
        }
        self.metrics
            .interfaces_attached
            .set(self.datapath.attached().count() as i64);
    }
}

/// Link and address notifications from the kernel (rtnetlink).
pub(super) struct LinkWatcher {
    socket: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl LinkWatcher {
    pub(super) fn new() -> io::Result<Self> {
        let socket = sys::link_notifications()?;
        Ok(Self {
            socket: Some(socket),
        })
    }

    /// Waits until an interface appeared, changed or went away (never returns once stopped).
    pub(super) async fn changed(&mut self) -> io::Result<()> {
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

    pub(super) fn stop(&mut self) {
        self.socket = None;
    }
}
