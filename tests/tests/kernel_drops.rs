//! The host's own verdicts: packets the kernel drops (nftables and iptables rules, a closed
//! port) on the agent's interface are REJECT records with the kernel's reason, with exact
//! packets and bytes, and ACCEPT keeps only what the stack took. Real kernel, real netfilter,
//! rules only inside the test namespaces.
//!
//! Expected drop counts come from the kernel itself: every dropping rule has a `counter`, whose
//! packets and bytes (the IP length at the netfilter hook) are what the records must say.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use flowlog_agent::kernel_drops::{self, KernelDropsMode};
use tests::{
    agent::Agent,
    netns::{NetNs, in_netns},
    topology::{A4, A6, B4, B6, Topology, UDP},
    traffic::{udp_dropped, udp_exchange, udp_socket},
};

const FORMAT: &str = "${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${action} ${log-status} ${flow-direction} ${reject-reason}";

/// A bound on waiting, longer in the kernel matrix's emulated VMs
/// (`tests::agent::TIME_SCALE_ENV`); waits end as soon as what they wait for happens.
fn bound(seconds: u64) -> Duration {
    let scale: u64 = std::env::var(tests::agent::TIME_SCALE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds * scale.max(1))
}

/// Whether this kernel reports drop reasons; says so once if not.
fn drop_reasons_available() -> bool {
    match kernel_drops::probe(KernelDropsMode::Refused) {
        Ok(_) => true,
        Err(unavailable) => {
            eprintln!("skipped: {unavailable} (the kernel has no drop reasons before Linux 5.17)");
            false
        }
    }
}

/// Namespaces `a` (agent) and `b`, joined by `a0`-`b0` (IPv4 and IPv6); `a0` and `b0` have the
/// same ifindex.
fn topology() -> (NetNs, NetNs) {
    let Topology { a, b, .. } = Topology::builder().build();
    (a, b)
}

/// Runs an `nft` script (`nft -f`) inside a test namespace.
fn nft(ns: &NetNs, script: &str) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "flowlog-kd-{}-{}.nft",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, script).expect("nft script");
    let result = ns.exec("nft", &["-f", path.to_str().expect("UTF-8")]);
    let _ = std::fs::remove_file(&path);
    result.expect("nft");
}

/// Packets and bytes of the rule with `comment` (its `counter`), from `nft list ruleset`.
fn counter(ns: &NetNs, comment: &str) -> (u64, u64) {
    let output = ns.exec("nft", &["list", "ruleset"]).expect("nft list");
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment} in\n{text}"));
    let number = |word: &str| -> u64 {
        let rest = line.split(word).nth(1).expect("counter");
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    (number("packets "), number("bytes "))
}

/// Drops the agent logged as seen by the kernel but not recorded: runs of the drop program the
/// kernel skipped (a drop in a softirq that interrupted the program in process context on the
/// same CPU, for any packet of the host) and drops that found the drop map full. Rare on a quiet
/// host, possible on a busy one; never silent, so the tests account for them exactly.
fn unseen_drops(stderr: &str) -> u64 {
    logged_count(
        stderr,
        "kernel drops the drop program did not see",
        "drops=",
    ) + logged_count(stderr, "kernel drops not recorded", "packets=")
}

/// Drops logged as REJECT although their ACCEPT count is in an earlier interval (a packet
/// counted at TC just before an interval's switch and dropped just after).
fn uncovered_drops(stderr: &str) -> u64 {
    logged_count(
        stderr,
        "kernel drops of packets counted in an earlier",
        "packets=",
    )
}

