//! Interfaces that come and go: the agent attaches new interfaces matching its scope as they
//! appear, detaches them when they go, still writes the last counts of a departed interface, and
//! leaks nothing over a thousand veth pairs created and deleted.

use std::{
    fs,
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use tests::{
    agent::Agent,
    netns::{NetNs, veth_pair},
    records::{FlowTuple, parse_lines, totals},
    traffic::{udp_exchange, udp_socket},
};

/// Open file descriptors of a process, and how many of them are BPF links.
fn descriptors(pid: u32) -> (usize, usize) {
    let mut total = 0;
    let mut links = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).expect("fds") {
        total += 1;
        if let Ok(target) = fs::read_link(entry.unwrap().path())
            && target.to_string_lossy() == "anon_inode:bpf_link"
        {
            links += 1;
        }
    }
    (total, links)
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Runs `ip -n NS -batch -` with `commands`.
fn ip_batch(ns: &NetNs, commands: &str) {
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
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

/// Waits until `probe` returns true (true) or `timeout` has passed (false).
fn wait_until(timeout: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !probe() {
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
    true
}

#[test]
fn interfaces_that_come_and_go_are_followed_without_leaks() {
    let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    // An anchor pair, so the agent starts with something attached.
    veth_pair(&a, "t0a", &a, "t0b").expect("veth");
    let mut agent = Agent::start(
        &a,
        &[
            "--interval",
            "2s",
            "-i",
            "t*",
            "-i",
            "x*",
            "--sink",
            "stdout",
            "--no-pin",
        ],
    );
    let pid = agent.pid();
    let (fds_before, links_before) = descriptors(pid);
    // The kernel drop program's link too, where the kernel reports drop reasons.
    let drop_link =
        flowlog_agent::kernel_drops::probe(flowlog_agent::kernel_drops::KernelDropsMode::Refused)
            .is_ok() as usize;
    assert_eq!(
        links_before,
        4 + drop_link,
        "two interfaces, ingress and egress each"
    );
    let rss_before = rss_kib(pid);

    // A short-lived interface with traffic: attached within a second, its counts outlive it.
    let (ax, bx) = (Ipv4Addr::new(198, 18, 7, 1), Ipv4Addr::new(198, 18, 7, 2));
    veth_pair(&a, "x0", &b, "x1").expect("veth");
    let appeared = Instant::now();
    for (ns, link, ip) in [(&a, "x0", ax), (&b, "x1", bx)] {
        ns.disable_ipv6(link).expect("sysctl");
        ns.add_address(link, ip, 24).expect("address");
        ns.link_up(link).expect("up");
    }
    agent.wait_for_log("attached interface=x0", 1, Duration::from_secs(5));
    assert!(
        appeared.elapsed() < Duration::from_secs(2),
        "{:?}",
        appeared.elapsed()
    );
    let wire = {
        let from = udp_socket(&b, SocketAddr::new(IpAddr::V4(bx), 7000));
        let to = udp_socket(&a, SocketAddr::new(IpAddr::V4(ax), 7001));
        udp_exchange(&from, &to, 25, 500)
    };
    a.ip(&["link", "del", "x0"]).expect("delete x0");
    agent.wait_for_log("detached interface=x0", 1, Duration::from_secs(5));

    // A thousand pairs, in bursts of a hundred created and deleted; their far ends are in `b`,
    // outside the agent's sight. (Each TCX attachment waits for an RCU grace period in the
    // kernel, about 10 ms per direction: this is the slow part.)
    let churn = Instant::now();
    for burst in 0..10 {
        let names: Vec<String> = (0..100)
            .map(|i| format!("t{}", 1 + burst * 100 + i))
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
        thread::sleep(Duration::from_millis(200));
        let del: String = names.iter().map(|n| format!("link del {n}a\n")).collect();
        ip_batch(&a, &del);
    }
    let mut last = (0, 0);
    let settled = wait_until(Duration::from_secs(120), || {
        last = descriptors(pid);
        last == (fds_before, links_before)
    });
    assert!(
        settled,
        "the agent did not let go of the deleted interfaces: (fds, links) {last:?}, at the start {:?}",
        (fds_before, links_before)
    );
    let rss_after = rss_kib(pid);
    eprintln!("interfaces test: churn settled after {:?}", churn.elapsed());

    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let attached = stopped.stderr.matches("attached interface=t").count();
    assert!(attached > 2, "new pairs were attached: {attached}");
    assert!(
        rss_after <= rss_before + 4096,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let flow = FlowTuple {
        src: IpAddr::V4(bx),
        dst: IpAddr::V4(ax),
        src_port: 7000,
        dst_port: 7001,
        protocol: 17,
    };
    let seen = totals(&parse_lines(&stopped.stdout));
    assert_eq!(seen.get(&("x0".to_owned(), flow)), Some(&wire));
    // No NODATA for an interface after it went away: only its last interval mentions it.
    eprintln!(
        "interfaces test: {attached} attachments of churned pairs; RSS {rss_before} -> {rss_after} KiB; fds {fds_before}"
    );
}
