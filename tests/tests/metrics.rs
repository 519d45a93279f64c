//! The Prometheus endpoint: scraped from inside the agent's namespace after known traffic, its
//! counters equal what was sent, and each sink's bytes equal what it wrote.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use tests::{
    agent::Agent,
    metrics::{sample, scrape},
    netns::NetNs,
    topology::Topology,
    traffic::{udp_exchange, udp_socket},
};

/// Total size of the files in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("log-stream directory")
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum()
}

/// A scrape taken while the log-stream files did not change (the agent writes once a second),
/// with their total size then.
fn scrape_while_still(ns: &NetNs, dir: &Path) -> (String, u64) {
    for _ in 0..10 {
        // The counter follows a write within microseconds: a write before the scrape shows in
        // it, one after changes the files again.
        let before = dir_bytes(dir);
        thread::sleep(Duration::from_millis(20));
        let response = scrape(ns, "/metrics");
        thread::sleep(Duration::from_millis(20));
        if dir_bytes(dir) == before {
            return (response, before);
        }
    }
    panic!("the log streams of {} never stood still", dir.display());
}

#[test]
fn metrics_count_what_was_sent() {
    let Topology { a, b, .. } = Topology::builder().ipv4_only().build();
    let (a_ip, b_ip) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    let streams = PathBuf::from(format!("/tmp/flowlog-metrics-{}", std::process::id()));
    let _ = fs::remove_dir_all(&streams);
    let dir_sink = format!("dir:{}", streams.display());
    let mut agent = Agent::start(
        &a,
        &[
            "-i",
            "a0",
            "--interval",
            "1s",
            "--sink",
            "stdout",
            "--sink",
            &dir_sink,
            "--no-pin",
        ],
    );
    let from = udp_socket(&b, SocketAddr::new(IpAddr::V4(b_ip), 4000));
    let to = udp_socket(&a, SocketAddr::new(IpAddr::V4(a_ip), 4001));
    let (packets, bytes) = udp_exchange(&from, &to, 17, 200);
    // Two more intervals: the one holding the traffic has been written.
    agent.wait_for_log("interval written", 3, Duration::from_secs(10));

    let (response, on_disk) = scrape_while_still(&a, &streams);
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let accept = r#"{action="ACCEPT",reason="-"}"#;
    assert_eq!(
        sample(&response, &format!("flowlog_packets_total{accept}")),
        Some(packets as f64),
        "{response}"
    );
    assert_eq!(
        sample(&response, &format!("flowlog_bytes_total{accept}")),
        Some(bytes as f64)
    );
    assert_eq!(sample(&response, "flowlog_interfaces_attached"), Some(1.0));
    assert_eq!(
        sample(&response, "flowlog_flow_map_capacity"),
        Some(524_288.0)
    );
    assert!(sample(&response, "flowlog_intervals_total").unwrap() >= 2.0);
    assert!(
        sample(
            &response,
            r#"flowlog_sink_intervals_offered_total{flow_log="cli",sink="stdout"}"#
        )
        .unwrap()
            >= 2.0
    );
    // The sink's own counts: it wrote the flow's record, lost nothing, never retried.
    let written = sample(
        &response,
        r#"flowlog_sink_records_written_total{flow_log="cli",sink="stdout"}"#,
    );
    assert!(written.unwrap_or(0.0) >= 1.0, "{response}");
    assert_eq!(
        sample(
            &response,
            r#"flowlog_sink_records_lost_total{flow_log="cli",sink="stdout"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &response,
            r#"flowlog_sink_retries_total{flow_log="cli",sink="stdout"}"#
        ),
        Some(0.0)
    );
    // Bytes written: the log streams' are exactly what the files hold; stdout got the same
    // lines. Sinks without a spool have no spool gauges.
    let dir_written = sample(
        &response,
        &format!(r#"flowlog_sink_bytes_written_total{{flow_log="cli",sink="{dir_sink}"}}"#),
    );
    assert_eq!(dir_written, Some(on_disk as f64), "{response}");
    assert!(on_disk > 0);
    assert_eq!(
        sample(
            &response,
            r#"flowlog_sink_bytes_written_total{flow_log="cli",sink="stdout"}"#
        ),
        dir_written
    );
    assert!(!response.contains("flowlog_sink_spool"), "{response}");
    // Every metric has its help and type lines.
    assert!(
        response.contains("# TYPE flowlog_packets counter"),
        "{response}"
    );
    assert!(response.contains("# HELP flowlog_drain_duration_seconds"));
    assert!(scrape(&a, "/").starts_with("HTTP/1.1 404"));

    let stopped = agent.stop();
    // In the end both sinks wrote every record, in the same lines.
    let final_bytes = dir_bytes(&streams);
    let _ = fs::remove_dir_all(&streams);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(stopped.stdout.len() as u64, final_bytes);
    assert!(
        stopped
            .stderr
            .contains("metrics at http://127.0.0.1:9753/metrics")
    );
}