/// The sum of `field` (e.g. `drops=`) over the log lines containing `message`.
fn logged_count(stderr: &str, message: &str, field: &str) -> u64 {
    stderr
        .lines()
        .filter(|line| line.contains(message))
        .filter_map(|line| {
            let value = line
                .split(field)
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit());
            value.into_iter().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// One record line of [`FORMAT`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    interface: String,
    src: IpAddr,
    dst: IpAddr,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    action: String,
    direction: String,
    reason: String,
}

type Totals = BTreeMap<Key, (u64, u64)>;

fn totals(stdout: &str) -> Totals {
    let mut totals = Totals::new();
    for line in stdout.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 12, "{line:?}");
        if f[9] != "OK" {
            continue;
        }
        let key = Key {
            interface: f[0].into(),
            src: f[1].parse().unwrap(),
            dst: f[2].parse().unwrap(),
            src_port: f[3].parse().unwrap(),
            dst_port: f[4].parse().unwrap(),
            protocol: f[5].parse().unwrap(),
            action: f[8].into(),
            direction: f[10].into(),
            reason: f[11].into(),
        };
        let entry = totals.entry(key).or_default();
        entry.0 += f[6].parse::<u64>().unwrap();
        entry.1 += f[7].parse::<u64>().unwrap();
    }
    totals
}

#[allow(clippy::too_many_arguments)]
fn key(
    from: SocketAddr,
    to: SocketAddr,
    protocol: u8,
    action: &str,
    direction: &str,
    reason: &str,
) -> Key {
    Key {
        interface: "a0".into(),
        src: from.ip(),
        dst: to.ip(),
        src_port: from.port(),
        dst_port: to.port(),
        protocol,
        action: action.into(),
        direction: direction.into(),
        reason: reason.into(),
    }
}

