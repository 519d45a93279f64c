//! Rule matching of the real programs (BPF_PROG_TEST_RUN with crafted frames): port range
//! bounds, /0, /32 and /128 networks, protocol `all`, ICMP without ports, fragments, rule order
//! and the default action. Each case checks what the program returned (drop or pass) and the
//! verdict the packet was counted under.

use flowlog_common::flow::{FlowKey, Verdict};
use tests::{
    frames::{
        FrameBuilder,
        tcp_flags::{ACK, RST, SYN},
    },
    test_run::{Program, TestDatapath, V4_DST, V4_SRC, V6_DST, V6_SRC, v4, v4_key, v6},
};

/// Runs `frame` through the TC ingress program once; returns whether it was dropped and the
/// verdict it was counted under (the interval holds that one packet).
fn verdict_of(datapath: &mut TestDatapath, frame: &FrameBuilder) -> (bool, Verdict) {
    verdict_on(Program::TcIngress, datapath, frame)
}

fn verdict_on(hook: Program, datapath: &mut TestDatapath, frame: &FrameBuilder) -> (bool, Verdict) {
    let returned = datapath
        .try_run(hook, &frame.build().bytes, 1)
        .expect("test run");
    let dropped = match returned {
        r if r == hook.drop_verdict() => true,
        r if r == hook.pass_verdict() => false,
        other => panic!("unexpected program result {other}"),
    };
    let flows = datapath.drain_flows();
    let keys: Vec<&FlowKey> = flows.keys().collect();
    assert_eq!(keys.len(), 1, "one packet, one flow: {flows:#?}");
    assert_eq!(flows.values().next().unwrap().packets, 1);
    let verdict = Verdict::try_from(keys[0].verdict).expect("a known verdict");
    (dropped, verdict)
}

const DROPPED_BY_ACL: (bool, Verdict) = (true, Verdict::RejectAcl);
const PASSED: (bool, Verdict) = (false, Verdict::Accept);

#[test]
fn port_ranges_include_both_bounds_and_rules_apply_in_number_order() {
    let mut datapath = TestDatapath::load(1024);
    datapath.set_policy(
        r#"
[acl]
default = "allow"
[[acl.rule]]
number = 20
direction = "ingress"
protocol = "udp"
cidr = "0.0.0.0/0"
ports = "1000-2000"
action = "allow"
[[acl.rule]]
number = 10
direction = "ingress"
protocol = "udp"
cidr = "198.18.0.0/15"
ports = "1500"
action = "allow"
[[acl.rule]]
number = 30
direction = "ingress"
protocol = "udp"
cidr = "0.0.0.0/0"
ports = "999-2001"
action = "deny"
"#,
    );
    for (port, want) in [
        (998, PASSED),          // no rule: the default
        (999, DROPPED_BY_ACL),  // rule 30's lower bound
        (1000, PASSED),         // rule 20's lower bound, before rule 30
        (1500, PASSED),         // rule 10
        (2000, PASSED),         // rule 20's upper bound
        (2001, DROPPED_BY_ACL), // rule 30's upper bound
        (2002, PASSED),
    ] {
        assert_eq!(
            verdict_of(&mut datapath, &v4().udp(40000, port)),
            want,
            "UDP port {port}"
        );
    }
}

#[test]
fn networks_of_every_length_match_their_family_only() {
    let mut datapath = TestDatapath::load(1024);
    let v4_host = format!("{}.{}.{}.{}/32", V4_SRC[0], V4_SRC[1], V4_SRC[2], V4_SRC[3]);
    let v6_host = format!("{}/128", std::net::Ipv6Addr::from(V6_SRC));
    datapath.set_policy(&format!(
        r#"
[acl]
default = "allow"
[[acl.rule]]
number = 1
direction = "ingress"
protocol = "tcp"
cidr = "{v4_host}"
action = "deny"
[[acl.rule]]
number = 2
direction = "ingress"
protocol = "tcp"
cidr = "{v6_host}"
action = "deny"
[[acl.rule]]
number = 3
direction = "ingress"
protocol = "udp"
cidr = "0.0.0.0/0"
action = "deny"
"#
    ));
    // /32 and /128: the host itself, not its neighbour.
    assert_eq!(verdict_of(&mut datapath, &v4().tcp(1, 80)), DROPPED_BY_ACL);
    let neighbour = FrameBuilder::ipv4([198, 18, 0, 2], V4_DST).tcp(1, 80);
    assert_eq!(verdict_of(&mut datapath, &neighbour), PASSED);
    assert_eq!(verdict_of(&mut datapath, &v6().tcp(1, 80)), DROPPED_BY_ACL);
    let mut other = V6_SRC;
    other[15] ^= 1;
    let neighbour6 = FrameBuilder::ipv6(other, V6_DST).tcp(1, 80);
    assert_eq!(verdict_of(&mut datapath, &neighbour6), PASSED);
    // 0.0.0.0/0 is every IPv4 address and no IPv6 one.
    assert_eq!(verdict_of(&mut datapath, &v4().udp(1, 53)), DROPPED_BY_ACL);
    assert_eq!(verdict_of(&mut datapath, &v6().udp(1, 53)), PASSED);
}

