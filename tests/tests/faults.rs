//! Fault injection: the agent's sinks under real faults (a tmpfs filled to its last byte, a log
//! directory renamed, deleted or made read-only, a collector that stops reading, a closed
//! standard output), thousands of interfaces and idle metrics connections, and hostile input.
//!
//! Each run writes stdout beside the faulty sink as the reference: every test asserts that what
//! the faulty sink delivered plus what it counted lost is exactly what stdout got, no line
//! torn, none twice; or it asserts the bound the agent promises.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use tests::{
    agent::{Agent, AgentBuilder, agent_binary},
    faults::{
        Mount, Scratch, counted, cpu_time, descriptors, files_under, fill, lines_under,
        open_files_limit, raise_open_files_limit, sink_totals, wait_for_mid_second,
    },
    metrics::{METRICS_ADDRESS, scrape},
    netns::{NetNs, in_netns, veth_pair},
    records::parse_line,
    topology::Topology,
    traffic::udp_exchange,
};

/// Traffic on `a0` for `duration`: a few datagrams each way per family every 200 ms.
fn send_for(topology: &Topology, duration: Duration) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        for pair in &topology.udp {
            udp_exchange(&pair.b, &pair.a, 3, 100);
            udp_exchange(&pair.a, &pair.b, 2, 300);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// Every line of `delivered` is a whole record that stdout also got, none twice; returns how
/// many stdout lines are missing from it.
fn check_subset(delivered: &[String], reference: &[String], what: &str) -> usize {
    for line in delivered {
        parse_line(line);
    }
    let (delivered, reference) = (counted(delivered), counted(reference));
    for (line, times) in &delivered {
        assert_eq!(*times, 1, "{what}: written {times} times: {line}");
        assert!(
            reference.contains_key(line),
            "{what}: not a record stdout got: {line}"
        );
    }
    reference
        .keys()
        .filter(|l| !delivered.contains_key(*l))
        .count()
}

fn agent_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "-i",
        "a0",
        "-i",
        "a1",
        "--interval",
        "1s",
        "--no-pin",
        "--metrics",
        "off",
        "--sink",
        "stdout",
    ];
    args.extend_from_slice(extra);
    args
}

/// A full disk under `dir:` for longer than the sink's queue lasts: records wait, then new
/// intervals are dropped and counted; when space frees, delivery resumes by itself. The files
/// hold whole lines only, none twice, and lost = exactly the records missing.
#[test]
fn a_full_disk_under_log_streams_loses_only_what_it_counts() {
    let topology = Topology::new(true);
    let scratch = Scratch::new("dir-full");
    let disk = Mount::tmpfs(&scratch.join("disk"), 256 << 10);
    let streams = disk.0.join("streams");
    let sink = format!("dir:{}", streams.display());
    let mut agent = Agent::start(&topology.a, &agent_args(&["--sink", &sink]));
    send_for(&topology, Duration::from_secs(2));
    let filler = fill(&disk.0);
    // The streams' last pages still take a few lines: the fault bites once they are full.
    let full = Instant::now();
    while !agent.logged_within("write failed; records wait", Duration::from_millis(10)) {
        assert!(
            full.elapsed() < Duration::from_secs(30),
            "the disk never filled"
        );
        send_for(&topology, Duration::from_millis(500));
    }
    // Longer than the 16 intervals the queue holds: the later intervals are dropped.
    send_for(&topology, Duration::from_secs(19));
    agent.wait_for_log("sink queue full", 1, Duration::from_secs(1));
    fs::remove_file(filler).unwrap();
    agent.wait_for_log("write succeeded after retries", 1, Duration::from_secs(15));
    send_for(&topology, Duration::from_secs(3));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let reference = lines(&stopped.stdout);
    let delivered = lines_under(&streams);
    let missing = check_subset(&delivered, &reference, &sink);
    let (written, lost) = sink_totals(&stopped.stderr, &sink);
    assert_eq!(written as usize, delivered.len());
    assert_eq!(
        lost as usize, missing,
        "lost counts exactly the records missing"
    );
    assert!(lost > 0, "the fault outlasted the queue");
    assert_eq!(
        sink_totals(&stopped.stderr, "stdout"),
        (reference.len() as u64, 0)
    );
    eprintln!(
        "full dir: {} records, {written} written, {lost} lost",
        reference.len()
    );
}

