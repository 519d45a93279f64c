//! IPFIX export to a real collector: the agent on a veth pair between two test namespaces
//! exports known UDP and TCP traffic (IPv4 and IPv6, both directions) to `nfcapd` on the
//! namespace's loopback, over UDP and over TCP (with a collector restart); `nfdump` reads the
//! captured files back and every flow must equal what crossed the wire, and what the agent's
//! own stdout records say. `ipfixDump` (libfixbuf) decodes the TCP stream independently for the
//! fields nfdump 1.7 does not keep (forwardingStatus, interfaceName). An interface created after
//! the agent started exports its own index.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tests::{
    agent::Agent,
    collector::{Nfcapd, TcpFront, ipfix_dump, nf_totals},
    netns::veth_pair,
    records::{FlowTuple, parse_lines, totals},
    topology::{A4, A6, B4, B6, TCP, Topology, UDP},
    traffic::{tcp_exchange, udp_exchange, udp_gso_exchange, udp_socket},
};

const NFCAPD_PORT: u16 = 9995;
const IPFIX_PORT: u16 = 4739;
/// flowDirection values.
const INGRESS: u8 = 0;
const EGRESS: u8 = 1;

/// Expected (flowDirection on a0, flow) -> (packets, bytes).
#[derive(Default)]
struct Expected(BTreeMap<(u8, FlowTuple), (u64, u64)>);

impl Expected {
    fn add(&mut self, from: SocketAddr, to: SocketAddr, protocol: u8, wire: (u64, u64)) {
        // Packets from namespace b arrive on a0; packets from a leave through it.
        let direction = if [IpAddr::V4(B4), IpAddr::V6(B6)].contains(&from.ip()) {
            INGRESS
        } else {
            EGRESS
        };
        let flow = FlowTuple {
            src: from.ip(),
            dst: to.ip(),
            src_port: from.port(),
            dst_port: to.port(),
            protocol,
        };
        let entry = self.0.entry((direction, flow)).or_insert((0, 0));
        entry.0 += wire.0;
        entry.1 += wire.1;
    }
}

/// One round of the end-to-end traffic: UDP both ways (plain and GSO) and a TCP exchange each
/// way of opening, IPv4 and IPv6.
fn send_round(topology: &Topology, round: u64, expected: &mut Expected) {
    for pair in &topology.udp {
        let (a_socket, b_socket, a_addr, b_addr) = (&pair.a, &pair.b, &pair.a_addr, &pair.b_addr);
        let wire = udp_exchange(b_socket, a_socket, 10 + round, 100);
        expected.add(*b_addr, *a_addr, UDP, wire);
        let wire = udp_exchange(a_socket, b_socket, 5, 1000 + round as usize);
        expected.add(*a_addr, *b_addr, UDP, wire);
        let wire = udp_gso_exchange(a_socket, b_socket, 5000, 1400);
        expected.add(*a_addr, *b_addr, UDP, wire);
    }
    for (port, server_ip) in [
        (6000 + round as u16, IpAddr::V4(A4)),
        (7000 + round as u16, IpAddr::V6(A6)),
    ] {
        let exchange = tcp_exchange(
            &topology.b,
            &topology.a,
            SocketAddr::new(server_ip, port),
            50_000 + round as usize * 1000,
            20_000,
        );
        let (c2s, s2c) = (exchange.client_to_server, exchange.server_to_client);
        expected.add(
            exchange.client,
            exchange.server,
            TCP,
            (c2s.packets, c2s.bytes),
        );
        expected.add(
            exchange.server,
            exchange.client,
            TCP,
            (s2c.packets, s2c.bytes),
        );
    }
}

fn start_agent(topology: &Topology, sink: &str, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--interval",
        "1s",
        "--interface",
        "a0",
        "--sink",
        sink,
        "--sink",
        "stdout",
    ];
    args.extend_from_slice(extra);
    Agent::start(&topology.a, &args)
}

/// The UDP port the policy of the TCP test drops (ingress, both families).
const DENIED_PORT: u16 = 9999;

