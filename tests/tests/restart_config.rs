//! Restarts with another configuration: the configuration of the running agent is the whole
//! truth (a policy or exclusion no longer configured is gone, a new policy applies to every
//! connection), a refused start leaves the kernel as it found it, flowlog programs of another
//! owner are found, and nothing counted is lost, even on an interface deleted while no agent ran.
//!
//! The agent runs in namespace `a` on `a0`; `b` sends UDP datagrams to `a`. Every test checks
//! what arrived (the policy's drops) and what the records of all runs say, exactly.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use tests::{
    agent::{Agent, Stopped, agent_command, interval_total, output_within},
    bpffs::Bpffs,
    foreign::attach_other_xdp,
    netns::NetNs,
    records::{
        FORMAT_WITH_REASON, FlowTuple, VerdictTotals, parse_records_with_reason, verdict_totals,
    },
    topology::Topology,
    traffic::{udp_dropped, udp_exchange, udp_socket},
};

const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const UDP: u8 = 17;
const PAYLOAD: usize = 100;

/// What a datagram should meet.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Delivered and recorded ACCEPT.
    Accept,
    /// Dropped and recorded REJECT by the ACL.
    RejectAcl,
    /// Delivered and not recorded: counted as excluded.
    Excluded,
}

/// Two namespaces joined by `a0`-`b0` (and `a1`-`b1` for the tests that need a second
/// interface), a BPF filesystem for the pin directories, the sockets, and what was sent.
struct Host {
    a: NetNs,
    b: NetNs,
    bpffs: Bpffs,
    /// Receiving sockets in `a`, by port (and address family).
    receivers: BTreeMap<(bool, u16), UdpSocket>,
    /// Sending sockets in `b`, by source port (and address family).
    senders: BTreeMap<(bool, u16), UdpSocket>,
    expected: VerdictTotals,
    excluded_sent: u64,
    outputs: Vec<String>,
    logs: Vec<String>,
}

impl Host {
    fn new(second_pair: bool) -> Self {
        let builder = Topology::builder();
        let builder = if second_pair {
            builder.second_pair()
        } else {
            builder
        };
        let Topology { a, b, .. } = builder.build();
        Host {
            a,
            b,
            bpffs: Bpffs::mount(),
            receivers: BTreeMap::new(),
            senders: BTreeMap::new(),
            expected: VerdictTotals::new(),
            excluded_sent: 0,
            outputs: Vec::new(),
            logs: Vec::new(),
        }
    }

    fn pin_dir(&self, name: &str) -> String {
        self.bpffs.0.join(name).to_str().expect("UTF-8").to_owned()
    }