/// Every record of a flow (both actions, all reasons).
fn of_flow(totals: &Totals, from: SocketAddr, to: SocketAddr) -> Totals {
    totals
        .iter()
        .filter(|(k, _)| {
            (k.src, k.src_port, k.dst, k.dst_port) == (from.ip(), from.port(), to.ip(), to.port())
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn start_agent(a: &NetNs, extra: &[&str]) -> Agent {
    let mut args = vec![
        "--no-pin",
        "--interval",
        "2s",
        "--interface",
        "a0",
        "--sink",
        "stdout",
        "--metrics",
        "off",
        "--format",
        FORMAT,
    ];
    args.extend_from_slice(extra);
    Agent::start(a, &args)
}

/// Sends `count` datagrams that the sender's own host drops (netfilter OUTPUT): each send is
/// refused with EPERM.
fn udp_refused_sends(from: &UdpSocket, to: SocketAddr, count: u64, payload: usize) {
    for _ in 0..count {
        let error = from.send_to(&vec![7; payload], to).expect_err("dropped");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
    }
}

const RULES: &str = "
table inet flowlog_test {
  chain input {
    type filter hook input priority 0;
    udp dport 9995 counter drop comment \"in-udp\"
    tcp dport 6001 counter drop comment \"in-tcp\"
  }
  chain output {
    type filter hook output priority 0;
    udp dport 9994 counter drop comment \"out-udp\"
    tcp dport 6002 counter drop comment \"out-tcp\"
  }
}";

/// nftables rules dropping inbound and outbound UDP and TCP, IPv4 and IPv6: every dropped
/// packet is a REJECT with reason `netfilter-drop` and the rule's exact counts; accepted traffic
/// on other ports is ACCEPT exactly; a SYN to a closed port is a REJECT `no-socket`; the same
/// ifindex in another namespace dropping packets gives nothing here.
#[test]
fn netfilter_drops_and_closed_ports_are_rejects_with_the_kernels_reason() {
    if !drop_reasons_available() {
        return;
    }
    let (a, b) = topology();
    assert_eq!(a.ifindex("a0").unwrap(), b.ifindex("b0").unwrap());
    nft(&a, RULES);
    // b drops what a sends to 9997: b0 has a0's ifindex, in another namespace.
    nft(
        &b,
        "table inet other {\n chain input {\n type filter hook input priority 0;\n udp dport 9997 counter drop comment \"b-in\"\n }\n}\n",
    );
    let agent = start_agent(&a, &[]);

    let mut expected = Totals::new();
    let mut closed_port_syns = Vec::new();
    let mut tcp_flows = Vec::new();
    for (a_ip, b_ip) in [
        (IpAddr::V4(A4), IpAddr::V4(B4)),
        (IpAddr::V6(A6), IpAddr::V6(B6)),
    ] {
        let b_sender = udp_socket(&b, SocketAddr::new(b_ip, 40000));
        let from_b = b_sender.local_addr().unwrap();
        // Inbound, dropped by the input rule.
        let dropped_at_a = udp_socket(&a, SocketAddr::new(a_ip, 9995));
        udp_dropped(&b_sender, &dropped_at_a, 7, 300);
        // Inbound, accepted.
        let open_at_a = udp_socket(&a, SocketAddr::new(a_ip, 9993));
        let wire = udp_exchange(&b_sender, &open_at_a, 5, 200);
        expected.insert(
            key(
                from_b,
                open_at_a.local_addr().unwrap(),
                UDP,
                "ACCEPT",
                "ingress",
                "-",
            ),
            wire,
        );
        // Outbound, dropped by the output rule: no TC egress count at all.
        let a_sender = udp_socket(&a, SocketAddr::new(a_ip, 40001));
        udp_refused_sends(&a_sender, SocketAddr::new(b_ip, 9994), 6, 100);
        // Outbound, dropped in b (the other namespace): ACCEPT egress here, nothing else.
        let dropped_at_b = udp_socket(&b, SocketAddr::new(b_ip, 9997));
        let wire = udp_dropped(&a_sender, &dropped_at_b, 4, 50);
        expected.insert(
            key(
                a_sender.local_addr().unwrap(),
                dropped_at_b.local_addr().unwrap(),
                UDP,
                "ACCEPT",
                "egress",
                "-",
            ),
            wire,
        );
        // TCP SYNs in, dropped: the connect times out after a retransmission or two.
        let to = SocketAddr::new(a_ip, 6001);
        let stream = in_netns(&b, || {
            TcpStream::connect_timeout(&to, Duration::from_millis(1500))
        })
        .unwrap();
        assert!(
            stream.is_err(),
            "a SYN through a dropping rule was answered"
        );
        // TCP SYNs out, dropped.
        let to = SocketAddr::new(b_ip, 6002);
        let stream = in_netns(&a, || {
            TcpStream::connect_timeout(&to, Duration::from_millis(1500))
        })
        .unwrap();
        assert!(stream.is_err(), "a SYN through a dropping rule went out");
        tcp_flows.push((b_ip, SocketAddr::new(a_ip, 6001)));
        tcp_flows.push((a_ip, SocketAddr::new(b_ip, 6002)));
        // A SYN to a closed port: one SYN, answered by a RST.
        for _ in 0..3 {
            let to = SocketAddr::new(a_ip, 6009);
            let error = in_netns(&b, || TcpStream::connect(to))
                .unwrap()
                .unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        closed_port_syns.push((b_ip, SocketAddr::new(a_ip, 6009)));
    }
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let seen = totals(&stopped.stdout);
    // The interval log lines count the same drops, by reason.
    let logged = tests::agent::interval_total(&[&stopped.stderr], "kernel_drop_packets");
    let recorded: u64 = seen
        .iter()
        .filter(|(k, _)| k.action == "REJECT")
        .map(|(_, v)| v.0)
        .sum();
    assert_eq!(logged, recorded, "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("kernel_drops=netfilter-drop:"),
        "{}",
        stopped.stderr
    );

    for (k, want) in &expected {
        assert_eq!(seen.get(k), Some(want), "{k:?}\nall: {seen:#?}");
    }
    let sum = |to_port: u16, direction: &str, action: &str, reason: &str| -> (u64, u64) {
        seen.iter()
            .filter(|(k, _)| {
                k.dst_port == to_port
                    && k.action == action
                    && k.direction == direction
                    && k.reason == reason
            })
            .fold((0, 0), |(p, b), (_, v)| (p + v.0, b + v.1))
    };
    // Every drop the rule counted is a REJECT, except drops the agent reported it could not
    // record (`unseen`): those are missing from REJECT and, inbound, still ACCEPT (TC counted
    // them). A drop whose ACCEPT is in an earlier interval (`uncovered`) leaves that ACCEPT.
    let (unseen, uncovered) = (
        unseen_drops(&stopped.stderr),
        uncovered_drops(&stopped.stderr),
    );
    let mut not_rejected = 0;
    for (port, direction, rule) in [
        (9995, "ingress", "in-udp"),
        (9994, "egress", "out-udp"),
        (6001, "ingress", "in-tcp"),
        (6002, "egress", "out-tcp"),
    ] {
        let want = counter(&a, rule);
        assert!(want.0 > 0, "rule {rule} dropped nothing");
        let rejected = sum(port, direction, "REJECT", "netfilter-drop");
        let accepted = sum(port, direction, "ACCEPT", "-");
        let context = format!(
            "port {port} {direction}: REJECT {rejected:?} ACCEPT {accepted:?}, the rule's counter {want:?}; \
             unseen {unseen}, uncovered {uncovered}\nall: {seen:#?}\n{}",
            stopped.stderr
        );
        if unseen == 0 {
            assert_eq!(rejected, want, "{context}");
        } else {
            assert!(rejected.0 <= want.0, "{context}");
        }
        let missing = want.0 - rejected.0;
        not_rejected += missing;
        if direction == "ingress" {
            assert!(
                (missing..=missing + uncovered).contains(&accepted.0),
                "{context}"
            );
        } else {
            assert_eq!(accepted, (0, 0), "{context}");
        }
    }
    assert!(
        not_rejected <= unseen,
        "{not_rejected} drops neither recorded nor reported as unseen ({unseen})\n{}",
        stopped.stderr
    );
    // Nothing of those flows has another verdict or reason.
    for (k, v) in &seen {
        if [9995, 9994, 6001, 6002].contains(&k.dst_port) {
            assert!(
                [("REJECT", "netfilter-drop"), ("ACCEPT", "-")]
                    .contains(&(k.action.as_str(), k.reason.as_str())),
                "{k:?} {v:?}"
            );
        }
        if k.dst_port == 9997 {
            assert_eq!(k.action, "ACCEPT", "b's drop was attributed to a0: {k:?}");
        }
    }
    assert!(counter(&b, "b-in").0 == 8, "b's rule dropped what a sent");
    // Closed port: 3 SYNs per family, IP header + 24 bytes of TCP with the MSS option.
    for (from, to) in closed_port_syns {
        let header = match to.ip() {
            IpAddr::V4(_) => 20,
            IpAddr::V6(_) => 40,
        };
        // Three connects, three source ports: one SYN each, all `no-socket` (or ACCEPT if the
        // agent reported the drop unseen).
        let mut total = (0, 0);
        for (k, v) in seen
            .iter()
            .filter(|(k, _)| k.src == from && k.dst == to.ip() && k.dst_port == to.port())
        {
            match (k.action.as_str(), k.reason.as_str(), k.direction.as_str()) {
                ("REJECT", "no-socket", "ingress") => {}
                ("ACCEPT", "-", "ingress") => not_rejected += v.0,
                _ => panic!("{k:?} {v:?}"),
            }
            total = (total.0 + v.0, total.1 + v.1);
        }
        assert_eq!(total, (3, 3 * (header + 24)), "SYNs to {to}");
    }
    assert!(
        not_rejected <= unseen,
        "{not_rejected} drops neither recorded nor reported as unseen ({unseen})\n{}",
        stopped.stderr
    );
    let _ = tcp_flows;
}

/// `--kernel-drops off` gives what flowlog's programs saw: an inbound datagram the host drops
/// after TC ingress is ACCEPT, an outbound one dropped before TC egress has no record.
#[test]
fn kernel_drops_off_records_what_the_programs_saw() {
    let (a, b) = topology();
    nft(&a, RULES);
    let agent = start_agent(&a, &["--kernel-drops", "off"]);
    let b_sender = udp_socket(&b, SocketAddr::new(IpAddr::V4(B4), 40000));
    let dropped_at_a = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 9995));
    let wire = udp_dropped(&b_sender, &dropped_at_a, 9, 100);
    let a_sender = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 40001));
    udp_refused_sends(&a_sender, SocketAddr::new(IpAddr::V4(B4), 9994), 5, 100);
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("kernel drops off"),
        "{}",
        stopped.stderr
    );
    let seen = totals(&stopped.stdout);
    let from = b_sender.local_addr().unwrap();
    let to = dropped_at_a.local_addr().unwrap();
    assert_eq!(
        of_flow(&seen, from, to),
        Totals::from([(key(from, to, UDP, "ACCEPT", "ingress", "-"), wire)])
    );
    assert!(
        seen.keys().all(|k| k.dst_port != 9994),
        "outbound drops have no record: {seen:#?}"
    );
}

