//! Real IPFIX collectors for the export tests: `nfcapd` (Debian's nfdump) on a namespace's
//! loopback, read back with `nfdump`; a TCP front for it (nfcapd 1.7 listens on UDP only) that
//! also keeps the raw stream for `ipfixDump` (libfixbuf), an independent decoder.

use std::{
    collections::BTreeMap,
    fs,
    io::{ErrorKind, Read},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::{NetNs, in_netns},
    records::FlowTuple,
};

/// `nfcapd` storing what it receives on 127.0.0.1:`port` of `ns` under a fresh directory.
pub struct Nfcapd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
}

/// One flow record as nfdump prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfFlow {
    pub tuple: FlowTuple,
    pub packets: u64,
    pub bytes: u64,
    pub input: u32,
    pub output: u32,
    /// 0 ingress, 1 egress.
    pub direction: u8,
}

impl Nfcapd {
    pub fn start(ns: &NetNs, name: &str, port: u16) -> Self {
        let dir = PathBuf::from(format!("/tmp/flowlog-nfcapd-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("nfcapd directory");
        let log = fs::File::create(dir.with_extension("log")).expect("nfcapd log");
        let child = ns
            .command("nfcapd")
            .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-t", "60", "-w"])
            .arg(&dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting nfcapd (cargo xtask test installs Debian's nfdump)");
        let nfcapd = Self {
            child: Some(child),
            dir,
            port,
        };
        nfcapd.wait_for_log("Startup nfcapd", Duration::from_secs(10));
        nfcapd
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "nfcapd did not log {needle:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops nfcapd (it writes its last file on SIGTERM), reads every flow back with nfdump and
    /// returns them with nfcapd's log.
    pub fn stop(mut self) -> (Vec<NfFlow>, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid; it touches no memory.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        child.wait().expect("nfcapd exit");
        self.wait_for_log("Terminating nfcapd", Duration::from_secs(5));
        let output = Command::new("nfdump")
            .arg("-R")
            .arg(&self.dir)
            .args(["-N", "-q", "-o", "csv"])
            .output()
            .expect("running nfdump");
        let text = String::from_utf8_lossy(&output.stdout);
        let flows = parse_nfdump_csv(&text);
        let log = self.log();
        let _ = fs::remove_dir_all(&self.dir);
        let _ = fs::remove_file(self.dir.with_extension("log"));
        (flows, log)
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Parses `nfdump -N -q -o csv`: ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt,opkt,obyt,in,
/// out,sas,das,smk,dmk,dtos,dir,...
pub fn parse_nfdump_csv(text: &str) -> Vec<NfFlow> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with("ts,"))
        .map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            assert!(f.len() > 22, "not an nfdump csv line: {line:?}");
            let number = |i: usize| -> u64 {
                f[i].parse()
                    .unwrap_or_else(|_| panic!("field {i} of {line:?}"))
            };
            let protocol = match f[7] {
                "TCP" => 6,
                "UDP" => 17,
                "ICMP" => 1,
                "ICMP6" => 58,
                other => other
                    .parse()
                    .unwrap_or_else(|_| panic!("protocol of {line:?}")),
            };
            let address = |i: usize| -> IpAddr {
                f[i].parse()
                    .unwrap_or_else(|_| panic!("address {i} of {line:?}"))
            };
            NfFlow {
                tuple: FlowTuple {
                    src: address(3),
                    dst: address(4),
                    src_port: number(5) as u16,
                    dst_port: number(6) as u16,
                    protocol,
                },
                packets: number(11),
                bytes: number(12),
                input: number(15) as u32,
                output: number(16) as u32,
                direction: number(22) as u8,
            }
        })
        .collect()
}

/// Sums nfdump flows per (direction, tuple).
pub fn nf_totals(flows: &[NfFlow]) -> BTreeMap<(u8, FlowTuple), (u64, u64)> {
    let mut totals = BTreeMap::new();
    for flow in flows {
        let entry = totals.entry((flow.direction, flow.tuple)).or_insert((0, 0));
        entry.0 += flow.packets;
        entry.1 += flow.bytes;
    }
    totals
}

/// An IPFIX-over-TCP collector front: accepts connections on 127.0.0.1:`port` in `ns`, writes
/// every byte received to `raw` (for ipfixDump), and forwards each IPFIX message to nfcapd as
/// a UDP datagram from `source` (a loopback address), so nfcapd, which tells exporters apart
/// by address, sees each front as its own exporter and can decode what a new TCP session
/// brings only if that session sent its templates.
pub struct TcpFront {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    pub connections: Arc<AtomicUsize>,
    /// The first set id of each connection's first message.
    pub first_sets: Arc<Mutex<Vec<u16>>>,
}

impl TcpFront {
    pub fn start(ns: &NetNs, port: u16, nfcapd_port: u16, raw: &Path, source: Ipv4Addr) -> Self {
        let listener = in_netns(ns, || TcpListener::bind(("127.0.0.1", port)))
            .expect("namespace")
            .expect("binding the TCP front");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let first_sets = Arc::new(Mutex::new(Vec::new()));
        let raw = raw.to_owned();
        let (stop_flag, counter, sets) = (stop.clone(), connections.clone(), first_sets.clone());
        // The thread starts inside `ns`, so the UDP sockets it makes are there too.
        let thread = in_netns(ns, move || {
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop_flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            counter.fetch_add(1, Ordering::Relaxed);
                            let udp = UdpSocket::bind((source, 0)).expect("UDP socket");
                            relay(stream, &udp, nfcapd_port, &raw, &stop_flag, &sets);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        })
        .expect("namespace");
        Self {
            stop,
            thread: Some(thread),
            connections,
            first_sets,
        }
    }

    /// Closes the connection and the listening socket, as a collector that stops does.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("TCP front thread");
        }
    }
}

impl Drop for TcpFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads IPFIX messages from `stream` until the exporter closes it or the front stops.
fn relay(
    mut stream: TcpStream,
    udp: &UdpSocket,
    nfcapd_port: u16,
    raw: &Path,
    stop: &AtomicBool,
    first_sets: &Mutex<Vec<u16>>,
) {
    use std::io::Write;
    let nfcapd = SocketAddr::from(([127, 0, 0, 1], nfcapd_port));
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(raw)
        .expect("raw stream file");
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 65536];
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        file.write_all(&buffer[..n]).expect("raw write");
        pending.extend_from_slice(&buffer[..n]);
        while pending.len() >= 4 {
            let len = usize::from(u16::from_be_bytes([pending[2], pending[3]]));
            assert!(len >= 16, "bad IPFIX message length {len}");
            if pending.len() < len {
                break;
            }
            if first && len >= 18 {
                first_sets
                    .lock()
                    .unwrap()
                    .push(u16::from_be_bytes([pending[16], pending[17]]));
                first = false;
            }
            udp.send_to(&pending[..len], nfcapd)
                .expect("forward to nfcapd");
            pending.drain(..len);
        }
    }
}

/// Flow records as ipfixDump (libfixbuf) decodes them from a raw IPFIX stream file: the
/// fields of each data record by element name.
pub fn ipfix_dump(raw: &Path) -> Vec<BTreeMap<String, String>> {
    let output = Command::new("ipfixDump")
        .arg("--in")
        .arg(raw)
        .stdin(Stdio::null())
        .output()
        .expect("running ipfixDump (cargo xtask test installs libfixbuf-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut records = Vec::new();
    let mut current: Option<BTreeMap<String, String>> = None;
    for line in text.lines() {
        if line.starts_with("--- ") {
            records.extend(current.take());
            if line.starts_with("--- data record") {
                current = Some(BTreeMap::new());
            }
            continue;
        }
        // "\t(89)   forwardingStatus : 64"
        if let Some(record) = current.as_mut()
            && let Some(rest) = line.trim_start().strip_prefix('(')
            && let Some((_, field)) = rest.split_once(')')
            && let Some((name, value)) = field.split_once(" : ")
        {
            record.insert(name.trim().to_owned(), value.trim().to_owned());
        }
    }
    records.extend(current);
    records
}
