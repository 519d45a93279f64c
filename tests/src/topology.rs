//! The two-namespace topology of the traffic tests: namespace `a` (where the agent runs) and
//! `b`, joined by the veth pair `a0`-`b0`, addressed in 198.18.0.0/24 and fd00::/64, with plain
//! TCP headers on both sides; optionally an idle pair `a1`-`b1` (no addresses, IPv6 off) whose
//! NODATA records mark every interval; and a UDP socket pair per address family.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
};

use crate::{
    netns::{NetNs, veth_pair},
    records::{FlowTuple, Record, totals},
    traffic::{plain_tcp_headers, udp_socket},
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
    /// Builds the namespaces, links and sockets; `idle` adds the `a1`-`b1` pair.
    pub fn new(idle: bool) -> Self {
        let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
        veth_pair(&a, "a0", &b, "b0").expect("veth");
        if idle {
            veth_pair(&a, "a1", &b, "b1").expect("veth");
        }
        for (ns, busy, quiet, v4, v6) in [(&a, "a0", "a1", A4, A6), (&b, "b0", "b1", B4, B6)] {
            if idle {
                ns.disable_ipv6(quiet).expect("sysctl");
                ns.link_up(quiet).expect("link up");
            }
            ns.add_address(busy, v4, 24).expect("address");
            ns.add_address(busy, v6, 64).expect("address");
            plain_tcp_headers(ns);
            for link in ["lo", busy] {
                ns.link_up(link).expect("link up");
            }
        }
        let mut udp = Vec::new();
        for (a_ip, b_ip) in [
            (IpAddr::V4(A4), IpAddr::V4(B4)),
            (IpAddr::V6(A6), IpAddr::V6(B6)),
        ] {
            let a_addr = SocketAddr::new(a_ip, 5001);
            let b_addr = SocketAddr::new(b_ip, 5002);
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

    /// Every flow the test made adds up exactly in `records` (other flows, such as neighbour
    /// discovery, may be there beside them). `source` names the records in a failure.
    pub fn check(&self, records: &[Record], source: &str) {
        let seen = totals(records);
        for (key, want) in &self.0 {
            assert_eq!(seen.get(key), Some(want), "flow {key:?}: {source} vs wire");
        }
    }
}