/// flowlog's own policy drops a packet (TC_ACT_SHOT) that a netfilter rule would drop too: it
/// is one REJECT of the policy's layer, never also a kernel drop.
#[test]
fn flowlogs_own_policy_drops_are_counted_once() {
    if !drop_reasons_available() {
        return;
    }
    let (a, b) = topology();
    nft(&a, RULES);
    let policy =
        std::env::temp_dir().join(format!("flowlog-kd-policy-{}.toml", std::process::id()));
    std::fs::write(
        &policy,
        "mode = \"enforce\"\n[acl]\ndefault = \"allow\"\n[[acl.rule]]\nnumber = 10\ndirection = \"ingress\"\nprotocol = \"udp\"\ncidr = \"198.18.0.0/15\"\nports = \"9995\"\naction = \"deny\"\n",
    )
    .unwrap();
    let agent = start_agent(&a, &["--policy", policy.to_str().unwrap()]);
    let b_sender = udp_socket(&b, SocketAddr::new(IpAddr::V4(B4), 40000));
    let receiver = udp_socket(&a, SocketAddr::new(IpAddr::V4(A4), 9995));
    let wire = udp_dropped(&b_sender, &receiver, 11, 120);
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let seen = totals(&stopped.stdout);
    let (from, to) = (
        b_sender.local_addr().unwrap(),
        receiver.local_addr().unwrap(),
    );
    assert_eq!(
        of_flow(&seen, from, to),
        Totals::from([(key(from, to, UDP, "REJECT", "ingress", "acl"), wire)])
    );
    assert_eq!(counter(&a, "in-udp").0, 0, "netfilter never saw them");
    let _ = std::fs::remove_file(policy);
}