    /// `run` arguments every test shares, then `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        if extra.contains(&"--config") {
            return extra.iter().map(|s| s.to_string()).collect();
        }
        let mut args: Vec<String> = [
            "--interval",
            "1s",
            "--sink",
            "stdout",
            "--format",
            FORMAT_WITH_REASON,
        ]
        .map(str::to_owned)
        .to_vec();
        if !extra.contains(&"-i") {
            args.extend(["-i".into(), "a0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn start(&self, extra: &[&str]) -> Agent {
        let args = self.args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start(&self.a, &args)
    }

    /// Runs `flowlog-agent run` and expects it to refuse: returns what it said.
    fn refused(&self, extra: &[&str]) -> String {
        let output = self.command("run", &self.args(extra));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success(),
            "the start was not refused:\n{stderr}"
        );
        stderr
    }

    /// Runs another agent subcommand to completion.
    fn command(&self, subcommand: &str, args: &[String]) -> Output {
        let mut command = agent_command(&self.a, &[]);
        command.arg(subcommand).args(args).env("NO_COLOR", "1");
        output_within(&mut command, Duration::from_secs(30))
    }

    fn stop(&mut self, agent: Agent) -> Stopped {
        let stopped = agent.stop();
        assert!(stopped.status.success(), "{}", stopped.stderr);
        self.outputs.push(stopped.stdout.clone());
        self.logs.push(stopped.stderr.clone());
        stopped
    }

    /// Sends `count` datagrams from `b`'s port `from` to `a`'s port `to` and checks they meet
    /// `fate`.
    fn send(&mut self, v6: bool, from: u16, to: u16, count: u64, fate: Fate) {
        let (a_ip, b_ip) = if v6 {
            (IpAddr::V6(A6), IpAddr::V6(B6))
        } else {
            (IpAddr::V4(A4), IpAddr::V4(B4))
        };
        let (a, b) = (&self.a, &self.b);
        let receiver = self
            .receivers
            .entry((v6, to))
            .or_insert_with(|| udp_socket(a, SocketAddr::new(a_ip, to)));
        let sender = self
            .senders
            .entry((v6, from))
            .or_insert_with(|| udp_socket(b, SocketAddr::new(b_ip, from)));
        let flow = FlowTuple {
            src: b_ip,
            dst: a_ip,
            src_port: from,
            dst_port: to,
            protocol: UDP,
        };
        let (action, reason) = match fate {
            Fate::Accept => ("ACCEPT", "-"),
            Fate::RejectAcl => ("REJECT", "acl"),
            Fate::Excluded => {
                self.excluded_sent += udp_exchange(sender, receiver, count, PAYLOAD).0;
                return;
            }
        };
        let wire = match fate {
            Fate::RejectAcl => udp_dropped(sender, receiver, count, PAYLOAD),
            _ => udp_exchange(sender, receiver, count, PAYLOAD),
        };
        let entry = self
            .expected
            .entry((flow, action.to_owned(), reason.to_owned()))
            .or_default();
        entry.0 += wire.0;
        entry.1 += wire.1;
    }

    /// The UDP flows of all runs' records (other traffic, such as IPv6 neighbour discovery, is
    /// left out) against what was sent; excluded packets against the log lines.
    fn check(&self) {
        let records: Vec<_> = self
            .outputs
            .iter()
            .flat_map(|output| parse_records_with_reason(output))
            .collect();
        let seen: VerdictTotals = verdict_totals(&records)
            .into_iter()
            .filter(|((flow, _, _), _)| flow.protocol == UDP)
            .collect();
        assert_eq!(seen, self.expected, "records of every run vs what was sent");
        assert_eq!(
            interval_total(&self.logs, "excluded_packets"),
            self.excluded_sent,
            "excluded packets reported vs sent"
        );
    }
}

fn write_file(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(format!(
        "/tmp/flowlog-restart-{name}-{}",
        std::process::id()
    ));
    fs::write(&path, text).expect("write");
    path
}

/// A policy whose ACL denies inbound UDP to `port` and allows the rest, with `extra` appended.
fn deny_udp_policy(name: &str, port: u16, extra: &str) -> PathBuf {
    write_file(
        &format!("{name}.toml"),
        &format!(
            r#"
mode = "enforce"
[acl]
default = "allow"
[[acl.rule]]
number = 100
direction = "ingress"
protocol = "udp"
cidr = "198.18.0.0/15"
ports = "{port}"
action = "deny"
{extra}
"#
        ),
    )
}