#[test]
fn protocol_all_covers_icmp_and_port_rules_do_not() {
    let mut datapath = TestDatapath::load(1024);
    datapath.set_policy(
        r#"
[acl]
default = "deny"
[[acl.rule]]
number = 1
direction = "ingress"
protocol = "udp"
cidr = "0.0.0.0/0"
ports = "1-65535"
action = "allow"
[[acl.rule]]
number = 2
direction = "ingress"
protocol = "all"
cidr = "::/0"
action = "allow"
"#,
    );
    // ICMP has no ports: the UDP rule cannot match it, so the default denies it.
    assert_eq!(
        verdict_of(&mut datapath, &v4().icmp_echo(7, 1)),
        DROPPED_BY_ACL
    );
    assert_eq!(verdict_of(&mut datapath, &v4().udp(5, 6)), PASSED);
    // `all` matches ICMPv6 and any other protocol.
    assert_eq!(verdict_of(&mut datapath, &v6().icmpv6_echo(7, 1)), PASSED);
    assert_eq!(verdict_of(&mut datapath, &v6().protocol(132)), PASSED);
    // A non-first fragment carries no ports: port 0, outside 1-65535.
    let fragment = v4().udp(5, 6).fragment(64, false);
    assert_eq!(verdict_of(&mut datapath, &fragment), DROPPED_BY_ACL);
}

#[test]
fn the_security_group_admits_replies_and_rejects_unsolicited_packets() {
    let mut datapath = TestDatapath::load(1024);
    datapath.set_policy(
        r#"
[security_group]
[[security_group.ingress]]
protocol = "tcp"
ports = "22"
cidr = "198.18.0.0/15"
"#,
    );
    let sg_reject = (true, Verdict::RejectSecurityGroup);
    // Inbound to 22 opens a connection; to 23 nothing allows it.
    assert_eq!(
        verdict_of(&mut datapath, &v4().tcp(40000, 22).tcp_flags(0x02)),
        PASSED
    );
    assert_eq!(
        verdict_of(&mut datapath, &v4().tcp(40000, 23).tcp_flags(0x02)),
        sg_reject
    );
    // No egress section: outbound connections are allowed, and their replies come back in.
    let reply = FrameBuilder::ipv4(V4_DST, V4_SRC)
        .tcp(443, 40001)
        .tcp_flags(0x12);
    let hook = Program::TcEgress;
    let out = v4().tcp(40001, 443).tcp_flags(0x02).build();
    assert_eq!(
        datapath.try_run(hook, &out.bytes, 1).unwrap(),
        hook.pass_verdict()
    );
    datapath.drain_flows();
    assert_eq!(verdict_of(&mut datapath, &reply), PASSED);
    // An unsolicited SYN-ACK from elsewhere is not a reply to anything.
    let stray = FrameBuilder::ipv4(V4_DST, V4_SRC)
        .tcp(443, 40002)
        .tcp_flags(0x12);
    assert_eq!(verdict_of(&mut datapath, &stray), sg_reject);
}

/// Inbound, the ACL comes first: a packet it drops never reaches the security group, so it
/// opens no connection there (as in a VPC, where the network ACL drops it before the instance).
/// The same tuple outbound is then a new connection for the egress rules, not a reply.
#[test]
fn a_packet_the_acl_drops_inbound_opens_no_security_group_connection() {
    let mut datapath = TestDatapath::load(1024);
    datapath.set_policy(
        r#"
[acl]
default = "allow"
[[acl.rule]]
number = 10
direction = "ingress"
protocol = "udp"
cidr = "198.18.0.0/15"
ports = "53"
action = "deny"
[security_group]
[[security_group.ingress]]
protocol = "udp"
ports = "53"
cidr = "198.18.0.0/15"
[[security_group.egress]]
protocol = "tcp"
ports = "443"
cidr = "198.18.0.0/15"
"#,
    );
    assert_eq!(
        verdict_of(&mut datapath, &v4().udp(4000, 53).payload(8)),
        DROPPED_BY_ACL
    );
    // The same connection outbound: no egress rule allows UDP to port 4000.
    let out = FrameBuilder::ipv4(V4_DST, V4_SRC).udp(53, 4000).payload(8);
    assert_eq!(
        verdict_on(Program::TcEgress, &mut datapath, &out),
        (true, Verdict::RejectSecurityGroup)
    );
}

