//! Figure 2: TCP throughput across a veth pair between two namespaces, with the agent attached
//! (TC ingress and egress of the server's veth) and without, alternating run by run.

use std::{
    fs,
    io::Read,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use ::tests::netns::{NetNs, in_netns};

use crate::{
    agent::{self, Agent},
    report::{Goal, Outcome, Report},
    support::{Context, Result, TempDir, VethEnd, median, si, veth_topology},
};

const GOAL_RATIO: f64 = 0.97;
const CLIENT_IF: &str = "fbtc0";
const SERVER_IF: &str = "fbts0";
pub const CLIENT_ADDR: [u8; 4] = [198, 18, 1, 1];
const SERVER_ADDR: [u8; 4] = [198, 18, 1, 2];
pub const IPERF_PORT: u16 = 5201;
/// Seconds iperf3 runs before it starts counting (TCP slow start, first-second noise).
const OMIT_SECONDS: u64 = 1;

struct Settings {
    pairs: usize,
    seconds: u64,
}

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    compare_with_agent(quick, report, &AgentVariant::default())
}

/// How the agent of a throughput comparison runs, beyond counting on the server's veth.
#[derive(Default)]
pub struct AgentVariant<'a> {
    /// Added to the figure's name (e.g. ` with a 1,000-rule policy`).
    pub figure_suffix: &'a str,
    /// Further `flowlog-agent run` arguments.
    pub extra_args: &'a [&'a str],
    /// A line the agent must have logged once attached (proof the variant is in force).
    pub expect_log: Option<&'a str>,
    /// Further facts printed under the figure.
    pub details: Vec<String>,
}

/// iperf3 runs with the agent (as `variant` says) and without, alternating, against the goal.
pub fn compare_with_agent(
    quick: bool,
    report: &mut Report,
    variant: &AgentVariant<'_>,
) -> Result<()> {
    let settings = if quick {
        Settings {
            pairs: 2,
            seconds: 2,
        }
    } else {
        Settings {
            pairs: 5,
            seconds: 3,
        }
    };
    // Fail before building a topology if there is no agent to run.
    agent::binary()?;
    eprintln!(
        "throughput: iperf3 TCP over a veth pair, {} pairs of {} s runs (+{OMIT_SECONDS} s \
         omitted), with and without the agent, alternating",
        settings.pairs, settings.seconds
    );
    let (client, server) = client_server()?;
    let sinks = TempDir::new("throughput")?;
    let sink = format!("dir:{}", sinks.path().display());
    let mut agent_args = server_agent_args(&sink);
    agent_args.extend_from_slice(variant.extra_args);

    let mut iperf_server = IperfServer::start(&server)?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for pair in 0..settings.pairs {
        // Which variant goes first alternates, so a drift in the machine's load favours neither.
        let agent_first = pair % 2 == 1;
        for with_agent in [agent_first, !agent_first] {
            let bits_per_second = if with_agent {
                let mut agent = Agent::start(&server, &agent_args)?;
                if let Some(expected) = variant.expect_log {
                    agent.wait_for(|line| line.contains(expected), Duration::from_secs(5))?;
                }
                let measured = run_client(&client, settings.seconds);
                agent.stop().context("stopping the agent")?;
                measured?
            } else {
                run_client(&client, settings.seconds)?
            };
            let gbits = bits_per_second / 1e9;
            eprintln!(
                "throughput: pair {}/{}: {} agent: {gbits:.2} Gbit/s",
                pair + 1,
                settings.pairs,
                if with_agent { "with" } else { "without" }
            );
            if with_agent {
                with.push(gbits);
            } else {
                without.push(gbits);
            }
            iperf_server.check_running()?;
        }
    }
    let counted = check_counted(&sinks, settings.pairs)?;
    let received_skbs = received_skbs(&server, SERVER_IF)?;
    // Each run lasts its seconds plus the omitted ones (and a connection set-up, not counted).
    let run_seconds = (settings.pairs as u64 * (settings.seconds + OMIT_SECONDS)) as f64;
    let (with_median, without_median) = (median(&with), median(&without));
    let ratio = with_median / without_median;
    // Each pair's two runs are adjacent in time: their ratio is less exposed to load drift.
    let pair_ratios: Vec<f64> = with.iter().zip(&without).map(|(w, wo)| w / wo).collect();
    report.record(Outcome {
        figure: format!("throughput TCP{}", variant.figure_suffix),
        measured: format!(
            "{with_median:.2} Gbit/s with agent vs {without_median:.2} without = {ratio:.3}"
        ),
        value: ratio,
        goal: Goal::at_least(GOAL_RATIO, &format!("{GOAL_RATIO}")),
        details: [
            format!(
                "median of {} runs each of {} s; with: {}; without: {} (Gbit/s)",
                settings.pairs,
                settings.seconds,
                list(&with),
                list(&without)
            ),
            format!(
                "ratio within each pair: {}; median {:.3}; the agent wrote {} OK records of \
                 port {IPERF_PORT}",
                list(&pair_ratios),
                median(&pair_ratios),
                counted.records
            ),
            format!(
                "the agent counted {} packets in and {} out, about {} and {} per second of \
                 iperf3, GSO super-packets counted as their segments; {SERVER_IF} received {} \
                 socket buffers over all {} runs, about {} per second: the ingress program \
                 runs once per socket buffer",
                counted.packets_in,
                counted.packets_out,
                si(counted.packets_in as f64 / run_seconds),
                si(counted.packets_out as f64 / run_seconds),
                received_skbs,
                2 * settings.pairs,
                si(received_skbs as f64 / (2.0 * run_seconds))
            ),
        ]
        .into_iter()
        .chain(variant.details.iter().cloned())
        .collect(),
    });
    Ok(())
}

