//! The libpcap flow exporters flowlog is compared with, each on the receiving interface with its
//! flow cache sized for the figure's 100k flows, and each read back from a collector:
//!
//! - softflowd exports NetFlow v9 at shutdown to `nfcapd`, read back with `nfdump`. Its
//!   shutdown sends every flow at once, more than a socket buffer holds, so the export goes
//!   through a relay with a large buffer that passes it on to nfcapd at a pace nfcapd keeps up
//!   with; UDP's receive-buffer errors in the namespace show that no export was lost.
//! - pmacctd aggregates by 5-tuple in its `print` plugin and writes CSV when it stops.
//!
//! Both keep libpcap's default capture buffer (2 MiB). pmacct's core-to-plugin queue is set to
//! the size its documentation suggests for heavy traffic (10 MB in 10 KB buffers).

use std::{
    fs,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use ::tests::{
    collector::parse_nfdump_csv,
    netns::{NetNs, in_netns},
};

use crate::{
    rate::{counters::UdpCounters, coverage::Reported, flows::FlowTuple},
    support::{Context, Result, process_cpu_ticks, process_state},
};

const RELAY_PORT: u16 = 2055;
const NFCAPD_PORT: u16 = 9995;
/// softflowd's flow table: the figure's 100k flows with room (its default is 8,192, which would
/// expire flows early; expired flows are exported too, but cost more).
const SOFTFLOWD_MAX_FLOWS: &str = "200000";
/// How long a daemon may take to start, to finish what it captured, and to stop.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The exporters compared with flowlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exporter {
    Softflowd,
    Pmacct,
}

impl Exporter {
    pub const ALL: [Exporter; 2] = [Exporter::Softflowd, Exporter::Pmacct];

    pub fn name(self) -> &'static str {
        match self {
            Exporter::Softflowd => "softflowd",
            Exporter::Pmacct => "pmacct",
        }
    }

    /// Starts the exporter on `ifname` in `ns`, keeping its files under `dir`.
    pub fn start<'a>(self, ns: &'a NetNs, ifname: &str, dir: &Path) -> Result<Running<'a>> {
        let running = match self {
            Exporter::Softflowd => Running::Softflowd(Softflowd::start(ns, ifname, dir)?),
            Exporter::Pmacct => Running::Pmacct(Pmacctd::start(ns, ifname, dir)?),
        };
        Ok(running)
    }
}

/// A started exporter.
pub enum Running<'a> {
    Softflowd(Softflowd<'a>),
    Pmacct(Pmacctd),
}

/// What an exporter reported, with its own account of what it captured.
pub struct Outcome {
    pub reported: Reported,
    /// Its capture statistics and export path, as sentences.
    pub details: Vec<String>,
}

impl Running<'_> {
    /// Waits until the exporter has processed everything it captured (its processes stop using
    /// CPU), then stops it, collects its export and returns it.
    pub fn finish(self) -> Result<Outcome> {
        match self {
            Running::Softflowd(softflowd) => softflowd.finish(),
            Running::Pmacct(pmacctd) => pmacctd.finish(),
        }
    }
}