fn links_in(pin_dir: &str) -> Vec<String> {
    let mut links: Vec<String> = fs::read_dir(Path::new(pin_dir).join("v1/links"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    links.sort();
    links
}

/// 1. A policy that is no longer configured is not enforced: the restarted agent publishes "no
///    policy", and says so. IPv6 works again (the old security group dropped neighbour
///    solicitations).
#[test]
fn a_policy_no_longer_configured_is_gone_after_a_restart() {
    let mut host = Host::new(false);
    let pins = host.pin_dir("pins");
    let policy = deny_udp_policy(
        "case1",
        9997,
        r#"
[security_group]
[[security_group.ingress]]
protocol = "tcp"
ports = "22"
cidr = "192.0.2.0/24"
"#,
    );
    let agent = host.start(&["--pin-dir", &pins, "--policy", policy.to_str().unwrap()]);
    host.send(false, 6000, 9997, 5, Fate::RejectAcl);
    host.stop(agent);

    let mut agent = host.start(&["--pin-dir", &pins, "--on-exit", "detach"]);
    agent.wait_for_log(
        "no policy: every packet is accepted",
        1,
        Duration::from_secs(5),
    );
    host.send(false, 6000, 9997, 7, Fate::Accept);
    // Neighbour discovery from scratch: the old security group would drop the solicitation.
    for (ns, link) in [(&host.a, "a0"), (&host.b, "b0")] {
        ns.ip(&["-6", "neigh", "flush", "dev", link])
            .expect("flush");
    }
    host.send(true, 6000, 9997, 3, Fate::Accept);
    host.stop(agent);
    host.check();
}

/// 2. A new policy applies to connections an earlier policy admitted, even when the policy was
///    removed by a reload before (the generation is never published twice).
#[test]
fn a_new_policy_applies_to_connections_an_earlier_one_admitted() {
    let mut host = Host::new(false);
    let pins = host.pin_dir("pins");
    let allow_all = write_file(
        "allow.toml",
        "mode = \"enforce\"\n[acl]\ndefault = \"allow\"\n",
    );
    let config = |policy: Option<&Path>| {
        let policy = policy
            .map(|p| format!("[agent]\npolicy = \"{}\"\n", p.display()))
            .unwrap_or_default();
        format!(
            "{policy}\n[[flow-log]]\nid = \"fl-a\"\nscope = {{ interfaces = [\"a0\"] }}\ninterval = \"1s\"\nformat = \"{}\"\nsinks = [\"stdout\"]\n",
            FORMAT_WITH_REASON
        )
    };
    let config_file = write_file("case2.toml", &config(Some(&allow_all)));
    let mut agent = host.start(&[
        "--config",
        config_file.to_str().unwrap(),
        "--pin-dir",
        &pins,
    ]);
    // The old connection: its ACL verdict is cached under the allow-all policy's generation.
    host.send(false, 6000, 5000, 50, Fate::Accept);
    fs::write(&config_file, config(None)).expect("rewrite");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGHUP) };
    agent.wait_for_log("configuration reloaded", 1, Duration::from_secs(10));
    host.stop(agent);

    let deny = deny_udp_policy("case2-deny", 5000, "");
    let agent = host.start(&[
        "--pin-dir",
        &pins,
        "--policy",
        deny.to_str().unwrap(),
        "--on-exit",
        "detach",
    ]);
    host.send(false, 6000, 5000, 50, Fate::RejectAcl);
    host.send(false, 6001, 5000, 20, Fate::RejectAcl);
    host.stop(agent);
    host.check();
}

/// 3. A refused start changes nothing: the previous agent's programs keep their policy (none)
///    and exclusions, and on a fresh pin directory nothing is pinned.
#[test]
fn a_refused_start_leaves_the_datapath_as_it_was() {
    let mut host = Host::new(false);
    let pins = host.pin_dir("pins");
    let keep_args = ["--pin-dir", &pins, "--exclude", "198.18.0.0/24/udp:6100"];
    let agent = host.start(&keep_args);
    host.send(false, 6000, 7000, 4, Fate::Accept);
    host.send(false, 6000, 6100, 3, Fate::Excluded);
    host.stop(agent);

    let deny = deny_udp_policy("case3", 7000, "");
    // Refused while planning (a name that does not exist)...
    let said = host.refused(&[
        "--pin-dir",
        &pins,
        "--policy",
        deny.to_str().unwrap(),
        "--no-default-exclusions",
        "-i",
        "a0",
        "-i",
        "a0-typo",
    ]);
    assert!(said.contains("no such interface: a0-typo"), "{said}");
    // ...and while attaching: another tool's XDP program holds a0's XDP hook, after the policy
    // and exclusions were written, which are put back.
    let other = attach_other_xdp(&host.a, "a0");
    let said = host.refused(&[
        "--pin-dir",
        &pins,
        "--policy",
        deny.to_str().unwrap(),
        "--no-default-exclusions",
        "--hook",
        "xdp",
    ]);
    assert!(said.contains("start refused"), "{said}");
    // The previous agent's programs still decide: no policy, the same exclusions.
    host.send(false, 6000, 7000, 6, Fate::Accept);
    host.send(false, 6000, 6100, 2, Fate::Excluded);
    assert_eq!(links_in(&pins).len(), 2, "the kept links are untouched");

    let agent = host.start(&[&keep_args[..], &["--on-exit", "detach"]].concat());
    host.send(false, 6000, 7000, 5, Fate::Accept);
    host.stop(agent);
    host.check();

    // A fresh pin directory: a refused start pins nothing, so its --max-flows is not inherited.
    let fresh = host.pin_dir("fresh");
    host.refused(&["--pin-dir", &fresh, "--max-flows", "4096", "--hook", "xdp"]);
    assert!(
        !Path::new(&fresh).exists(),
        "the refused start left {fresh}"
    );
    drop(other);
    let mut agent = host.start(&["--pin-dir", &fresh, "--on-exit", "detach"]);
    agent.wait_for_log("max_flows=524288", 1, Duration::from_secs(5));
    host.stop(agent);
}

