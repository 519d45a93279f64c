//! The namespace helpers themselves: a two-namespace topology carries traffic, guards clean up,
//! and the safety checks refuse what they must. Needs root.

use std::{
    error::Error,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::unix::fs::MetadataExt,
    panic::{self, AssertUnwindSafe},
    path::Path,
    process::Command,
    time::Duration,
};

use tests::netns::{self, NetNs, in_netns, veth_pair};

type TestResult = Result<(), Box<dyn Error>>;

const V4_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const V4_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const V6_A: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const V6_B: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);

/// Two namespaces joined by a veth pair `a0` - `b0`, with one IPv4 and one IPv6 address each.
fn two_namespaces() -> Result<(NetNs, NetNs), Box<dyn Error>> {
    let (a, b) = (NetNs::new()?, NetNs::new()?);
    veth_pair(&a, "a0", &b, "b0")?;
    for (ns, link, v4, v6) in [(&a, "a0", V4_A, V6_A), (&b, "b0", V4_B, V6_B)] {
        ns.add_address(link, v4, 24)?;
        ns.add_address(link, v6, 64)?;
        ns.link_up("lo")?;
        ns.link_up(link)?;
    }
    Ok((a, b))
}

/// The identity of the network namespace the calling thread is in.
fn thread_netns() -> (u64, u64) {
    let meta = fs::metadata("/proc/thread-self/ns/net").expect("own namespace");
    (meta.dev(), meta.ino())
}

fn netns_identity(ns: &NetNs) -> (u64, u64) {
    let meta = fs::metadata(ns.path()).expect("namespace file");
    (meta.dev(), meta.ino())
}

fn udp_round_trip(a: &NetNs, b: &NetNs, from: IpAddr, to: IpAddr) -> TestResult {
    let receiver = in_netns(b, || UdpSocket::bind(SocketAddr::new(to, 0)))??;
    let sender = in_netns(a, || UdpSocket::bind(SocketAddr::new(from, 0)))??;
    receiver.set_read_timeout(Some(Duration::from_secs(5)))?;
    let message: Vec<u8> = (0..=255u8).chain(b"flowlog".iter().copied()).collect();
    sender.send_to(&message, receiver.local_addr()?)?;

    let mut buffer = [0u8; 1024];
    let (len, peer) = receiver.recv_from(&mut buffer)?;
    assert_eq!(&buffer[..len], &message[..]);
    assert_eq!(peer, sender.local_addr()?);
    Ok(())
}

#[test]
fn udp_crosses_a_veth_pair_between_namespaces() -> TestResult {
    let (a, b) = two_namespaces()?;
    udp_round_trip(&a, &b, V4_A.into(), V4_B.into())?;
    udp_round_trip(&a, &b, V6_A.into(), V6_B.into())?;
    // The veth ends exist only in their namespaces.
    assert!(a.ifindex("a0")? > 0 && b.ifindex("b0")? > 0);
    assert!(a.ifindex("b0").is_err());
    let host_links = Command::new("ip").args(["-o", "link", "show"]).output()?;
    let host_links = String::from_utf8(host_links.stdout)?;
    assert!(!host_links.contains(" a0@") && !host_links.contains(" b0@"));
    Ok(())
}

#[test]
fn namespaces_are_gone_after_their_guards_drop() -> TestResult {
    let (a, b) = two_namespaces()?;
    let names = [a.name().to_owned(), b.name().to_owned()];
    let paths = [a.path(), b.path()];
    for name in &names {
        assert!(name.starts_with("flowlog-t-"), "{name}");
    }
    // A socket keeps its namespace alive in the kernel; the guard still removes name and links.
    let socket = in_netns(&a, || UdpSocket::bind((V4_A, 0)))??;
    drop((a, b));
    let listed = Command::new("ip").args(["netns", "list"]).output()?;
    let listed = String::from_utf8(listed.stdout)?;
    for (name, path) in names.iter().zip(&paths) {
        assert!(!path.exists(), "{} still exists", path.display());
        assert!(!listed.contains(name.as_str()), "{name} still listed");
    }
    drop(socket);

    // Also when the test panics while holding the guard.
    let mut name = String::new();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let ns = NetNs::new().expect("namespace");
        name = ns.name().to_owned();
        panic!("test failure while {name} exists");
    }));
    assert!(result.is_err());
    assert!(!Path::new("/var/run/netns").join(&name).exists());
    Ok(())
}

#[test]
fn processes_inside_a_namespace_end_with_it() -> TestResult {
    let ns = NetNs::new()?;
    let mut child = ns.command("sleep").arg("30").spawn()?;
    // Wait (bounded) until `ip netns exec` has moved into the namespace.
    let mut inside = false;
    for _ in 0..100 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns.name()])
            .output()?;
        let child_pid = child.id().to_string();
        if String::from_utf8(pids.stdout)?
            .split_whitespace()
            .any(|pid| pid == child_pid)
        {
            inside = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(inside, "sleep never showed up in {}", ns.name());
    drop(ns);
    let status = child.wait()?;
    assert!(!status.success(), "sleep was not killed: {status}");
    Ok(())
}

