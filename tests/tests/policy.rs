//! The policy engine with real traffic between two test namespaces: the agent runs in `a` with a
//! policy on `a0`; `b` sends. Dropped packets must not arrive and must be counted, exactly, under
//! REJECT with the layer that rejected them.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tests::{
    agent::Agent,
    netns::{NetNs, in_netns},
    records::{
        FORMAT_WITH_REASON, FlowTuple, Record, VerdictTotals, parse_line,
        parse_records_with_reason, verdict_totals,
    },
    topology::Topology,
    traffic::{ip_header_len, tcp_exchange, udp_dropped, udp_exchange, udp_socket},
};

const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const UDP: u8 = 17;
const TCP: u8 = 6;

/// The default format plus `reject-reason`.
const FORMAT: &str = FORMAT_WITH_REASON;

/// Namespaces `a` (agent) and `b`, joined by `a0`-`b0`.
fn topology() -> (NetNs, NetNs) {
    let topology = Topology::builder().build();
    (topology.a, topology.b)
}

fn policy_file(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(format!(
        "/tmp/flowlog-policy-{name}-{}.toml",
        std::process::id()
    ));
    fs::write(&path, text).expect("write policy");
    path
}

/// The agent on `a0` of `a`, 2 s intervals, records with their reject reason on stdout.
fn start_agent(a: &NetNs, policy: &std::path::Path) -> Agent {
    let policy = policy.to_str().expect("UTF-8 path");
    let args = [
        "--interval",
        "2s",
        "--interface",
        "a0",
        "--sink",
        "stdout",
        "--format",
        FORMAT,
        "--policy",
        policy,
    ];
    Agent::start(a, &args)
}

fn tuple(from: SocketAddr, to: SocketAddr, protocol: u8) -> FlowTuple {
    FlowTuple {
        src: from.ip(),
        dst: to.ip(),
        src_port: from.port(),
        dst_port: to.port(),
        protocol,
    }
}

const ACL_POLICY: &str = r#"
mode = "MODE"
[acl]
default = "deny"
# Rule order: 7000-7100 is denied although rule 200 would allow it.
[[acl.rule]]
number = 100
direction = "ingress"
protocol = "udp"
cidr = "198.18.0.0/15"
ports = "7000-7100"
action = "deny"
[[acl.rule]]
number = 110
direction = "ingress"
protocol = "udp"
cidr = "fd00::/8"
ports = "7000-7100"
action = "deny"
[[acl.rule]]
number = 200
direction = "ingress"
protocol = "udp"
cidr = "198.18.0.0/15"
ports = "5000-7999"
action = "allow"
[[acl.rule]]
number = 210
direction = "ingress"
protocol = "udp"
cidr = "fd00::/8"
ports = "5000-7999"
action = "allow"
[[acl.rule]]
number = 300
direction = "ingress"
protocol = "icmpv6"
cidr = "::/0"
action = "allow"
[[acl.rule]]
number = 400
direction = "egress"
protocol = "all"
cidr = "0.0.0.0/0"
action = "allow"
[[acl.rule]]
number = 410
direction = "egress"
protocol = "all"
cidr = "::/0"
action = "allow"
"#;

/// Enforce: denied UDP never arrives and is REJECT (acl) with the exact packets and bytes;
/// allowed UDP is ACCEPT; a port no rule covers gets the default (deny). IPv4 and IPv6.
#[test]
fn the_acl_drops_and_records_denied_udp_exactly() {
    acl_scenario(false);
}

/// Audit: the same traffic is all delivered; what enforce mode drops is ACCEPT with
/// reject-reason `audit-acl`.
#[test]
fn audit_mode_delivers_and_marks_would_be_rejects() {
    acl_scenario(true);
}