const DENY_POLICY: &str = r#"
[acl]
default = "allow"
[[acl.rule]]
number = 1
direction = "ingress"
protocol = "udp"
cidr = "198.18.0.0/15"
ports = "9999"
action = "deny"
[[acl.rule]]
number = 2
direction = "ingress"
protocol = "udp"
cidr = "fd00::/8"
ports = "9999"
action = "deny"
"#;

/// Datagrams from b to a's [`DENIED_PORT`], which the policy drops: REJECT records.
fn send_denied(topology: &Topology, expected: &mut Expected) {
    for pair in &topology.udp {
        let (b_socket, a_addr, b_addr) = (&pair.b, &pair.a_addr, &pair.b_addr);
        let to = SocketAddr::new(a_addr.ip(), DENIED_PORT);
        for _ in 0..6 {
            b_socket.send_to(&[9; 80], to).expect("send");
        }
        let header = if to.is_ipv4() { 20 } else { 40 };
        expected.add(*b_addr, to, UDP, (6, 6 * (header + 8 + 80)));
    }
}

/// Checks the collector's flows against the wire and against the agent's own records; returns
/// the number of flows the collector holds.
fn check_collected(
    topology: &Topology,
    collected: &[tests::collector::NfFlow],
    expected: &Expected,
    stdout: &str,
) {
    let seen = nf_totals(collected);
    for (key, want) in &expected.0 {
        assert_eq!(
            seen.get(key),
            Some(want),
            "flow {key:?}: collector vs wire; the agent wrote:\n{}",
            stdout
                .lines()
                .filter(|l| l.contains(&format!(" {} ", key.1.dst_port)))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Every flow the agent wrote (neighbour discovery too) reached the collector, and nothing
    // else did.
    let by_tuple = |m: BTreeMap<(u8, FlowTuple), (u64, u64)>| -> BTreeMap<FlowTuple, (u64, u64)> {
        let mut out = BTreeMap::new();
        for ((_, tuple), (p, b)) in m {
            let e = out.entry(tuple).or_insert((0, 0));
            e.0 += p;
            e.1 += b;
        }
        out
    };
    let records: BTreeMap<FlowTuple, (u64, u64)> = totals(&parse_lines(stdout))
        .into_iter()
        .map(|((_, tuple), counts)| (tuple, counts))
        .collect();
    assert_eq!(by_tuple(seen), records, "collector vs the agent's records");
    let ifindex = topology.a.ifindex("a0").expect("ifindex");
    for flow in collected {
        let interfaces = match flow.direction {
            INGRESS => (ifindex, 0),
            EGRESS => (0, ifindex),
            other => panic!("flowDirection {other} in {flow:?}"),
        };
        assert_eq!((flow.input, flow.output), interfaces, "{flow:?}");
    }
}

#[test]
fn udp_export_reaches_nfcapd_exactly() {
    let topology = Topology::new(false);
    let nfcapd = Nfcapd::start(&topology.a, "udp", NFCAPD_PORT);
    let agent = start_agent(
        &topology,
        &format!("ipfix+udp://127.0.0.1:{NFCAPD_PORT}"),
        &[],
    );
    let mut expected = Expected::default();
    for round in 0..3 {
        send_round(&topology, round, &mut expected);
        thread::sleep(Duration::from_millis(700));
    }
    let stopped = agent.stop();
    assert!(stopped.status.success(), "agent: {}", stopped.stderr);
    let (collected, log) = nfcapd.stop();
    check_collected(&topology, &collected, &expected, &stopped.stdout);
    assert!(log.contains("Sequence Errors: 0"), "nfcapd: {log}");
    assert!(
        stopped.stderr.contains(&format!(
            "sink finished sink=ipfix+udp://127.0.0.1:{NFCAPD_PORT}"
        )) && !stopped.stderr.contains("dropped_total=")
            && !stopped.stderr.contains("IPFIX records dropped"),
        "{}",
        stopped.stderr
    );
}

/// An interface created after the agent started is attached when it appears, and its flows
/// reach the collector with its own index as ingressInterface/egressInterface (not 0, which an
/// index map fixed at start-up gave).
#[test]
fn an_interface_created_after_start_exports_its_own_ifindex() {
    let topology = Topology::new(false);
    let nfcapd = Nfcapd::start(&topology.a, "late", NFCAPD_PORT);
    let mut agent = start_agent(
        &topology,
        &format!("ipfix+udp://127.0.0.1:{NFCAPD_PORT}"),
        &["--interface", "late*"],
    );
    let (a_ip, b_ip) = (Ipv4Addr::new(198, 18, 1, 1), Ipv4Addr::new(198, 18, 1, 2));
    veth_pair(&topology.a, "late0", &topology.b, "late1").expect("veth");
    for (ns, link, ip) in [(&topology.a, "late0", a_ip), (&topology.b, "late1", b_ip)] {
        ns.disable_ipv6(link).expect("sysctl");
        ns.add_address(link, ip, 24).expect("address");
        ns.link_up(link).expect("up");
    }
    agent.wait_for_log("attached interface=late0", 1, Duration::from_secs(5));
    let ifindex = topology.a.ifindex("late0").expect("ifindex");
    assert_ne!(ifindex, topology.a.ifindex("a0").expect("ifindex"));

    let a_addr = SocketAddr::new(IpAddr::V4(a_ip), 5003);
    let b_addr = SocketAddr::new(IpAddr::V4(b_ip), 5004);
    let (a_socket, b_socket) = (
        udp_socket(&topology.a, a_addr),
        udp_socket(&topology.b, b_addr),
    );
    let tuple = |from: SocketAddr, to: SocketAddr| FlowTuple {
        src: from.ip(),
        dst: to.ip(),
        src_port: from.port(),
        dst_port: to.port(),
        protocol: UDP,
    };
    // Datagrams from b arrive on late0; datagrams from a leave through it.
    let expected = BTreeMap::from([
        (
            (INGRESS, tuple(b_addr, a_addr)),
            udp_exchange(&b_socket, &a_socket, 7, 100),
        ),
        (
            (EGRESS, tuple(a_addr, b_addr)),
            udp_exchange(&a_socket, &b_socket, 4, 300),
        ),
    ]);
    let stopped = agent.stop();
    assert!(stopped.status.success(), "agent: {}", stopped.stderr);
    let (collected, log) = nfcapd.stop();
    assert!(log.contains("Sequence Errors: 0"), "nfcapd: {log}");

    let late: Vec<_> = collected
        .into_iter()
        .filter(|flow| [flow.tuple.src, flow.tuple.dst].contains(&IpAddr::V4(a_ip)))
        .collect();
    assert_eq!(nf_totals(&late), expected, "collector vs wire");
    for flow in &late {
        let interfaces = match flow.direction {
            INGRESS => (ifindex, 0),
            EGRESS => (0, ifindex),
            other => panic!("flowDirection {other} in {flow:?}"),
        };
        assert_eq!((flow.input, flow.output), interfaces, "{flow:?}");
    }
}

/// Sleeps until the wall clock is half-way between two whole seconds, where the agent (1 s
/// intervals, aligned on whole seconds) is not writing.
fn wait_for_mid_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = now.subsec_millis() as u64;
    let wait = if into < 500 { 500 - into } else { 1500 - into };
    thread::sleep(Duration::from_millis(wait));
}

#[test]
fn tcp_export_survives_a_collector_restart() {
    let topology = Topology::new(false);
    let raw = PathBuf::from(format!("/tmp/flowlog-ipfix-tcp-{}.raw", std::process::id()));
    let _ = std::fs::remove_file(&raw);
    let nfcapd = Nfcapd::start(&topology.a, "tcp", NFCAPD_PORT);
    let front = TcpFront::start(
        &topology.a,
        IPFIX_PORT,
        NFCAPD_PORT,
        &raw,
        Ipv4Addr::new(127, 0, 0, 2),
    );
    let sink = format!("ipfix+tcp://127.0.0.1:{IPFIX_PORT}");
    let policy = PathBuf::from(format!(
        "/tmp/flowlog-ipfix-policy-{}.toml",
        std::process::id()
    ));
    std::fs::write(&policy, DENY_POLICY).expect("policy file");
    let mut agent = start_agent(&topology, &sink, &["--policy", policy.to_str().unwrap()]);
    let mut expected = Expected::default();

    send_round(&topology, 0, &mut expected);
    send_denied(&topology, &mut expected);
    agent.wait_for_log("connected to the collector", 1, Duration::from_secs(5));
    thread::sleep(Duration::from_millis(1200));
    // The collector goes away between two intervals, for about a second, while traffic goes on.
    wait_for_mid_second();
    let first_connections = front.connections.clone();
    let first_sets = front.first_sets.clone();
    front.stop();
    send_round(&topology, 1, &mut expected);
    thread::sleep(Duration::from_millis(700));
    let front = TcpFront::start(
        &topology.a,
        IPFIX_PORT,
        NFCAPD_PORT,
        &raw,
        Ipv4Addr::new(127, 0, 0, 3),
    );
    agent.wait_for_log("connected to the collector", 2, Duration::from_secs(10));
    send_round(&topology, 2, &mut expected);
    thread::sleep(Duration::from_millis(1200));

    let stopped = agent.stop();
    let _ = std::fs::remove_file(&policy);
    assert!(stopped.status.success(), "agent: {}", stopped.stderr);
    // The agent closed its connection after the last interval; let the front read it all.
    thread::sleep(Duration::from_millis(300));
    let connections = front.connections.clone();
    let sets = front.first_sets.clone();
    front.stop();
    let (collected, log) = nfcapd.stop();

    check_collected(&topology, &collected, &expected, &stopped.stdout);
    // Two exporters (one per TCP session, each starting at sequence 0), no gap in either.
    assert_eq!(
        log.matches("New ipfix exporter").count(),
        2,
        "nfcapd: {log}"
    );
    assert!(log.contains("Sequence Errors: 0"), "nfcapd: {log}");
    // One connection before the restart, one after; each began with the template set.
    assert_eq!(
        first_connections.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(*first_sets.lock().unwrap(), [2]);
    assert_eq!(*sets.lock().unwrap(), [2]);
    assert!(
        stopped.stderr.contains("collector closed the connection"),
        "{}",
        stopped.stderr
    );
    assert!(
        stopped
            .stderr
            .contains(&format!("sink finished sink={sink} records=")),
        "{}",
        stopped.stderr
    );
    assert!(
        !stopped.stderr.contains("records lost"),
        "{}",
        stopped.stderr
    );

    // The independent decoder sees the same counts, the verdict and the interface name.
    let dumped = ipfix_dump(&raw);
    let _ = std::fs::remove_file(&raw);
    let mut from_dump: BTreeMap<(u8, FlowTuple), (u64, u64)> = BTreeMap::new();
    for record in dumped.iter().filter(|r| r.contains_key("octetDeltaCount")) {
        let field = |name: &str| -> &str {
            record
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing in {record:?}"))
        };
        // Forwarded (64), or dropped by the ACL (129) for the denied port.
        let status = if field("destinationTransportPort") == DENIED_PORT.to_string() {
            "129"
        } else {
            "64"
        };
        assert_eq!(field("forwardingStatus"), status, "{record:?}");
        assert_eq!(field("interfaceName"), "(len: 2) a0", "{record:?}");
        let (src, dst) = match field("ipVersion") {
            "4" => ("sourceIPv4Address", "destinationIPv4Address"),
            _ => ("sourceIPv6Address", "destinationIPv6Address"),
        };
        let tuple = FlowTuple {
            src: field(src).parse().unwrap(),
            dst: field(dst).parse().unwrap(),
            src_port: field("sourceTransportPort").parse().unwrap(),
            dst_port: field("destinationTransportPort").parse().unwrap(),
            protocol: field("protocolIdentifier").parse().unwrap(),
        };
        let direction: u8 = field("flowDirection").parse().unwrap();
        let entry = from_dump.entry((direction, tuple)).or_insert((0, 0));
        entry.0 += field("packetDeltaCount").parse::<u64>().unwrap();
        entry.1 += field("octetDeltaCount").parse::<u64>().unwrap();
    }
    for (key, want) in &expected.0 {
        assert_eq!(
            from_dump.get(key),
            Some(want),
            "flow {key:?}: ipfixDump vs wire"
        );
    }
}