#[test]
fn addresses_outside_the_test_ranges_are_refused() -> TestResult {
    let (a, _b) = two_namespaces()?;
    let refused: [(IpAddr, u8); 8] = [
        (Ipv4Addr::new(8, 8, 8, 8).into(), 32),
        (Ipv4Addr::new(192, 168, 1, 1).into(), 24),
        (Ipv4Addr::new(198, 20, 0, 1).into(), 24),
        (Ipv4Addr::new(10, 0, 0, 1).into(), 8),
        // In range, but the subnet reaches outside it.
        (Ipv4Addr::new(198, 18, 0, 1).into(), 8),
        ("2001:db8::1".parse::<Ipv6Addr>()?.into(), 64),
        ("fe80::1".parse::<Ipv6Addr>()?.into(), 64),
        ("fd00::1".parse::<Ipv6Addr>()?.into(), 7),
    ];
    for (addr, prefix_len) in refused {
        match a.add_address("a0", addr, prefix_len) {
            Err(netns::Error::AddressNotAllowed { .. }) => {}
            other => panic!("{addr}/{prefix_len} was not refused: {other:?}"),
        }
    }
    let addresses = a.ip(&["-o", "addr", "show", "dev", "a0"])?;
    for (addr, prefix_len) in refused {
        let cidr = format!(" {addr}/{prefix_len} ");
        assert!(!addresses.contains(&cidr), "{cidr} was added");
    }
    // The edges of the ranges are accepted.
    netns::check_test_address(Ipv4Addr::new(198, 19, 255, 254).into(), 15)?;
    netns::check_test_address("fdff:ffff::1".parse::<Ipv6Addr>()?.into(), 8)?;
    Ok(())
}

#[test]
fn unsafe_names_and_sysctls_are_refused() -> TestResult {
    let (a, b) = (NetNs::new()?, NetNs::new()?);
    for name in ["", "sixteen-chars-xx", "a/b", "a b", "x@y", ".."] {
        assert!(
            matches!(
                veth_pair(&a, name, &b, "b0"),
                Err(netns::Error::InvalidInterfaceName(_))
            ),
            "{name:?}"
        );
    }
    veth_pair(&a, "fifteen-chars-x", &b, "b0")?;
    // A link cannot be moved out of the test namespaces.
    for args in [
        &["link", "set", "b0", "netns", "1"][..],
        &[
            "link", "add", "x0", "type", "veth", "peer", "name", "x1", "netns",
        ],
    ] {
        assert!(
            matches!(a.ip(args), Err(netns::Error::OutsideTestNamespaces(_))),
            "{args:?}"
        );
    }
    let to_b = [
        "link",
        "add",
        "x0",
        "type",
        "veth",
        "peer",
        "name",
        "x1",
        "netns",
        b.name(),
    ];
    a.ip(&to_b)?;
    assert!(b.ifindex("x1")? > 0);
    for key in [
        "kernel.hostname",
        "vm/swappiness",
        "net/../kernel/hostname",
        "net",
    ] {
        assert!(
            matches!(
                a.set_sysctl(key, "1"),
                Err(netns::Error::SysctlNotAllowed(_))
            ),
            "{key}"
        );
    }
    Ok(())
}

#[test]
fn sysctls_and_disabled_ipv6_stay_inside_the_namespace() -> TestResult {
    let host_forwarding = fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    let (a, b) = (NetNs::new()?, NetNs::new()?);
    let flipped = if host_forwarding.trim() == "1" {
        "0"
    } else {
        "1"
    };
    a.set_sysctl("net.ipv4.ip_forward", flipped)?;
    assert_eq!(a.sysctl("net.ipv4.ip_forward")?, flipped);
    assert_eq!(b.sysctl("net/ipv4/ip_forward")?, host_forwarding.trim());
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?,
        host_forwarding
    );

    veth_pair(&a, "quiet0", &b, "loud0")?;
    a.disable_ipv6("quiet0")?;
    a.link_up("quiet0")?;
    b.link_up("loud0")?;
    assert_eq!(a.sysctl("net.ipv6.conf.quiet0.disable_ipv6")?, "1");
    assert_eq!(a.ip(&["-6", "-o", "addr", "show", "dev", "quiet0"])?, "");
    assert_eq!(b.sysctl("net.ipv6.conf.loud0.disable_ipv6")?, "0");
    Ok(())
}

#[test]
fn in_netns_returns_to_the_original_namespace() -> TestResult {
    let ns = NetNs::new()?;
    let original = thread_netns();
    let inside = in_netns(&ns, thread_netns)?;
    assert_eq!(inside, netns_identity(&ns));
    assert_ne!(inside, original);
    assert_eq!(thread_netns(), original);

    // Also when the closure panics.
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        in_netns(&ns, || panic!("inside the namespace"))
    }));
    assert!(result.is_err());
    assert_eq!(thread_netns(), original);

    // Nested calls restore the outer namespace.
    let other = NetNs::new()?;
    let (outer, nested, back) = in_netns(&ns, || {
        let nested = in_netns(&other, thread_netns).expect("nested");
        (netns_identity(&ns), nested, thread_netns())
    })?;
    assert_eq!((nested, back), (netns_identity(&other), outer));
    assert_eq!(thread_netns(), original);
    Ok(())
}

#[test]
fn sweep_removes_only_namespaces_of_dead_processes() -> TestResult {
    let live = NetNs::new()?;
    // A pid that is certainly gone: a child that has been reaped.
    let mut child = Command::new("true").spawn()?;
    let dead_pid = child.id();
    child.wait()?;
    let stale = format!("flowlog-t-{dead_pid}-0");
    let status = Command::new("ip").args(["netns", "add", &stale]).status()?;
    assert!(status.success());

    let removed = netns::sweep_stale()?;
    let stale_gone = !Path::new("/var/run/netns").join(&stale).exists();
    if !stale_gone {
        // Never leave it behind, even if the assertion below fails.
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
    }
    assert!(stale_gone && removed.contains(&stale), "{removed:?}");
    assert!(live.path().exists());
    assert!(!removed.iter().any(|name| name == live.name()));
    Ok(())
}