fn acl_scenario(audit: bool) {
    let (a, b) = topology();
    let mode = if audit { "audit" } else { "enforce" };
    let policy = policy_file(mode, &ACL_POLICY.replace("MODE", mode));
    let agent = start_agent(&a, &policy);
    let (rejected_action, rejected_reason) = if audit {
        ("ACCEPT", "audit-acl")
    } else {
        ("REJECT", "acl")
    };
    let mut expected = VerdictTotals::new();
    let mut expect = |from, to, action: &str, reason: &str, wire: (u64, u64)| {
        let entry = expected
            .entry((tuple(from, to, UDP), action.to_owned(), reason.to_owned()))
            .or_default();
        entry.0 += wire.0;
        entry.1 += wire.1;
    };
    for (a_ip, b_ip) in [
        (IpAddr::V4(A4), IpAddr::V4(B4)),
        (IpAddr::V6(A6), IpAddr::V6(B6)),
    ] {
        let sender = udp_socket(&b, SocketAddr::new(b_ip, 40000));
        let from = sender.local_addr().unwrap();
        for (port, count, payload, denied) in [
            (7050u16, 7u64, 300usize, true), // rule 100/110 before 200/210
            (5050, 5, 200, false),           // rule 200/210
            (9000, 3, 100, true),            // no rule: default deny
        ] {
            let receiver = udp_socket(&a, SocketAddr::new(a_ip, port));
            let to = receiver.local_addr().unwrap();
            if denied && !audit {
                let wire = udp_dropped(&sender, &receiver, count, payload);
                expect(from, to, rejected_action, rejected_reason, wire);
            } else {
                let wire = udp_exchange(&sender, &receiver, count, payload);
                let (action, reason) = if denied {
                    (rejected_action, rejected_reason)
                } else {
                    ("ACCEPT", "-")
                };
                expect(from, to, action, reason, wire);
            }
        }
        // Egress is allowed: a's answer goes out.
        let receiver = udp_socket(&a, SocketAddr::new(a_ip, 5060));
        let wire = udp_exchange(&receiver, &sender, 4, 64);
        expect(receiver.local_addr().unwrap(), from, "ACCEPT", "-", wire);
    }
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    let seen = verdict_totals(&parse_records_with_reason(&stopped.stdout));
    for (key, want) in &expected {
        assert_eq!(seen.get(key), Some(want), "{key:?}\nall records: {seen:#?}");
    }
    // Nothing of the test's flows under another verdict.
    for (flow, action, reason) in seen.keys() {
        if flow.src_port == 40000 || flow.dst_port == 40000 {
            assert!(
                expected.contains_key(&(*flow, action.clone(), reason.clone())),
                "unexpected record {flow:?} {action} {reason}"
            );
        }
    }
    let _ = fs::remove_file(policy);
}

const SG_POLICY: &str = r#"
[security_group]
[[security_group.ingress]]
protocol = "tcp"
ports = "6000"
cidr = "198.18.0.0/15"
[[security_group.ingress]]
protocol = "tcp"
ports = "6000"
cidr = "fd00::/8"
[[security_group.ingress]]
protocol = "icmpv6"
cidr = "::/0"
[[security_group.egress]]
protocol = "all"
cidr = "0.0.0.0/0"
[[security_group.egress]]
protocol = "all"
cidr = "::/0"
"#;

