//! Figure 6: what the policy engine costs with a 1,000-rule policy (and a 10,000-rule one for
//! the first packet).
//!
//! - per packet of a known connection (the fast path), against no policy: BPF_PROG_TEST_RUN
//!   of the real TC and XDP programs on one pinned CPU, two datapaths (one without a policy,
//!   one with) alternating round by round as in the per-packet figure;
//! - a flow's first packet: BPF_PROG_TEST_RUN with `repeat` = 1 on many new flows (a new source
//!   port each, so each first packet misses the connection table and looks up the rule index),
//!   with 1,000 and with 10,000 rules, beside
//!   the same flows' second packets, the same packets without a policy, and a re-evaluation after
//!   a policy swap (the entries stay, their cached verdicts go stale);
//! - iperf3 TCP throughput with the agent running the policy, against no agent;
//! - the attached TC programs' own cost on that traffic (the kernel's run-time statistics),
//!   with the policy against without.
//!
//! The policy: ACL default deny, 999 rules the traffic does not match, then the rule that allows
//! it, and a security group that allows it. The 999 are the rule index's dearest case: every
//! other one is for the traffic's network and another port, the rest for the traffic's port and
//! other networks, so the rules the remote address allows and those its port allows are each
//! half of the table and meet only at the last rule (the index walks both lists whole).

use std::{fs, net::Ipv4Addr};

use ::tests::frames::{CraftedFrame, FrameBuilder};
use aya::Ebpf;
use flowlog_agent::{
    datapath::{Datapath, DatapathConfig, Hook, programs},
    policy::{CompiledPolicy, Policy},
};
use flowlog_common::{flow::Verdict, maps::DEFAULT_MAX_FLOWS};

use crate::{
    per_packet::{self, Runnable, Settings},
    report::{Goal, Outcome, Report},
    support::{Context, CpuPin, Result, TempDir, median},
    throughput::{self, AgentVariant, CLIENT_ADDR, IPERF_PORT},
};

/// ACL rules in every benchmark policy.
const ACL_RULES: usize = 1_000;
/// ACL rules of the larger policy of the first-packet figure.
const ACL_RULES_LARGE: usize = 10_000;
const GOAL_FIRST_PACKET_LARGE_NS: f64 = 3_000.0;
const GOAL_STEADY_RATIO: f64 = 1.10;
const GOAL_FIRST_PACKET_NS: f64 = 2_000.0;

/// The kernel figures' traffic: UDP from 198.18.0.1 to local port 53 of 198.18.0.2, inbound.
const REMOTE: [u8; 4] = [198, 18, 0, 1];
const LOCAL: [u8; 4] = [198, 18, 0, 2];
const ALLOWED_PORT: u16 = 53;
/// A port no rule allows: the ACL's default (deny) decides it after all 1,000 rules.
const DENIED_PORT: u16 = 54;
const STEADY_SOURCE_PORT: u16 = 40_000;

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    let dir = TempDir::new("policy")?;
    {
        // Pinned only while test runs happen: iperf3 and the agent must not inherit one CPU.
        let pin = CpuPin::highest_allowed()?;
        eprintln!(
            "policy: BPF_PROG_TEST_RUN on CPU {}, {ACL_RULES} ACL rules + 1 security-group rule \
             vs no policy",
            pin.cpu
        );
        let mut bench = KernelBench::load(&dir)?;
        bench.check_rules_are_live()?;
        bench.steady_state(quick, report)?;
        bench.first_packet(quick, report)?;
        bench.check_counted()?;
    }
    throughput(&dir, quick, report)
}

/// The steady-state goal on live traffic: the attached TC programs' own cost with the policy
/// against without (the first packets of iperf3's two connections aside, every packet is one of
/// a known connection).
fn live_cost(policy_path: &str, quick: bool, report: &mut Report) -> Result<()> {
    throughput::live_tc_cost(
        quick,
        report,
        "policy live TC cost, 1,000 rules vs none",
        GOAL_STEADY_RATIO,
        &["--policy", policy_path],
    )
}

