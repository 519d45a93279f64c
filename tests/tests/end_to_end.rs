//! The real agent on a veth pair between two test namespaces: known UDP and TCP traffic, IPv4
//! and IPv6, both directions, across several 2 s intervals; the records must add up to exactly
//! what crossed the wire, lie inside their intervals, and an idle interface must get NODATA.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    thread,
    time::Duration,
};

use aya::util::KernelVersion;
use tests::{
    agent::Agent,
    records::{Record, parse_lines},
    topology::{A4, A6, Expected, Topology, UDP},
    traffic::{tcp_exchange, udp_exchange, udp_gso_exchange},
};

/// `--hook auto` picks TC on a veth, attached with TCX on this kernel.
#[test]
fn tc_records_add_up_to_the_traffic_exactly() {
    let stderr = records_add_up_to_the_traffic_exactly("tc-auto", &["--hook", "auto"]);
    assert_eq!(stderr.matches("hook=tc tc_mode=tcx").count(), 2, "{stderr}");
}

/// Native veth XDP on ingress, TC on egress.
#[test]
fn xdp_records_add_up_to_the_traffic_exactly() {
    let stderr = records_add_up_to_the_traffic_exactly("xdp", &["--hook", "xdp"]);
    assert_eq!(
        stderr.matches("hook=xdp tc_mode=tcx").count(),
        2,
        "{stderr}"
    );
}

/// Native XDP on ingress with the egress program as a clsact filter: XDP on kernels before TCX.
#[test]
fn xdp_clsact_records_add_up_to_the_traffic_exactly() {
    let stderr = records_add_up_to_the_traffic_exactly(
        "xdp-clsact",
        &["--hook", "xdp", "--tc-mode", "clsact"],
    );
    assert_eq!(
        stderr.matches("hook=xdp tc_mode=clsact").count(),
        2,
        "{stderr}"
    );
}

/// The clsact path older kernels take.
#[test]
fn clsact_records_add_up_to_the_traffic_exactly() {
    let stderr =
        records_add_up_to_the_traffic_exactly("clsact", &["--hook", "tc", "--tc-mode", "clsact"]);
    assert_eq!(
        stderr.matches("hook=tc tc_mode=clsact").count(),
        2,
        "{stderr}"
    );
}