/// Inbound TCP to the allowed port works and both directions are ACCEPT; to another port the
/// SYN is REJECT (security-group); an outbound connection's replies come in without an ingress
/// rule; a segment crafted for a closed connection is REJECT (closed-connection).
#[test]
fn the_security_group_tracks_connections() {
    let (a, b) = topology();
    let policy = policy_file("sg", SG_POLICY);
    let agent = start_agent(&a, &policy);
    let mut expected = VerdictTotals::new();
    let mut closed_segments = Vec::new();
    for (a_ip, b_ip) in [
        (IpAddr::V4(A4), IpAddr::V4(B4)),
        (IpAddr::V6(A6), IpAddr::V6(B6)),
    ] {
        // Inbound to 6000: allowed.
        let inbound = tcp_exchange(&b, &a, SocketAddr::new(a_ip, 6000), 20_000, 5_000);
        let accept = |expected: &mut VerdictTotals, from, to, wire: (u64, u64)| {
            expected.insert((tuple(from, to, TCP), "ACCEPT".into(), "-".into()), wire);
        };
        let (c2s, s2c) = (inbound.client_to_server, inbound.server_to_client);
        accept(
            &mut expected,
            inbound.client,
            inbound.server,
            (c2s.packets, c2s.bytes),
        );
        accept(
            &mut expected,
            inbound.server,
            inbound.client,
            (s2c.packets, s2c.bytes),
        );
        closed_segments.push((inbound.client, inbound.server));

        // Outbound from a to b: allowed by the egress rules, replies tracked.
        let outbound = tcp_exchange(&a, &b, SocketAddr::new(b_ip, 7000), 3_000, 30_000);
        let (c2s, s2c) = (outbound.client_to_server, outbound.server_to_client);
        accept(
            &mut expected,
            outbound.client,
            outbound.server,
            (c2s.packets, c2s.bytes),
        );
        accept(
            &mut expected,
            outbound.server,
            outbound.client,
            (s2c.packets, s2c.bytes),
        );

        // Inbound to 6001: no rule. One SYN within the 400 ms before giving up (the first
        // retransmission comes after 1 s).
        let target = SocketAddr::new(a_ip, 6001);
        let attempt = in_netns(&b, || {
            TcpStream::connect_timeout(&target, Duration::from_millis(400))
        })
        .expect("namespace");
        assert!(attempt.is_err(), "connecting to {target} must fail");
    }
    // Segments with data on the closed connections.
    thread::sleep(Duration::from_millis(200));
    for (client, server) in &closed_segments {
        send_crafted_segment(&b, *client, *server);
    }
    thread::sleep(Duration::from_millis(200));

    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    let seen = verdict_totals(&parse_records_with_reason(&stopped.stdout));
    for (key, want) in &expected {
        assert_eq!(seen.get(key), Some(want), "{key:?}\nall records: {seen:#?}");
    }
    for a_ip in [IpAddr::V4(A4), IpAddr::V6(A6)] {
        let syns: Vec<_> = seen
            .iter()
            .filter(|((flow, _, _), _)| flow.dst == a_ip && flow.dst_port == 6001)
            .collect();
        assert_eq!(
            syns.len(),
            1,
            "one record for the SYN to {a_ip}:6001: {syns:?}"
        );
        let ((_, action, reason), (packets, _)) = syns[0];
        assert_eq!(
            (action.as_str(), reason.as_str(), *packets),
            ("REJECT", "security-group", 1)
        );
    }
    for (client, server) in &closed_segments {
        let key = (
            tuple(*client, *server, TCP),
            "REJECT".to_owned(),
            "closed-connection".to_owned(),
        );
        let header = ip_header_len(server.ip()) + 20;
        assert_eq!(
            seen.get(&key),
            Some(&(1, header + CRAFTED_PAYLOAD as u64)),
            "{key:?}"
        );
    }
    let _ = fs::remove_file(policy);
}

const CRAFTED_PAYLOAD: usize = 10;

