//! Kernel drops: the drop program's cost per drop (BPF run-time statistics: its own time,
//! divided by its runs), and a drop flood (UDP to a port an nftables rule drops, as fast as one
//! sender goes) with and without the agent: the rate the host sustains, and whether the REJECT
//! records equal the rule's counter exactly with nothing left as ACCEPT.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use ::tests::netns::{NetNs, in_netns};

use crate::{
    agent::{self, Agent},
    report::{Goal, Outcome, Report},
    support::{Context, Result, TempDir, VethEnd, veth_topology},
};

const CLIENT_IF: &str = "fbkc0";
const SERVER_IF: &str = "fbks0";
const CLIENT_ADDR: [u8; 4] = [198, 18, 2, 1];
const SERVER_ADDR: [u8; 4] = [198, 18, 2, 2];
const PORT: u16 = 9;
/// Sender sockets (flows), each sending in turn.
const FLOWS: u16 = 16;
/// Datagrams per sendmmsg call.
const BATCH: usize = 64;
/// 64-byte Ethernet frames: 14 + 20 + 8 + 22.
const PAYLOAD: usize = 22;
const GOAL_NS_PER_DROP: f64 = 500.0;
const FORMAT: &str = "${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${action} ${log-status} ${reject-reason}";
/// The drop program's name as the kernel keeps it (15 characters).
const PROGRAM_NAME: &str = "flowlog_kernel_";

pub fn measure(quick: bool, report: &mut Report) -> Result<()> {
    agent::binary()?;
    let seconds = if quick { 2 } else { 5 };
    let (client, server) = veth_topology(
        VethEnd {
            ifname: CLIENT_IF,
            addresses: &[CLIENT_ADDR],
        },
        VethEnd {
            ifname: SERVER_IF,
            addresses: &[SERVER_ADDR],
        },
    )?;
    let script = format!(
        "table inet flood {{\n chain input {{\n type filter hook input priority 0;\n udp dport {PORT} counter drop comment \"flood\"\n }}\n}}\n"
    );
    let path = std::env::temp_dir().join(format!("flowlog-bench-{}.nft", std::process::id()));
    fs::write(&path, script).context("writing the nft script")?;
    let loaded = server.exec("nft", &["-f", path.to_str().context("UTF-8")?]);
    let _ = fs::remove_file(&path);
    loaded.context("nft (Debian's nftables)")?;

    eprintln!("kernel drops: UDP flood to a dropped port, {seconds} s without the agent");
    let without = flood(&client, seconds)?;

    // The kernel keeps run time and count per program while this descriptor is open.
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| format!("enabling BPF run-time statistics: {e}"))?;
    // One interval over the whole flood, then 1 s intervals: a switch while packets are between
    // TC ingress and their drop leaves their ACCEPT in the interval before (see
    // docs/kernel-drops.md).
    let long = with_agent(&client, &server, seconds, "600s")?;
    let short = with_agent(&client, &server, seconds, "1s")?;
    drop(stats);

    report.record(Outcome {
        figure: "kernel drops: cost per drop".into(),
        measured: format!("{:.0} ns per run of the drop program", long.ns_per_drop),
        value: long.ns_per_drop,
        goal: Goal::at_most(GOAL_NS_PER_DROP, &format!("{GOAL_NS_PER_DROP} ns")),
        details: vec![format!(
            "BPF run-time statistics (kernel.bpf_stats_enabled) over {} runs of the drop \
             program during the flood: every kfree_skb of the host, counted or not \
             ({:.0} ns in the 1 s-interval run)",
            long.runs, short.ns_per_drop
        )],
    });
    let exact = long.rejected == long.dropped && long.accepted == 0;
    report.record(Outcome {
        figure: "kernel drops: flood counted exactly".into(),
        measured: format!(
            "REJECT netfilter-drop {} packets = the rule's counter {}, ACCEPT {}: {}",
            long.rejected,
            long.dropped,
            long.accepted,
            if exact { "exact" } else { "NOT exact" }
        ),
        value: if exact { 1.0 } else { 0.0 },
        goal: Goal::at_least(1.0, "exact"),
        details: vec![
            format!(
                "flood rate: {:.0} kpps with the agent vs {:.0} kpps without ({:.3}); one \
                 sender thread, sendmmsg of {BATCH} x 64-byte frames, {FLOWS} flows, one \
                 600 s interval",
                long.flood.pps() / 1e3,
                without.pps() / 1e3,
                long.flood.pps() / without.pps()
            ),
            format!(
                "with 1 s intervals ({} switches during the flood): REJECT {} = counter {}; \
                 ACCEPT left {} (packets counted at TC ingress before a switch and dropped \
                 after it), uncovered drops {}",
                seconds, short.rejected, short.dropped, short.accepted, short.uncovered
            ),
        ],
    });
    Ok(())
}