/// 4. A start that fails part-way (another tool's XDP program occupies `a1`'s XDP hook) detaches
///    what it attached and leaves the previous agent's pinned TC links counting.
#[test]
fn a_start_failing_part_way_rolls_back_and_keeps_the_previous_links() {
    let mut host = Host::new(true);
    let pins = host.pin_dir("pins");
    let tc_args = ["--pin-dir", &pins, "--hook", "tc", "-i", "a0", "-i", "a1"];
    let agent = host.start(&tc_args);
    host.send(false, 6000, 7000, 4, Fate::Accept);
    host.stop(agent);
    let kept = links_in(&pins);
    assert_eq!(kept.len(), 4, "{kept:?}");

    let other = attach_other_xdp(&host.a, "a1");
    let said = host.refused(&["--pin-dir", &pins, "--hook", "xdp", "-i", "a0", "-i", "a1"]);
    assert!(said.contains("interface a1"), "{said}");
    assert!(said.contains("start refused"), "{said}");
    drop(other);
    assert_eq!(
        links_in(&pins),
        kept,
        "the previous agent's links are untouched"
    );
    let xdp_on_a0 = host.a.ip(&["-d", "link", "show", "dev", "a0"]).expect("ip");
    assert!(
        !xdp_on_a0.contains("xdp"),
        "a0 kept an XDP program:\n{xdp_on_a0}"
    );
    // Ingress and egress of the kept links still count, exactly once.
    host.send(false, 6000, 7000, 6, Fate::Accept);

    let agent = host.start(&[&tc_args[..], &["--on-exit", "detach"]].concat());
    host.send(false, 6000, 7000, 3, Fate::Accept);
    host.stop(agent);
    host.check();
}

/// 5. Programs of another pin directory are found: a start with another `--pin-dir` (or none) is
///    refused, naming them, and `check` fails; `--take-over` replaces them.
#[test]
fn programs_of_another_pin_directory_are_found_and_taken_over_only_when_asked() {
    let mut host = Host::new(false);
    let (first, second) = (host.pin_dir("first"), host.pin_dir("second"));
    let deny = deny_udp_policy("case5", 9997, "");
    let agent = host.start(&["--pin-dir", &first, "--policy", deny.to_str().unwrap()]);
    host.send(false, 6000, 9997, 5, Fate::RejectAcl);
    host.stop(agent);

    for pinning in [vec!["--pin-dir", second.as_str()], vec!["--no-pin"]] {
        let said = host.refused(&pinning);
        assert!(
            said.contains("a0: TCX ingress program flowlog_tc_in"),
            "{said}"
        );
        assert!(said.contains("--take-over"), "{said}");
    }
    let checked = host.command("check", &host.args(&["--pin-dir", &second]));
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(!checked.status.success(), "{report}");
    assert!(
        report.contains("FAIL  interface a0: a0: TCX ingress program flowlog_tc_in"),
        "{report}"
    );
    // The first agent's programs still enforce its policy.
    host.send(false, 6000, 9997, 2, Fate::RejectAcl);

    let agent = host.start(&["--pin-dir", &second, "--take-over", "--on-exit", "detach"]);
    host.send(false, 6000, 9997, 7, Fate::Accept);
    let stopped = host.stop(agent);
    assert!(stopped.stderr.contains("took over"), "{}", stopped.stderr);
    // What the first agent's programs counted after it stopped stays in its maps: the test's
    // expectation covers what the runs wrote, so leave those out.
    let flow = FlowTuple {
        src: IpAddr::V4(B4),
        dst: IpAddr::V4(A4),
        src_port: 6000,
        dst_port: 9997,
        protocol: UDP,
    };
    host.expected
        .entry((flow, "REJECT".into(), "acl".into()))
        .and_modify(|count| {
            count.0 -= 2;
            count.1 -= 2 * (20 + 8 + PAYLOAD as u64);
        });
    host.check();
}