/// Sends one TCP segment (ACK|PSH with 10 bytes) from `from` to `to` through a raw socket in
/// `ns`. Its checksum is left 0: the kernel drops it after the TC hook has seen it.
fn send_crafted_segment(ns: &NetNs, from: SocketAddr, to: SocketAddr) {
    let mut tcp = vec![0u8; 20 + CRAFTED_PAYLOAD];
    tcp[0..2].copy_from_slice(&from.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&12345u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&678u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // ACK | PSH
    tcp[14..16].copy_from_slice(&1000u16.to_be_bytes());
    let (domain, packet) = match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            // IPPROTO_RAW implies IP_HDRINCL: the kernel fills in the total length and checksum.
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, TCP, 0, 0];
            ip.extend(src.octets());
            ip.extend(dst.octets());
            ip.extend(&tcp);
            (libc::AF_INET, ip)
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => (libc::AF_INET6, tcp),
        _ => unreachable!("one family"),
    };
    in_netns(ns, || {
        // SAFETY: plain socket calls on a descriptor this function owns and closes; the address
        // structures are initialised before use.
        unsafe {
            let protocol = if domain == libc::AF_INET {
                libc::IPPROTO_RAW
            } else {
                libc::IPPROTO_TCP
            };
            let fd = libc::socket(domain, libc::SOCK_RAW, protocol);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let sent = match to {
                SocketAddr::V4(to) => {
                    let mut addr: libc::sockaddr_in = std::mem::zeroed();
                    addr.sin_family = libc::AF_INET as libc::sa_family_t;
                    addr.sin_addr.s_addr = u32::from_ne_bytes(to.ip().octets());
                    libc::sendto(
                        fd,
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&addr as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
                SocketAddr::V6(to) => {
                    // A raw IPPROTO_TCP socket sends the TCP header we give it; the kernel adds
                    // the IPv6 header from `from`'s bound address.
                    let mut local: libc::sockaddr_in6 = std::mem::zeroed();
                    local.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    local.sin6_addr.s6_addr = match from.ip() {
                        IpAddr::V6(v6) => v6.octets(),
                        IpAddr::V4(_) => unreachable!(),
                    };
                    let rc = libc::bind(
                        fd,
                        (&local as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    );
                    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
                    let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
                    addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    addr.sin6_addr.s6_addr = to.ip().octets();
                    libc::sendto(
                        fd,
                        packet.as_ptr().cast(),
                        packet.len(),
                        0,
                        (&addr as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                }
            };
            assert_eq!(
                sent,
                packet.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            libc::close(fd);
        }
    })
    .expect("namespace");
}

/// Policies swapped with SIGHUP while UDP flows: every datagram is counted exactly once, under
/// the verdict of the policy it met, and what ACCEPT counts is exactly what arrived.
#[test]
fn reloading_under_load_loses_no_count() {
    let (a, b) = topology();
    let allow = "[acl]\ndefault = \"allow\"\n";
    let deny = format!(
        "{allow}[[acl.rule]]\nnumber = 1\ndirection = \"ingress\"\nprotocol = \"udp\"\ncidr = \"198.18.0.0/15\"\nports = \"5050\"\naction = \"deny\"\n"
    );
    let policy = policy_file("reload", allow);
    let mut agent = start_agent(&a, &policy);
    let receiver = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 5050));
    receiver
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sender = udp_socket(&b, SocketAddr::new(IpAddr::V4(B4), 40000));
    let (from, to) = (sender.local_addr().unwrap(), receiver.local_addr().unwrap());

    let sending = Arc::new(AtomicBool::new(true));
    let received = Arc::new(AtomicU64::new(0));
    let reader = {
        let (sending, received) = (sending.clone(), received.clone());
        thread::spawn(move || {
            let mut buffer = [0; 2048];
            let mut idle_since = None;
            loop {
                match receiver.recv_from(&mut buffer) {
                    Ok(_) => {
                        received.fetch_add(1, Ordering::Relaxed);
                        idle_since = None;
                    }
                    Err(_) if sending.load(Ordering::Relaxed) => {}
                    // After the sender stopped: done once nothing came for 500 ms.
                    Err(_) => {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(500) {
                            return;
                        }
                    }
                }
            }
        })
    };
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (sending, sent) = (sending.clone(), sent.clone());
        thread::spawn(move || {
            while sending.load(Ordering::Relaxed) {
                sender.send_to(&[7; 100], to).expect("send");
                sent.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_micros(200));
            }
        })
    };
    // Six swaps, 400 ms apart, while the datagrams flow.
    for swap in 1..=6 {
        thread::sleep(Duration::from_millis(400));
        fs::write(&policy, if swap % 2 == 1 { &deny } else { allow }).unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGHUP) };
        agent.wait_for_log("policy in force", swap + 1, Duration::from_secs(10));
    }
    thread::sleep(Duration::from_millis(400));
    sending.store(false, Ordering::Relaxed);
    writer.join().unwrap();
    reader.join().unwrap();
    let (sent, received) = (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );

    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    let seen = verdict_totals(&parse_records_with_reason(&stopped.stdout));
    let count = |action: &str, reason: &str| {
        seen.get(&(tuple(from, to, UDP), action.to_owned(), reason.to_owned()))
            .map_or(0, |c| c.0)
    };
    let (accepted, rejected) = (count("ACCEPT", "-"), count("REJECT", "acl"));
    assert!(
        accepted > 0 && rejected > 0,
        "both policies applied: {seen:#?}"
    );
    assert_eq!(accepted + rejected, sent, "every datagram counted once");
    assert_eq!(accepted, received, "ACCEPT is exactly what arrived");
    let _ = fs::remove_file(policy);
}