struct AgentRun {
    flood: Flood,
    dropped: u64,
    rejected: u64,
    accepted: u64,
    uncovered: u64,
    runs: u64,
    ns_per_drop: f64,
}

fn with_agent(client: &NetNs, server: &NetNs, seconds: u64, interval: &str) -> Result<AgentRun> {
    let counter_before = counter(server)?;
    let sinks = TempDir::new("kernel-drops")?;
    let sink = format!("dir:{}", sinks.path().display());
    let agent = Agent::start(
        server,
        &[
            "--interface",
            SERVER_IF,
            "--hook",
            "tc",
            "--interval",
            interval,
            "--sink",
            &sink,
            "--format",
            FORMAT,
            "--kernel-drops",
            "refused",
        ],
    )?;
    let program_before = program_stats()?;
    eprintln!("kernel drops: {seconds} s with the agent, {interval} intervals");
    let flood = flood(client, seconds)?;
    let program_after = program_stats()?;
    let uncovered_key = "kernel drops of packets counted in an earlier interval";
    // The whole log: a drop whose ACCEPT was in the interval before can be in the last drains.
    let log = agent.stop().context("stopping the agent")?;
    let uncovered = log
        .iter()
        .filter(|line| line.contains(uncovered_key))
        .filter_map(|line| crate::agent::field(line, "packets"))
        .sum();
    let dropped = counter(server)? - counter_before;
    let (rejected, accepted) = records(&sinks)?;
    let runs = program_after.1 - program_before.1;
    Ok(AgentRun {
        flood,
        dropped,
        rejected,
        accepted,
        uncovered,
        runs,
        ns_per_drop: (program_after.0 - program_before.0) as f64 / runs.max(1) as f64,
    })
}

struct Flood {
    sent: u64,
    elapsed: Duration,
}

impl Flood {
    fn pps(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends 64-byte datagrams to the dropped port for `seconds`, from [`FLOWS`] sockets in turn.
fn flood(client: &NetNs, seconds: u64) -> Result<Flood> {
    let sockets: Vec<UdpSocket> = (0..FLOWS)
        .map(|i| {
            in_netns(client, || {
                UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::from(CLIENT_ADDR), 41000 + i))
            })
            .context("entering the namespace")?
            .context("binding a sender")
        })
        .collect::<Result<_>>()?;
    for socket in &sockets {
        socket
            .connect(SocketAddrV4::new(Ipv4Addr::from(SERVER_ADDR), PORT))
            .context("connecting")?;
    }
    let payload = [0x5au8; PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD,
    };
    // SAFETY: mmsghdr is plain data; every field is set below or zero is valid.
    let mut messages: Vec<libc::mmsghdr> =
        (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for message in &mut messages {
        message.msg_hdr.msg_iov = &mut iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut sent = 0u64;
    let mut turn = 0;
    while Instant::now() < deadline {
        let socket = &sockets[turn % sockets.len()];
        turn += 1;
        // SAFETY: `messages` holds BATCH valid headers pointing at `iov` and `payload`, which
        // outlive the call; the sockets are connected, so no address is needed.
        let n =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    Ok(Flood {
        sent,
        elapsed: started.elapsed(),
    })
}

/// Packets the flood rule dropped so far.
fn counter(server: &NetNs) -> Result<u64> {
    let output = server
        .exec("nft", &["list", "table", "inet", "flood"])
        .context("nft list")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context(format!("no counter in {text}"))
}

/// (run time in ns, runs) of the drop program.
fn program_stats() -> Result<(u64, u64)> {
    for info in aya::programs::loaded_programs() {
        let info = info.map_err(|e| format!("listing programs: {e}"))?;
        if info.name_as_str() == Some(PROGRAM_NAME) {
            return Ok((info.run_time().as_nanos() as u64, info.run_count()));
        }
    }
    Err("the drop program is not loaded".into())
}

/// Packets of the flood's flows: (REJECT netfilter-drop, ACCEPT).
fn records(sinks: &TempDir) -> Result<(u64, u64)> {
    let path = sinks.path().join(format!("{SERVER_IF}-all.log"));
    let text = fs::read_to_string(&path).context(format!("reading {}", path.display()))?;
    let port = PORT.to_string();
    let (mut rejected, mut accepted) = (0, 0);
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() != 10 || fields[3] != port || fields[8] != "OK" {
            continue;
        }
        let packets: u64 = fields[5].parse().context("packets")?;
        match (fields[7], fields[9]) {
            ("REJECT", "netfilter-drop") => rejected += packets,
            ("ACCEPT", _) => accepted += packets,
            _ => {}
        }
    }
    Ok((rejected, accepted))
}