/// 6. `flowlog-agent detach` refuses while an agent holds the pin directory, and the agent goes
///    on counting.
#[test]
fn detach_refuses_while_an_agent_runs() {
    let mut host = Host::new(false);
    let pins = host.pin_dir("pins");
    let agent = host.start(&["--pin-dir", &pins, "--on-exit", "detach"]);
    host.send(false, 6000, 7000, 4, Fate::Accept);
    let output = host.command("detach", &["--pin-dir".into(), pins.clone()]);
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("a running flowlog-agent is using"), "{said}");
    assert_eq!(links_in(&pins).len(), 2, "detach removed nothing");
    host.send(false, 6000, 7000, 6, Fate::Accept);
    host.stop(agent);
    host.check();
}

/// 7. What the kept programs counted on an interface deleted while no agent ran is written
///    under the name it had.
#[test]
fn counts_on_an_interface_deleted_while_no_agent_ran_are_written() {
    let mut host = Host::new(true);
    let pins = host.pin_dir("pins");
    let glob = ["--pin-dir", &pins, "-i", "a*"];
    let agent = host.start(&glob);
    host.stop(agent);
    // Counted by the kept programs on a1, which then goes away.
    let a1 = udp_socket(&host.a, "198.18.1.1:7100".parse().unwrap());
    let b1 = udp_socket(&host.b, "198.18.1.2:6100".parse().unwrap());
    let wire = udp_exchange(&b1, &a1, 9, PAYLOAD);
    host.a.ip(&["link", "del", "a1"]).expect("delete a1");

    let mut agent = host.start(&[&glob[..], &["--on-exit", "detach"]].concat());
    agent.wait_for_log("deleted while no agent ran", 1, Duration::from_secs(5));
    let stopped = host.stop(agent);
    assert!(
        !stopped.stderr.contains("not written"),
        "{}",
        stopped.stderr
    );
    let records = parse_records_with_reason(&stopped.stdout);
    let on_a1: (u64, u64) = records
        .iter()
        .filter(|(r, _)| r.interface == "a1" && r.flow.is_some_and(|f| f.protocol == UDP))
        .fold((0, 0), |sum, (r, _)| {
            (sum.0 + r.packets.unwrap(), sum.1 + r.bytes.unwrap())
        });
    assert_eq!(on_a1, wire, "a1's packets and bytes, under its name");
}

