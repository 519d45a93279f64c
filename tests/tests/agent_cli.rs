//! The agent binary refuses bad input at start-up with a message naming what is wrong, before
//! it attaches anything.

use std::{process::Output, time::Duration};

use tests::{
    agent::{Agent, agent_binary},
    netns::{NetNs, veth_pair},
};

/// A namespace with one veth end `a0` (up).
fn namespace() -> (NetNs, NetNs) {
    let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    veth_pair(&a, "a0", &b, "b0").expect("veth");
    a.link_up("a0").expect("up");
    (a, b)
}

/// Runs the agent to completion inside `ns` (it must fail fast).
fn run_agent(ns: &NetNs, wrapper: &[&str], args: &[&str]) -> Output {
    let binary = agent_binary();
    let binary = binary.to_str().expect("UTF-8 path");
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = ns.command(program);
            command.args(rest).arg(binary);
            command
        }
        None => ns.command(binary),
    };
    command.arg("run").args(args).env("NO_COLOR", "1");
    let output = command.output().expect("spawn the agent");
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
    let mut agent = Agent::start(&a, &["-i", "zz*", "-i", "a0", "--sink", "stdout"], 1);
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