/// iptables (its nftables backend, Debian's `iptables-nft`) rules too, if installed.
#[test]
fn iptables_nft_drops_are_netfilter_drops() {
    if !drop_reasons_available() {
        return;
    }
    if Command::new("iptables-nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: iptables-nft is not installed");
        return;
    }
    let (a, b) = topology();
    a.exec(
        "iptables-nft",
        &["-A", "INPUT", "-p", "udp", "--dport", "9996", "-j", "DROP"],
    )
    .expect("iptables-nft");
    a.exec(
        "ip6tables-nft",
        &["-A", "INPUT", "-p", "udp", "--dport", "9996", "-j", "DROP"],
    )
    .expect("ip6tables-nft");
    let agent = start_agent(&a, &[]);
    let mut expected = Totals::new();
    for (a_ip, b_ip) in [
        (IpAddr::V4(A4), IpAddr::V4(B4)),
        (IpAddr::V6(A6), IpAddr::V6(B6)),
    ] {
        let b_sender = udp_socket(&b, SocketAddr::new(b_ip, 40000));
        let receiver = udp_socket(&a, SocketAddr::new(a_ip, 9996));
        let wire = udp_dropped(&b_sender, &receiver, 6, 80);
        let (from, to) = (
            b_sender.local_addr().unwrap(),
            receiver.local_addr().unwrap(),
        );
        expected.insert(
            key(from, to, UDP, "REJECT", "ingress", "netfilter-drop"),
            wire,
        );
    }
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let seen = totals(&stopped.stdout);
    for (k, want) in &expected {
        let flow = of_flow(
            &seen,
            SocketAddr::new(k.src, k.src_port),
            SocketAddr::new(k.dst, k.dst_port),
        );
        assert_eq!(flow, Totals::from([(k.clone(), *want)]));
    }
}