/// A full disk under the object sink's spool and journal: the open object and its journal
/// stay, no `.tmp` is left, records wait in the queue; when space frees, every record reaches
/// the archive exactly once.
#[test]
fn a_full_spool_disk_keeps_the_object_and_loses_nothing() {
    let topology = Topology::new(true);
    let scratch = Scratch::new("spool-full");
    let disk = Mount::tmpfs(&scratch.join("disk"), 512 << 10);
    let spool = disk.0.join("spool");
    let archive = scratch.join("archive");
    let sink = format!("file://{}", archive.display());
    let args = agent_args(&[
        "--sink",
        &sink,
        "--rotate",
        "2s",
        "--spool-dir",
        spool.to_str().unwrap(),
        "--account-id",
        "123456789010",
        "--region",
        "local",
    ]);
    let mut agent = Agent::start(&topology.a, &args);
    send_for(&topology, Duration::from_secs(3));
    let filler = fill(&disk.0);
    send_for(&topology, Duration::from_secs(6));
    agent.wait_for_log("write failed; records wait", 1, Duration::from_secs(1));
    let leftovers: Vec<String> = fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-written spool files: {leftovers:?}"
    );
    fs::remove_file(filler).unwrap();
    agent.wait_for_log("write succeeded after retries", 1, Duration::from_secs(15));
    send_for(&topology, Duration::from_secs(3));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let reference = lines(&stopped.stdout);
    let mut delivered = Vec::new();
    for object in files_under(&archive) {
        let text = Command::new("gzip")
            .arg("-dc")
            .arg(&object)
            .output()
            .unwrap();
        assert!(text.status.success(), "{}", object.display());
        // The header line first, then records.
        delivered.extend(
            lines(&String::from_utf8(text.stdout).unwrap())
                .into_iter()
                .skip(1),
        );
    }
    let missing = check_subset(&delivered, &reference, &sink);
    assert_eq!(missing, 0, "every record reached the archive");
    // One mode policy, also for what object_store's local store creates: files 0640,
    // directories 0750.
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for object in files_under(&archive) {
        assert_eq!(mode(&object), 0o640, "{}", object.display());
        assert_eq!(
            mode(object.parent().unwrap()),
            0o750,
            "{}",
            object.display()
        );
    }
    assert_eq!(
        sink_totals(&stopped.stderr, &sink),
        (reference.len() as u64, 0)
    );
    assert!(
        files_under(&spool)
            .iter()
            .all(|f| !f.to_string_lossy().ends_with(".tmp")),
        "no .tmp left"
    );
}

