//! `ipfix+udp://HOST:PORT` and `ipfix+tcp://HOST:PORT`: records as IPFIX (RFC 7011) to a flow
//! collector (nfdump, pmacct, goflow2, ...).
//!
//! - UDP: data sets packed into datagrams that fit the configured MTU; the templates go first
//!   and again every `template-refresh` or `template-refresh-messages`, whichever comes first.
//!   A datagram the kernel refuses to send (no route, or the collector's port unreachable, which
//!   the kernel reports on the next send) is dropped, its records counted and logged; the
//!   collector sees the gap in the sequence numbers. Nothing is retried over UDP, so nothing is
//!   duplicated.
//! - TCP: one connection, templates once at its start, sequence numbers from 0 per connection.
//!   Before each interval the connection is checked for a collector that has gone away; a
//!   failed connect, or a write that fails or makes no progress for [`WRITE_TIMEOUT`] (a
//!   collector that stopped reading), drops the connection and fails the write. The driver
//!   retries with backoff on a new connection (templates first), which carries only the
//!   records not yet written whole: a message cut by the failure is sent again, nothing that
//!   was written whole is.
//!
//! NODATA records have no IPFIX form (an idle interface exports nothing); SKIPDATA counts go out
//! as options records carrying running totals (see `encoder`).

pub mod encoder;
mod spec;

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket},
};

pub use encoder::{
    DataRecord, FlowData, MessageEncoder, SkippedData, forwarding_status, ie as information_element,
};
pub use spec::{DEFAULT_MTU, DEFAULT_PORT, IpfixSpec, IpfixSpecError, OPTIONS, Transport};

use super::{Sink, SinkError};
use crate::record::{IntervalRecords, RecordKind};

/// TCP has no path MTU to respect; messages are cut at this size to bound collectors' buffers.
pub const TCP_MESSAGE_LEN: usize = 16 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one message may take to go into the connection: a collector that accepts but does
/// not read fills the socket buffers, and the write would block forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `flowlog-agent check` waits for a TCP collector to accept.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const UDP_HEADER_LEN: usize = 8;

pub struct IpfixSink {
    spec: IpfixSpec,
    encoder: MessageEncoder,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    /// UDP template refresh: when the templates last went out and data messages since then.
    templates_sent_at: Option<Instant>,
    messages_since_templates: u32,
    /// SKIPDATA running totals per (ifindex, interface).
    skipped_totals: BTreeMap<(u32, Arc<str>), (u64, u64)>,
    /// The interval whose SKIPDATA is already in the totals (a retried write must not add it
    /// twice).
    last_counted: Option<Arc<IntervalRecords>>,
    /// TCP: the interval a failed write was cut in, and how many of its data records went out
    /// in messages written whole (the retry starts after them).
    tcp_progress: Option<(Arc<IntervalRecords>, usize)>,
    /// Records in UDP datagrams that could not be sent.
    records_dropped: u64,
    /// IPFIX messages (templates included) the socket took: sent datagrams' payloads, or
    /// messages written whole to the TCP stream.
    bytes_written: Counter,
    scratch: Vec<Vec<u8>>,
}

impl IpfixSink {
    pub fn new(spec: IpfixSpec) -> Self {
        let encoder = MessageEncoder::new(spec.observation_domain, TCP_MESSAGE_LEN);
        Self {
            spec,
            encoder,
            udp: None,
            tcp: None,
            templates_sent_at: None,
            messages_since_templates: 0,
            skipped_totals: BTreeMap::new(),
            last_counted: None,
            tcp_progress: None,
            records_dropped: 0,
            bytes_written: Counter::default(),
            scratch: Vec::new(),
        }
    }

    /// Records dropped so far (UDP datagrams that could not be sent).
    pub fn records_dropped(&self) -> u64 {
        self.records_dropped
    }

