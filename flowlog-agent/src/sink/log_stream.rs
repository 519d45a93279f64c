//! `dir:PATH`: log streams as files, one per interface, like CloudWatch Logs streams: named
//! `<interface>-<traffic type>.log`, lines without a header, appended each interval.
//!
//! Each interval's lines go to a stream in one append. The set of lines of an interval is whole
//! or absent in each stream:
//! - a failed append (a full disk) is cut back to the stream's length before it (`ftruncate`),
//!   so no torn line stays, and the retry writes only the streams not written yet;
//! - before each append the open file is checked against its path: a file renamed away
//!   (logrotate's `create`), deleted, or in a directory that was renamed or deleted is closed
//!   and the path opened again, the directory recreated if needed (0750, files 0640); SIGHUP
//!   closes every stream. `copytruncate` needs nothing: streams are opened `O_APPEND`;
//! - a stream whose interface had no record in an interval (every attached interface has one,
//!   NODATA if idle) is closed: the interface is gone, and open files stay bounded.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use prometheus_client::metrics::counter::Counter;

use super::{LineRenderer, Sink, SinkError};
use crate::{
    files::{DIR_MODE, FILE_MODE},
    record::IntervalRecords,
};

pub struct LogStreamSink {
    directory: PathBuf,
    /// `all`, `accept` or `reject`: the flow log's traffic type, part of every file name.
    traffic_type: &'static str,
    renderer: LineRenderer,
    /// Taken by the blocking write and put back.
    streams: Option<Streams>,
    bytes_written: Counter,
}

/// The open streams, and how far the interval in flight got.
#[derive(Default)]
struct Streams {
    open: HashMap<Arc<str>, File>,
    /// The interval an earlier attempt failed on, the streams it wrote and their records.
    progress: Option<Progress>,
    /// Close every stream before the next write (SIGHUP).
    reopen: bool,
}

struct Progress {
    interval: Arc<IntervalRecords>,
    written: HashSet<Arc<str>>,
    records: u64,
}

