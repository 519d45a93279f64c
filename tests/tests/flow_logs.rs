//! Several flow logs over one datapath (`--config FILE`): the kernel counts each packet once,
//! and each flow log gets exactly the records of its scope and traffic type, at its own
//! interval. SIGHUP adds a flow log without disturbing the running one, and a bad file is
//! refused while the agent goes on.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use tests::{
    agent::Agent,
    records::{Record, parse_lines},
    topology::{A4, Expected, Topology, UDP},
    traffic::{udp_dropped, udp_exchange, udp_socket},
};

/// The ACL drops UDP to port 7000 on the way in; everything else passes.
const POLICY: &str = r#"
[acl]
default = "allow"
[[acl.rule]]
number = 100
direction = "ingress"
protocol = "udp"
cidr = "198.18.0.0/15"
ports = "7000"
action = "deny"
"#;

/// A directory for one test's files, removed first if a failed run left it.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/flowlog-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// The file: the policy, metrics off, and the flow logs given.
fn config_text(dir: &Path, flow_logs: &[&str]) -> String {
    let mut text = format!(
        "[agent]\npolicy = \"{}\"\nmetrics = \"off\"\n\n[metadata]\naccount-id = \"123456789012\"\n",
        dir.join("policy.toml").display()
    );
    for flow_log in flow_logs {
        text.push_str(flow_log);
    }
    text
}

/// ACCEPT records of `a0`, every second, as log streams.
fn accepted(dir: &Path) -> String {
    format!(
        "\n[[flow-log]]\nid = \"fl-accepted\"\nscope = {{ interfaces = [\"a0\"] }}\ntraffic-type = \"ACCEPT\"\ninterval = \"1s\"\nsinks = [\"dir:{}\"]\n",
        dir.join("accepted").display()
    )
}

/// REJECT records of the interfaces holding an address in 198.18.0.0/16, every 2 s.
fn rejected(dir: &Path) -> String {
    format!(
        "\n[[flow-log]]\nid = \"fl-rejected\"\nscope = {{ cidrs = [\"198.18.0.0/16\"] }}\ntraffic-type = \"REJECT\"\ninterval = \"2s\"\nsinks = [\"dir:{}\"]\n",
        dir.join("rejected").display()
    )
}

fn read_records(path: &Path) -> Vec<Record> {
    let text = fs::read_to_string(path).unwrap_or_default();
    parse_lines(&text)
}

/// Every flow record has this action.
fn only(records: &[Record], action: &str, source: &str) {
    for record in records.iter().filter(|r| r.flow.is_some()) {
        assert_eq!(record.action, action, "{source}: {record:?}");
    }
}

/// One round of traffic on `a0`: `accepted` datagrams each way between the UDP pair, and
/// `dropped` datagrams from `b` to port 7000 of `a`, which the ACL drops.
fn round(
    topology: &Topology,
    sink: &std::net::UdpSocket,
    accepted: u64,
    dropped: u64,
    expect_accept: &mut Expected,
    expect_reject: &mut Expected,
) {
    let pair = &topology.udp[0];
    expect_accept.add(
        pair.b_addr,
        pair.a_addr,
        UDP,
        udp_exchange(&pair.b, &pair.a, accepted, 100),
    );
    expect_accept.add(
        pair.a_addr,
        pair.b_addr,
        UDP,
        udp_exchange(&pair.a, &pair.b, accepted, 200),
    );
    let to = sink.local_addr().expect("bound");
    expect_reject.add(
        pair.b_addr,
        to,
        UDP,
        udp_dropped(&pair.b, sink, dropped, 50),
    );
}

/// Two flow logs on the same interface, one ACCEPT-only by name every second, one REJECT-only
/// by CIDR every 2 s: each has exactly its traffic, none of the other's. An interface that gains
/// an address in the CIDR joins the second flow log (and only it).
#[test]
fn two_flow_logs_share_one_interface_exactly() {
    let topology = Topology::new(true);
    let dir = scratch("two-flow-logs");
    fs::write(dir.join("policy.toml"), POLICY).expect("policy");
    let config = dir.join("flowlog.toml");
    fs::write(
        &config,
        config_text(&dir, &[&accepted(&dir), &rejected(&dir)]),
    )
    .expect("config");
    let sink = udp_socket(&topology.a, SocketAddr::new(IpAddr::V4(A4), 7000));

    let mut agent = Agent::start(&topology.a, &["--config", config.to_str().unwrap()]);
    // The idle `a1` has no address yet: no flow log covers it. Given one in the CIDR, it is
    // attached for the REJECT flow log.
    topology
        .a
        .add_address("a1", Ipv4Addr::new(198, 18, 5, 1), 24)
        .expect("address");
    agent.wait_for_log("attached interface=a1", 1, Duration::from_secs(5));
    let (mut accept, mut reject) = (Expected::default(), Expected::default());
    for _ in 0..3 {
        round(&topology, &sink, 20, 7, &mut accept, &mut reject);
        thread::sleep(Duration::from_millis(700));
    }
    // The second interval of the REJECT flow log is a whole one.
    agent.wait_for_log("flow_log=\"fl-rejected\"", 2, Duration::from_secs(10));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let accepted = read_records(&dir.join("accepted/a0-accept.log"));
    let rejected = read_records(&dir.join("rejected/a0-reject.log"));
    only(&accepted, "ACCEPT", "fl-accepted");
    only(&rejected, "REJECT", "fl-rejected");
    accept.check(&accepted, "fl-accepted");
    reject.check(&rejected, "fl-rejected");
    // a1 is idle: NODATA records in the REJECT flow log's stream, none in the other's.
    let idle = read_records(&dir.join("rejected/a1-reject.log"));
    assert!(
        !idle.is_empty() && idle.iter().all(|r| r.log_status == "NODATA"),
        "{idle:?}"
    );
    assert!(!dir.join("accepted/a1-accept.log").exists());
    // Each flow log wrote its own intervals: 1 s and 2 s long (the first and last are cut by
    // the start and the stop).
    let longest = |records: &[Record]| records.iter().map(|r| r.end - r.start).max().unwrap_or(0);
    assert!(longest(&accepted) <= 1, "{accepted:?}");
    let rejected_intervals: Vec<u64> = stopped
        .stderr
        .lines()
        .filter(|l| l.contains("interval written") && l.contains("fl-rejected"))
        .filter_map(|l| {
            let field = |name: &str| -> Option<u64> {
                l.split(&format!(" {name}="))
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            };
            Some(field("end")? - field("start")?)
        })
        .collect();
    assert!(
        rejected_intervals.contains(&2),
        "the REJECT flow log writes 2 s intervals: {rejected_intervals:?}\n{}",
        stopped.stderr
    );
    fs::remove_dir_all(&dir).expect("cleanup");
}