/// The log-stream directory renamed away, deleted, then made read-only (and SIGHUP): the agent
/// recreates it with its modes, opens its streams again, waits while it cannot write, and in
/// the end the directories hold every record exactly once.
#[test]
fn a_renamed_deleted_or_read_only_log_directory_loses_nothing() {
    let topology = Topology::new(true);
    let scratch = Scratch::new("dir-moves");
    let streams = scratch.join("streams");
    let sink = format!("dir:{}", streams.display());
    let mut agent = Agent::start(&topology.a, &agent_args(&["--sink", &sink]));
    send_for(&topology, Duration::from_secs(2));

    // Renamed, as a directory-level rotation would.
    wait_for_mid_second();
    fs::rename(&streams, scratch.join("renamed")).unwrap();
    send_for(&topology, Duration::from_secs(2));
    assert!(streams.join("a0-all.log").exists(), "recreated");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&streams), 0o750);
    assert_eq!(mode(&streams.join("a0-all.log")), 0o640);

    // Deleted (what it held saved first, between two writes).
    wait_for_mid_second();
    let saved = scratch.join("deleted");
    fs::create_dir(&saved).unwrap();
    for entry in fs::read_dir(&streams).unwrap().flatten() {
        fs::copy(entry.path(), saved.join(entry.file_name())).unwrap();
    }
    fs::remove_dir_all(&streams).unwrap();
    send_for(&topology, Duration::from_secs(2));
    assert!(streams.join("a1-all.log").exists(), "recreated");

    // Read-only, and SIGHUP (logrotate's postrotate) makes the agent open its streams again:
    // it cannot, so records wait until the mount is gone.
    {
        let _read_only = Mount::read_only_for(agent.pid(), &streams);
        agent.signal(libc::SIGHUP);
        send_for(&topology, Duration::from_secs(3));
        agent.wait_for_log("Read-only file system", 1, Duration::from_secs(1));
    }
    agent.wait_for_log("write succeeded after retries", 1, Duration::from_secs(15));
    send_for(&topology, Duration::from_secs(2));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let reference = lines(&stopped.stdout);
    let mut delivered = lines_under(&scratch.join("renamed"));
    delivered.extend(lines_under(&saved));
    delivered.extend(lines_under(&streams));
    assert_eq!(
        check_subset(&delivered, &reference, &sink),
        0,
        "nothing missing"
    );
    assert_eq!(
        sink_totals(&stopped.stderr, &sink),
        (reference.len() as u64, 0)
    );
    assert!(
        stopped
            .stderr
            .contains("log-stream directory was missing; created it again")
    );
}

/// A collector that accepts, then stops reading: IPFIX TCP writes time out instead of blocking
/// for ever; SIGTERM ends the agent within its deadline, saying how many records were not
/// delivered, and the sink's written + lost is exactly what it was given.
#[test]
fn a_collector_that_stops_reading_cannot_hold_the_shutdown() {
    let topology = Topology::new(true);
    // Small socket buffers in the agent's namespace, so a few intervals fill them.
    topology
        .a
        .set_sysctl("net.ipv4.tcp_wmem", "4096 4096 4096")
        .unwrap();
    topology
        .a
        .set_sysctl("net.ipv4.tcp_rmem", "4096 4096 4096")
        .unwrap();
    let listener = in_netns(&topology.a, || TcpListener::bind("127.0.0.1:4740"))
        .unwrap()
        .expect("collector port");
    // Accepts and holds every connection without ever reading.
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    listener.set_nonblocking(true).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_accepting = Arc::clone(&done);
    let accepting = thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until && !stop_accepting.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => holder.lock().unwrap().push(stream),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    });
    let sink = "ipfix+tcp://127.0.0.1:4740";
    let mut agent = Agent::start(&topology.a, &agent_args(&["--sink", sink]));
    // Many flows per interval: each source port is a flow.
    let until = Instant::now() + Duration::from_secs(4);
    let target = topology.udp[0].a.local_addr().unwrap();
    let sockets: Vec<std::net::UdpSocket> = (0..300)
        .map(|i| {
            tests::traffic::udp_socket(
                &topology.b,
                SocketAddr::new(topology.udp[0].b_addr.ip(), 20000 + i),
            )
        })
        .collect();
    while Instant::now() < until {
        for socket in &sockets {
            socket.send_to(&[0; 64], target).unwrap();
        }
        thread::sleep(Duration::from_millis(250));
    }
    agent.wait_for_log("connected to the collector", 1, Duration::from_secs(1));
    let stopping = Instant::now();
    agent.signal(libc::SIGTERM);
    let stopped = agent.wait_for_exit(Duration::from_secs(25));
    let took = stopping.elapsed();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    // The documented deadline (15 s) and the half second after which a sink is abandoned.
    assert!(
        took < Duration::from_millis(16_500),
        "stopped after {took:?}"
    );
    assert!(
        stopped.stderr.contains("records not delivered"),
        "{}",
        stopped.stderr
    );
    let reference = lines(&stopped.stdout);
    let (written, lost) = sink_totals(&stopped.stderr, sink);
    assert_eq!(written + lost, reference.len() as u64, "{}", stopped.stderr);
    assert!(lost > 0);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = accepting.join();
    drop(held);
    eprintln!("stuck collector: stopped in {took:?}; {written} written, {lost} not delivered");
}

