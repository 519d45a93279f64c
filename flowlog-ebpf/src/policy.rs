//! The policy decision as plain logic: rule matching and the security group's connection
//! tracking, over values the kernel program has already looked up. The program (`decide.rs` in
//! the binary) owns the map access; the host tests here own the semantics.
//!
//! Order of the layers, as in a VPC: an inbound packet passes the ACL, then the security group;
//! an outbound packet the security group, then the ACL. The first layer that rejects names the
//! reason.

use flowlog_common::{
    flow::{Direction, FlowKey, RejectLayer},
    policy::{
        ANY_PROTOCOL, CACHED_ALLOW, CACHED_DENY, CACHED_UNKNOWN, ConnKey, ConnState,
        ORIGIN_INBOUND, ORIGIN_NONE, ORIGIN_OUTBOUND, Rule,
    },
    tcp::{ACK, FIN, RST, SYN},
};

/// The fields of a packet a rule looks at, seen from the interface: the remote address (source
/// of an inbound packet, destination of an outbound one) and the destination port (the local
/// port of an inbound packet, the remote port of an outbound one).
#[derive(Clone, Copy)]
pub struct RuleSubject {
    pub remote: [u64; 2],
    pub port: u16,
    pub protocol: u8,
    pub family: u8,
}

impl RuleSubject {
    /// The packet that opens `conn` in the given direction, as its rules see it: the remote
    /// address, and the local port if inbound, the remote port if outbound.
    #[inline(always)]
    pub fn opening(conn: &ConnKey, inbound: bool) -> Self {
        let port = if inbound {
            conn.local_port
        } else {
            conn.remote_port
        };
        Self {
            remote: address_words(&conn.remote_addr),
            port: u16::from_be_bytes(port),
            protocol: conn.protocol,
            family: conn.family,
        }
    }
}

/// Fills `conn` (which must arrive zeroed) with the connection of a packet: the same entry for
/// both of its directions.
#[inline(always)]
pub fn fill_conn_key(conn: &mut ConnKey, key: &FlowKey) {
    let inbound = key.direction == Direction::Ingress as u8;
    conn.ifindex = key.ifindex;
    conn.protocol = key.protocol;
    conn.family = key.family;
    let (local, remote, local_port, remote_port) = if inbound {
        (&key.dst_addr, &key.src_addr, key.dst_port, key.src_port)
    } else {
        (&key.src_addr, &key.dst_addr, key.src_port, key.dst_port)
    };
    copy_address(&mut conn.local_addr, local);
    copy_address(&mut conn.remote_addr, remote);
    conn.local_port = local_port;
    conn.remote_port = remote_port;
}

#[inline(always)]
fn copy_address(to: &mut [u8; 16], from: &[u8; 16]) {
    let words = address_words(from);
    let p = to.as_mut_ptr().cast::<u64>();
    // SAFETY: 16 writable bytes; unaligned writes make no alignment assumption.
    unsafe {
        p.write_unaligned(words[0]);
        p.add(1).write_unaligned(words[1]);
    }
}

/// Whether an exclusion matches a packet: its prefix contains either address, its port range
/// either port, and the protocol matches.
#[inline(always)]
pub fn exclusion_matches(rule: &Rule, key: &FlowKey) -> bool {
    let prefix = address_words(&rule.prefix);
    let mask = address_words(&rule.mask);
    let contains = |address: &[u8; 16]| {
        let a = address_words(address);
        (a[0] & mask[0]) == prefix[0] && (a[1] & mask[1]) == prefix[1]
    };
    let in_range = |port: u16| port >= rule.port_min && port <= rule.port_max;
    rule.family == key.family
        && (rule.protocol == ANY_PROTOCOL || rule.protocol == key.protocol as u16)
        && (in_range(key.src_port()) || in_range(key.dst_port()))
        && (contains(&key.src_addr) || contains(&key.dst_addr))
}

/// An address as two words (loads, not a byte loop).
#[inline(always)]
pub fn address_words(address: &[u8; 16]) -> [u64; 2] {
    let p = address.as_ptr().cast::<u64>();
    // SAFETY: 16 readable bytes; unaligned reads make no alignment assumption.
    unsafe { [p.read_unaligned(), p.add(1).read_unaligned()] }
}