/// `--traffic-type REJECT` writes only REJECT records, to `a0-reject.log`; excluded traffic is
/// not logged but the policy still drops it, and the agent's log counts it.
#[test]
fn traffic_type_and_exclusions() {
    let (a, b) = topology();
    let policy = policy_file(
        "exclude",
        "[acl]\ndefault = \"allow\"\n[[acl.rule]]\nnumber = 1\ndirection = \"ingress\"\nprotocol = \"udp\"\ncidr = \"198.18.0.0/15\"\nports = \"5555-5556\"\naction = \"deny\"\n",
    );
    let logs = PathBuf::from(format!("/tmp/flowlog-policy-logs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&logs);
    let sink = format!("dir:{}", logs.display());
    let agent = Agent::start(
        &a,
        &[
            "--interval",
            "2s",
            "--interface",
            "a0",
            "--sink",
            &sink,
            "--sink",
            "stdout",
            "--traffic-type",
            "REJECT",
            "--exclude",
            "198.18.0.0/15/udp:5555",
            "--policy",
            policy.to_str().unwrap(),
        ],
    );
    let sender = udp_socket(&b, SocketAddr::new(IpAddr::V4(B4), 40000));
    let excluded = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 5555));
    let denied = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 5556));
    let allowed = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 5557));
    // The exclusion does not get around the policy: these are dropped all the same.
    udp_dropped(&sender, &excluded, 9, 50);
    let denied_wire = udp_dropped(&sender, &denied, 4, 50);
    udp_exchange(&sender, &allowed, 3, 50);
    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );

    let text = fs::read_to_string(logs.join("a0-reject.log")).expect("a0-reject.log");
    assert!(!logs.join("a0-all.log").exists());
    let records: Vec<Record> = text.lines().map(parse_line).collect();
    let flows: Vec<&Record> = records.iter().filter(|r| r.flow.is_some()).collect();
    assert!(
        flows.iter().all(|r| r.action == "REJECT"),
        "only REJECT records: {text}"
    );
    let to_port = |port: u16| -> (u64, u64) {
        flows
            .iter()
            .filter(|r| r.flow.unwrap().dst_port == port)
            .fold((0, 0), |t, r| {
                (t.0 + r.packets.unwrap(), t.1 + r.bytes.unwrap())
            })
    };
    assert_eq!(to_port(5556), denied_wire);
    assert_eq!(to_port(5555), (0, 0), "excluded traffic is not logged");
    assert_eq!(to_port(5557), (0, 0), "ACCEPT is not in a REJECT log");
    // The agent's interval lines count the excluded packets.
    let excluded_packets: u64 = stopped
        .stderr
        .lines()
        .filter_map(|line| line.split("excluded_packets=").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(excluded_packets, 9, "{}", stopped.stderr);
    fs::remove_dir_all(&logs).expect("clean up");
    let _ = fs::remove_file(policy);
}