    /// Encodes the interval's records into `self.scratch`; returns records per message. Each
    /// record carries its interface's index (`ingressInterface`/`egressInterface`), so an
    /// interface attached after start-up exports its own. The first `skip` data records (flows
    /// and SKIPDATA) are left out: they went out before.
    fn encode(
        &mut self,
        interval: &Arc<IntervalRecords>,
        max_message_len: usize,
        skip: usize,
    ) -> Vec<usize> {
        let already_counted = self
            .last_counted
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, interval));
        if !already_counted {
            for record in &interval.records {
                if let RecordKind::SkipData { packets, bytes } = record.kind {
                    let key = (record.ifindex, record.interface.clone());
                    let totals = self.skipped_totals.entry(key).or_default();
                    totals.0 = totals.0.wrapping_add(packets);
                    totals.1 = totals.1.wrapping_add(bytes);
                }
            }
            self.last_counted = Some(Arc::clone(interval));
        }
        let totals = &self.skipped_totals;
        let observed_ms = interval.end.saturating_mul(1000);
        let records = interval.records.iter().filter_map(|record| {
            let ifindex = record.ifindex;
            match &record.kind {
                RecordKind::Flow(flow) => Some(DataRecord::Flow(FlowData {
                    flow,
                    ifindex,
                    interface: &record.interface,
                    start_ms: record.start.saturating_mul(1000),
                    end_ms: record.end.saturating_mul(1000),
                })),
                RecordKind::SkipData { .. } => {
                    let (packets_total, octets_total) =
                        totals[&(ifindex, record.interface.clone())];
                    Some(DataRecord::Skipped(SkippedData {
                        ifindex,
                        interface: &record.interface,
                        observed_ms,
                        packets_total,
                        octets_total,
                    }))
                }
                RecordKind::NoData => None,
            }
        });
        let records = records.skip(skip);
        self.scratch.clear();
        self.encoder.set_max_message_len(max_message_len);
        self.encoder.data(records, export_time(), &mut self.scratch)
    }

    async fn write_udp(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        if self.udp.is_none() {
            self.udp = Some(connect_udp(&self.spec).await?);
            self.templates_sent_at = None;
        }
        let socket = self.udp.as_ref().expect("connected above");
        let collector = socket.peer_addr()?;
        let ip_header = if collector.is_ipv4() { 20 } else { 40 };
        let max_len = usize::from(self.spec.mtu) - ip_header - UDP_HEADER_LEN;
        let counts = self.encode(&interval, max_len, 0);

        let socket = self.udp.as_ref().expect("connected above");
        let mut dropped = 0u64;
        let mut last_error = None;
        for (message, records) in self.scratch.iter().zip(&counts) {
            let due = self.templates_sent_at.is_none_or(|at| {
                at.elapsed() >= self.spec.template_refresh
                    || self.messages_since_templates >= self.spec.template_refresh_messages
            });
            if due {
                let templates = self.encoder.templates(export_time());
                // A template datagram that is lost is sent again at the next refresh.
                match socket.send(&templates).await {
                    Ok(sent) => {
                        self.bytes_written.inc_by(sent as u64);
                        self.templates_sent_at = Some(Instant::now());
                        self.messages_since_templates = 0;
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            match socket.send(message).await {
                Ok(sent) => {
                    self.bytes_written.inc_by(sent as u64);
                    self.messages_since_templates += 1;
                }
                Err(error) => {
                    dropped += *records as u64;
                    last_error = Some(error);
                }
            }
        }
        if dropped > 0 {
            self.records_dropped += dropped;
            tracing::warn!(
                sink = %self.spec,
                records = dropped,
                dropped_total = self.records_dropped,
                error = %last_error.as_ref().map(ToString::to_string).unwrap_or_default(),
                "IPFIX datagrams not sent; records dropped"
            );
        }
        Ok(())
    }

    async fn write_tcp(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        if self.tcp.as_ref().is_some_and(|s| !still_connected(s)) {
            tracing::warn!(sink = %self.spec, "collector closed the connection; reconnecting");
            self.tcp = None;
        }
        let skip = match &self.tcp_progress {
            Some((cut, sent)) if Arc::ptr_eq(cut, &interval) => *sent,
            _ => 0,
        };
        let mut fresh = None;
        if self.tcp.is_none() {
            let stream = connect_tcp(&self.spec).await?;
            tracing::info!(sink = %self.spec, peer = ?stream.peer_addr().ok(), "connected to the collector");
            self.encoder.reset_sequence();
            fresh = Some(self.encoder.templates(export_time()));
            self.tcp = Some(stream);
        }
        let counts = self.encode(&interval, TCP_MESSAGE_LEN, skip);
        let stream = self.tcp.as_mut().expect("connected above");
        let bytes_written = &self.bytes_written;
        let mut sent = 0;
        let messages = fresh
            .iter()
            .map(|m| (m, 0))
            .chain(self.scratch.iter().zip(counts));
        let mut failure = None;
        for (message, records) in messages {
            match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(message)).await {
                Ok(Ok(())) => {
                    bytes_written.inc_by(message.len() as u64);
                    sent += records;
                }
                Ok(Err(error)) => {
                    failure = Some(error.to_string());
                    break;
                }
                Err(_) => {
                    failure = Some(format!(
                        "no progress for {} s (the collector is not reading)",
                        WRITE_TIMEOUT.as_secs()
                    ));
                    break;
                }
            }
        }
        match failure {
            None => {
                self.tcp_progress = None;
                Ok(())
            }
            Some(error) => {
                // The next attempt starts a new connection, with templates and sequence 0,
                // and the records after those written whole.
                self.tcp = None;
                self.encoder.reset_sequence();
                self.tcp_progress = Some((interval, skip + sent));
                Err(SinkError::Retriable(format!(
                    "writing to {}: {error}",
                    self.spec.address()
                )))
            }
        }
    }
}

impl Sink for IpfixSink {
    fn name(&self) -> String {
        self.spec.to_string()
    }

    async fn write(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        match self.spec.transport {
            Transport::Udp => self.write_udp(interval).await,
            Transport::Tcp => self.write_tcp(interval).await,
        }
    }

    /// Over TCP, the records in messages written whole by earlier attempts (and the NODATA
    /// records, which IPFIX does not carry).
    fn give_up(&mut self, interval: &IntervalRecords) -> u64 {
        let sent = match self.tcp_progress.take() {
            Some((cut, sent)) if std::ptr::eq(&*cut, interval) => sent as u64,
            other => {
                self.tcp_progress = other;
                return 0;
            }
        };
        let data = interval
            .records
            .iter()
            .filter(|r| !matches!(r.kind, RecordKind::NoData))
            .count() as u64;
        interval.records.len() as u64 - data + sent
    }

    async fn flush(&mut self, deadline: tokio::time::Instant) -> Result<(), SinkError> {
        if self.records_dropped > 0 {
            tracing::warn!(sink = %self.spec, records = self.records_dropped, "IPFIX records dropped over the sink's life");
        }
        // Closing the write side lets the collector read everything up to a clean end.
        if let Some(mut stream) = self.tcp.take() {
            // A collector that stopped reading would hold the shutdown forever.
            let _ = tokio::time::timeout_at(deadline, stream.shutdown()).await;
        }
        Ok(())
    }

    fn bytes_written(&self) -> Counter {
        self.bytes_written.clone()
    }
}

/// What `flowlog-agent check` can learn about a collector without sending it anything: the
/// address resolves, and a TCP collector accepts a connection (closed again at once). `Ok` and
/// `Err` both carry the line to print.
pub async fn probe(spec: &IpfixSpec) -> Result<String, String> {
    let address = spec.address();
    let resolved = match tokio::net::lookup_host(&address).await {
        Ok(mut found) => found.next(),
        Err(error) => return Err(format!("{address} does not resolve: {error}")),
    };
    let Some(collector) = resolved else {
        return Err(format!("{address} resolves to no address"));
    };
    match spec.transport {
        Transport::Udp => Ok(format!(
            "{address} resolves to {collector}; UDP collectors cannot be probed (nothing answers a datagram)"
        )),
        Transport::Tcp => {
            match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(collector)).await {
                Ok(Ok(mut stream)) => {
                    let _ = stream.shutdown().await;
                    Ok(format!(
                        "{address}: the collector at {collector} accepts connections"
                    ))
                }
                Ok(Err(error)) => Err(format!("{address}: connecting to {collector}: {error}")),
                Err(_) => Err(format!(
                    "{address}: connecting to {collector}: no answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                )),
            }
        }
    }
}

fn export_time() -> u32 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs() as u32
}

async fn resolve(spec: &IpfixSpec) -> Result<SocketAddr, SinkError> {
    let address = spec.address();
    tokio::net::lookup_host(&address)
        .await
        .map_err(|e| SinkError::Retriable(format!("resolving {address}: {e}")))?
        .next()
        .ok_or_else(|| SinkError::Retriable(format!("{address} resolves to no address")))
}

async fn connect_udp(spec: &IpfixSpec) -> Result<UdpSocket, SinkError> {
    let collector = resolve(spec).await?;
    let local: SocketAddr = if collector.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(collector).await?;
    Ok(socket)
}

async fn connect_tcp(spec: &IpfixSpec) -> Result<TcpStream, SinkError> {
    let collector = resolve(spec).await?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(collector))
        .await
        .map_err(|_| SinkError::Retriable(format!("connecting to {collector}: timed out")))?
        .map_err(|e| SinkError::Retriable(format!("connecting to {collector}: {e}")))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether the collector is still there: IPFIX collectors never send, so a readable socket
/// means it closed the connection (end of file) or reset it.
fn still_connected(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => false,
        Ok(_) => true,
        Err(error) => error.kind() == io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
mod tests;
