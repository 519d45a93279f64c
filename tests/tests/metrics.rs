//! The Prometheus endpoint: scraped from inside the agent's namespace after known traffic, its
//! counters equal what was sent.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use tests::{
    agent::Agent,
    netns::{NetNs, in_netns, veth_pair},
    traffic::{udp_exchange, udp_socket},
};

fn scrape(ns: &NetNs, path: &str) -> String {
    in_netns(ns, || {
        let mut stream = TcpStream::connect("127.0.0.1:9753").expect("connect to the metrics port");
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .expect("namespace")
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_what_was_sent() {
    let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    veth_pair(&a, "a0", &b, "b0").expect("veth");
    let (a_ip, b_ip) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    for (ns, link, ip) in [(&a, "a0", a_ip), (&b, "b0", b_ip)] {
        ns.disable_ipv6(link).expect("sysctl");
        ns.add_address(link, ip, 24).expect("address");
        ns.link_up(link).expect("up");
        ns.link_up("lo").expect("lo");
    }
    let mut agent = Agent::start(
        &a,
        &[
            "-i",
            "a0",
            "--interval",
            "1s",
            "--sink",
            "stdout",
            "--no-pin",
        ],
        1,
    );
    let from = udp_socket(&b, SocketAddr::new(IpAddr::V4(b_ip), 4000));
    let to = udp_socket(&a, SocketAddr::new(IpAddr::V4(a_ip), 4001));
    let (packets, bytes) = udp_exchange(&from, &to, 17, 200);
    // Two more intervals: the one holding the traffic has been written.
    agent.wait_for_log("interval written", 3, Duration::from_secs(10));

    let response = scrape(&a, "/metrics");
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
    // Every metric has its help and type lines.
    assert!(
        response.contains("# TYPE flowlog_packets counter"),
        "{response}"
    );
    assert!(response.contains("# HELP flowlog_drain_duration_seconds"));
    assert!(scrape(&a, "/").starts_with("HTTP/1.1 404"));

    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        stopped
            .stderr
            .contains("metrics at http://127.0.0.1:9753/metrics")
    );
}