/// SIGHUP with a flow log added: the running one goes on undisturbed and loses nothing; the new
/// one has exactly the traffic after the reload. Then a bad file: refused, named with its line,
/// and both flow logs go on. Then the first one removed: it writes everything it counted before
/// the reload, and nothing after.
#[test]
fn sighup_adds_a_flow_log_without_disturbing_the_other() {
    let topology = Topology::new(false);
    let dir = scratch("reload-flow-logs");
    fs::write(dir.join("policy.toml"), POLICY).expect("policy");
    let config = dir.join("flowlog.toml");
    fs::write(&config, config_text(&dir, &[&accepted(&dir)])).expect("config");
    let sink = udp_socket(&topology.a, SocketAddr::new(IpAddr::V4(A4), 7000));

    let mut agent = Agent::start(&topology.a, &["--config", config.to_str().unwrap()]);
    let hangup = |agent: &Agent| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGHUP) };
    };
    let (mut accept, mut reject_before, mut reject) = (
        Expected::default(),
        Expected::default(),
        Expected::default(),
    );
    round(&topology, &sink, 15, 5, &mut accept, &mut reject_before);

    fs::write(
        &config,
        config_text(&dir, &[&accepted(&dir), &rejected(&dir)]),
    )
    .expect("config");
    hangup(&agent);
    agent.wait_for_log("configuration reloaded", 1, Duration::from_secs(10));
    round(&topology, &sink, 25, 9, &mut accept, &mut reject);

    fs::write(
        &config,
        "[[flow-log]]\nid = \"fl-x\"\nscope = \"everything\"\n",
    )
    .expect("config");
    hangup(&agent);
    agent.wait_for_log("configuration not reloaded", 1, Duration::from_secs(10));
    round(&topology, &sink, 10, 4, &mut accept, &mut reject);

    // fl-accepted removed: it writes what it counted up to the reload, then nothing more.
    fs::write(&config, config_text(&dir, &[&rejected(&dir)])).expect("config");
    hangup(&agent);
    agent.wait_for_log("configuration reloaded", 2, Duration::from_secs(10));
    let mut accept_after_removal = Expected::default();
    round(
        &topology,
        &sink,
        5,
        3,
        &mut accept_after_removal,
        &mut reject,
    );
    thread::sleep(Duration::from_millis(300));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let log = &stopped.stderr;
    assert!(
        log.contains("flowlog.toml:3: scope must be \"all\" or a table"),
        "{log}"
    );
    assert_eq!(
        log.matches("flow log stopped by the reload").count(),
        1,
        "fl-accepted is stopped by its removal only:\n{log}"
    );
    assert_eq!(
        log.matches("flow log started by the reload").count(),
        1,
        "{log}"
    );
    let accepted = read_records(&dir.join("accepted/a0-accept.log"));
    let rejected = read_records(&dir.join("rejected/a0-reject.log"));
    only(&accepted, "ACCEPT", "fl-accepted");
    only(&rejected, "REJECT", "fl-rejected");
    accept.check(
        &accepted,
        "fl-accepted across two SIGHUPs, until its removal",
    );
    reject.check(&rejected, "fl-rejected after its start");
    // The datagrams dropped before fl-rejected existed are in no flow log.
    let (key, _) = reject_before.0.iter().next().expect("one flow");
    let before_and_after: u64 = rejected
        .iter()
        .filter(|r| r.flow == Some(key.1))
        .map(|r| r.packets.unwrap_or(0))
        .sum();
    assert_eq!(
        before_and_after,
        9 + 4 + 3,
        "only the rejects after the reload"
    );
    fs::remove_dir_all(&dir).expect("cleanup");
}
