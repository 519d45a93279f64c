//! The signals the agent answers: SIGINT and SIGTERM stop it (a second one ends it at once),
//! SIGHUP reloads.

use std::io;

use tokio::signal::unix::{SignalKind, signal};

pub(super) enum Signal {
    /// SIGINT or SIGTERM.
    Stop(&'static str),
    /// SIGHUP.
    Reload,
}

pub(super) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    pub(super) async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.hangup.recv() => Signal::Reload,
        }
    }

    /// While the agent stops, a second SIGINT or SIGTERM ends it at once (the operator does
    /// not want to wait for the sinks).
    pub(super) fn exit_on_next_stop(mut self) {
        tokio::spawn(async move {
            loop {
                if let Signal::Stop(name) = self.next().await {
                    tracing::error!(
                        signal = name,
                        "second stop signal: exiting now; records the sinks had not delivered are lost"
                    );
                    std::process::exit(1);
                }
            }
        });
    }
}