#[test]
fn a_new_policy_keeps_the_connections_it_still_admits() {
    let mut datapath = TestDatapath::load(1024);
    let admit = |ports: &str| {
        format!(
            "[security_group]\n[[security_group.ingress]]\nprotocol = \"tcp\"\nports = \"{ports}\"\ncidr = \"198.18.0.0/15\"\n"
        )
    };
    datapath.set_policy(&admit("22"));
    let syn = v4().tcp(40000, 22).tcp_flags(0x02);
    let ack = v4().tcp(40000, 22).tcp_flags(0x10).payload(10);
    assert_eq!(verdict_of(&mut datapath, &syn), PASSED);
    // Still admitted by the new policy: the connection goes on.
    datapath.set_policy(&admit("20-30"));
    assert_eq!(verdict_of(&mut datapath, &ack), PASSED);
    // No longer admitted: its packets are rejected.
    datapath.set_policy(&admit("80"));
    assert_eq!(
        verdict_of(&mut datapath, &ack),
        (true, Verdict::RejectSecurityGroup)
    );
}

#[test]
fn every_program_enforces_and_audit_mode_drops_nothing() {
    let mut datapath = TestDatapath::load(1024);
    let policy = |mode: &str| {
        format!(
            "mode = \"{mode}\"\n[acl]\ndefault = \"allow\"\n[[acl.rule]]\nnumber = 1\ndirection = \"ingress\"\nprotocol = \"udp\"\ncidr = \"198.18.0.0/15\"\nports = \"53\"\naction = \"deny\"\n[[acl.rule]]\nnumber = 2\ndirection = \"egress\"\nprotocol = \"udp\"\ncidr = \"198.18.0.0/15\"\nports = \"53\"\naction = \"deny\"\n"
        )
    };
    datapath.set_policy(&policy("enforce"));
    let dns = v4().udp(40000, 53);
    for hook in Program::ALL {
        assert_eq!(
            verdict_on(hook, &mut datapath, &dns),
            DROPPED_BY_ACL,
            "{hook:?}"
        );
    }
    datapath.set_policy(&policy("audit"));
    for hook in Program::ALL {
        assert_eq!(
            verdict_on(hook, &mut datapath, &dns),
            (false, Verdict::AuditAcl),
            "{hook:?}"
        );
    }
}

#[test]
fn in_audit_mode_the_replies_of_a_refused_connection_are_would_be_rejects_too() {
    let mut datapath = TestDatapath::load(1024);
    datapath.set_policy(
        "mode = \"audit\"\n[security_group]\n[[security_group.ingress]]\nprotocol = \"tcp\"\nports = \"22\"\ncidr = \"198.18.0.0/15\"\n",
    );
    let audit_sg = (false, Verdict::AuditSecurityGroup);
    // Inbound to 23: no rule. Audit mode lets it through, flagged.
    assert_eq!(
        verdict_of(&mut datapath, &v4().tcp(40000, 23).tcp_flags(0x02)),
        audit_sg
    );
    // The SYN-ACK going back out would not exist under enforcement: flagged as well, although
    // outbound connections are open (no egress section).
    let syn_ack = FrameBuilder::ipv4(V4_DST, V4_SRC)
        .tcp(23, 40000)
        .tcp_flags(0x12);
    assert_eq!(
        verdict_on(Program::TcEgress, &mut datapath, &syn_ack),
        audit_sg
    );
    // An admitted connection is plain ACCEPT.
    assert_eq!(
        verdict_of(&mut datapath, &v4().tcp(40001, 22).tcp_flags(0x02)),
        PASSED
    );
}

/// The fast path's window in the policies `TestDatapath::set_policy` compiles (a second at its
/// assumed 250 Hz, rounded down to a power of two: 128 jiffies).
const FAST_PATH_SHIFT: u32 = 7;