/// Restarts through a sequence of configurations, with traffic during every run and between
/// runs (decided by the programs the last agent left): after every step what was delivered and
/// what all runs recorded match the configuration in force when each datagram was sent.
#[test]
fn restarts_with_changing_configurations_apply_each_exactly() {
    let mut host = Host::new(false);
    let (pins, other) = (host.pin_dir("pins"), host.pin_dir("other"));
    let p1 = deny_udp_policy("seq1", 7001, "");
    let p2 = deny_udp_policy("seq2", 7002, "");
    let (p1, p2) = (p1.to_str().unwrap(), p2.to_str().unwrap());
    let (x1, x2) = ("198.18.0.0/24/udp:6001", "198.18.0.0/24/udp:6002");
    use Fate::{Accept as A, Excluded as X, RejectAcl as R};
    // The arguments after `--pin-dir`, and the fate of UDP to 7001, 7002, 6001, 6002.
    let steps: Vec<(&str, Vec<&str>, [Fate; 4])> = vec![
        (&pins, vec!["--policy", p1, "--exclude", x1], [R, A, X, A]),
        (&pins, vec![], [A, A, A, A]),
        (&pins, vec!["--policy", p2, "--exclude", x2], [A, R, A, X]),
        (&pins, vec!["--policy", p1, "--hook", "xdp"], [R, A, A, A]),
        (
            &pins,
            vec!["--max-flows", "65536", "--exclude", x1],
            [A, A, X, A],
        ),
        (&other, vec!["--take-over", "--policy", p2], [A, R, A, A]),
    ];
    let mut previous: Option<[Fate; 4]> = None;
    let last = steps.len() - 1;
    for (i, (pin_dir, args, fates)) in steps.iter().enumerate() {
        if let Some(before) = previous {
            // No agent: the programs left behind decide with the previous configuration.
            host.round(&before, 2, 6500);
        }
        let on_exit = if i == last { "detach" } else { "keep" };
        let args = [&["--pin-dir", pin_dir][..], args, &["--on-exit", on_exit]].concat();
        let agent = host.start(&args);
        host.round(fates, 3 + i as u64, 6600);
        host.stop(agent);
        previous = Some(*fates);
        if i == 4 {
            // Leaving the pin directory: what its kept programs count until the next agent
            // takes them over stays in their maps.
            previous = None;
        }
        host.check();
    }
}

impl Host {
    /// One datagram burst to each of the four ports, from source port `from`.
    fn round(&mut self, fates: &[Fate; 4], count: u64, from: u16) {
        for (port, fate) in [7001, 7002, 6001, 6002].into_iter().zip(fates) {
            // Sources differ from the excluded ports, so only the destination decides.
            self.send(false, from, port, count, *fate);
        }
    }
}

/// The number of BPF filters under `a0`'s clsact qdisc, ingress and egress.
fn clsact_filters(host: &Host) -> (usize, usize) {
    let count = |direction: &str| {
        let output = host
            .a
            .exec("tc", &["filter", "show", "dev", "a0", direction])
            .expect("tc");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains(" bpf ") && line.contains(" handle "))
            .count()
    };
    (count("ingress"), count("egress"))
}

/// With clsact filters (kernels without TCX) the programs stay attached too: a killed agent's
/// filters and a stopped agent's are taken over in place by the next agent of the same pin
/// directory (one filter per direction, never two), and every count is written once.
#[test]
fn clsact_filters_are_taken_over_in_place_after_a_kill_and_a_stop() {
    let mut host = Host::new(false);
    let pins = host.pin_dir("pins");
    let args = ["--pin-dir", &pins, "--tc-mode", "clsact"];
    let mut agent = host.start(&args);
    host.send(false, 6000, 7000, 4, Fate::Accept);
    agent.wait_for_log("interval written", 1, Duration::from_secs(10));
    // Between two drains, once the sink has written the interval (a killed agent loses what
    // it drained but had not written yet).
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGKILL) };
    let killed = agent.stop();
    host.outputs.push(killed.stdout);
    host.logs.push(killed.stderr);
    assert_eq!(
        clsact_filters(&host),
        (1, 1),
        "the killed agent's filters stay"
    );
    host.send(false, 6000, 7000, 5, Fate::Accept);

    let agent = host.start(&args);
    assert_eq!(
        clsact_filters(&host),
        (1, 1),
        "taken over in place, not stacked"
    );
    host.send(false, 6000, 7000, 6, Fate::Accept);
    let stopped = host.stop(agent);
    assert!(
        stopped.stderr.contains("programs stay attached"),
        "{}",
        stopped.stderr
    );
    assert_eq!(
        clsact_filters(&host),
        (1, 1),
        "a stopped agent's filters stay"
    );
    host.send(false, 6000, 7000, 7, Fate::Accept);

    let agent = host.start(&[&args[..], &["--on-exit", "detach"]].concat());
    host.send(false, 6000, 7000, 8, Fate::Accept);
    host.stop(agent);
    assert_eq!(clsact_filters(&host), (0, 0), "detached");
    host.check();
}
