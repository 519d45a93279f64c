//! The collector side of softflowd's export: nfcapd, read back with nfdump, behind a relay
//! that holds a whole export and passes it on at nfcapd's pace.

use std::{
    fs,
    net::{Ipv4Addr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use ::tests::{
    collector::{NfFlow, parse_nfdump_csv},
    netns::{NetNs, in_netns},
};

use crate::support::{Context, Result};

use super::{Daemon, STOP_TIMEOUT};

/// nfcapd storing what arrives on 127.0.0.1:`port` of a namespace.
pub struct Nfcapd {
    daemon: Daemon,
    dir: PathBuf,
}

impl Nfcapd {
    pub fn start(ns: &NetNs, port: u16, dir: &Path) -> Result<Self> {
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
    pub fn stop(mut self, ns: &NetNs, port: u16) -> Result<Vec<NfFlow>> {
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
pub struct UdpRelay {
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
    pub fn start(ns: &NetNs, port: u16, to_port: u16) -> Result<Self> {
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
    pub fn stop(mut self) -> Result<u64> {
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
}
