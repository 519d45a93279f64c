//! Readiness as systemd reads it (`sd_notify`): with `NOTIFY_SOCKET` set, the agent sends
//! `READY=1` once its start has committed (every selected interface attached, sinks running),
//! `RELOADING=1` / `READY=1` around a SIGHUP, and `STOPPING=1` when it stops. The unit file uses
//! `Type=notify`; the tests wait for the same datagram instead of reading log lines.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd (or a test) names its socket in.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (`READY=1`, ...) to the socket `NOTIFY_SOCKET` names, if any. A failure is
/// logged, never fatal: readiness is for whoever watches, the agent runs either way.
pub(super) fn notify(state: &str) {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    if let Err(error) = send(&path.to_string_lossy(), state) {
        tracing::warn!(%error, state, "could not notify the service manager");
    }
}

/// One datagram, never waiting: a datagram socket's queue is short (10 by default) and a
/// watcher that stops reading must not stop the agent (a blocking send would hang the run loop
/// at the next reload).
fn send(path: &str, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    socket.send_to_addr(state.as_bytes(), &address(path)?)?;
    Ok(())
}

/// A socket path, or an abstract name written `@name`.
fn address(path: &str) -> std::io::Result<SocketAddr> {
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_are_addresses() {
        use std::os::linux::net::SocketAddrExt;
        let abstract_name = address("@flowlog/notify").unwrap();
        assert_eq!(
            abstract_name.as_abstract_name(),
            Some(&b"flowlog/notify"[..])
        );
        let path = address("/run/systemd/notify").unwrap();
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
    }

    /// A watcher that never reads: the queue fills, and every later send fails at once.
    #[test]
    fn a_watcher_that_stops_reading_never_blocks_a_send() {
        let path = std::env::temp_dir().join(format!("flowlog-notify-unit-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let watcher = UnixDatagram::bind(&path).unwrap();
        let path = path.to_str().unwrap();
        let started = std::time::Instant::now();
        let results: Vec<_> = (0..200).map(|_| send(path, "READY=1")).collect();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(results[0].is_ok());
        let refused = results.iter().filter(|r| r.is_err()).count();
        assert!(refused > 0, "the queue never filled");
        drop(watcher);
        let _ = std::fs::remove_file(path);
    }
}