/// One ACL or security-group rule as the policy file writes it.
struct RuleSpec {
    direction: &'static str,
    protocol: &'static str,
    cidr: String,
    ports: Option<u16>,
}

/// A policy of `acl_rules` ACL rules: deny rules like the first of `acl_allows` but each for
/// either a network in 10.0.0.0/8 or another port (alternately), then `acl_allows`; the
/// security group allows `sg_ingress` in and every connection out.
fn policy_toml(acl_rules: usize, acl_allows: &[RuleSpec], sg_ingress: &[RuleSpec]) -> String {
    let mut toml = String::from("mode = \"enforce\"\n\n[acl]\ndefault = \"deny\"\n");
    let like = &acl_allows[0];
    let fillers = acl_rules - acl_allows.len();
    let rule = |toml: &mut String,
                number: usize,
                spec: &RuleSpec,
                cidr: &str,
                ports: Option<u16>,
                action: &str| {
        toml.push_str(&format!(
            "\n[[acl.rule]]\nnumber = {number}\ndirection = \"{}\"\nprotocol = \"{}\"\n\
             cidr = \"{cidr}\"\naction = \"{action}\"\n",
            spec.direction, spec.protocol
        ));
        if let Some(port) = ports {
            toml.push_str(&format!("ports = \"{port}\"\n"));
        }
    };
    for i in 0..fillers {
        if i % 2 == 0 {
            let cidr = format!("10.{}.{}.0/24", i / 256, i % 256);
            rule(&mut toml, i + 1, like, &cidr, like.ports, "deny");
        } else {
            // Ports 10,000 and up: no benchmark traffic goes to them.
            let port = 10_000 + (i % 50_000) as u16;
            rule(&mut toml, i + 1, like, &like.cidr, Some(port), "deny");
        }
    }
    for (i, spec) in acl_allows.iter().enumerate() {
        rule(
            &mut toml,
            fillers + i + 1,
            spec,
            &spec.cidr,
            spec.ports,
            "allow",
        );
    }
    toml.push_str("\n[security_group]\n");
    for spec in sg_ingress {
        toml.push_str(&format!(
            "\n[[security_group.ingress]]\nprotocol = \"{}\"\ncidr = \"{}\"\n",
            spec.protocol, spec.cidr
        ));
        if let Some(port) = spec.ports {
            toml.push_str(&format!("ports = \"{port}\"\n"));
        }
    }
    toml
}

/// The kernel figures' policy of `acl_rules` ACL rules: allows UDP from [`REMOTE`]'s /15 to
/// [`ALLOWED_PORT`].
fn kernel_policy(acl_rules: usize) -> String {
    let allow = || RuleSpec {
        direction: "ingress",
        protocol: "udp",
        cidr: "198.18.0.0/15".into(),
        ports: Some(ALLOWED_PORT),
    };
    policy_toml(acl_rules, &[allow()], &[allow()])
}

/// 64 bytes: Ethernet, IPv4, UDP and 22 bytes of payload, from [`REMOTE`] to [`LOCAL`].
fn udp_frame(source_port: u16, destination_port: u16) -> CraftedFrame {
    FrameBuilder::ipv4(REMOTE, LOCAL)
        .udp(source_port, destination_port)
        .payload(22)
        .build()
}

/// The ingress hooks measured.
const HOOKS: [Hook; 2] = [Hook::Tc, Hook::Xdp];

fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Tc => "TC",
        Hook::Xdp => "XDP",
    }
}

/// Both programs see the test run's frames inbound on the loopback, so they share connection
/// entries: each hook's new flows get their own source ports.
fn first_source_port(hook: Hook) -> u16 {
    match hook {
        Hook::Tc => 10_000,
        Hook::Xdp => 20_000,
    }
}

fn runnable(hook: Hook, datapath: &mut Datapath) -> Result<Runnable<'_>> {
    let ebpf: &Ebpf = datapath.ebpf_mut();
    Ok(match hook {
        Hook::Tc => Runnable::Tc(per_packet::program(ebpf, programs::TC_INGRESS)?),
        Hook::Xdp => Runnable::Xdp(per_packet::program(ebpf, programs::XDP_INGRESS)?),
    })
}