/// While the agent waits for a stuck sink, a second SIGTERM ends it at once.
#[test]
fn a_second_signal_exits_at_once() {
    let topology = Topology::new(true);
    // A collector that never accepts: the kernel completes the connection, then the small
    // buffers fill and the write blocks.
    for key in ["net.ipv4.tcp_wmem", "net.ipv4.tcp_rmem"] {
        topology.a.set_sysctl(key, "4096 4096 4096").unwrap();
    }
    let listener = in_netns(&topology.a, || TcpListener::bind("127.0.0.1:4741"))
        .unwrap()
        .expect("collector port");
    let sink = "ipfix+tcp://127.0.0.1:4741";
    let mut agent = Agent::start(&topology.a, &agent_args(&["--sink", sink]));
    let target = topology.udp[0].a.local_addr().unwrap();
    let sockets: Vec<std::net::UdpSocket> = (0..300)
        .map(|i| {
            tests::traffic::udp_socket(
                &topology.b,
                SocketAddr::new(topology.udp[0].b_addr.ip(), 21000 + i),
            )
        })
        .collect();
    for _ in 0..12 {
        for socket in &sockets {
            socket.send_to(&[0; 64], target).unwrap();
        }
        thread::sleep(Duration::from_millis(250));
    }
    agent.wait_for_log("no progress for 10 s", 1, Duration::from_secs(15));
    agent.signal(libc::SIGTERM);
    agent.wait_for_log("stopping: final drain", 1, Duration::from_secs(2));
    thread::sleep(Duration::from_secs(1));
    let second = Instant::now();
    agent.signal(libc::SIGTERM);
    let stopped = agent.wait_for_exit(Duration::from_secs(5));
    let took = second.elapsed();
    drop(listener);
    assert!(
        took < Duration::from_millis(1000),
        "{took:?} after the second signal"
    );
    assert!(!stopped.status.success(), "a forced exit is a failure");
    assert!(
        stopped.stderr.contains("second stop signal: exiting now"),
        "{}",
        stopped.stderr
    );
}

/// Standard output closed by its reader: EPIPE is permanent, not retried. Its records are
/// counted lost exactly, the other sink writes everything, and SIGTERM is prompt.
#[test]
fn a_closed_stdout_is_a_permanent_failure() {
    let topology = Topology::new(true);
    let scratch = Scratch::new("stdout-closed");
    let streams = scratch.join("streams");
    let sink = format!("dir:{}", streams.display());
    let agent = AgentBuilder::new(&topology.a)
        .args(&agent_args(&["--sink", &sink]))
        .stdout_closed()
        .start();
    send_for(&topology, Duration::from_secs(3));
    let stopping = Instant::now();
    let stopped = agent.stop();
    let took = stopping.elapsed();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
    assert!(
        stopped.stderr.contains("write failed permanently"),
        "{}",
        stopped.stderr
    );
    assert!(
        !stopped
            .stderr
            .lines()
            .any(|l| l.contains("sink=stdout") && l.contains("records wait")),
        "EPIPE is not retried"
    );
    let delivered = lines_under(&streams);
    let (dir_written, dir_lost) = sink_totals(&stopped.stderr, &sink);
    assert_eq!((dir_written, dir_lost), (delivered.len() as u64, 0));
    let (written, lost) = sink_totals(&stopped.stderr, "stdout");
    assert_eq!(written + lost, dir_written);
    assert!(lost > 0);
}