/// Whether `rule` matches the packet.
#[inline(always)]
pub fn rule_matches(rule: &Rule, subject: &RuleSubject) -> bool {
    let prefix = address_words(&rule.prefix);
    let mask = address_words(&rule.mask);
    rule.family == subject.family
        && (rule.protocol == ANY_PROTOCOL || rule.protocol == subject.protocol as u16)
        && subject.port >= rule.port_min
        && subject.port <= rule.port_max
        && (subject.remote[0] & mask[0]) == prefix[0]
        && (subject.remote[1] & mask[1]) == prefix[1]
}

/// What the rules said, cached in the connection entry.
#[inline(always)]
pub fn cached(allowed: bool) -> u8 {
    if allowed { CACHED_ALLOW } else { CACHED_DENY }
}

/// The packet facts connection tracking needs.
#[derive(Clone, Copy)]
pub struct Packet {
    pub inbound: bool,
    pub tcp: bool,
    /// The TCP header's flags byte.
    pub tcp_flags: u8,
    /// Whether the packet carries transport payload.
    pub payload: bool,
}

/// The security group's decision for a packet of a connection whose state is `state`, given
/// `opening_allowed`: whether a rule allows opening the connection in the direction returned by
/// [`sg_rule_direction`]. Returns the rejecting layer, or `None` to allow; admits new
/// connections into `state`.
#[inline(always)]
///
/// In audit mode a connection the rules would refuse is tracked all the same (its packets pass),
/// so that every later packet of it, replies included, is checked against the rules of the
/// direction that opened it and recorded as a would-be reject too, as none of them would have
/// existed under enforcement.
pub fn security_group(
    state: &mut ConnState,
    packet: Packet,
    opening_allowed: bool,
    audit: bool,
) -> Option<RejectLayer> {
    if state.origin != ORIGIN_NONE {
        return if opening_allowed {
            None
        } else {
            // Not admitted (audit mode), or the policy changed and no longer allows it.
            Some(RejectLayer::SecurityGroup)
        };
    }
    if !opening_allowed && !audit {
        return Some(RejectLayer::SecurityGroup);
    }
    state.origin = if packet.inbound {
        ORIGIN_INBOUND
    } else {
        ORIGIN_OUTBOUND
    };
    (!opening_allowed).then_some(RejectLayer::SecurityGroup)
}

/// The direction whose rules decide a packet: the one that opened its connection if tracked,
/// else its own (`true` = inbound).
#[inline(always)]
pub fn sg_rule_direction(state: &ConnState, packet: Packet) -> bool {
    match state.origin {
        ORIGIN_INBOUND => true,
        ORIGIN_OUTBOUND => false,
        _ => packet.inbound,
    }
}

/// TCP after the close: a packet of a closed connection is rejected unless it is the tail of the
/// closing handshake (a bare ACK or FIN without payload). A SYN without ACK opens a new
/// connection on the same tuple: the state is reset and the rules decide again.
#[inline(always)]
pub fn closed_connection(state: &mut ConnState, packet: Packet) -> Option<RejectLayer> {
    if !packet.tcp || state.closed == 0 || state.origin == ORIGIN_NONE {
        return None;
    }
    if packet.tcp_flags & (SYN | ACK) == SYN {
        reset_tracking(state);
        return None;
    }
    if packet.tcp_flags & !(FIN | ACK) == 0 && !packet.payload {
        return None;
    }
    Some(RejectLayer::ClosedConnection)
}

/// Follows the TCP close of a connection the packet passed on: an RST, or a FIN each way.
#[inline(always)]
pub fn track_close(state: &mut ConnState, packet: Packet) {
    if !packet.tcp || state.origin == ORIGIN_NONE {
        return;
    }
    if packet.tcp_flags & RST != 0 {
        state.closed = 1;
    }
    if packet.tcp_flags & FIN != 0 {
        if packet.inbound {
            state.fin_in = 1;
        } else {
            state.fin_eg = 1;
        }
        if state.fin_in != 0 && state.fin_eg != 0 {
            state.closed = 1;
        }
    }
}

/// Forgets the connection (a new one starts on the tuple, or the old one idled out).
#[inline(always)]
pub fn reset_tracking(state: &mut ConnState) {
    state.origin = ORIGIN_NONE;
    state.fin_in = 0;
    state.fin_eg = 0;
    state.closed = 0;
}

/// Forgets the cached rule verdicts (a new policy generation).
#[inline(always)]
pub fn reset_cache(state: &mut ConnState, generation: u32) {
    state.generation = generation;
    state.acl_in = CACHED_UNKNOWN;
    state.acl_eg = CACHED_UNKNOWN;
    state.sg_in = CACHED_UNKNOWN;
    state.sg_eg = CACHED_UNKNOWN;
}

