//! The agent binary as an operator meets it: bad input is refused at start-up with a message
//! naming what is wrong, before anything is attached; once running it keeps only the
//! capabilities it needs; its log can be JSON.

use std::{net::TcpListener, process::Output, thread, time::Duration};

use tests::{
    agent::{Agent, agent_command},
    netns::{NetNs, in_netns},
    topology::Topology,
};

/// A namespace with one veth end `a0` (up, no addresses).
fn namespace() -> (NetNs, NetNs) {
    let topology = Topology::builder().unaddressed().build();
    (topology.a, topology.b)
}

/// `flowlog-agent SUBCOMMAND ARGS` inside `ns`, started through `wrapper` (a program and its
/// arguments, e.g. `setpriv`), run to completion.
fn agent_output(ns: &NetNs, wrapper: &[&str], subcommand: &str, args: &[&str]) -> Output {
    let mut command = agent_command(ns, wrapper);
    command.arg(subcommand).args(args).env("NO_COLOR", "1");
    command.output().expect("spawn the agent")
}

/// Runs the agent to completion inside `ns` (it must fail fast).
fn run_agent(ns: &NetNs, wrapper: &[&str], args: &[&str]) -> Output {
    let output = agent_output(ns, wrapper, "run", args);
    assert!(
        !output.status.success(),
        "the agent should have refused to start"
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_interface_that_does_not_exist_is_an_error() {
    let (a, _b) = namespace();
    let output = run_agent(
        &a,
        &[],
        &[
            "--interface",
            "a0",
            "--interface",
            "nope0",
            "--sink",
            "stdout",
        ],
    );
    assert!(
        stderr(&output).contains("no such interface: nope0"),
        "{}",
        stderr(&output)
    );
    assert!(
        !stderr(&output).contains("attached"),
        "nothing may be attached first"
    );
}

#[test]
fn a_glob_matching_nothing_is_a_warning() {
    let (a, _b) = namespace();
    let mut agent = Agent::start(&a, &["-i", "zz*", "-i", "a0", "--sink", "stdout"]);
    agent.wait_for_log("glob matches no interface", 1, Duration::from_secs(5));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("glob=zz*"), "{}", stopped.stderr);
}

#[test]
fn a_bad_format_names_the_token() {
    let (a, _b) = namespace();
    let output = run_agent(&a, &[], &["--format", "${version} ${srcaddr} ${byte}"]);
    assert_eq!(output.status.code(), Some(2), "usage errors exit with 2");
    let text = stderr(&output);
    assert!(
        text.contains("--format") && text.contains("${byte}") && text.contains("token 3"),
        "{text}"
    );
}

#[test]
fn a_missing_capability_is_named() {
    let (a, _b) = namespace();
    // Root without CAP_BPF (and CAP_SYS_ADMIN, which would stand in for it).
    let output = run_agent(
        &a,
        &[
            "setpriv",
            "--bounding-set",
            "-bpf,-sys_admin,-perfmon",
            "--inh-caps",
            "-all",
        ],
        &["--interface", "a0", "--sink", "stdout"],
    );
    let text = stderr(&output);
    assert!(text.contains("missing capability CAP_BPF"), "{text}");

    let output = run_agent(
        &a,
        &[
            "setpriv",
            "--bounding-set",
            "-net_admin",
            "--inh-caps",
            "-all",
        ],
        &["--interface", "a0", "--sink", "stdout"],
    );
    let text = stderr(&output);
    assert!(text.contains("missing capability CAP_NET_ADMIN"), "{text}");
}

#[test]
fn a_bad_policy_file_names_file_line_and_reason_before_attaching() {
    let (a, _b) = namespace();
    let path = format!("/tmp/flowlog-bad-policy-{}.toml", std::process::id());
    std::fs::write(
        &path,
        "[acl]\ndefault = \"deny\"\n[[acl.rule]]\nnumber = 1\ndirection = \"ingress\"\nprotocol = \"udp\"\ncidr = \"198.18.0.1/15\"\naction = \"allow\"\n",
    )
    .expect("write");
    let output = run_agent(
        &a,
        &[],
        &["-i", "a0", "--sink", "stdout", "--policy", &path],
    );
    let _ = std::fs::remove_file(&path);
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "policy {path}:7: cidr \"198.18.0.1/15\": host bits are set; the network is 198.18.0.0/15"
        )),
        "{message}"
    );
    assert!(
        !message.contains("attached"),
        "nothing may be attached first"
    );
}

