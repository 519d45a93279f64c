//! `stdout`: every record as one line on standard output.

use std::{io::Write, sync::Arc};

use super::{LineRenderer, Sink, SinkError};
use crate::record::IntervalRecords;

pub struct StdoutSink {
    renderer: LineRenderer,
}

impl StdoutSink {
    pub fn new(renderer: LineRenderer) -> Self {
        Self { renderer }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> String {
        "stdout".to_owned()
    }

    async fn write(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        let renderer = self.renderer.clone();
        tokio::task::spawn_blocking(move || {
            let mut text = Vec::with_capacity(interval.records.len() * 128);
            renderer.render(&interval.records, &mut text);
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&text)?;
            stdout.flush()
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))??;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(std::io::stdout().flush()?)
    }
}