/// Datapaths without a policy, with the 1,000-rule policy and with a 1-rule one, and the
/// packets each has accepted (and rejected) so far, to check against what they counted.
struct KernelBench {
    plain: Datapath,
    with_policy: Datapath,
    /// Shows which part of the cost depends on the number of rules.
    one_rule: Datapath,
    /// The 1,000-rule policy, published again to invalidate cached verdicts.
    compiled: CompiledPolicy,
    /// With the 10,000-rule policy, for the first packet.
    large: Datapath,
    large_compiled: CompiledPolicy,
    large_accepted: u64,
    plain_accepted: u64,
    accepted: u64,
    one_rule_accepted: u64,
    rejected: u64,
}

/// A datapath with the kernel figures' policy of `acl_rules` ACL rules published.
fn load_with_policy(dir: &TempDir, acl_rules: usize) -> Result<(Datapath, CompiledPolicy)> {
    let path = dir.path().join(format!("kernel-policy-{acl_rules}.toml"));
    fs::write(&path, kernel_policy(acl_rules)).context(format!("writing {}", path.display()))?;
    let policy = Policy::load(&path).context("the benchmark policy")?;
    let mut datapath = Datapath::load(DatapathConfig {
        max_flows: DEFAULT_MAX_FLOWS,
    })
    .context("loading the datapath")?;
    let ns_per_jiffy = datapath
        .ns_per_jiffy()
        .context("measuring the kernel tick")?;
    let compiled = policy.compile(ns_per_jiffy);
    if compiled.acl_rules.len() != acl_rules || compiled.config.acl_in_count != acl_rules as u32 {
        return Err(format!(
            "the benchmark policy compiled to {} ACL rules ({} inbound), not {acl_rules}",
            compiled.acl_rules.len(),
            compiled.config.acl_in_count
        ));
    }
    datapath
        .set_policy(Some(&compiled))
        .context("publishing the policy")?;
    Ok((datapath, compiled))
}

impl KernelBench {
    fn load(dir: &TempDir) -> Result<Self> {
        let config = DatapathConfig {
            max_flows: DEFAULT_MAX_FLOWS,
        };
        let plain = Datapath::load(config).context("loading the datapath without a policy")?;
        let (with_policy, compiled) = load_with_policy(dir, ACL_RULES)?;
        let (one_rule, _) = load_with_policy(dir, 1)?;
        let (large, large_compiled) = load_with_policy(dir, ACL_RULES_LARGE)?;
        Ok(Self {
            plain,
            with_policy,
            one_rule,
            compiled,
            large,
            large_compiled,
            large_accepted: 0,
            plain_accepted: 0,
            accepted: 0,
            one_rule_accepted: 0,
            rejected: 0,
        })
    }

    /// A packet to a port no rule allows is dropped: the policy is in force, and the allowed
    /// packets below are allowed by its last rule, not by a default.
    fn check_rules_are_live(&mut self) -> Result<()> {
        let frame = udp_frame(STEADY_SOURCE_PORT, DENIED_PORT);
        for hook in HOOKS {
            let program = runnable(hook, &mut self.with_policy)?;
            let result = program.run(&frame.bytes, 1).context("BPF_PROG_TEST_RUN")?;
            if result.return_value != program.drop_verdict() {
                return Err(format!(
                    "{}: a packet to port {DENIED_PORT} returned {:#x}, not the drop verdict: \
                     the policy is not in force",
                    hook_name(hook),
                    result.return_value
                ));
            }
            self.rejected += 1;
        }
        Ok(())
    }

