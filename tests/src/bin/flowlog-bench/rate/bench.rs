//! The rate figure's set-up and rounds: the namespace pair, the flows, the generator's socket,
//! the agent started for a round and its records read back after it.

use std::{
    fs,
    net::Ipv4Addr,
    ops::Range,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use ::tests::netns::NetNs;
use flowlog_agent::datapath::Hook;

use crate::{
    agent::Agent,
    rate::{
        counters::{LinkCounters, UdpCounters},
        coverage::{Comparison, FlowlogRecords},
        flows::{Destination, FlowSet, IP_LEN},
        sender::{PacketSocket, Sent},
    },
    support::{
        Context, CpuPin, Result, TempDir, VethEnd, allowed_cpus, thread_user_system_time,
        veth_topology,
    },
};

pub const GENERATOR_IF: &str = "fbrg0";
pub const RECEIVER_IF: &str = "fbrr0";
const GENERATOR_ADDR: [u8; 4] = [198, 18, 3, 1];
const RECEIVER_ADDR: [u8; 4] = [198, 18, 3, 2];
/// The discard port; nothing listens on it in the receiving namespace.
const CLOSED_PORT: u16 = 9;
/// The agent's interval in the rate rounds: its default. A round is shorter, so the map is
/// drained only when the agent stops (the first packets of a flow after a drain are measured
/// apart, see [`Sending::first`]).
const AGENT_INTERVAL: &str = "60s";
/// Longest a round's sending may take.
const SEND_LIMIT: Duration = Duration::from_secs(120);

/// What one round of sending did, by the generator's and the kernel's counts.
#[derive(Clone, Copy, Debug)]
pub struct Round {
    pub sent: Sent,
    /// The receiving veth's counters over the round.
    pub received: LinkCounters,
    /// The sending veth's (its `tx_dropped` counts the frames it refused).
    pub sending: LinkCounters,
    /// UDP in the receiving namespace: `no_ports` is every frame that got through the stack.
    pub udp: UdpCounters,
    /// The sending threads' CPU time over the round: user, then kernel.
    pub cpu: (Duration, Duration),
    pub senders: usize,
}

impl Round {
    /// Packets the receiving veth took per second of sending.
    pub fn delivered_per_second(&self) -> f64 {
        self.received.rx_packets as f64 / self.sent.elapsed.as_secs_f64()
    }

    /// Packets per second of the sending thread's CPU time, which, since a veth delivers in the
    /// sender's context, includes the whole receive path: what one core can take, undiluted by
    /// other processes of a shared machine.
    pub fn per_cpu_second(&self) -> f64 {
        self.sent.packets as f64 / (self.cpu.0 + self.cpu.1).as_secs_f64()
    }

    /// Share of the sending time the sending threads were on a CPU.
    pub fn busy_share(&self) -> f64 {
        (self.cpu.0 + self.cpu.1).as_secs_f64()
            / (self.sent.elapsed.as_secs_f64() * self.senders as f64)
    }

    pub fn kernel_share(&self) -> f64 {
        self.cpu.1.as_secs_f64() / (self.cpu.0 + self.cpu.1).as_secs_f64()
    }
}

/// A round of traffic: every flow's frame once, then `cycles` times more, measured apart.
#[derive(Clone, Copy, Debug)]
pub struct Sending {
    /// Under an agent, every packet of the first cycle creates its flow's entry, as the first
    /// packet of each flow does after every drain.
    pub first: Round,
    /// The other packets find their flow's entry.
    pub steady: Round,
}

impl Sending {
    /// The packets each flow got.
    pub fn per_flow(cycles: u64) -> u64 {
        cycles + 1
    }
}

/// The two namespaces, the flows, and the generator's sockets, for every round.
pub struct RateBench {
    generator_ns: NetNs,
    receiver_ns: NetNs,
    flows: FlowSet,
    /// One socket per CPU the bench may run on, highest CPU first; a round sends from the first
    /// `senders` of them, each on a thread pinned to its CPU.
    sockets: Vec<(usize, PacketSocket)>,
    senders: usize,
    dir: TempDir,
}

impl RateBench {
    /// The topology, with `count` flows from the generator to the receiver; files under a
    /// temporary directory named after `label`.
    pub fn new(count: usize, label: &str) -> Result<Self> {
        let (generator_ns, receiver_ns) = veth_topology(
            VethEnd {
                ifname: GENERATOR_IF,
                addresses: &[GENERATOR_ADDR],
            },
            VethEnd {
                ifname: RECEIVER_IF,
                addresses: &[RECEIVER_ADDR],
            },
        )?;
        // The sources are not on the receiver's network: no reverse-path filter may drop them.
        for key in [
            "net.ipv4.conf.all.rp_filter".to_owned(),
            format!("net.ipv4.conf.{RECEIVER_IF}.rp_filter"),
        ] {
            receiver_ns
                .set_sysctl(&key, "0")
                .context("turning rp_filter off")?;
        }
        // The exporters' collectors listen on the receiving namespace's loopback.
        receiver_ns.link_up("lo").context("bringing lo up")?;
        let destination = Destination {
            source_mac: mac_address(&generator_ns, GENERATOR_IF)?,
            mac: mac_address(&receiver_ns, RECEIVER_IF)?,
            address: Ipv4Addr::from(RECEIVER_ADDR),
            port: CLOSED_PORT,
        };
        let flows = FlowSet::new(count, destination);
        let sockets = allowed_cpus()?
            .into_iter()
            .rev()
            .map(|cpu| Ok((cpu, PacketSocket::open(&generator_ns, GENERATOR_IF)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            generator_ns,
            receiver_ns,
            flows,
            sockets,
            senders: 1,
            dir: TempDir::new(label)?,
        })
    }

    /// The CPUs the bench may run on, hence the most sending threads.
    pub fn cpus(&self) -> usize {
        self.sockets.len()
    }

    /// Sends from `senders` threads (at most one per CPU) from now on.
    pub fn set_senders(&mut self, senders: usize) {
        self.senders = senders.clamp(1, self.sockets.len());
    }

    /// The CPUs the sending threads are pinned to.
    pub fn sender_cpus(&self) -> Vec<usize> {
        self.sockets[..self.senders]
            .iter()
            .map(|(cpu, _)| *cpu)
            .collect()
    }

    pub fn receiver_ns(&self) -> &NetNs {
        &self.receiver_ns
    }

    pub fn flows(&self) -> &FlowSet {
        &self.flows
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends the frames of `flows` in order `cycles` times, split between the sending threads
    /// (each flow from one thread), reading the kernel's counters around.
    pub fn round(&self, flows: Range<usize>, cycles: u64) -> Result<Round> {
        let received_before = LinkCounters::read(&self.receiver_ns, RECEIVER_IF)?;
        let sending_before = LinkCounters::read(&self.generator_ns, GENERATOR_IF)?;
        let udp_before = UdpCounters::read(&self.receiver_ns)?;
        let parts = split(flows, self.senders);
        let results: Vec<Result<(Sent, (Duration, Duration))>> = thread::scope(|scope| {
            let threads: Vec<_> = self.sockets[..self.senders]
                .iter()
                .zip(parts)
                .map(|((cpu, socket), part)| {
                    scope.spawn(move || {
                        // Only the sending threads are pinned: the agent and the exporters are
                        // started from the main thread, which is not.
                        let _pin = CpuPin::to(*cpu)?;
                        let (user, system) = thread_user_system_time();
                        let sent = socket.send_cycles(&self.flows, part, cycles, SEND_LIMIT)?;
                        let (user_after, system_after) = thread_user_system_time();
                        Ok((sent, (user_after - user, system_after - system)))
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|thread| {
                    thread
                        .join()
                        .unwrap_or_else(|_| Err("a sending thread panicked".into()))
                })
                .collect()
        });
        let mut sent = Sent::default();
        let mut cpu = (Duration::ZERO, Duration::ZERO);
        for result in results {
            let (thread_sent, (user, system)) = result?;
            sent.packets += thread_sent.packets;
            sent.cut_short += thread_sent.cut_short;
            sent.elapsed = sent.elapsed.max(thread_sent.elapsed);
            cpu = (cpu.0 + user, cpu.1 + system);
        }
        let round = Round {
            sent,
            received: received_before.since(LinkCounters::read(&self.receiver_ns, RECEIVER_IF)?),
            sending: sending_before.since(LinkCounters::read(&self.generator_ns, GENERATOR_IF)?),
            udp: udp_before.since(UdpCounters::read(&self.receiver_ns)?),
            cpu,
            senders: self.senders,
        };
        if round.received.rx_packets != round.sent.packets {
            return Err(format!(
                "the receiving veth counted {} packets, the generator sent {}",
                round.received.rx_packets, round.sent.packets
            ));
        }
        Ok(round)
    }

    /// Every flow's frame once, then `cycles` times more: a [`Sending`].
    pub fn send(&self, cycles: u64) -> Result<Sending> {
        let all = 0..self.flows.len();
        Ok(Sending {
            first: self.round(all.clone(), 1)?,
            steady: self.round(all, cycles)?,
        })
    }

    /// Sends `count` frames of the filler flow.
    pub fn send_filler(&self, count: u64) -> Result<()> {
        let filler = self.flows.filler();
        self.sockets[0]
            .1
            .send_cycles(&self.flows, filler..filler + 1, count, SEND_LIMIT)
            .map(drop)
    }

    /// Sends the frame of each of the first `count` flows once, from the calling thread
    /// (unpinned): the idle figure's trickle.
    pub fn send_first(&self, count: usize) -> Result<u64> {
        let sent = self.sockets[0]
            .1
            .send_cycles(&self.flows, 0..count, 1, SEND_LIMIT)?;
        Ok(sent.packets)
    }

    /// Starts an agent on the receiving veth (enforcing `policy`, if any) whose records go to a
    /// fresh directory named `label`.
    pub fn start_agent(&self, label: &str, policy: Option<&Path>) -> Result<RoundAgent> {
        let sink_dir = self.dir.path().join(label);
        let _ = fs::remove_dir_all(&sink_dir);
        fs::create_dir(&sink_dir).context(format!("creating {}", sink_dir.display()))?;
        let sink = format!("dir:{}", sink_dir.display());
        let hook = Hook::Tc.to_string();
        let mut args = vec![
            "--interface",
            RECEIVER_IF,
            "--hook",
            &hook,
            "--interval",
            AGENT_INTERVAL,
            // Detached before its last drain, so both epochs are drained and every packet is in
            // its records.
            "--on-exit",
            "detach",
            "--metrics",
            "off",
            // The frames go to a closed port, which the host drops (no socket): with the
            // default `refused`, they would be REJECT `no-socket` (and past the drop map's
            // 65,536 entries per interval, ACCEPT with uncovered drops reported). This figure
            // is the TC program's counting; the kernel-drops figures measure that part.
            "--kernel-drops",
            "off",
            "--sink",
            &sink,
        ];
        let policy_path;
        if let Some(policy) = policy {
            policy_path = policy.display().to_string();
            args.extend(["--policy", &policy_path]);
        }
        let mut agent = Agent::start(&self.receiver_ns, &args)?;
        if policy.is_some() {
            agent.wait_for(
                |line| line.contains("policy in force"),
                Duration::from_secs(10),
            )?;
        }
        Ok(RoundAgent { agent, sink_dir })
    }

    /// Every flow's packets in `records` beside what was sent (`per_flow` each): the accepted
    /// ones, or the rejected ones when the traffic is denied. Packets counted under the other
    /// action or skipped count as elsewhere.
    pub fn compare(&self, records: &FlowlogRecords, per_flow: u64, denied: bool) -> Comparison {
        let (counted, other) = if denied {
            (&records.rejected, &records.accepted)
        } else {
            (&records.accepted, &records.rejected)
        };
        let mut comparison = Comparison::new(&self.flows, 0..self.flows.len(), per_flow, counted);
        comparison.packets_elsewhere +=
            other.packets.values().sum::<u64>() + records.skipped_packets;
        comparison
    }
}

/// An agent started for a round, and where its records go.
pub struct RoundAgent {
    agent: Agent,
    sink_dir: PathBuf,
}

impl RoundAgent {
    /// Stops the agent and reads its records.
    pub fn stop(self) -> Result<FlowlogRecords> {
        self.agent.stop().context("stopping the agent")?;
        let path = self.sink_dir.join(format!("{RECEIVER_IF}-all.log"));
        let records = FlowlogRecords::read(&path, RECEIVER_IF)?;
        if records.wrong_bytes != 0 {
            return Err(format!(
                "{} records have bytes other than packets x {IP_LEN} (the frames' IP length)",
                records.wrong_bytes
            ));
        }
        Ok(records)
    }
}

/// `range` cut in `parts` contiguous pieces of (nearly) equal length.
fn split(range: Range<usize>, parts: usize) -> Vec<Range<usize>> {
    let (start, len) = (range.start, range.len());
    (0..parts)
        .map(|i| start + len * i / parts..start + len * (i + 1) / parts)
        .collect()
}

/// The MAC address of `ifname` in `ns`.
fn mac_address(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let line = ns
        .ip(&["-o", "link", "show", "dev", ifname])
        .context("reading the link")?;
    let text = line
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .context(format!("no link/ether in {line:?}"))?;
    parse_mac(text).context(format!("bad MAC address {text:?}"))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_ranges_evenly() {
        assert_eq!(split(0..10, 1), vec![0..10]);
        assert_eq!(split(0..10, 2), vec![0..5, 5..10]);
        assert_eq!(split(5..12, 3), vec![5..7, 7..9, 9..12]);
    }

    #[test]
    fn parses_mac_addresses() {
        assert_eq!(
            parse_mac("ca:0a:5f:c6:19:6d"),
            Some([0xca, 0x0a, 0x5f, 0xc6, 0x19, 0x6d])
        );
        assert_eq!(parse_mac("ca:0a:5f:c6:19"), None);
        assert_eq!(parse_mac("ca:0a:5f:c6:19:6d:00"), None);
        assert_eq!(parse_mac("zz:0a:5f:c6:19:6d"), None);
    }
}