/// 2,000 interfaces created and deleted under a `dir:` sink: a stream is open only while its
/// interface exists (closed after an interval without it), so descriptors stay bounded by the
/// interfaces alive, not by every name ever seen.
#[test]
fn log_streams_of_two_thousand_departed_interfaces_are_closed() {
    let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    veth_pair(&a, "c0a", &b, "c0b").expect("veth");
    a.link_up("c0a").unwrap();
    let scratch = Scratch::new("churn");
    let streams = scratch.join("streams");
    let sink = format!("dir:{}", streams.display());
    let mut agent = Agent::start(
        &a,
        &[
            "-i",
            "c*a",
            "--interval",
            "1s",
            "--no-pin",
            "--metrics",
            "off",
            "--sink",
            &sink,
        ],
    );
    agent.wait_for_log("interval written", 2, Duration::from_secs(5));
    let pid = agent.pid();
    // The agent raised its soft limit on open files to the hard one it inherited.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit into ours.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    assert_eq!(open_files_limit(pid), limit.rlim_max);
    let (base_total, base_streams) = descriptors(pid, &streams);
    assert_eq!(base_streams, 1, "the anchor's stream");
    let mut most_streams = 0;
    let burst = 200;
    for round in 0..10 {
        let names: Vec<String> = (0..burst)
            .map(|i| format!("c{}", 1 + round * burst + i))
            .collect();
        let add: String = names
            .iter()
            .map(|n| {
                format!(
                    "link add {n}a type veth peer name {n}b netns {}\n",
                    b.name()
                )
            })
            .collect();
        ip_batch(&a, &add);
        // Long enough for each to be attached and written in an interval.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(15) {
            thread::sleep(Duration::from_millis(500));
            let open = descriptors(pid, &streams).1;
            most_streams = most_streams.max(open);
            if open > burst as usize {
                break;
            }
        }
        let del: String = names.iter().map(|n| format!("link del {n}a\n")).collect();
        ip_batch(&a, &del);
    }
    // Two intervals after the last interface went, only the anchor's stream is open.
    let mut last = (0, 0);
    let settled = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(100));
        last = descriptors(pid, &streams);
        last == (base_total, base_streams)
    });
    let files = fs::read_dir(&streams).unwrap().count();
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        settled,
        "descriptors {last:?}, at the start {:?}",
        (base_total, base_streams)
    );
    assert!(files > 1000, "streams were written: {files} files");
    // The live interfaces' streams, and those of the burst deleted during the last interval.
    assert!(
        most_streams <= 2 * burst as usize + 1,
        "at most the live interfaces' streams open: {most_streams}"
    );
    eprintln!("churn: {files} stream files; at most {most_streams} open at once");
}

fn ip_batch(ns: &NetNs, commands: &str) {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed");
}

