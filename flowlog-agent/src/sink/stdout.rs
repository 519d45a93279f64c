//! `stdout`: every record as one line on standard output.
//!
//! Written unbuffered (a duplicate of descriptor 1), so the bytes counted are the bytes the
//! reader was given. A write cut short (a full disk under a redirection) is resumed where it
//! stopped, so no line is torn or repeated; a closed reader (EPIPE) is permanent: its records
//! are lost, counted, and the agent goes on with its other sinks.

use std::{
    fs::File,
    io::{self, Write},
    os::fd::AsFd,
    sync::Arc,
};

use prometheus_client::metrics::counter::Counter;

use super::{LineRenderer, Sink, SinkError};
use crate::record::IntervalRecords;

pub struct StdoutSink {
    renderer: LineRenderer,
    out: Option<Arc<File>>,
    /// The interval an earlier attempt did not finish: its text and how much of it went out.
    progress: Option<Progress>,
    bytes_written: Counter,
}

struct Progress {
    interval: Arc<IntervalRecords>,
    text: Arc<Vec<u8>>,
    written: usize,
}

impl StdoutSink {
    pub fn new(renderer: LineRenderer) -> Self {
        let out = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map(|fd| Arc::new(File::from(fd)))
            .inspect_err(|error| tracing::error!(%error, "standard output cannot be used"))
            .ok();
        Self {
            renderer,
            out,
            progress: None,
            bytes_written: Counter::default(),
        }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> String {
        "stdout".to_owned()
    }

    async fn write(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        let Some(out) = self.out.clone() else {
            return Err(SinkError::Fatal("standard output is closed".into()));
        };
        let (text, mut written) = match self.progress.take() {
            Some(progress) if Arc::ptr_eq(&progress.interval, &interval) => {
                (progress.text, progress.written)
            }
            _ => {
                let mut text = Vec::with_capacity(interval.records.len() * 128);
                self.renderer.render(&interval.records, &mut text);
                (Arc::new(text), 0)
            }
        };
        let bytes_written = self.bytes_written.clone();
        let task_text = Arc::clone(&text);
        let (done, result) = tokio::task::spawn_blocking(move || {
            let mut result = Ok(());
            while written < task_text.len() {
                match (&*out).write(&task_text[written..]) {
                    Ok(0) => {
                        result = Err(io::Error::from(io::ErrorKind::WriteZero));
                        break;
                    }
                    Ok(n) => {
                        written += n;
                        bytes_written.inc_by(n as u64);
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        result = Err(error);
                        break;
                    }
                }
            }
            (written, result)
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))?;
        match result {
            Ok(()) => Ok(()),
            Err(error) => {
                self.progress = Some(Progress {
                    interval,
                    text,
                    written: done,
                });
                Err(match error.kind() {
                    io::ErrorKind::BrokenPipe => {
                        SinkError::Fatal(format!("standard output: {error} (its reader is gone)"))
                    }
                    _ => SinkError::Retriable(format!("standard output: {error}")),
                })
            }
        }
    }

    /// The lines written whole by earlier attempts.
    fn give_up(&mut self, interval: &IntervalRecords) -> u64 {
        match self.progress.take() {
            Some(progress) if std::ptr::eq(&*progress.interval, interval) => {
                progress.text[..progress.written]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count() as u64
            }
            other => {
                self.progress = other;
                0
            }
        }
    }

    async fn flush(&mut self, _deadline: tokio::time::Instant) -> Result<(), SinkError> {
        // Unbuffered: everything written is already with the reader.
        Ok(())
    }

    /// The rendered lines (envelope included) written to standard output.
    fn bytes_written(&self) -> Counter {
        self.bytes_written.clone()
    }
}
