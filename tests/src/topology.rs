//! The two-namespace topology every traffic test uses: namespace `a` (where the agent runs) and
//! `b`, joined by the veth pair `a0`-`b0`, addressed in 198.18.0.0/24 and fd00::/64 (or IPv4
//! only, or not at all), with plain TCP headers on both sides; optionally a second pair `a1`-`b1`
//! (idle, whose NODATA records mark every interval, or addressed in 198.18.1.0/24); and a UDP
//! socket pair per address family.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    ops::Range,
    thread,
    time::Duration,
};

use crate::{
    netns::{NetNs, veth_pair},
    records::{FlowTuple, Record, totals},
    traffic::{TcpExchange, plain_tcp_headers, tcp_exchange, udp_exchange, udp_socket},
};

pub const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const UDP: u8 = 17;
pub const TCP: u8 = 6;

/// UDP sockets bound in `a` (port 5001) and `b` (port 5002) for one address family.
pub struct UdpPair {
    pub a: UdpSocket,
    pub b: UdpSocket,
    pub a_addr: SocketAddr,
    pub b_addr: SocketAddr,
}

pub struct Topology {
    pub a: NetNs,
    pub b: NetNs,
    /// IPv4, then IPv6.
    pub udp: Vec<UdpPair>,
}

impl Topology {
    /// The usual topology: `a0`-`b0` addressed in IPv4 and IPv6 with a UDP socket pair per
    /// family; `idle` adds the `a1`-`b1` pair.
    pub fn new(idle: bool) -> Self {
        let builder = Topology::builder().udp_sockets();
        if idle { builder.idle_pair() } else { builder }.build()
    }

    /// A topology to shape: by default `a0`-`b0` up, with loopback, IPv4 and IPv6 addresses and
    /// plain TCP headers, no second pair, no sockets.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder {
            addresses: Addresses::Both,
            second: None,
            udp_sockets: false,
        }
    }
}

/// The TCP exchange of a traffic round ([`Topology::send_round`]): the server's port in `a` and
/// the bytes each side sends, the client's growing by 1,000 per round.
pub struct TcpRound {
    pub port: u16,
    pub client_bytes: usize,
    pub server_bytes: usize,
}

impl Topology {
    /// One round of known traffic on `a0`, added to `expected`: UDP both ways over every UDP
    /// pair, and a TCP exchange from `b` to `a` on `tcp.port + round`.
    pub fn send_round(&self, round: u64, tcp: &TcpRound, expected: &mut Expected) {
        for pair in &self.udp {
            let wire = udp_exchange(&pair.b, &pair.a, 10 + round, 100);
            expected.add(pair.b_addr, pair.a_addr, UDP, wire);
            let wire = udp_exchange(&pair.a, &pair.b, 5, 1000 + round as usize);
            expected.add(pair.a_addr, pair.b_addr, UDP, wire);
        }
        let exchange = tcp_exchange(
            &self.b,
            &self.a,
            SocketAddr::new(IpAddr::V4(A4), tcp.port + round as u16),
            tcp.client_bytes + round as usize * 1000,
            tcp.server_bytes,
        );
        expected.add_tcp(&exchange);
    }

    /// [`Topology::send_round`] for each of `rounds`, `pause` after each.
    pub fn send_rounds(
        &self,
        rounds: Range<u64>,
        pause: Duration,
        tcp: &TcpRound,
        expected: &mut Expected,
    ) {
        for round in rounds {
            self.send_round(round, tcp, expected);
            thread::sleep(pause);
        }
    }
}

/// How `a0` and `b0` are addressed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Addresses {
    /// IPv4 and IPv6 (198.18.0.0/24, fd00::/64).
    Both,
    /// IPv4 only, IPv6 off (nothing but the test's own traffic crosses the link).
    V4,
    /// None, IPv6 off: the link is only up.
    None,
}

/// The second pair, `a1`-`b1`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SecondPair {
    /// Up, no addresses, IPv6 off: it marks every interval with a NODATA record.
    Idle,
    /// Up, IPv4 198.18.1.1/24 and .2, IPv6 off.
    Addressed,
}

/// Shapes a [`Topology`]; see [`Topology::builder`].
pub struct TopologyBuilder {
    addresses: Addresses,
    second: Option<SecondPair>,
    udp_sockets: bool,
}

impl TopologyBuilder {
    /// IPv4 only on `a0`-`b0`, IPv6 off.
    pub fn ipv4_only(mut self) -> Self {
        self.addresses = Addresses::V4;
        self
    }

    /// No addresses on `a0`-`b0`, IPv6 off: the link is only up.
    pub fn unaddressed(mut self) -> Self {
        self.addresses = Addresses::None;
        self
    }

