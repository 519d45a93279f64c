//! `dir:PATH`: log streams as files, one per interface, like CloudWatch Logs streams: named
//! `<interface>-<traffic type>.log`, lines without a header, appended each interval.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use prometheus_client::metrics::counter::Counter;

use super::{LineRenderer, Sink, SinkError};
use crate::record::IntervalRecords;

/// Mode of new log files: readable by the owner's group (log readers), nobody else.
const FILE_MODE: u32 = 0o640;
/// Mode of a directory the sink creates.
const DIR_MODE: u32 = 0o750;

pub struct LogStreamSink {
    directory: PathBuf,
    /// `all`, `accept` or `reject`: the flow log's traffic type, part of every file name.
    traffic_type: &'static str,
    renderer: LineRenderer,
    /// Open streams, taken by the blocking write and put back.
    streams: Option<HashMap<Arc<str>, File>>,
    bytes_written: Counter,
}

impl LogStreamSink {
    /// Creates the directory if it is missing, so a path that cannot be used is refused at
    /// start-up rather than at the first interval.
    pub fn new(
        directory: PathBuf,
        traffic_type: &'static str,
        renderer: LineRenderer,
    ) -> io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&directory)?;
        Ok(Self {
            directory,
            traffic_type,
            renderer,
            streams: Some(HashMap::new()),
            bytes_written: Counter::default(),
        })
    }

    /// The file that holds one interface's stream.
    pub fn stream_path(directory: &Path, interface: &str, traffic_type: &str) -> PathBuf {
        directory.join(format!("{interface}-{traffic_type}.log"))
    }
}

impl Sink for LogStreamSink {
    fn name(&self) -> String {
        format!("dir:{}", self.directory.display())
    }

    async fn write(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        let mut streams = self.streams.take().unwrap_or_default();
        let directory = self.directory.clone();
        let traffic_type = self.traffic_type;
        let renderer = self.renderer.clone();
        let bytes_written = self.bytes_written.clone();
        let (streams, result) = tokio::task::spawn_blocking(move || {
            let result = append_interval(
                &directory,
                traffic_type,
                &renderer,
                &interval,
                &mut streams,
                &bytes_written,
            );
            (streams, result)
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))?;
        self.streams = Some(streams);
        Ok(result?)
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        for file in self.streams.iter().flat_map(HashMap::values) {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Bytes appended to the stream files (the lines as rendered).
    fn bytes_written(&self) -> Counter {
        self.bytes_written.clone()
    }
}

/// Appends each interface's records to its stream. Records are grouped first so each stream
/// gets one write per interval. `bytes_written` grows by each stream's text once it is written,
/// so it stays equal to what the files gained even when a later stream fails.
fn append_interval(
    directory: &Path,
    traffic_type: &str,
    renderer: &LineRenderer,
    interval: &IntervalRecords,
    streams: &mut HashMap<Arc<str>, File>,
    bytes_written: &Counter,
) -> io::Result<()> {
    let mut by_interface: BTreeMap<&Arc<str>, Vec<u8>> = BTreeMap::new();
    for record in &interval.records {
        let text = by_interface.entry(&record.interface).or_default();
        renderer.render([record], text);
    }
    for (interface, text) in by_interface {
        let file = match streams.get_mut(interface) {
            Some(file) => file,
            None => {
                let path = LogStreamSink::stream_path(directory, interface, traffic_type);
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(FILE_MODE)
                    .open(&path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
                streams.entry(Arc::clone(interface)).or_insert(file)
            }
        };
        file.write_all(&text)?;
        bytes_written.inc_by(text.len() as u64);
    }
    Ok(())
}
