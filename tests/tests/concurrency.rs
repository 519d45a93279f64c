//! One flow updated from every CPU at once while the agent's drain runs again and again: the
//! sum of all drains must be exactly what was sent, and the drains must have merged entries of
//! the same flow from several CPUs (so the test really exercised concurrency).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use flowlog_agent::datapath::{Datapath, DatapathConfig, Hook, TcMode};
use flowlog_common::flow::{Direction, FlowKey};
use tests::{
    netns::in_netns,
    topology::Topology,
    traffic::{ip_header_len, udp_socket},
};

const PAYLOAD: usize = 64;
const DATAGRAMS_PER_THREAD: u64 = 40_000;
const BURST: u64 = 32;
/// Receive buffer of each socket (SO_RCVBUFFORCE, past net.core.rmem_max).
const RECEIVE_BUFFER: libc::c_int = 16 << 20;

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it for the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "pinning to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Receives datagrams on `socket` until told to stop; returns how many arrived.
fn receiver(socket: Arc<UdpSocket>, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    // SAFETY: setsockopt reads an int from a pointer valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&RECEIVE_BUFFER as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    thread::spawn(move || {
        let mut buffer = [0u8; 2048];
        let mut received = 0;
        loop {
            match socket.recv_from(&mut buffer) {
                Ok(_) => received += 1,
                Err(_) if stop.load(Ordering::Relaxed) => return received,
                Err(_) => {}
            }
        }
    })
}

/// Senders pinned to each CPU, all on the same socket (one 5-tuple).
fn senders(socket: &Arc<UdpSocket>, to: SocketAddr, cpus: usize) -> Vec<thread::JoinHandle<()>> {
    (0..cpus)
        .map(|cpu| {
            let socket = Arc::clone(socket);
            thread::spawn(move || {
                pin_to_cpu(cpu);
                let data = [0x42u8; PAYLOAD];
                // Bursts with pauses, so neither the veth backlog nor the receiving socket
                // overflows (a drop before the interface would make the count unjudgeable).
                for sent in 0..DATAGRAMS_PER_THREAD {
                    socket.send_to(&data, to).expect("send");
                    if sent % BURST == BURST - 1 {
                        thread::sleep(Duration::from_micros(500));
                    }
                }
            })
        })
        .collect()
}

fn matches(key: &FlowKey, from: SocketAddr, to: SocketAddr, direction: Direction) -> bool {
    let address = FlowKey::address_bytes;
    key.direction == direction as u8
        && key.protocol == 17
        && key.src_addr == address(from.ip())
        && key.dst_addr == address(to.ip())
        && key.src_port() == from.port()
        && key.dst_port() == to.port()
}

#[test]
fn one_flow_from_every_cpu_while_draining_counts_exactly() {
    let cpus = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let Topology { a, b, .. } = Topology::builder().build();
    let a4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 5001);
    let b4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 5002);
    let a6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)), 5001);
    let b6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)), 5002);

    let mut datapath = Datapath::load(DatapathConfig { max_flows: 65_536 }).expect("load");
    let ifindex = a.ifindex("a0").expect("ifindex");
    in_netns(&a, || {
        datapath
            .attach("a0", ifindex, Hook::Tc, TcMode::for_running_kernel())
            .map(drop)
    })
    .expect("namespace")
    .expect("attach");

    // Egress at a0: A sends to B from every CPU. Ingress at a0: B sends to A from every CPU.
    let flows = [
        (a4, b4, Direction::Egress),
        (b4, a4, Direction::Ingress),
        (a6, b6, Direction::Egress),
        (b6, a6, Direction::Ingress),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    let mut all_senders = Vec::new();
    // One socket per end: each sends its flow from every CPU and receives the other's.
    for (near, far) in [(a4, b4), (a6, b6)] {
        let near_socket = Arc::new(udp_socket(&a, near));
        let far_socket = Arc::new(udp_socket(&b, far));
        all_senders.extend(senders(&near_socket, far, cpus));
        all_senders.extend(senders(&far_socket, near, cpus));
        // Received by the far end: near -> far; by the near end: far -> near.
        receivers.push(receiver(far_socket, Arc::clone(&stop)));
        receivers.push(receiver(near_socket, Arc::clone(&stop)));
    }

    // Drain again and again while the senders run.
    let mut counted = vec![(0u64, 0u64); flows.len()];
    let (mut entries, mut merged) = (0usize, 0usize);
    let mut drains = 0;
    let mut drain = |datapath: &mut Datapath| {
        let drained = datapath.drain_interval().expect("drain");
        entries += drained.entries;
        merged += drained.flows.len();
        for (key, counters) in &drained.flows {
            for (i, (from, to, direction)) in flows.iter().enumerate() {
                if matches(key, *from, *to, *direction) {
                    counted[i].0 += counters.packets;
                    counted[i].1 += counters.bytes;
                }
            }
        }
    };
    while all_senders.iter().any(|s| !s.is_finished()) {
        drain(&mut datapath);
        drains += 1;
        thread::sleep(Duration::from_millis(10));
    }
    for sender in all_senders {
        sender.join().expect("sender");
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let received: Vec<u64> = receivers
        .into_iter()
        .map(|r| r.join().expect("receiver"))
        .collect();
    drain(&mut datapath);

    let sent = DATAGRAMS_PER_THREAD * cpus as u64;
    for (i, (from, to, direction)) in flows.iter().enumerate() {
        assert_eq!(
            received[i], sent,
            "{from} -> {to}: traffic was lost before the test could judge"
        );
        let bytes = sent * (ip_header_len(to.ip()) + 8 + PAYLOAD as u64);
        assert_eq!(
            counted[i],
            (sent, bytes),
            "{from} -> {to} ({direction:?}) over {drains} drains"
        );
    }
    eprintln!("concurrency: {drains} drains, {entries} entries for {merged} flows");
    assert!(drains >= 5, "only {drains} drains ran during the traffic");
    if cpus > 1 {
        assert!(
            entries > merged,
            "no flow was ever counted by two CPUs in one interval ({entries} entries, {merged} flows)"
        );
    }
}