    /// Adds the idle pair `a1`-`b1` (up, no addresses, IPv6 off).
    pub fn idle_pair(mut self) -> Self {
        self.second = Some(SecondPair::Idle);
        self
    }

    /// Adds the pair `a1`-`b1` addressed 198.18.1.1/24 and 198.18.1.2/24 (IPv6 off).
    pub fn second_pair(mut self) -> Self {
        self.second = Some(SecondPair::Addressed);
        self
    }

    /// Binds a UDP socket pair per address family (`a` port 5001, `b` port 5002).
    pub fn udp_sockets(mut self) -> Self {
        self.udp_sockets = true;
        self
    }

    pub fn build(self) -> Topology {
        let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
        veth_pair(&a, "a0", &b, "b0").expect("veth");
        if self.second.is_some() {
            veth_pair(&a, "a1", &b, "b1").expect("veth");
        }
        let second_v4 = [Ipv4Addr::new(198, 18, 1, 1), Ipv4Addr::new(198, 18, 1, 2)];
        for (i, (ns, busy, quiet, v4, v6)) in [(&a, "a0", "a1", A4, A6), (&b, "b0", "b1", B4, B6)]
            .into_iter()
            .enumerate()
        {
            if let Some(second) = self.second {
                ns.disable_ipv6(quiet).expect("sysctl");
                if second == SecondPair::Addressed {
                    ns.add_address(quiet, second_v4[i], 24).expect("address");
                }
                ns.link_up(quiet).expect("link up");
            }
            match self.addresses {
                Addresses::Both => {
                    ns.add_address(busy, v4, 24).expect("address");
                    ns.add_address(busy, v6, 64).expect("address");
                }
                Addresses::V4 => {
                    ns.disable_ipv6(busy).expect("sysctl");
                    ns.add_address(busy, v4, 24).expect("address");
                }
                Addresses::None => ns.disable_ipv6(busy).expect("sysctl"),
            }
            plain_tcp_headers(ns);
            for link in ["lo", busy] {
                ns.link_up(link).expect("link up");
            }
        }
        let mut udp = Vec::new();
        let families: &[(IpAddr, IpAddr)] = match (self.udp_sockets, self.addresses) {
            (false, _) | (true, Addresses::None) => &[],
            (true, Addresses::V4) => &[(IpAddr::V4(A4), IpAddr::V4(B4))],
            (true, Addresses::Both) => &[
                (IpAddr::V4(A4), IpAddr::V4(B4)),
                (IpAddr::V6(A6), IpAddr::V6(B6)),
            ],
        };
        for (a_ip, b_ip) in families {
            let a_addr = SocketAddr::new(*a_ip, 5001);
            let b_addr = SocketAddr::new(*b_ip, 5002);
            udp.push(UdpPair {
                a: udp_socket(&a, a_addr),
                b: udp_socket(&b, b_addr),
                a_addr,
                b_addr,
            });
        }
        Topology { a, b, udp }
    }
}

/// What a test sent on `a0`: (interface, flow) -> (packets, bytes).
#[derive(Default)]
pub struct Expected(pub BTreeMap<(String, FlowTuple), (u64, u64)>);

impl Expected {
    /// Adds `wire` (packets, IP bytes) of one exchange from `from` to `to`.
    pub fn add(&mut self, from: SocketAddr, to: SocketAddr, protocol: u8, wire: (u64, u64)) {
        let flow = FlowTuple {
            src: from.ip(),
            dst: to.ip(),
            src_port: from.port(),
            dst_port: to.port(),
            protocol,
        };
        let entry = self.0.entry(("a0".to_owned(), flow)).or_insert((0, 0));
        entry.0 += wire.0;
        entry.1 += wire.1;
    }

    /// Adds both directions of a TCP exchange.
    pub fn add_tcp(&mut self, exchange: &TcpExchange) {
        let (c2s, s2c) = (exchange.client_to_server, exchange.server_to_client);
        self.add(
            exchange.client,
            exchange.server,
            TCP,
            (c2s.packets, c2s.bytes),
        );
        self.add(
            exchange.server,
            exchange.client,
            TCP,
            (s2c.packets, s2c.bytes),
        );
    }

    /// Every flow the test made adds up exactly in `records` (other flows, such as neighbour
    /// discovery, may be there beside them). `source` names the records in a failure.
    pub fn check(&self, records: &[Record], source: &str) {
        let seen = totals(records);
        for (key, want) in &self.0 {
            assert_eq!(seen.get(key), Some(want), "flow {key:?}: {source} vs wire");
        }
    }
}