    fn steady_state(&mut self, quick: bool, report: &mut Report) -> Result<()> {
        let settings = if quick {
            Settings {
                rounds: 3,
                repeat: 200_000,
            }
        } else {
            Settings {
                rounds: 9,
                repeat: 1_000_000,
            }
        };
        let frame = udp_frame(STEADY_SOURCE_PORT, ALLOWED_PORT);
        for hook in HOOKS {
            let with = runnable(hook, &mut self.with_policy)?;
            let without = runnable(hook, &mut self.plain)?;
            let (with_cost, without_cost) =
                per_packet::compare(with, without, &frame.bytes, &settings)?;
            let runs = (settings.rounds as u64 + 1) * u64::from(settings.repeat);
            self.accepted += runs;
            self.plain_accepted += runs;
            let ratio = with_cost.kernel_ns / without_cost.kernel_ns;
            // The same comparison with a 1-rule policy: a cached verdict should not care how
            // many rules produced it.
            let one_rule = runnable(hook, &mut self.one_rule)?;
            let without = runnable(hook, &mut self.plain)?;
            let (one_rule_cost, without_again) =
                per_packet::compare(one_rule, without, &frame.bytes, &settings)?;
            self.one_rule_accepted += runs;
            self.plain_accepted += runs;
            report.record(Outcome {
                figure: format!("policy per-packet {}, 1,000 rules vs none", hook_name(hook)),
                measured: format!(
                    "{:.0} ns vs {:.0} ns without a policy = {ratio:.3}",
                    with_cost.kernel_ns, without_cost.kernel_ns
                ),
                value: ratio,
                goal: Goal::at_most(GOAL_STEADY_RATIO, &format!("{GOAL_STEADY_RATIO:.2}")),
                details: vec![
                    format!(
                        "a 64-byte IPv4/UDP packet of a known connection (its flow entry stamped: \
                         no connection-table lookup), median of {} rounds x {} repeats, \
                         alternating with a datapath without a policy",
                        settings.rounds, settings.repeat
                    ),
                    format!(
                        "thread CPU time per packet: {:.1} ns vs {:.1} ns = {:.3}",
                        with_cost.cpu_ns,
                        without_cost.cpu_ns,
                        with_cost.cpu_ns / without_cost.cpu_ns
                    ),
                    format!(
                        "with a 1-rule policy instead (next {} rounds): {:.0} ns vs {:.0} ns = \
                         {:.3}; the 1,000-rule policy adds {:.0} ns to a packet, a 1-rule one \
                         {:.0} ns",
                        settings.rounds,
                        one_rule_cost.kernel_ns,
                        without_again.kernel_ns,
                        one_rule_cost.kernel_ns / without_again.kernel_ns,
                        with_cost.kernel_ns - without_cost.kernel_ns,
                        one_rule_cost.kernel_ns - without_again.kernel_ns
                    ),
                ],
            });
        }
        Ok(())
    }

    fn first_packet(&mut self, quick: bool, report: &mut Report) -> Result<()> {
        let flows: u16 = if quick { 300 } else { 3_000 };
        for hook in HOOKS {
            for large in [false, true] {
                let times = self.first_packets(hook, large, flows)?;
                let (rules, goal, goal_text) = if large {
                    (ACL_RULES_LARGE, GOAL_FIRST_PACKET_LARGE_NS, "3 us")
                } else {
                    (ACL_RULES, GOAL_FIRST_PACKET_NS, "2 us")
                };
                times.report(hook, flows, rules, Goal::at_most(goal, goal_text), report);
            }
        }
        Ok(())
    }