/// A packet of a known, accepted connection skips the connection table (the fast path): shown
/// by emptying the table, which a full check would notice. The flow's stamp holds only for the
/// rest of its window and only while nothing can have changed the verdict: after the window the
/// full check decides again, and a packet that closes the connection (an RST the other way) or
/// a new policy ends the stamp at once. Counts are exact throughout.
#[test]
fn known_connections_skip_the_connection_table_until_their_verdict_can_change() {
    let mut datapath = TestDatapath::load(1024);
    // Inbound connections only to 22; outbound connections are open and their replies come in.
    datapath.set_policy(
        "[security_group]\n[[security_group.ingress]]\nprotocol = \"tcp\"\nports = \"22\"\ncidr = \"198.18.0.0/15\"\n",
    );
    let out = |port: u16, flags: u8| v4().tcp(port, 443).tcp_flags(flags).build().bytes;
    let reply = |port: u16, flags: u8| {
        FrameBuilder::ipv4(V4_DST, V4_SRC)
            .tcp(443, port)
            .tcp_flags(flags)
            .payload(100)
    };
    let (egress, ingress) = (Program::TcEgress, Program::TcIngress);
    let window = |datapath: &TestDatapath| datapath.jiffies() >> FAST_PATH_SHIFT;

    // 1. Replies of an outbound connection, stamped by their first full check. Repeated with a
    //    new port if a window ends in between (then the full check runs again, as it should).
    let mut port = 40_000;
    let (mut fast_replies, mut window_of_stamp) = (0, 0);
    for _attempt in 0..5 {
        port += 1;
        window_of_stamp = window(&datapath);
        datapath.send(egress, &out(port, SYN), 1);
        datapath.send(ingress, &reply(port, SYN | ACK).build().bytes, 1);
        datapath.send(ingress, &reply(port, ACK).build().bytes, 3);
        datapath.forget_connections();
        // A full check would now refuse these (no rule admits a connection from port 443);
        // the stamp passes them.
        fast_replies = 0;
        while fast_replies < 2
            && datapath
                .try_run(ingress, &reply(port, ACK).build().bytes, 1)
                .unwrap()
                == ingress.pass_verdict()
        {
            fast_replies += 1;
        }
        if window(&datapath) == window_of_stamp {
            break;
        }
        datapath.drain_flows();
    }
    assert_eq!(fast_replies, 2, "known replies took the full check");
    // 2. The next window: the full check again, which no longer knows the connection.
    while window(&datapath) == window_of_stamp {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        datapath
            .try_run(ingress, &reply(port, ACK).build().bytes, 1)
            .unwrap(),
        ingress.drop_verdict(),
        "a stamp outlived its window"
    );
    // 3. Another connection: its replies stamped, then an RST out closes it. The very next
    //    reply is a packet of a closed connection.
    let closing = port + 100;
    datapath.send(egress, &out(closing, SYN), 1);
    datapath.send(ingress, &reply(closing, SYN | ACK).build().bytes, 1);
    datapath.send(ingress, &reply(closing, ACK).build().bytes, 2);
    datapath.send(egress, &out(closing, RST), 1);
    assert_eq!(
        datapath
            .try_run(ingress, &reply(closing, ACK).build().bytes, 1)
            .unwrap(),
        ingress.drop_verdict(),
        "a reply after the RST passed on a stamp"
    );
    // 4. Another connection stamped, then a new policy (an ACL refusing every inbound packet):
    //    the very next reply is decided by it, not by the old policy's stamp.
    let renewed = closing + 100;
    datapath.send(egress, &out(renewed, SYN), 1);
    datapath.send(ingress, &reply(renewed, SYN | ACK).build().bytes, 1);
    datapath.send(ingress, &reply(renewed, ACK).build().bytes, 2);
    datapath.set_policy(
        "[acl]\ndefault = \"allow\"\n[[acl.rule]]\nnumber = 1\ndirection = \"ingress\"\nprotocol = \"all\"\ncidr = \"0.0.0.0/0\"\naction = \"deny\"\n",
    );
    assert_eq!(
        datapath
            .try_run(ingress, &reply(renewed, ACK).build().bytes, 1)
            .unwrap(),
        ingress.drop_verdict(),
        "a stamp outlived its policy"
    );

    let flows = datapath.drain_flows();
    let packets = |hook: Program, src_port: u16, dst_port: u16, verdict: Verdict| {
        let mut key = v4_key(hook, 6, src_port, dst_port);
        if hook == ingress {
            (key.src_addr, key.dst_addr) = (key.dst_addr, key.src_addr);
        }
        key.verdict = verdict as u8;
        flows.get(&key).map_or(0, |counts| counts.packets)
    };
    // SYN-ACK, three replies, two on the stamp.
    assert_eq!(
        packets(ingress, 443, port, Verdict::Accept),
        6,
        "{flows:#?}"
    );
    assert_eq!(packets(ingress, 443, port, Verdict::RejectSecurityGroup), 1);
    assert_eq!(packets(egress, port, 443, Verdict::Accept), 1);
    assert_eq!(packets(ingress, 443, closing, Verdict::Accept), 3);
    assert_eq!(
        packets(ingress, 443, closing, Verdict::RejectClosedConnection),
        1
    );
    assert_eq!(packets(egress, closing, 443, Verdict::Accept), 2);
    assert_eq!(packets(ingress, 443, renewed, Verdict::Accept), 3);
    assert_eq!(packets(ingress, 443, renewed, Verdict::RejectAcl), 1);
    assert_eq!(packets(egress, renewed, 443, Verdict::Accept), 1);
    let total: u64 = flows.values().map(|counts| counts.packets).sum();
    assert_eq!(total, 19, "{flows:#?}");
}
