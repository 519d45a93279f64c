//! `stdout`: every record as one line on standard output.

use std::{io::Write, sync::Arc};

use prometheus_client::metrics::counter::Counter;

use super::{LineRenderer, Sink, SinkError};
use crate::record::IntervalRecords;

pub struct StdoutSink {
    renderer: LineRenderer,
    bytes_written: Counter,
}

impl StdoutSink {
    pub fn new(renderer: LineRenderer) -> Self {
        Self {
            renderer,
            bytes_written: Counter::default(),
        }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> String {
        "stdout".to_owned()
    }

    async fn write(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        let renderer = self.renderer.clone();
        let bytes_written = self.bytes_written.clone();
        tokio::task::spawn_blocking(move || {
            let mut text = Vec::with_capacity(interval.records.len() * 128);
            renderer.render(&interval.records, &mut text);
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&text)?;
            bytes_written.inc_by(text.len() as u64);
            stdout.flush()
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))??;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(std::io::stdout().flush()?)
    }

    /// The rendered lines (envelope included) written to standard output.
    fn bytes_written(&self) -> Counter {
        self.bytes_written.clone()
    }
}