impl LogStreamSink {
    /// Creates the directory if it is missing, so a path that cannot be used is refused at
    /// start-up rather than at the first interval.
    pub fn new(
        directory: PathBuf,
        traffic_type: &'static str,
        renderer: LineRenderer,
    ) -> io::Result<Self> {
        create_directory(&directory)?;
        Ok(Self {
            directory,
            traffic_type,
            renderer,
            streams: Some(Streams::default()),
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
        let writer = StreamWriter {
            directory: self.directory.clone(),
            traffic_type: self.traffic_type,
            renderer: self.renderer.clone(),
            bytes_written: self.bytes_written.clone(),
        };
        let (streams, result) = tokio::task::spawn_blocking(move || {
            let result = writer.append_interval(&interval, &mut streams);
            (streams, result)
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))?;
        self.streams = Some(streams);
        Ok(result?)
    }

    fn give_up(&mut self, interval: &IntervalRecords) -> u64 {
        let Some(streams) = &mut self.streams else {
            return 0;
        };
        match streams.progress.take() {
            Some(progress) if std::ptr::eq(&*progress.interval, interval) => progress.records,
            other => {
                streams.progress = other;
                0
            }
        }
    }

    async fn flush(&mut self, _deadline: tokio::time::Instant) -> Result<(), SinkError> {
        for file in self.streams.iter().flat_map(|s| s.open.values()) {
            file.sync_data()?;
        }
        Ok(())
    }

    fn reopen(&mut self) {
        if let Some(streams) = &mut self.streams {
            streams.reopen = true;
        }
    }

    /// Bytes appended to the stream files (the lines as rendered).
    fn bytes_written(&self) -> Counter {
        self.bytes_written.clone()
    }
}

/// What the blocking write needs.
struct StreamWriter {
    directory: PathBuf,
    traffic_type: &'static str,
    renderer: LineRenderer,
    bytes_written: Counter,
}

impl StreamWriter {
    /// Appends each interface's records to its stream, one append per stream. Streams an
    /// earlier attempt at this interval wrote are skipped; a stream that fails is cut back and
    /// the others are still written. `bytes_written` grows by each stream's text once it is
    /// written, so it stays equal to what the files gained.
    fn append_interval(
        &self,
        interval: &Arc<IntervalRecords>,
        streams: &mut Streams,
    ) -> io::Result<()> {
        if std::mem::take(&mut streams.reopen) {
            streams.open.clear();
        }
        let mut progress = match streams.progress.take() {
            Some(progress) if Arc::ptr_eq(&progress.interval, interval) => progress,
            _ => Progress {
                interval: Arc::clone(interval),
                written: HashSet::new(),
                records: 0,
            },
        };
        let mut by_interface: BTreeMap<&Arc<str>, (Vec<u8>, u64)> = BTreeMap::new();
        for record in &interval.records {
            let (text, records) = by_interface.entry(&record.interface).or_default();
            self.renderer.render([record], text);
            *records += 1;
        }
        let mut first_error = None;
        for (interface, (text, records)) in &by_interface {
            if progress.written.contains(*interface) {
                continue;
            }
            match self.append(streams, interface, text) {
                Ok(()) => {
                    self.bytes_written.inc_by(text.len() as u64);
                    progress.written.insert(Arc::clone(interface));
                    progress.records += records;
                }
                Err(error) => {
                    // The others are still written; this one is retried.
                    first_error.get_or_insert(error);
                }
            }
        }
        // Streams of interfaces that had no record in this interval are gone: close them.
        streams
            .open
            .retain(|interface, _| by_interface.contains_key(interface));
        match first_error {
            Some(error) => {
                streams.progress = Some(progress);
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// Appends `text` to one stream whole, or not at all.
    fn append(&self, streams: &mut Streams, interface: &Arc<str>, text: &[u8]) -> io::Result<()> {
        let path = LogStreamSink::stream_path(&self.directory, interface, self.traffic_type);
        let named =
            |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", path.display()));
        if streams
            .open
            .get(interface)
            .is_some_and(|file| !still_at(file, &path))
        {
            tracing::info!(path = %path.display(), "log stream moved or deleted; opening it again");
            streams.open.remove(interface);
        }
        let file = match streams.open.get_mut(interface) {
            Some(file) => file,
            None => {
                let file = self.open(&path).map_err(named)?;
                streams.open.entry(Arc::clone(interface)).or_insert(file)
            }
        };
        let before = file.metadata().map_err(named)?.len();
        if let Err(error) = file.write_all(text) {
            // Cut back what part of the lines went in, so the stream holds whole lines only.
            let after = file.metadata().map(|m| m.len()).unwrap_or(before);
            if after > before
                && let Err(cut) = file.set_len(before)
            {
                tracing::error!(path = %path.display(), error = %cut, "cannot cut a failed append back; a partial line remains");
            }
            return Err(named(error));
        }
        Ok(())
    }

    /// Opens a stream for appending, recreating the directory if it is gone.
    fn open(&self, path: &Path) -> io::Result<File> {
        let open = || {
            OpenOptions::new()
                .append(true)
                .create(true)
                .mode(FILE_MODE)
                .open(path)
        };
        match open() {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                create_directory(&self.directory)?;
                tracing::warn!(directory = %self.directory.display(), "log-stream directory was missing; created it again");
                open()
            }
            other => other,
        }
    }
}

/// Whether the open `file` is still the one at `path` (not renamed away, not deleted).
fn still_at(file: &File, path: &Path) -> bool {
    let (Ok(open), Ok(named)) = (file.metadata(), fs::metadata(path)) else {
        return false;
    };
    open.nlink() > 0 && open.dev() == named.dev() && open.ino() == named.ino()
}

fn create_directory(directory: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(directory)
}

#[cfg(test)]
mod tests;