/// The agent's arguments for counting on the server's veth (TC, one 60 s interval) into `sink`.
fn server_agent_args(sink: &str) -> Vec<&str> {
    vec![
        "--interface",
        SERVER_IF,
        "--hook",
        "tc",
        "--interval",
        "60s",
        "--sink",
        sink,
    ]
}

/// The client's and the server's namespaces, joined by the figure's veth pair.
fn client_server() -> Result<(NetNs, NetNs)> {
    veth_topology(
        VethEnd {
            ifname: CLIENT_IF,
            addresses: &[CLIENT_ADDR],
        },
        VethEnd {
            ifname: SERVER_IF,
            addresses: &[SERVER_ADDR],
        },
    )
}

/// What the agent counted of the iperf3 connections on the server's veth.
struct Counted {
    records: usize,
    /// Packets to the server (client data) and from it (mostly ACKs).
    packets_in: u64,
    packets_out: u64,
}

/// The agent must really have counted the iperf3 connections (ingress and egress, every run),
/// or "with agent" measured nothing.
fn check_counted(sinks: &TempDir, runs: usize) -> Result<Counted> {
    let path = sinks.path().join(format!("{SERVER_IF}-all.log"));
    let text = fs::read_to_string(&path).context(format!("reading {}", path.display()))?;
    let port = IPERF_PORT.to_string();
    let server = std::net::Ipv4Addr::from(SERVER_ADDR).to_string();
    let mut counted = Counted {
        records: 0,
        packets_in: 0,
        packets_out: 0,
    };
    for line in text.lines() {
        // Default format: fields 3 and 4 are the addresses, 5 and 6 the ports, 8 the packets,
        // 13 the log status.
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() != 14 || !(fields[5] == port || fields[6] == port) || fields[13] != "OK" {
            continue;
        }
        counted.records += 1;
        let packets: u64 = fields[8]
            .parse()
            .context(format!("packets field of {line:?}"))?;
        if fields[3] == server {
            counted.packets_out += packets;
        } else {
            counted.packets_in += packets;
        }
    }
    if counted.records < 2 * runs {
        return Err(format!(
            "the agent wrote {} records of port {port} in {}, expected at least {} \
             (both directions of every run)",
            counted.records,
            path.display(),
            2 * runs
        ));
    }
    Ok(counted)
}