/// 2,000 idle connections to the metrics port: the agent holds at most 64 of them, closes the
/// others at once and the held ones after its 5 s timeout, never spins, and answers a scrape
/// afterwards. Out of descriptors, a failing `accept` backs off instead of spinning.
#[test]
fn idle_metrics_connections_are_bounded_and_never_spin() {
    raise_open_files_limit(8192);
    let ns = NetNs::new().expect("netns");
    ns.link_up("lo").unwrap();
    veth_pair(&ns, "m0", &ns, "m1").expect("veth");
    let mut agent = Agent::start(
        &ns,
        &[
            "-i",
            "m0",
            "--interval",
            "1s",
            "--no-pin",
            "--sink",
            "stdout",
        ],
    );
    agent.wait_for_log("metrics at", 1, Duration::from_secs(5));
    let pid = agent.pid();
    let nowhere = Path::new("/nonexistent");
    let (base, _) = descriptors(pid, nowhere);
    let cpu_before = cpu_time(pid);
    let address: SocketAddr = METRICS_ADDRESS.parse().unwrap();
    let started = Instant::now();
    let mut connections: Vec<TcpStream> = in_netns(&ns, || {
        (0..2000)
            .filter_map(|_| TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok())
            .collect()
    })
    .unwrap();
    let held = connections.len();
    assert!(held >= 1900, "{held} connected");
    let mut most = 0;
    while started.elapsed() < Duration::from_secs(8) {
        most = most.max(descriptors(pid, nowhere).0);
        thread::sleep(Duration::from_millis(50));
    }
    // Every one was closed by the agent: at once over the cap, after 5 s idle under it.
    let closed = connections
        .iter_mut()
        .map(|c| {
            c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            matches!(c.read(&mut [0; 16]), Ok(0) | Err(_))
        })
        .filter(|closed| *closed)
        .count();
    let cpu = cpu_time(pid) - cpu_before;
    drop(connections);
    assert!(most <= base + 64 + 4, "descriptors {most}, {base} before");
    assert_eq!(closed, held, "every connection was closed by the agent");
    assert!(
        cpu < Duration::from_secs(2),
        "{cpu:?} of CPU for 2,000 idle connections"
    );
    assert!(scrape(&ns, "/metrics").starts_with("HTTP/1.1 200 OK"));

    // Out of descriptors: accept fails (EMFILE) with connections waiting; it must back off.
    // (The soft limit only: raising a hard limit back would need CAP_SYS_RESOURCE.)
    let (now, _) = descriptors(pid, nowhere);
    let original = open_files_limit(pid);
    let set = |soft: u64| {
        let limit = format!("--nofile={soft}:");
        let status = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &limit])
            .status();
        assert!(status.unwrap().success(), "prlimit {limit}");
    };
    set(now as u64 + 2);
    let cpu_before = cpu_time(pid);
    let waiting: Vec<TcpStream> = in_netns(&ns, || {
        (0..20)
            .filter_map(|_| TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok())
            .collect()
    })
    .unwrap();
    thread::sleep(Duration::from_secs(3));
    let cpu = cpu_time(pid) - cpu_before;
    set(original);
    drop(waiting);
    assert!(
        cpu < Duration::from_millis(500),
        "{cpu:?} of CPU in 3 s out of descriptors"
    );
    agent.wait_for_log("metrics: accept failed", 1, Duration::from_secs(2));
    thread::sleep(Duration::from_secs(3));
    assert!(scrape(&ns, "/metrics").starts_with("HTTP/1.1 200 OK"));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    eprintln!(
        "metrics: at most {most} descriptors ({base} before); {cpu:?} CPU out of descriptors"
    );
}