#[test]
fn a_bad_exclusion_or_traffic_type_names_the_token() {
    let (a, _b) = namespace();
    let output = run_agent(&a, &[], &["-i", "a0", "--exclude", "10.0.0.0/8/udpp:53"]);
    assert!(stderr(&output).contains("\"udpp\""), "{}", stderr(&output));
    let output = run_agent(&a, &[], &["-i", "a0", "--traffic-type", "DROPPED"]);
    assert!(
        stderr(&output).contains("\"DROPPED\""),
        "{}",
        stderr(&output)
    );
}

#[test]
fn once_running_the_agent_keeps_only_cap_bpf_and_cap_net_admin() {
    let (a, _b) = namespace();
    let mut agent = Agent::start(&a, &["-i", "a0", "--sink", "stdout", "--no-pin"]);
    agent.wait_for_log("dropped every other capability", 1, Duration::from_secs(5));
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let set = |name: &str| {
        let hex = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {status}"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    let expected = (1u64 << 39) | (1 << 12);
    assert_eq!(set("CapEff:"), expected, "effective");
    assert_eq!(set("CapPrm:"), expected, "permitted");
    assert_eq!(set("CapBnd:"), expected, "bounding");
    assert_eq!(set("CapAmb:"), 0, "ambient");
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (a, _b) = namespace();
    let agent = Agent::start(
        &a,
        &[
            "--log-format",
            "json",
            "-i",
            "a0",
            "--sink",
            "stdout",
            "--no-pin",
            "--interval",
            "1s",
        ],
    );
    thread::sleep(Duration::from_millis(1500));
    let stopped = agent.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let mut messages = Vec::new();
    for line in stopped.stderr.lines() {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(
            object["timestamp"].is_string() && object["level"].is_string(),
            "{line}"
        );
        messages.push(
            object["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    for wanted in ["attached", "interval written", "sink finished"] {
        assert!(
            messages.iter().any(|m| m == wanted),
            "no {wanted:?} in {messages:?}"
        );
    }
}

/// Runs `flowlog-agent check ARGS` in `ns` through `wrapper`.
fn check(ns: &NetNs, wrapper: &[&str], args: &[&str]) -> Output {
    agent_output(ns, wrapper, "check", args)
}

#[test]
fn check_explains_what_works_and_what_does_not() {
    let (a, _b) = namespace();
    // A TCP collector listening on the namespace's loopback; nothing listens on the next port.
    a.link_up("lo").expect("lo up");
    let collector = in_netns(&a, || TcpListener::bind("127.0.0.1:4739"))
        .expect("namespace")
        .expect("listening collector");
    let good = check(
        &a,
        &[],
        &[
            "-i",
            "a0",
            "--sink",
            "stdout",
            "--sink",
            "ipfix+tcp://127.0.0.1:4739",
            "--sink",
            "ipfix+udp://127.0.0.1:4740",
            "--no-pin",
        ],
    );
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{out}{}", stderr(&good));
    for line in [
        "ok    programs: the kernel verified and loaded every program",
        "ok    privileges:",
        "ok    kernel: ",
        "ok    interface a0: ifindex",
        // veth runs XDP natively (the driver says so over the netdev netlink family).
        ", driver virtual, native XDP yes; hook: tc ingress, TC egress",
        "ok    sink stdout",
        "ok    sink ipfix+tcp://127.0.0.1:4739: 127.0.0.1:4739: the collector at 127.0.0.1:4739 \
         accepts connections",
        "ok    sink ipfix+udp://127.0.0.1:4740: 127.0.0.1:4740 resolves to 127.0.0.1:4740; UDP \
         collectors cannot be probed",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    assert!(!out.contains("FAIL"), "{out}");
    // The probe connected (and left at once).
    collector.set_nonblocking(true).expect("nonblocking");
    assert!(collector.accept().is_ok(), "the probe never connected");

    let missing = check(
        &a,
        &[],
        &[
            "-i",
            "a0",
            "-i",
            "nope0",
            "--sink",
            "stdout",
            "--sink",
            "ipfix+tcp://127.0.0.1:4740",
            "--no-pin",
        ],
    );
    let out = String::from_utf8_lossy(&missing.stdout);
    assert!(!missing.status.success());
    assert!(
        out.contains("FAIL  interface nope0: no such interface"),
        "{out}"
    );
    assert!(
        out.contains(
            "FAIL  sink ipfix+tcp://127.0.0.1:4740: 127.0.0.1:4740: connecting to \
             127.0.0.1:4740: Connection refused"
        ),
        "{out}"
    );
    assert!(
        stderr(&missing).contains("cannot run here"),
        "{}",
        stderr(&missing)
    );

    let unprivileged = check(
        &a,
        &[
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
        ],
        &["-i", "a0", "--sink", "stdout", "--no-pin"],
    );
    let out = String::from_utf8_lossy(&unprivileged.stdout);
    assert!(!unprivileged.status.success());
    assert!(
        out.contains("FAIL  privileges: missing capability"),
        "{out}"
    );
}

/// `check --config FILE`: a good file is explained flow log by flow log; a bad one is refused
/// with every problem, each with its line and a hint, before anything else is looked at.
#[test]
fn check_reads_a_config_file() {
    let (a, _b) = namespace();
    let dir = std::env::temp_dir().join(format!("flowlog-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("directory");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            r#"[agent]
pin = false

[[flow-log]]
id = "fl-by-name"
scope = {{ interfaces = ["a0"] }}
sinks = ["dir:{}"]

[[flow-log]]
id = "fl-by-cidr"
scope = {{ cidrs = ["198.19.0.0/16"] }}
traffic-type = "REJECT"
interval = "10s"
sinks = ["stdout"]
"#,
            dir.join("streams").display()
        ),
    )
    .expect("write");
    let output = check(&a, &[], &["--config", good.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}{}", stderr(&output));
    for line in [
        "2 flow logs (fl-by-name, fl-by-cidr), drained every 10s",
        "ok    interface a0: ifindex",
        "; flow logs fl-by-name",
        "warn  flow log fl-by-cidr: its scope selects no interface yet",
        "ok    flow log fl-by-name sink dir:",
        "ok    flow log fl-by-cidr sink stdout",
        "ok    pinning: off",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[agent]\nhook = \"ebpf\"\n\n[[flow-log]]\nid = \"fl-a\"\nscope = { interfaces = [\"a0\"], cidr = [\"10.0.0.0/8\"] }\ninterval = \"90\"\nsinks = [\"stdout\"]\n",
    )
    .expect("write");
    let output = check(&a, &[], &["--config", bad.to_str().unwrap()]);
    let err = stderr(&output);
    assert!(!output.status.success());
    let shown = bad.display();
    for line in [
        format!("config {shown}: 3 problems"),
        format!("{shown}:2: hook: \"ebpf\" is not a choice"),
        "hint: expected one of: auto, tc, xdp".to_owned(),
        format!("{shown}:6: unknown key \"cidr\" in scope"),
        "hint: expected one of: interfaces, cidrs".to_owned(),
        format!("{shown}:7: interval: \"90\" has no unit: write 90s or 90m"),
    ] {
        assert!(err.contains(&line), "no {line:?} in:\n{err}");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