#[cfg(test)]
mod tests {
    use flowlog_common::policy::RULE_ALLOW;

    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn rule(prefix: [u8; 16], mask: [u8; 16], protocol: u16, ports: (u16, u16)) -> Rule {
        Rule {
            prefix,
            mask,
            port_min: ports.0,
            port_max: ports.1,
            protocol,
            family: 4,
            action: RULE_ALLOW,
        }
    }

    fn subject(remote: [u8; 16], protocol: u8, port: u16) -> RuleSubject {
        RuleSubject {
            remote: address_words(&remote),
            port,
            protocol,
            family: 4,
        }
    }

    #[test]
    fn a_rule_matches_its_prefix_protocol_and_port_range() {
        let r = rule(v4([198, 18, 0, 0]), v4([255, 254, 0, 0]), 17, (8000, 8100));
        assert!(rule_matches(&r, &subject(v4([198, 19, 1, 2]), 17, 8000)));
        assert!(rule_matches(&r, &subject(v4([198, 19, 1, 2]), 17, 8100)));
        assert!(!rule_matches(&r, &subject(v4([198, 19, 1, 2]), 17, 8101)));
        assert!(!rule_matches(&r, &subject(v4([198, 20, 0, 1]), 17, 8000)));
        assert!(!rule_matches(&r, &subject(v4([198, 19, 1, 2]), 6, 8000)));
        let any = rule([0; 16], [0; 16], ANY_PROTOCOL, (0, u16::MAX));
        assert!(rule_matches(&any, &subject(v4([1, 2, 3, 4]), 1, 0)));
        let mut v6 = subject(v4([1, 2, 3, 4]), 1, 0);
        v6.family = 6;
        assert!(!rule_matches(&any, &v6), "an IPv4 rule never matches IPv6");
    }

    const INBOUND_SYN: Packet = Packet {
        inbound: true,
        tcp: true,
        tcp_flags: SYN,
        payload: false,
    };

    #[test]
    fn an_admitted_connection_is_tracked_until_its_close() {
        let mut state = ConnState::default();
        assert_eq!(security_group(&mut state, INBOUND_SYN, true, false), None);
        assert_eq!(state.origin, ORIGIN_INBOUND);
        let reply = Packet {
            inbound: false,
            tcp_flags: SYN | ACK,
            ..INBOUND_SYN
        };
        assert!(
            sg_rule_direction(&state, reply),
            "replies use the inbound rules"
        );
        let fin_in = Packet {
            tcp_flags: FIN | ACK,
            ..INBOUND_SYN
        };
        track_close(&mut state, fin_in);
        assert_eq!(state.closed, 0);
        track_close(
            &mut state,
            Packet {
                inbound: false,
                ..fin_in
            },
        );
        assert_eq!(state.closed, 1);
        let last_ack = Packet {
            tcp_flags: ACK,
            ..INBOUND_SYN
        };
        assert_eq!(closed_connection(&mut state, last_ack), None);
        let data = Packet {
            tcp_flags: ACK | 0x08,
            payload: true,
            ..INBOUND_SYN
        };
        assert_eq!(
            closed_connection(&mut state, data),
            Some(RejectLayer::ClosedConnection)
        );
        assert_eq!(closed_connection(&mut state, INBOUND_SYN), None);
        assert_eq!(state.origin, ORIGIN_NONE, "a new SYN starts over");
    }

    #[test]
    fn audit_mode_tracks_a_refused_connection_so_its_replies_are_flagged_too() {
        let mut state = ConnState::default();
        assert_eq!(
            security_group(&mut state, INBOUND_SYN, false, true),
            Some(RejectLayer::SecurityGroup)
        );
        assert_eq!(state.origin, ORIGIN_INBOUND, "tracked, though refused");
        let reply = Packet {
            inbound: false,
            tcp_flags: SYN | ACK,
            ..INBOUND_SYN
        };
        // The reply is judged by the inbound rules, which refuse the connection.
        assert!(sg_rule_direction(&state, reply));
        assert_eq!(
            security_group(&mut state, reply, false, true),
            Some(RejectLayer::SecurityGroup)
        );
    }

    #[test]
    fn without_a_rule_a_new_connection_is_rejected() {
        let mut state = ConnState::default();
        assert_eq!(
            security_group(&mut state, INBOUND_SYN, false, false),
            Some(RejectLayer::SecurityGroup)
        );
        assert_eq!(state.origin, ORIGIN_NONE);
    }
}
