//! Restarts without loss: with its maps and links pinned, the agent can be stopped (SIGTERM),
//! killed (SIGKILL) and started again while traffic flows, and the records of all its runs add up
//! to exactly what was sent, including what crossed the interface while no agent ran.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    thread,
    time::Duration,
};

use tests::{
    agent::{Agent, agent_binary, interval_total},
    bpffs::Bpffs,
    records::{FlowTuple, parse_lines, totals},
    topology::Topology,
    traffic::{udp_exchange, udp_socket},
};

const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn links_in(pin_dir: &Path) -> Vec<String> {
    fs::read_dir(pin_dir.join("v1/links"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn stopped_and_killed_agents_lose_and_double_count_nothing() {
    let bpffs = Bpffs::mount();
    let pin_dir = bpffs.0.join("flowlog");
    let pin_arg = pin_dir.to_str().unwrap().to_owned();
    let Topology { a, b, .. } = Topology::builder().ipv4_only().build();
    let args = |on_exit: &'static str| -> Vec<String> {
        [
            "--interval",
            "2s",
            "--interface",
            "a0",
            "--sink",
            "stdout",
            "--pin-dir",
            &pin_arg,
            "--on-exit",
            on_exit,
            "--exclude",
            "198.18.0.0/24/udp:6000",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let start = |on_exit| {
        let args = args(on_exit);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start(&a, &args)
    };
    let a_socket = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 5001));
    let b_socket = udp_socket(&b, SocketAddr::new(IpAddr::V4(B4), 5002));
    // Excluded traffic is no flow, but its count is reported: exactly, across restarts too.
    let excluded_socket = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 6000));
    let mut sent = (0u64, 0u64);
    let mut excluded_sent = 0u64;
    let mut send = |count: u64| {
        let wire = udp_exchange(&b_socket, &a_socket, count, 100);
        sent.0 += wire.0;
        sent.1 += wire.1;
        excluded_sent += udp_exchange(&b_socket, &excluded_socket, count / 10, 60).0;
    };
    let mut outputs = Vec::new();
    let mut logs = Vec::new();

    // 1. An agent counts, then stops with SIGTERM, leaving its programs attached.
    let agent = start("keep");
    send(10);
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("programs stay attached"),
        "{}",
        stopped.stderr
    );
    assert_eq!(
        links_in(&pin_dir).len(),
        2,
        "ingress and egress links stay pinned"
    );
    outputs.push(stopped.stdout);
    logs.push(stopped.stderr);

    // 2. No agent: the pinned programs go on counting.
    send(20);

    // 3. A second agent adopts the maps and links, then is killed between two drains.
    let mut agent = start("keep");
    agent.wait_for_log("adopted the maps", 1, Duration::from_secs(5));
    // A second agent on the same pin directory would drain part of the counts: refused.
    let second = a
        .command(agent_binary().to_str().unwrap())
        .args([
            "run",
            "--interface",
            "a0",
            "--sink",
            "stdout",
            "--pin-dir",
            &pin_arg,
        ])
        .output()
        .expect("second agent");
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{message}");
    assert!(
        message.contains("another flowlog-agent is using"),
        "{message}"
    );
    send(30);
    agent.wait_for_log("interval written", 1, Duration::from_secs(10));
    send(40);
    thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGKILL) };
    let killed = agent.stop();
    assert!(!killed.status.success());
    outputs.push(killed.stdout);
    logs.push(killed.stderr);

    // 4. No agent again.
    send(50);

    // 5. A third agent picks up what the killed one never drained, then stops and detaches.
    let agent = start("detach");
    send(60);
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    outputs.push(stopped.stdout);
    logs.push(stopped.stderr);
    assert_eq!(
        links_in(&pin_dir),
        Vec::<String>::new(),
        "detached: no link left"
    );

    let flow = FlowTuple {
        src: IpAddr::V4(B4),
        dst: IpAddr::V4(A4),
        src_port: 5002,
        dst_port: 5001,
        protocol: 17,
    };
    let mut counted = (0, 0);
    let mut per_run = Vec::new();
    for output in &outputs {
        let run: BTreeMap<_, _> = totals(&parse_lines(output));
        let this = run.get(&("a0".to_owned(), flow)).copied().unwrap_or((0, 0));
        per_run.push(this.0);
        counted.0 += this.0;
        counted.1 += this.1;
    }
    assert_eq!(counted, sent, "packets per run: {per_run:?}");
    // Each run reported something: the downtime traffic went to the next run.
    assert!(per_run.iter().all(|p| *p > 0), "{per_run:?}");
    let excluded_reported = interval_total(&logs, "excluded_packets");
    assert_eq!(
        excluded_reported, excluded_sent,
        "excluded packets reported by all runs vs sent (while no agent ran too)"
    );

    // `flowlog-agent detach` removes what is left (the maps).
    let output = a
        .command(agent_binary().to_str().unwrap())
        .args(["detach", "--pin-dir", &pin_arg])
        .output()
        .expect("detach");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!pin_dir.exists(), "the pin directory is gone");
}
