//! softflowd, exporting NetFlow v9 at shutdown through a relay to nfcapd.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use ::tests::netns::NetNs;

use crate::{
    rate::{counters::UdpCounters, coverage::Reported, flows::FlowTuple},
    support::{Context, Result},
};

use super::{
    Daemon, Outcome, START_TIMEOUT,
    nfcapd::{Nfcapd, UdpRelay},
    wait_until_idle,
};

const RELAY_PORT: u16 = 2055;
const NFCAPD_PORT: u16 = 9995;
/// softflowd's flow table: the figure's 100k flows with room (its default is 8,192, which would
/// expire flows early; expired flows are exported too, but cost more).
const SOFTFLOWD_MAX_FLOWS: &str = "200000";

/// softflowd exporting NetFlow v9 through a [`UdpRelay`] to nfcapd.
pub struct Softflowd<'a> {
    ns: &'a NetNs,
    daemon: Daemon,
    control: PathBuf,
    relay: UdpRelay,
    nfcapd: Nfcapd,
    udp_before: UdpCounters,
}

impl<'a> Softflowd<'a> {
    pub fn start(ns: &'a NetNs, ifname: &str, dir: &Path) -> Result<Self> {
        let udp_before = UdpCounters::read(ns)?;
        let nfcapd = Nfcapd::start(ns, NFCAPD_PORT, dir)?;
        let relay = UdpRelay::start(ns, RELAY_PORT, NFCAPD_PORT)?;
        let control = dir.join("softflowd.ctl");
        let mut command = ns.command("softflowd");
        command
            .args(["-i", ifname, "-d", "-v", "9", "-m", SOFTFLOWD_MAX_FLOWS])
            .args(["-n", &format!("127.0.0.1:{RELAY_PORT}")])
            .arg("-c")
            .arg(&control)
            .arg("-p")
            .arg(dir.join("softflowd.pid"));
        let mut daemon = Daemon::spawn("softflowd", command, dir.join("softflowd.log"))?;
        daemon.wait_for_log("Exporting flows")?;
        let softflowd = Self {
            ns,
            daemon,
            control,
            relay,
            nfcapd,
            udp_before,
        };
        // The control socket answers once the capture loop runs.
        let deadline = Instant::now() + START_TIMEOUT;
        while softflowd.statistics().is_err() {
            if Instant::now() > deadline {
                return Err("softflowd's control socket did not answer".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(softflowd)
    }

    /// `softflowctl statistics`, as printed.
    fn statistics(&self) -> Result<String> {
        let output = self
            .ns
            .command("softflowctl")
            .arg("-c")
            .arg(&self.control)
            .arg("statistics")
            .output()
            .context("running softflowctl")?;
        if !output.status.success() {
            return Err(format!("softflowctl statistics: {}", output.status));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    pub fn finish(mut self) -> Result<Outcome> {
        wait_until_idle("softflowd", &[self.daemon.pid()])?;
        let statistics = self.statistics()?;
        let status = self
            .ns
            .command("softflowctl")
            .arg("-c")
            .arg(&self.control)
            .arg("shutdown")
            .stdout(Stdio::null())
            .status()
            .context("running softflowctl shutdown")?;
        if !status.success() {
            return Err(format!("softflowctl shutdown: {status}"));
        }
        // Its shutdown exports every flow it still holds, then it exits.
        self.daemon.wait_exit()?;
        let relayed = self.relay.stop()?;
        let flows = self.nfcapd.stop(self.ns, NFCAPD_PORT)?;
        let udp = self.udp_before.since(UdpCounters::read(self.ns)?);
        if udp.receive_buffer_errors != 0 {
            return Err(format!(
                "{} export datagrams were lost to full socket buffers on the way to nfcapd: \
                 softflowd's coverage cannot be measured",
                udp.receive_buffer_errors
            ));
        }
        let mut reported = Reported::default();
        for flow in &flows {
            let tuple = &flow.tuple;
            if tuple.protocol != 17 {
                continue;
            }
            if let (std::net::IpAddr::V4(source), std::net::IpAddr::V4(destination)) =
                (tuple.src, tuple.dst)
            {
                reported.add(
                    FlowTuple {
                        source,
                        destination,
                        source_port: tuple.src_port,
                        destination_port: tuple.dst_port,
                    },
                    flow.packets,
                );
            }
        }
        let line = |key: &str| {
            statistics
                .lines()
                .find(|line| line.starts_with(key))
                .map(str::trim)
                .unwrap_or("?")
                .to_owned()
        };
        Ok(Outcome {
            reported,
            details: vec![
                format!(
                    "softflowd: {}; {}; {}",
                    line("Packets received by libpcap"),
                    line("Packets dropped by libpcap"),
                    line("Packets processed")
                ),
                format!(
                    "softflowd: {} NetFlow v9 datagrams relayed to nfcapd, {} flow records read \
                     back with nfdump, 0 lost to socket buffers",
                    relayed,
                    flows.len()
                ),
            ],
        })
    }
}