/// A child process with its output in a log file, killed if still running when dropped.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Result<Self> {
        let file = fs::File::create(&log).context(format!("creating {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("duplicating a log file")?)
            .stderr(file)
            .spawn()
            .context(format!(
                "starting {name} (`cargo xtask bench` installs it from Debian)"
            ))?;
        Ok(Self { name, child, log })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until its log contains `needle`, failing if it exits or takes too long.
    fn wait_for_log(&mut self, needle: &str) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().context("waiting for a daemon")? {
                return Err(format!("{} exited ({status}): {}", self.name, self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not log {needle:?} within {START_TIMEOUT:?}: {}",
                    self.name,
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet waited for (so its pid is not reused); it
        // touches no memory.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Waits for the process to exit by itself (after a signal or a command). Its exit status
    /// is not judged: softflowd exits with 1 after a requested shutdown; what each daemon wrote
    /// is checked instead.
    fn wait_exit(&mut self) -> Result<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while self
            .child
            .try_wait()
            .context("waiting for a daemon")?
            .is_none()
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not exit within {STOP_TIMEOUT:?}",
                    self.name
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the processes `pids` have been idle for a second: at most one clock tick of CPU
/// (a timer) and never seen runnable (on a busy machine a process with work left may be waiting
/// for a CPU rather than using one). Whatever they had captured is then processed.
fn wait_until_idle(name: &str, pids: &[u32]) -> Result<()> {
    const POLL: Duration = Duration::from_millis(100);
    const QUIET: usize = 10;
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let ticks = || -> u64 { pids.iter().filter_map(|&pid| process_cpu_ticks(pid)).sum() };
    let runnable = || pids.iter().any(|&pid| process_state(pid) == Some('R'));
    let mut window_start = ticks();
    let mut quiet_polls = 0;
    while Instant::now() < deadline {
        thread::sleep(POLL);
        if runnable() || ticks() > window_start + 1 {
            quiet_polls = 0;
            window_start = ticks();
            continue;
        }
        quiet_polls += 1;
        if quiet_polls >= QUIET {
            return Ok(());
        }
    }
    Err(format!(
        "{name} was still busy {SETTLE_TIMEOUT:?} after the traffic stopped"
    ))
}

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
    fn start(ns: &'a NetNs, ifname: &str, dir: &Path) -> Result<Self> {
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

    fn finish(mut self) -> Result<Outcome> {
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

/// pmacctd with its `print` plugin, aggregating by 5-tuple.
pub struct Pmacctd {
    daemon: Daemon,
    csv: PathBuf,
}

impl Pmacctd {
    fn start(ns: &NetNs, ifname: &str, dir: &Path) -> Result<Self> {
        let csv = dir.join("pmacct.csv");
        let config = dir.join("pmacctd.conf");
        fs::write(
            &config,
            format!(
                "daemonize: false\n\
                 pcap_interface: {ifname}\n\
                 aggregate: src_host, dst_host, src_port, dst_port, proto\n\
                 plugins: print\n\
                 print_output: csv\n\
                 print_output_file: {}\n\
                 print_refresh_time: 3600\n\
                 plugin_pipe_size: 10240000\n\
                 plugin_buffer_size: 10240\n",
                csv.display()
            ),
        )
        .context("writing pmacctd's configuration")?;
        let mut command = ns.command("pmacctd");
        command.arg("-f").arg(&config);
        let mut daemon = Daemon::spawn("pmacctd", command, dir.join("pmacctd.log"))?;
        daemon.wait_for_log("link type is")?;
        Ok(Self { daemon, csv })
    }

    fn finish(mut self) -> Result<Outcome> {
        // The core process captures; it forks one process per plugin.
        let core = self.daemon.pid();
        let mut pids = vec![core];
        pids.extend(crate::support::children_of(core));
        wait_until_idle("pmacctd", &pids)?;
        // SIGINT: the plugin writes what it holds, then everything exits.
        self.daemon.signal(libc::SIGINT);
        self.daemon.wait_exit()?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while pids
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
        {
            if Instant::now() > deadline {
                return Err("pmacctd's plugin did not exit".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let text = fs::read_to_string(&self.csv)
            .context(format!("reading pmacct's output {}", self.csv.display()))?;
        let reported = parse_pmacct_csv(&text)?;
        let log = self.daemon.log();
        // "NOTICE ( default/core ): [fbrr0,0] received_packets=5000000 dropped_packets=164411"
        let capture = log
            .lines()
            .find_map(|line| Some(&line[line.find("received_packets=")?..]))
            .unwrap_or("statistics not logged")
            .trim()
            .to_owned();
        let missing = log.matches("Missing data detected").count();
        Ok(Outcome {
            reported,
            details: vec![format!(
                "pmacct: libpcap {capture}; the plugin queue reported missing data {missing} \
                 times"
            )],
        })
    }
}

/// pmacct's CSV: `SRC_IP,DST_IP,SRC_PORT,DST_PORT,PROTOCOL,PACKETS,BYTES`.
fn parse_pmacct_csv(text: &str) -> Result<Reported> {
    let mut reported = Reported::default();
    for line in text.lines().skip(1).filter(|line| !line.is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 7 {
            return Err(format!("not a pmacct CSV line: {line:?}"));
        }
        if fields[4] != "udp" {
            continue;
        }
        let parse_error = || format!("pmacct CSV line {line:?}");
        let (Ok(source), Ok(destination)) =
            (fields[0].parse::<Ipv4Addr>(), fields[1].parse::<Ipv4Addr>())
        else {
            continue;
        };
        reported.add(
            FlowTuple {
                source,
                destination,
                source_port: fields[2].parse().with_context(parse_error)?,
                destination_port: fields[3].parse().with_context(parse_error)?,
            },
            fields[5].parse().with_context(parse_error)?,
        );
    }
    Ok(reported)
}

/// nfcapd storing what arrives on 127.0.0.1:`port` of a namespace.
struct Nfcapd {
    daemon: Daemon,
    dir: PathBuf,
}

impl Nfcapd {
    fn start(ns: &NetNs, port: u16, dir: &Path) -> Result<Self> {
        let store = dir.join("nfcapd");
        fs::create_dir_all(&store).context("creating nfcapd's directory")?;
        let mut command = ns.command("nfcapd");
        command
            .args([
                "-b",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "3600",
                "-w",
            ])
            .arg(&store);
        let mut daemon = Daemon::spawn("nfcapd", command, dir.join("nfcapd.log"))?;
        daemon.wait_for_log("Startup nfcapd")?;
        Ok(Self { daemon, dir: store })
    }

    /// Lets nfcapd read what is queued on its socket, stops it (it writes its file on SIGTERM)
    /// and reads every flow back with nfdump.
    fn stop(mut self, ns: &NetNs, port: u16) -> Result<Vec<::tests::collector::NfFlow>> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while udp_receive_queue(ns, port)? > 0 {
            if Instant::now() > deadline {
                return Err("nfcapd did not read what it was sent".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.daemon.signal(libc::SIGTERM);
        self.daemon.wait_exit()?;
        let output = Command::new("nfdump")
            .arg("-R")
            .arg(&self.dir)
            .args(["-N", "-q", "-o", "csv"])
            .output()
            .context("running nfdump")?;
        if !output.status.success() {
            return Err(format!(
                "nfdump: {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(parse_nfdump_csv(&String::from_utf8_lossy(&output.stdout)))
    }
}

/// Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:`port` in `ns`.
fn udp_receive_queue(ns: &NetNs, port: u16) -> Result<u64> {
    in_netns(ns, || udp_receive_queue_here(port)).context("entering the receiving namespace")?
}

/// [`udp_receive_queue`] in the calling thread's namespace.
fn udp_receive_queue_here(port: u16) -> Result<u64> {
    let table = fs::read_to_string("/proc/thread-self/net/udp").context("reading /proc/net/udp")?;
    parse_receive_queue(&table, port).context(format!("no UDP socket on 127.0.0.1:{port}"))
}

/// `  12: 0100007F:270B 00000000:0000 07 00000000:00000000 ...`: local address, remote
/// address, state, then the transmit and receive queues in hex.
fn parse_receive_queue(table: &str, port: u16) -> Option<u64> {
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&local.as_str()) {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// Receives UDP datagrams on 127.0.0.1:`port` of a namespace into a large buffer and passes them
/// on to another local port no faster than its reader takes them (it waits for the reader's
/// queue to empty below [`RELAY_QUEUE_LOW`] after every [`RELAY_BURST`] datagrams).
struct UdpRelay {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<u64>>>,
}

/// Bytes of the relay's receive buffer: a whole export of 100k flows (about 3,500 datagrams)
/// several times over.
const RELAY_BUFFER: libc::c_int = 64 << 20;
/// Datagrams passed on between looks at the reader's queue.
const RELAY_BURST: u64 = 16;
/// The reader's queue (in bytes of socket buffer, about 2 KiB per datagram) the relay waits
/// for before the next burst: far below nfcapd's default buffer of 208 KiB.
const RELAY_QUEUE_LOW: u64 = 64 << 10;
const RELAY_LIMIT: Duration = Duration::from_secs(600);

impl UdpRelay {
    fn start(ns: &NetNs, port: u16, to_port: u16) -> Result<Self> {
        let (receive, send) = in_netns(ns, || -> std::io::Result<(UdpSocket, UdpSocket)> {
            Ok((
                UdpSocket::bind((Ipv4Addr::LOCALHOST, port))?,
                UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
            ))
        })
        .context("entering the receiving namespace")?
        .context("binding the relay's sockets")?;
        // SO_RCVBUFFORCE (root) goes past net.core.rmem_max, which is the host's to set.
        // SAFETY: setsockopt(2) reads one c_int from `RELAY_BUFFER`'s copy, alive across the call.
        let rc = unsafe {
            libc::setsockopt(
                receive.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&RELAY_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!(
                "SO_RCVBUFFORCE on the relay: {}",
                std::io::Error::last_os_error()
            ));
        }
        receive
            .set_read_timeout(Some(Duration::from_millis(50)))
            .context("setting the relay's timeout")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        // Started inside the namespace, so it reads the namespace's socket table.
        let thread = in_netns(ns, || {
            thread::spawn(move || -> Result<u64> {
                let started = Instant::now();
                let mut buffer = vec![0u8; 65_536];
                let mut relayed = 0;
                while started.elapsed() < RELAY_LIMIT {
                    match receive.recv(&mut buffer) {
                        Ok(n) => {
                            send.send_to(&buffer[..n], (Ipv4Addr::LOCALHOST, to_port))
                                .context("passing a datagram on to nfcapd")?;
                            relayed += 1;
                            if relayed % RELAY_BURST == 0 {
                                while udp_receive_queue_here(to_port)? > RELAY_QUEUE_LOW {
                                    if started.elapsed() > RELAY_LIMIT {
                                        return Err("nfcapd stopped reading".into());
                                    }
                                    thread::sleep(Duration::from_micros(200));
                                }
                            }
                        }
                        // Nothing waiting: done if asked to stop, since the sender has exited.
                        Err(_) if stopping.load(Ordering::Relaxed) => return Ok(relayed),
                        Err(_) => {}
                    }
                }
                Err(format!(
                    "the relay ran for {RELAY_LIMIT:?} without being stopped"
                ))
            })
        })
        .context("entering the receiving namespace")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Passes on what is still buffered, then stops; returns the datagrams relayed.
    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .context("the relay was stopped twice")?
            .join()
            .map_err(|_| "the relay thread panicked".to_string())?
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_receive_queue() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr\n\
                     \x20 12: 0100007F:270B 00000000:0000 07 00000000:00000A00 00:00000000\n\
                     \x20 13: 0100007F:0807 00000000:0000 07 00000000:00000000 00:00000000\n";
        assert_eq!(parse_receive_queue(table, 9995), Some(0xa00));
        assert_eq!(parse_receive_queue(table, 2055), Some(0));
        assert_eq!(parse_receive_queue(table, 53), None);
    }

    #[test]
    fn reads_pmacct_csv() {
        let text = "SRC_IP,DST_IP,SRC_PORT,DST_PORT,PROTOCOL,PACKETS,BYTES\n\
                    198.19.0.1,198.18.3.2,20000,9,udp,77,3542\n\
                    198.19.0.1,198.18.3.2,20000,9,udp,3,138\n\
                    198.18.3.1,198.18.3.2,0,0,icmp,1,84\n";
        let reported = parse_pmacct_csv(text).unwrap();
        let tuple = FlowTuple {
            source: Ipv4Addr::new(198, 19, 0, 1),
            destination: Ipv4Addr::new(198, 18, 3, 2),
            source_port: 20000,
            destination_port: 9,
        };
        assert_eq!(reported.packets.get(&tuple), Some(&80));
        assert_eq!(reported.packets.len(), 1);
        assert!(parse_pmacct_csv("header\n1,2,3\n").is_err());
    }
}