/// Runs the agent with `hook_args` through the whole scenario; returns its log.
fn records_add_up_to_the_traffic_exactly(name: &str, hook_args: &[&str]) -> String {
    let topology = Topology::new(true);
    let logs = PathBuf::from(format!("/tmp/flowlog-e2e-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&logs);
    let sink = format!("dir:{}", logs.display());
    let mut args = vec![
        "--interval",
        "2s",
        "--interface",
        "a0",
        "--interface",
        "a1",
        "--sink",
        "stdout",
        "--sink",
        &sink,
        "--account-id",
        "123456789010",
    ];
    args.extend_from_slice(hook_args);
    let agent = Agent::start(&topology.a, &args);

    let mut expected = Expected::default();
    // About 7 s of traffic: at least three interval boundaries.
    for round in 0..7u64 {
        for pair in &topology.udp {
            let (a_socket, b_socket, a_addr, b_addr) =
                (&pair.a, &pair.b, &pair.a_addr, &pair.b_addr);
            let wire = udp_exchange(b_socket, a_socket, 10 + round, 100);
            expected.add(*b_addr, *a_addr, UDP, wire);
            let wire = udp_exchange(a_socket, b_socket, 5, 1000 + round as usize);
            expected.add(*a_addr, *b_addr, UDP, wire);
            let wire = udp_gso_exchange(a_socket, b_socket, 5000, 1400);
            expected.add(*a_addr, *b_addr, UDP, wire);
            let wire = udp_gso_exchange(b_socket, a_socket, 3001, 1000);
            expected.add(*b_addr, *a_addr, UDP, wire);
        }
        for (port, server_ip) in [
            (6000 + round as u16, IpAddr::V4(A4)),
            (7000 + round as u16, IpAddr::V6(A6)),
        ] {
            let exchange = tcp_exchange(
                &topology.b,
                &topology.a,
                SocketAddr::new(server_ip, port),
                150_000 + round as usize * 1000,
                40_000,
            );
            expected.add_tcp(&exchange);
        }
        thread::sleep(Duration::from_millis(900));
    }

    let stopped = agent.stop();
    assert!(
        stopped.status.success(),
        "agent failed:\n{}",
        stopped.stderr
    );
    // The kernel's own drops (`--kernel-drops refused`, the default) need drop reasons (5.17):
    // before, the agent says so in one line and counts as without them.
    let drop_reasons =
        KernelVersion::current().expect("kernel version") >= KernelVersion::new(5, 17, 0);
    assert_eq!(
        stopped
            .stderr
            .matches("kernel drops are unavailable: this kernel has no drop reasons")
            .count(),
        usize::from(!drop_reasons),
        "{}",
        stopped.stderr
    );
    let records = parse_lines(&stopped.stdout);

    // 1. Exact totals for every flow the test made (other flows, e.g. neighbour discovery, may
    //    exist beside them).
    expected.check(&records, "records");
    for record in &records {
        assert_eq!(
            (record.version, record.account_id.as_str()),
            (2, "123456789010")
        );
        if record.flow.is_some() {
            assert_eq!(
                (record.action.as_str(), record.log_status.as_str()),
                ("ACCEPT", "OK")
            );
        }
    }

    // 2. Every record lies inside its interval. stdout gets each interval in one write, flows
    //    first and the idle interface's NODATA last, so each NODATA of a1 closes an interval.
    let intervals = check_intervals(&records);
    assert!(
        intervals >= 4,
        "only {intervals} intervals: fewer than three boundaries"
    );

    // 3. The log streams hold the same records, one file per interface, mode 0640.
    for interface in ["a0", "a1"] {
        let path = logs.join(format!("{interface}-all.log"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let in_stream = parse_lines(&text);
        let on_stdout: Vec<&Record> = records
            .iter()
            .filter(|r| r.interface == interface)
            .collect();
        assert_eq!(
            in_stream.iter().collect::<Vec<_>>(),
            on_stdout,
            "{interface} stream"
        );
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", path.display());
    }
    fs::remove_dir_all(&logs).expect("clean up logs");

    // 4. The programs stay for the next agent (`--on-exit keep`, the default): TCX and XDP
    //    links are pinned, and with clsact exactly one filter per TC direction stays, never
    //    more (XDP takes ingress).
    let clsact = hook_args.contains(&"clsact") || !flowlog_agent::datapath::has_tcx();
    let xdp = hook_args.contains(&"xdp");
    for (direction, kept_filters) in [
        ("ingress", usize::from(clsact && !xdp)),
        ("egress", usize::from(clsact)),
    ] {
        let filters = topology
            .a
            .exec("tc", &["filter", "show", "dev", "a0", direction])
            .expect("tc");
        let listed = String::from_utf8_lossy(&filters.stdout);
        assert_eq!(
            listed.lines().filter(|l| l.contains(" handle ")).count(),
            kept_filters,
            "{direction}: {listed}"
        );
    }
    stopped.stderr
}

/// Checks that each OK record lies within the interval the next NODATA record of `a1` states,
/// that `a1` has nothing but NODATA, and returns the number of intervals.
fn check_intervals(records: &[Record]) -> usize {
    let mut pending: Vec<&Record> = Vec::new();
    let mut intervals = 0;
    let mut previous_end = 0;
    for record in records {
        if record.interface == "a1" {
            assert_eq!(
                record.log_status, "NODATA",
                "the idle interface had traffic: {record:?}"
            );
            assert!(record.start <= record.end && record.start >= previous_end.min(record.start));
            for flow in pending.drain(..) {
                assert!(
                    record.start <= flow.start && flow.start <= flow.end && flow.end <= record.end,
                    "{flow:?} outside interval {}..{}",
                    record.start,
                    record.end
                );
            }
            previous_end = record.end;
            intervals += 1;
        } else {
            pending.push(record);
        }
    }
    assert!(
        pending.is_empty(),
        "records after the last interval: {pending:?}"
    );
    intervals
}