/// Socket buffers (a GSO super-packet is one) received by `ifname` in `ns` so far, from
/// `/proc/thread-self/net/dev` (the calling thread's namespace).
fn received_skbs(ns: &NetNs, ifname: &str) -> Result<u64> {
    let table = in_netns(ns, || fs::read_to_string("/proc/thread-self/net/dev"))
        .context("entering the server namespace")?
        .context("reading the interface statistics")?;
    // "  fbts0: 3858416691   63131 0 0 ...": bytes, then packets received.
    table
        .lines()
        .find_map(|line| {
            let (name, counters) = line.split_once(':')?;
            (name.trim() == ifname).then(|| counters.split_whitespace().nth(1))?
        })
        .and_then(|packets| packets.parse().ok())
        .context(format!("no receive counters of {ifname} in /proc/net/dev"))
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `iperf3 -s` in the server namespace for the whole figure.
struct IperfServer {
    child: Child,
}

impl IperfServer {
    fn start(ns: &NetNs) -> Result<Self> {
        let address = std::net::Ipv4Addr::from(SERVER_ADDR).to_string();
        let child = ns
            .command("iperf3")
            .args(["-s", "-B", &address, "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s (is iperf3 installed?)")?;
        let mut server = Self { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(ns, IPERF_PORT)? {
            server.check_running()?;
            if Instant::now() > deadline {
                return Err("iperf3 -s did not listen within 10 s".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait().context("waiting for iperf3 -s")? {
            None => Ok(()),
            Some(status) => Err(format!(
                "iperf3 -s exited: {status} (is iperf3 installed? `cargo xtask bench` installs it)"
            )),
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a TCP socket listens on `port` in `ns` (`/proc/thread-self/net/tcp` shows the
/// calling thread's namespace).
fn listening(ns: &NetNs, port: u16) -> Result<bool> {
    let table = in_netns(ns, || fs::read_to_string("/proc/thread-self/net/tcp"))
        .context("entering the server namespace")?
        .context("reading the TCP socket table")?;
    let local = format!(":{port:04X}");
    // "  0: 0201A8C6:1451 00000000:0000 0A ...": local address, remote address, state (0A =
    // LISTEN).
    Ok(table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
    }))
}

/// Runs one iperf3 client and returns the receiver's bits per second.
fn run_client(ns: &NetNs, seconds: u64) -> Result<f64> {
    let server = std::net::Ipv4Addr::from(SERVER_ADDR).to_string();
    let mut child = ns
        .command("iperf3")
        .args([
            "-c",
            &server,
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &seconds.to_string(),
            "-O",
            &OMIT_SECONDS.to_string(),
            "-J",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the iperf3 client")?;
    // Read while it runs, so a large report cannot block it on a full pipe.
    let mut stdout = child.stdout.take().context("iperf3's stdout")?;
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(seconds + OMIT_SECONDS + 20);
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for iperf3")? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the iperf3 client did not finish in time".into());
        }
        thread::sleep(Duration::from_millis(50));
    };
    let json = reader.join().unwrap_or_default();
    if !status.success() {
        let error = json_string(&json, "error").unwrap_or_default();
        return Err(format!("iperf3 client failed ({status}): {error}"));
    }
    received_bits_per_second(&json)
        .context("no end.sum_received.bits_per_second in iperf3's report")
}

/// `end.sum_received.bits_per_second` of an iperf3 `-J` report. The report's only
/// `"sum_received"` object is the one under `end`; its first `bits_per_second` is its own
/// (it holds no nested objects).
fn received_bits_per_second(json: &str) -> Option<f64> {
    let end = &json[json.find("\"end\"")?..];
    let sum = &end[end.find("\"sum_received\"")?..];
    let object = &sum[..sum.find('}')?];
    let value = &object[object.find("\"bits_per_second\"")? + "\"bits_per_second\"".len()..];
    let value = value.trim_start().strip_prefix(':')?.trim_start();
    let number: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        .collect();
    number.parse().ok()
}

/// A top-level string member of a JSON report (for iperf3's `"error"`).
fn json_string(json: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    let rest = &json[json.find(&quoted)? + quoted.len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// The live cost of the attached TC programs on real traffic: iperf3 TCP runs alternate between
/// an agent run with `with_args` and one without them, and the kernel's own statistics
/// (`BPF_ENABLE_STATS`, the call behind `kernel.bpf_stats_enabled`, held for this figure only)
/// give each program's run time and run count. The figure is nanoseconds per run with against
/// without; `goal` bounds the ratio.
pub fn live_tc_cost(
    quick: bool,
    report: &mut Report,
    figure: &str,
    goal: f64,
    with_args: &[&str],
) -> Result<()> {
    let runs = if quick { 2 } else { 4 };
    let seconds = if quick { 2 } else { 3 };
    agent::binary()?;
    let (client, server) = client_server()?;
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|error| format!("BPF_ENABLE_STATS: {error}"))?;
    let sinks = TempDir::new("live-cost")?;
    let sink = format!("dir:{}", sinks.path().display());
    let base = server_agent_args(&sink);
    let mut iperf_server = IperfServer::start(&server)?;
    // ns per run of the ingress and egress programs, per variant.
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let with_first = run % 2 == 0;
        for with_policy in [with_first, !with_first] {
            let mut args = base.clone();
            if with_policy {
                args.extend_from_slice(with_args);
            }
            let agent = Agent::start(&server, &args)?;
            let before = program_stats()?;
            let measured = run_client(&client, seconds);
            let after = program_stats()?;
            agent.stop().context("stopping the agent")?;
            measured?;
            let per_run = |name: &str| -> Result<f64> {
                let (b, a) = (before.get(name), after.get(name));
                let (time, count) = match (b, a) {
                    (Some(b), Some(a)) => (a.0 - b.0, a.1 - b.1),
                    (None, Some(a)) => *a,
                    _ => return Err(format!("no loaded program {name}")),
                };
                if count == 0 {
                    return Err(format!("{name} never ran during iperf3"));
                }
                Ok(time as f64 / count as f64)
            };
            let cost = (per_run("flowlog_tc_in")?, per_run("flowlog_tc_eg")?);
            eprintln!(
                "live cost: run {}/{runs} {}: tc_in {:.0} ns, tc_eg {:.0} ns per run",
                run + 1,
                if with_policy { "with" } else { "without" },
                cost.0,
                cost.1
            );
            if with_policy {
                with.push(cost);
            } else {
                without.push(cost);
            }
            iperf_server.check_running()?;
        }
    }
    let median_of = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        median(&v.iter().map(pick).collect::<Vec<_>>())
    };
    let (with_in, without_in) = (median_of(&with, |c| c.0), median_of(&without, |c| c.0));
    let (with_eg, without_eg) = (median_of(&with, |c| c.1), median_of(&without, |c| c.1));
    let ratio = with_in / without_in;
    report.record(Outcome {
        figure: figure.to_owned(),
        measured: format!(
            "tc_in {with_in:.0} ns vs {without_in:.0} ns per run = {ratio:.3}; tc_eg {with_eg:.0} vs {without_eg:.0} = {:.3}",
            with_eg / without_eg
        ),
        value: ratio,
        goal: Goal::at_most(goal, &format!("{goal:.2}")),
        details: vec![format!(
            "the attached programs' own run time and run count (BPF_ENABLE_STATS) over iperf3 \
             TCP runs of {seconds} s on {SERVER_IF}, {runs} runs each, alternating; median; \
             the ingress program runs once per socket buffer (GRO super-packets), the egress \
             one once per ACK"
        )],
    });
    Ok(())
}

/// Run time (ns) and run count of every loaded program by name, summed over programs of the
/// same name (only the attached one runs).
fn program_stats() -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let mut stats = std::collections::BTreeMap::new();
    for program in aya::programs::loaded_programs() {
        let program = program.map_err(|error| format!("listing BPF programs: {error}"))?;
        let Some(name) = program.name_as_str() else {
            continue;
        };
        let entry: &mut (u64, u64) = stats.entry(name.to_owned()).or_default();
        entry.0 += program.run_time().as_nanos() as u64;
        entry.1 += program.run_count();
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
        "start": {"connected": [{"socket": 5}]},
        "intervals": [{"sum": {"bits_per_second": 1.0}}],
        "end": {
            "streams": [{"receiver": {"bits_per_second": 2.0}}],
            "sum_sent": {"bytes": 10, "bits_per_second": 1.6e10, "retransmits": 0},
            "sum_received": {"start": 0, "bytes": 10, "bits_per_second": 15623456789.5, "sender": true}
        }
    }"#;

    #[test]
    fn reads_the_received_rate() {
        assert_eq!(received_bits_per_second(REPORT), Some(15_623_456_789.5));
        assert_eq!(received_bits_per_second("{\"end\": {}}"), None);
    }

    #[test]
    fn reads_the_error() {
        assert_eq!(
            json_string(r#"{"start": {}, "error": "unable to connect"}"#, "error").as_deref(),
            Some("unable to connect")
        );
    }
}