    /// The single-packet times of `flows` new flows through `hook`, with the 1,000-rule
    /// policy or the 10,000-rule one (`large`), and without a policy.
    fn first_packets(&mut self, hook: Hook, large: bool, flows: u16) -> Result<FirstPacketTimes> {
        let mut times = FirstPacketTimes::default();
        // The datapath without a policy sees the flows of both sizes: each its own ports.
        let first_port = first_source_port(hook) + if large { 5_000 } else { 0 };
        let frames: Vec<CraftedFrame> = (0..flows)
            .map(|i| udp_frame(first_port + i, ALLOWED_PORT))
            .collect();
        for (i, frame) in frames.iter().enumerate() {
            // Which datapath sees the flow first alternates, so neither always gets the warmer
            // caches.
            let order = if i % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for with_policy in order {
                let (datapath, first, second) = if with_policy {
                    let datapath = if large {
                        &mut self.large
                    } else {
                        &mut self.with_policy
                    };
                    (datapath, &mut times.first, &mut times.second)
                } else {
                    (
                        &mut self.plain,
                        &mut times.plain_first,
                        &mut times.plain_second,
                    )
                };
                let program = runnable(hook, datapath)?;
                first.push(run_once(program, frame)?);
                second.push(run_once(program, frame)?);
            }
        }
        self.plain_accepted += 2 * u64::from(flows);

        // A new generation: every cached verdict is stale, the entries stay.
        let (datapath, compiled, accepted) = if large {
            (
                &mut self.large,
                &self.large_compiled,
                &mut self.large_accepted,
            )
        } else {
            (&mut self.with_policy, &self.compiled, &mut self.accepted)
        };
        *accepted += 2 * u64::from(flows);
        datapath
            .set_policy(Some(compiled))
            .context("publishing the policy again")?;
        for frame in &frames {
            let program = runnable(hook, datapath)?;
            times.after_swap.push(run_once(program, frame)?);
            times.after_swap_second.push(run_once(program, frame)?);
        }
        *accepted += 2 * u64::from(flows);
        Ok(times)
    }

    /// Every packet the programs passed or dropped must have been counted so, in one flow per
    /// source port: otherwise they took a cheaper path and the figures flatter them.
    fn check_counted(&mut self) -> Result<()> {
        for (datapath, accepted, rejected, name) in [
            (
                &mut self.with_policy,
                self.accepted,
                self.rejected,
                "with the 1,000-rule policy",
            ),
            (
                &mut self.one_rule,
                self.one_rule_accepted,
                0,
                "with the 1-rule policy",
            ),
            (
                &mut self.large,
                self.large_accepted,
                0,
                "with the 10,000-rule policy",
            ),
            (&mut self.plain, self.plain_accepted, 0, "without a policy"),
        ] {
            let drained = datapath
                .drain_interval()
                .context("draining the flows the programs counted")?;
            let (mut counted_accepted, mut counted_rejected) = (0, 0);
            for (key, counters) in &drained.flows {
                if key.verdict == Verdict::Accept as u8 {
                    counted_accepted += counters.packets;
                } else {
                    counted_rejected += counters.packets;
                }
            }
            if (counted_accepted, counted_rejected) != (accepted, rejected) {
                return Err(format!(
                    "the datapath {name} counted {counted_accepted} accepted and \
                     {counted_rejected} rejected packets, expected {accepted} and {rejected}"
                ));
            }
        }
        Ok(())
    }
}

/// One packet through `program`, which must pass it; the kernel's time for it in nanoseconds
/// (BPF_PROG_TEST_RUN's own clock around the program, so it includes one clock read).
fn run_once(program: Runnable<'_>, frame: &CraftedFrame) -> Result<f64> {
    let result = program.run(&frame.bytes, 1).context("BPF_PROG_TEST_RUN")?;
    if result.return_value != program.pass_verdict() {
        return Err(format!(
            "a packet of an allowed flow returned {:#x}, not the pass verdict {:#x}",
            result.return_value,
            program.pass_verdict()
        ));
    }
    Ok(result.duration.as_nanos() as f64)
}

/// Single-packet times of one hook's flows, in nanoseconds.
#[derive(Default)]
struct FirstPacketTimes {
    /// With the policy: a new flow's first packet (connection-table miss, rule lookups, new
    /// connection and flow entries) and its second (cached verdict).
    first: Vec<f64>,
    second: Vec<f64>,
    /// The same packets on the datapath without a policy (the first creates the flow entry).
    plain_first: Vec<f64>,
    plain_second: Vec<f64>,
    /// The same flows after the policy was published again: the first packet re-evaluates the
    /// rules (no new entry), the second is cached again.
    after_swap: Vec<f64>,
    after_swap_second: Vec<f64>,
}

