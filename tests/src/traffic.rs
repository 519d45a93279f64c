//! Known traffic between test namespaces, and what it puts on the wire (packets, IP bytes) as
//! the kernel's own counters see it.

use std::{
    io::{Read, Write},
    mem,
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use crate::netns::{NetNs, in_netns};

/// IP header bytes of a packet without options or extension headers.
pub fn ip_header_len(address: IpAddr) -> u64 {
    match address {
        IpAddr::V4(_) => 20,
        IpAddr::V6(_) => 40,
    }
}

/// A UDP socket bound to `address` inside `ns`.
pub fn udp_socket(ns: &NetNs, address: SocketAddr) -> UdpSocket {
    let socket = in_netns(ns, || UdpSocket::bind(address))
        .expect("enter namespace")
        .unwrap_or_else(|e| panic!("binding {address}: {e}"));
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    socket
}

/// Sends `count` datagrams of `payload` bytes from `from` to `to` and waits until `to` has
/// received them all, so nothing is in flight when the test reads the records. Returns the
/// packets and IP bytes that crossed the wire.
pub fn udp_exchange(from: &UdpSocket, to: &UdpSocket, count: u64, payload: usize) -> (u64, u64) {
    let destination = to.local_addr().expect("bound");
    let data = vec![0x5a; payload];
    for _ in 0..count {
        from.send_to(&data, destination).expect("send");
    }
    let mut buffer = vec![0; 65536];
    for received in 0..count {
        match to.recv_from(&mut buffer) {
            Ok((n, _)) => assert_eq!(n, payload, "datagram size"),
            Err(e) => panic!("only {received} of {count} datagrams arrived: {e}"),
        }
    }
    let per_packet = ip_header_len(destination.ip()) + 8 + payload as u64;
    (count, count * per_packet)
}

/// `UDP_SEGMENT` from linux/udp.h: the kernel sends one GSO super-packet that the wire sees as
/// segments of `segment_size` bytes.
const UDP_SEGMENT: libc::c_int = 103;

/// Sends one `payload`-byte buffer as a UDP GSO super-packet cut in `segment_size` pieces, and
/// waits for every segment to arrive. Returns the wire packets and IP bytes.
pub fn udp_gso_exchange(
    from: &UdpSocket,
    to: &UdpSocket,
    payload: usize,
    segment_size: u16,
) -> (u64, u64) {
    let destination = to.local_addr().expect("bound");
    let size = libc::c_int::from(segment_size);
    // SAFETY: setsockopt reads an int from a pointer valid for the call.
    let rc = unsafe {
        libc::setsockopt(
            from.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    from.send_to(&vec![0x47; payload], destination)
        .expect("GSO send");
    // SAFETY: as above; 0 turns segmentation off again.
    let off: libc::c_int = 0;
    unsafe {
        libc::setsockopt(
            from.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&off as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let segments = payload.div_ceil(segment_size as usize) as u64;
    let mut buffer = vec![0; 65536];
    let mut received_bytes = 0;
    for received in 0..segments {
        match to.recv_from(&mut buffer) {
            Ok((n, _)) => received_bytes += n,
            Err(e) => panic!("only {received} of {segments} GSO segments arrived: {e}"),
        }
    }
    assert_eq!(received_bytes, payload);
    let headers = ip_header_len(destination.ip()) + 8;
    (segments, segments * headers + payload as u64)
}

/// Turns off the TCP options whose presence varies per segment (timestamps, SACK, window
/// scaling) in a namespace, so that every segment has a 20-byte TCP header except SYN and
/// SYN-ACK, which carry only the 4-byte MSS option.
pub fn plain_tcp_headers(ns: &NetNs) {
    for key in ["tcp_timestamps", "tcp_sack", "tcp_window_scaling"] {
        ns.set_sysctl(&format!("net/ipv4/{key}"), "0")
            .expect("TCP sysctl");
    }
}

/// Packets and IP bytes of one direction of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wire {
    pub packets: u64,
    pub bytes: u64,
}

/// What a TCP exchange put on the wire, per direction, from the sockets' own counters.
#[derive(Clone, Copy, Debug)]
pub struct TcpExchange {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub client_to_server: Wire,
    pub server_to_client: Wire,
}

/// The fields of `struct tcp_info` (linux/tcp.h) the tests need, at their offsets.
struct TcpInfo {
    state: u8,
    segs_out: u64,
    segs_in: u64,
    bytes_sent: u64,
}

const TCP_CLOSE: u8 = 7;

fn tcp_info(stream: &TcpStream) -> TcpInfo {
    let mut buffer = [0u8; 256];
    let mut len = buffer.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `buffer` and the actual size into len.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buffer.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(len >= 208, "this kernel's tcp_info lacks tcpi_bytes_sent");
    let u32_at = |offset: usize| {
        u64::from(u32::from_ne_bytes(
            buffer[offset..offset + 4].try_into().expect("4 bytes"),
        ))
    };
    let u64_at =
        |offset: usize| u64::from_ne_bytes(buffer[offset..offset + 8].try_into().expect("8 bytes"));
    TcpInfo {
        state: buffer[0],
        segs_out: u32_at(136),
        segs_in: u32_at(140),
        bytes_sent: u64_at(200),
    }
}

fn wait_closed(stream: &TcpStream) -> TcpInfo {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = tcp_info(stream);
        if info.state == TCP_CLOSE {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "TCP socket not closed after 10 s"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// A client in `client_ns` sends `request` bytes to a server in `server_ns`, which answers with
/// `response` bytes; both close in order. Both namespaces must have [`plain_tcp_headers`].
///
/// The wire counts come from the client's `tcp_info`, which counts every segment the client
/// sends (SYN and pure ACKs included) and receives (the SYN-ACK included), GSO segments one by
/// one, and the payload bytes each side sent (retransmissions included). Headers: IP, 20 TCP
/// bytes, and 4 more for the MSS option of the SYN and of the SYN-ACK.
pub fn tcp_exchange(
    client_ns: &NetNs,
    server_ns: &NetNs,
    server: SocketAddr,
    request: usize,
    response: usize,
) -> TcpExchange {
    let listener = in_netns(server_ns, || TcpListener::bind(server))
        .expect("namespace")
        .expect("listen");
    let server_thread = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("read request");
        assert_eq!(received.len(), request, "request bytes");
        stream
            .write_all(&vec![0x33; response])
            .expect("write response");
        stream.shutdown(Shutdown::Write).expect("FIN");
        wait_closed(&stream)
    });
    let mut stream = in_netns(client_ns, || TcpStream::connect(server))
        .expect("namespace")
        .expect("connect");
    let client = stream.local_addr().expect("bound");
    stream
        .write_all(&vec![0x11; request])
        .expect("write request");
    stream.shutdown(Shutdown::Write).expect("FIN");
    let mut received = Vec::new();
    stream.read_to_end(&mut received).expect("read response");
    assert_eq!(received.len(), response, "response bytes");
    let client_info = wait_closed(&stream);
    let server_info = server_thread.join().expect("server thread");

    let header = ip_header_len(server.ip()) + 20;
    const MSS_OPTION: u64 = 4;
    TcpExchange {
        client,
        server,
        client_to_server: Wire {
            packets: client_info.segs_out,
            bytes: client_info.segs_out * header + MSS_OPTION + client_info.bytes_sent,
        },
        server_to_client: Wire {
            packets: client_info.segs_in,
            bytes: client_info.segs_in * header + MSS_OPTION + server_info.bytes_sent,
        },
    }
}

/// Sends `count` datagrams of `payload` bytes that must not arrive; returns the wire count.
pub fn udp_dropped(from: &UdpSocket, to: &UdpSocket, count: u64, payload: usize) -> (u64, u64) {
    let destination = to.local_addr().expect("bound");
    for _ in 0..count {
        from.send_to(&vec![1; payload], destination).expect("send");
    }
    to.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buffer = [0; 2048];
    assert!(
        to.recv_from(&mut buffer).is_err(),
        "a datagram to {destination} arrived although the policy drops it"
    );
    to.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    (
        count,
        count * (ip_header_len(destination.ip()) + 8 + payload as u64),
    )
}
