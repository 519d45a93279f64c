//! The systemd unit in contrib/: systemd accepts it, and the agent does its whole job with
//! exactly the capabilities the unit leaves it.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
};

use tests::{
    agent::{AgentBuilder, agent_binary},
    records::{FlowTuple, parse_lines, totals},
    topology::Topology,
    traffic::{udp_exchange, udp_socket},
};

fn unit_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/flowlog-agent.service")
}

/// The unit's `KEY=` value.
fn directive(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_owned()
}

#[test]
fn systemd_accepts_the_unit() {
    let unit = fs::read_to_string(unit_path()).expect("contrib/flowlog-agent.service");
    // Verify a copy that starts the binary under test (verify checks that it exists).
    let exec = directive(&unit, "ExecStart");
    let program = exec.split(' ').next().unwrap();
    let copy = PathBuf::from(format!("/tmp/flowlog-agent-{}.service", std::process::id()));
    fs::write(
        &copy,
        unit.replace(program, agent_binary().to_str().unwrap()),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (from systemd) must be installed");
    let _ = fs::remove_file(&copy);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("flowlog-agent"))
        .collect();
    assert!(
        output.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_units_capabilities_are_enough() {
    let unit = fs::read_to_string(unit_path()).expect("unit");
    let caps: Vec<String> = directive(&unit, "CapabilityBoundingSet")
        .split(' ')
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    assert_eq!(caps.len(), 3, "{caps:?}");
    let set = format!("-all,{}", caps.join(","));

    let Topology { a, b, .. } = Topology::builder().ipv4_only().build();
    let (a_ip, b_ip) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    // Root with only the unit's capabilities, as systemd starts it.
    let (bounding, inheritable, ambient) = (
        format!("--bounding-set={set}"),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
    );
    let agent = AgentBuilder::new(&a)
        .wrapper(&["setpriv", &bounding, &inheritable, &ambient])
        .args(&[
            "-i",
            "a0",
            "--sink",
            "stdout",
            "--interval",
            "1s",
            "--no-pin",
        ])
        .start();
    let from = udp_socket(&b, SocketAddr::new(IpAddr::V4(b_ip), 4000));
    let to = udp_socket(&a, SocketAddr::new(IpAddr::V4(a_ip), 4001));
    let wire = udp_exchange(&from, &to, 12, 300);
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let stderr = stopped.stderr;
    let flow = FlowTuple {
        src: IpAddr::V4(b_ip),
        dst: IpAddr::V4(a_ip),
        src_port: 4000,
        dst_port: 4001,
        protocol: 17,
    };
    let seen = totals(&parse_lines(&stopped.stdout));
    assert_eq!(seen.get(&("a0".to_owned(), flow)), Some(&wire), "{stderr}");
}