/// `flowlog-agent ARGS` without privileges it needs: refused before anything starts.
fn refused(args: &[&str]) -> String {
    let output = Command::new(agent_binary())
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("agent");
    assert!(!output.status.success(), "{args:?} was accepted");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every form a secret can take in a sink URL is refused, by `run`, `check` and a config file,
/// naming the environment variable to use; the secret appears in no output.
#[test]
fn secrets_in_sink_urls_are_refused_and_never_printed() {
    let scratch = Scratch::new("secrets");
    let secret = "hunter2-0123";
    let forms = [
        (
            format!("s3://AKIAEXAMPLE:{secret}@bucket/p"),
            "AWS_SECRET_ACCESS_KEY",
        ),
        (
            format!("s3://bucket/p?secret_access_key={secret}"),
            "AWS_SECRET_ACCESS_KEY",
        ),
        (
            format!("s3://bucket/p?aws_session_token={secret}"),
            "AWS_SESSION_TOKEN",
        ),
        (
            format!("s3://bucket/p?sse_customer_key_base64={secret}"),
            "AWS_SSE_CUSTOMER_KEY_BASE64",
        ),
        (
            format!("s3://bucket/p?proxy_url=http://u:{secret}@proxy"),
            "AWS_PROXY_URL",
        ),
        (
            format!("s3://bucket/p?secret_acess_key={secret}"),
            "unknown option",
        ),
        (
            format!("az://container/p?account_key={secret}"),
            "AZURE_STORAGE_ACCOUNT_KEY",
        ),
        (
            format!("az://container/p?master_key={secret}"),
            "AZURE_STORAGE_ACCOUNT_KEY",
        ),
        (
            format!("az://container/p?sas_token={secret}"),
            "AZURE_STORAGE_SAS_KEY",
        ),
        (
            format!("az://container/p?client_secret={secret}"),
            "AZURE_STORAGE_CLIENT_SECRET",
        ),
        (
            format!("az://me:{secret}@container/p"),
            "AZURE_STORAGE_ACCOUNT_KEY",
        ),
        (
            format!("gs://bucket/p?service_account_key={secret}"),
            "GOOGLE_SERVICE_ACCOUNT_KEY",
        ),
        (
            format!("gs://bucket/p?bearer_token={secret}"),
            "GOOGLE_BEARER_TOKEN",
        ),
        (
            format!("ipfix+tcp://me:{secret}@127.0.0.1:4739"),
            "credentials in the URL",
        ),
    ];
    for (i, (url, named)) in forms.iter().enumerate() {
        let config = scratch.join(&format!("config-{i}.toml"));
        fs::write(
            &config,
            format!(
                "[metadata]\naccount-id = \"123456789010\"\nregion = \"local\"\n[[flow-log]]\nid = \"fl-a\"\nscope = \"all\"\nsinks = [\"{url}\"]\n"
            ),
        )
        .unwrap();
        let base = [
            "--account-id",
            "123456789010",
            "--region",
            "local",
            "--sink",
            url.as_str(),
        ];
        for (how, output) in [
            ("run", refused(&[&["run"], &base[..]].concat())),
            ("check", refused(&[&["check"], &base[..]].concat())),
            (
                "config",
                refused(&["check", "--config", config.to_str().unwrap()]),
            ),
        ] {
            assert!(
                !output.contains(secret),
                "{how} {url}: the secret is shown:\n{output}"
            );
            assert!(
                output.contains(named),
                "{how} {url}: {named} not named:\n{output}"
            );
        }
    }
}

/// Bad input is refused, naming the token; a world-writable configuration is warned about.
#[test]
fn bad_input_is_refused_naming_the_token() {
    let scratch = Scratch::new("input");
    for (args, token) in [
        (
            vec!["run", "--exclude", "10.0.0.0/8/icmp:5"],
            "icmp has no ports",
        ),
        (vec!["run", "--exclude", "::/0/icmp"], "icmp is IPv4's"),
        (
            vec!["run", "--sink", "stdout", "--sink", "stdout"],
            "sink stdout is given twice",
        ),
        (
            vec!["run", "--sink", "ipfix+udp://127.0.0.1?domain=1&domain=2"],
            "option \"domain\" is given twice",
        ),
    ] {
        let output = refused(&args);
        assert!(output.contains(token), "{args:?}: {output}");
    }
    let policy = scratch.join("policy.toml");
    fs::write(
        &policy,
        "[[security_group.ingress]]\nprotocol = \"icmpv6\"\ncidr = \"0.0.0.0/0\"\n",
    )
    .unwrap();
    let output = refused(&[
        "run",
        "--policy",
        policy.to_str().unwrap(),
        "--sink",
        "stdout",
    ]);
    assert!(
        output.contains(":3:") && output.contains("icmpv6 is IPv6's"),
        "{output}"
    );

    let config = scratch.join("flowlog.toml");
    fs::write(
        &config,
        "[[flow-log]]\nid = \"fl-a\"\nscope = \"all\"\nsinks = [\"stdout\", \"json:stdout\"]\n",
    )
    .unwrap();
    let output = refused(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        output.contains(":4:") && output.contains("both write standard output"),
        "{output}"
    );
    // World-writable: `check` warns (the rest of check may fail here for other reasons).
    fs::write(
        &config,
        "[[flow-log]]\nid = \"fl-a\"\nscope = \"all\"\nsinks = [\"stdout\"]\n",
    )
    .unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o666)).unwrap();
    let output = Command::new(agent_binary())
        .args(["check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("warn  file permissions") && text.contains("writable by every local user"),
        "{text}"
    );
}