/// A TCP stream cut by a rule added mid-transfer: on `a0` ingress, ACCEPT + REJECT
/// (`netfilter-drop`) of the stream equal what `b0` sent (counted by a second agent in `b`, GSO
/// segments and their headers included), and the REJECT holds at least the packets the rule
/// dropped.
#[test]
fn a_stream_cut_mid_transfer_splits_exactly_into_accept_and_reject() {
    if !drop_reasons_available() {
        return;
    }
    let (a, b) = topology();
    nft(
        &a,
        "table inet cut {\n chain input {\n type filter hook input priority 0;\n }\n}\n",
    );
    let agent_a = start_agent(&a, &[]);
    let agent_b = Agent::start(
        &b,
        &[
            "--no-pin",
            "--interval",
            "2s",
            "--interface",
            "b0",
            "--sink",
            "stdout",
            "--metrics",
            "off",
            "--format",
            FORMAT,
        ],
    );
    let server = SocketAddr::new(IpAddr::V4(A4), 6003);
    let listener = in_netns(&a, || TcpListener::bind(server)).unwrap().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (received, stop) = (received.clone(), stop.clone());
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buffer = vec![0; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = stream.read(&mut buffer) {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            // No FIN to retransmit: the stream ends with one RST.
            set_linger_zero(&stream);
        })
    };
    let mut client = in_netns(&b, || TcpStream::connect(server))
        .unwrap()
        .unwrap();
    let client_addr = client.local_addr().unwrap();
    client
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![0x42; 1 << 16];
    let deadline = Instant::now() + bound(20);
    while received.load(Ordering::Relaxed) < 1 << 20 {
        assert!(Instant::now() < deadline, "the stream did not flow");
        client.write_all(&chunk).unwrap();
    }
    nft(
        &a,
        "add rule inet cut input tcp dport 6003 counter drop comment \"cut\"",
    );
    // Keep sending until the rule has dropped retransmissions too.
    let deadline = Instant::now() + bound(20);
    while counter(&a, "cut").0 < 4 {
        assert!(
            Instant::now() < deadline,
            "the rule dropped nothing: {}",
            String::from_utf8_lossy(&a.exec("nft", &["list", "ruleset"]).unwrap().stdout)
        );
        let _ = client.write(&chunk);
    }
    set_linger_zero(&client);
    drop(client);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let dropped = counter(&a, "cut");
    let stopped_a = agent_a.stop();
    let stopped_b = agent_b.stop();
    assert!(stopped_a.status.success(), "{}", stopped_a.stderr);
    let seen_a = totals(&stopped_a.stdout);
    let seen_b = totals(&stopped_b.stdout);
    let flow_a = of_flow(&seen_a, client_addr, server);
    let sent: (u64, u64) = of_flow(&seen_b, client_addr, server)
        .values()
        .fold((0, 0), |s, v| (s.0 + v.0, s.1 + v.1));
    let mut accept = (0, 0);
    let mut reject = (0, 0);
    for (k, v) in &flow_a {
        assert_eq!(k.direction, "ingress");
        match (k.action.as_str(), k.reason.as_str()) {
            ("ACCEPT", "-") => accept = *v,
            ("REJECT", "netfilter-drop") => reject = *v,
            other => panic!("unexpected {other:?} in {flow_a:#?}"),
        }
    }
    eprintln!("stream cut: ACCEPT {accept:?} REJECT {reject:?} sent {sent:?} rule {dropped:?}");
    assert_eq!(
        (accept.0 + reject.0, accept.1 + reject.1),
        sent,
        "ACCEPT {accept:?} + REJECT {reject:?} vs what b0 sent; rule dropped {dropped:?}"
    );
    assert!(
        reject.0 >= dropped.0 && reject.0 > 0,
        "{reject:?} vs {dropped:?}"
    );
    assert!(accept.0 > 0);
}

fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// The accounting above reads the agent's warnings: their fields must parse.
#[test]
fn unseen_and_uncovered_drops_are_read_from_the_agents_log() {
    let log = "\
2026-12-01T10:00:00Z  WARN flowlog_agent::kernel_drops::settle: kernel drops the drop program did not see (a drop while it ran on the same CPU): not recorded drops=3
2026-12-01T10:00:02Z  WARN flowlog_agent::kernel_drops::settle: kernel drops not recorded: the drop map was full (their ACCEPT counts stay) packets=4
2026-12-01T10:00:02Z  INFO flowlog_agent::kernel_drops::settle: kernel drops of packets counted in an earlier interval or never seen by flowlog's programs: REJECT now packets=2
2026-12-01T10:00:04Z  WARN flowlog_agent::kernel_drops::settle: kernel drops the drop program did not see (a drop while it ran on the same CPU): not recorded drops=1";
    assert_eq!(unseen_drops(log), 8);
    assert_eq!(uncovered_drops(log), 2);
}