impl FirstPacketTimes {
    fn report(&self, hook: Hook, flows: u16, rules: usize, goal: Goal, report: &mut Report) {
        let first = median(&self.first);
        let second = median(&self.second);
        let plain_first = median(&self.plain_first);
        let plain_second = median(&self.plain_second);
        let after_swap = median(&self.after_swap);
        let after_swap_second = median(&self.after_swap_second);
        let rescan = after_swap - after_swap_second;
        report.record(Outcome {
            figure: format!(
                "policy first packet {}, {} rules",
                hook_name(hook),
                thousands(rules)
            ),
            measured: format!(
                "{first:.0} ns (p90 {:.0}); {:.0} ns more than the flow's second packet",
                percentile(&self.first, 0.9),
                first - second
            ),
            value: first,
            goal,
            details: vec![
                format!(
                    "median over {flows} new flows (one source port each) of one \
                     BPF_PROG_TEST_RUN with repeat=1: the first packet misses the connection \
                     table, looks up {} ACL rules and 1 security-group rule in the rule index \
                     (the ACL's dearest case: two lists of half the rules each, meeting at the \
                     last), creates the connection and flow entries; every time includes the \
                     test run's clock read, as does the second packet's {second:.0} ns",
                    thousands(rules)
                ),
                format!(
                    "without a policy the same packets take {plain_first:.0} ns (first: new \
                     flow entry) and {plain_second:.0} ns: the policy adds {:.0} ns to a first \
                     packet and {:.0} ns to a later one",
                    first - plain_first,
                    second - plain_second
                ),
                format!(
                    "after publishing the policy again (new generation, entries kept) the next \
                     packet re-evaluates the rules in {after_swap:.0} ns vs {after_swap_second:.0} \
                     ns cached: {rescan:.0} ns for the rule lookups"
                ),
            ],
        });
    }
}

/// `10000` as `10,000`.
fn thousands(n: usize) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

/// The value below which a fraction `q` of `values` lie (nearest rank).
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// iperf3 with the agent enforcing a 1,000-rule policy that allows the benchmark's connections,
/// against no agent.
fn throughput(dir: &TempDir, quick: bool, report: &mut Report) -> Result<()> {
    let client = format!("{}/32", Ipv4Addr::from(CLIENT_ADDR));
    let inbound = || RuleSpec {
        direction: "ingress",
        protocol: "tcp",
        cidr: client.clone(),
        ports: Some(IPERF_PORT),
    };
    let outbound = RuleSpec {
        direction: "egress",
        protocol: "tcp",
        cidr: client.clone(),
        ports: None,
    };
    let path = dir.path().join("iperf-policy.toml");
    fs::write(
        &path,
        policy_toml(ACL_RULES, &[inbound(), outbound], &[inbound()]),
    )
    .context(format!("writing {}", path.display()))?;
    Policy::load(&path).context("the throughput policy")?;
    let path = path.to_str().context("the policy's path is not UTF-8")?;
    throughput::compare_with_agent(
        quick,
        report,
        &AgentVariant {
            figure_suffix: " with a 1,000-rule policy",
            extra_args: &["--policy", path],
            expect_log: Some("policy in force"),
            details: vec![format!(
                "policy: ACL default deny, {} inbound deny rules for other networks or ports, then allow TCP \
                 from {client} to port {IPERF_PORT} in and to {client} out; security group \
                 allows TCP from {client} to port {IPERF_PORT}",
                ACL_RULES - 2
            )],
        },
    )?;
    live_cost(path, quick, report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_policy_checks_and_has_its_rules() {
        let path = std::env::temp_dir().join(format!("flowlog-bench-{}.toml", std::process::id()));
        fs::write(&path, kernel_policy(ACL_RULES)).unwrap();
        let policy = Policy::load(&path);
        let _ = fs::remove_file(&path);
        let compiled = policy.unwrap().compile(4_000_000);
        assert_eq!(compiled.acl_rules.len(), ACL_RULES);
        assert_eq!(compiled.config.acl_in_count, ACL_RULES as u32);
        assert_eq!(compiled.sg_rules.len(), 1);
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.9), 9.0);
        assert_eq!(percentile(&values, 0.5), 5.0);
        assert_eq!(percentile(&values, 1.0), 10.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
