//! Object-storage sinks: the flow log's records archived as objects in the layout AWS writes
//! (`key`), as gzip text (`text`) or Parquet (`parquet`), spooled to disk before upload
//! (`spool`) and uploaded by a task of their own (`uploader`).
//!
//! One object holds the records of every interface of the flow log for one window of
//! `--rotate` (aligned to the wall clock, as AWS's 5-minute files are); it is sealed when the
//! next window begins, when it reaches `--max-object-size`, or at shutdown.

mod journal;
mod key;
mod options;
mod parquet;
mod spool;
mod store;
mod text;
mod uploader;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

pub use journal::Journal;
pub use key::{FileFormat, Fnv1a, KeyLayout, UtcTime, derived_flow_log_id, parse_flow_log_id};
pub use options::ArchiveOptions;
pub use parquet::{ParquetObject, schema as parquet_schema};
pub use spool::{Spool, SpoolGauges, SpoolLoss, SpooledObject};
pub use store::{ObjectUrl, ObjectUrlError, Scheme};
pub use text::TextObject;
pub use uploader::{Diagnosis, UploadReport, Uploader, describe, diagnose};

use object_store::{ObjectStore, path::Path};
use prometheus_client::metrics::counter::Counter;

use super::{LineRenderer, Sink, SinkError};
use crate::record::{FlowRecord, IntervalRecords};

/// How long a stopping agent keeps trying to upload before leaving the rest in the spool.
pub const SHUTDOWN_UPLOAD_TIME: Duration = Duration::from_secs(10);

/// Why an object-store sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObjectSinkError {
    #[error("sink {sink}: {error}")]
    Configuration {
        sink: String,
        error: object_store::Error,
    },
    #[error("sink {sink}: refusing to start: {reason}")]
    HealthCheck { sink: String, reason: String },
    #[error("sink {sink}: spool {path}: {error}")]
    Spool {
        sink: String,
        path: String,
        error: std::io::Error,
    },
}

/// The object being filled.
enum Encoder {
    Text(TextObject),
    Parquet(ParquetObject),
}

struct OpenObject {
    window_start: u64,
    records: u64,
    encoder: Encoder,
    /// Its records on disk until it is sealed.
    journal: Journal,
}

/// A sealed object the spool could not take yet (a full disk): it keeps its key and bytes, and
/// its records stay in the journal until the spool has it.
struct SealedObject {
    key: String,
    records: u64,
    bytes: Vec<u8>,
    journal: Journal,
}

pub struct ObjectStoreSink {
    name: String,
    layout: KeyLayout,
    renderer: LineRenderer,
    rotate: u64,
    max_object_size: usize,
    open: Option<OpenObject>,
    /// Sealed, waiting for room in the spool. While it waits no new object is opened (the
    /// journal still holds its records), so intervals wait in the sink's queue.
    sealed: Option<SealedObject>,
    spool: Arc<Spool>,
    /// Where the open object's records are journaled.
    journal_path: std::path::PathBuf,
    uploader: Option<Uploader>,
    /// Bytes of the objects the store accepted.
    bytes_uploaded: Counter,
}

impl ObjectStoreSink {
    /// Builds the client, checks the destination and opens the spool. A destination that is
    /// misconfigured (no such bucket, credentials refused, bad options) stops the agent with a
    /// message naming the sink; one that does not answer is only warned about, and objects
    /// wait in the spool until it does.
    /// What start-up checks, without starting anything: the destination is configured right
    /// and answers (`flowlog-agent check`).
    pub async fn check(url: &ObjectUrl, layout: &KeyLayout) -> Result<(), ObjectSinkError> {
        let name = url.location().to_owned();
        let store = url
            .build()
            .map_err(|error| ObjectSinkError::Configuration {
                sink: name.clone(),
                error,
            })?;
        health_check(&name, store.as_ref(), layout).await
    }

    pub async fn start(
        url: &ObjectUrl,
        layout: KeyLayout,
        options: &ArchiveOptions,
        renderer: LineRenderer,
    ) -> Result<Self, ObjectSinkError> {
        let name = url.location().to_owned();
        let store = url
            .build()
            .map_err(|error| ObjectSinkError::Configuration {
                sink: name.clone(),
                error,
            })?;
        health_check(&name, store.as_ref(), &layout).await?;

        let spool_dir = options.spool_dir.join(spool_name(&name, &layout));
        let spool = Spool::open(spool_dir.clone(), options.spool_max_bytes).map_err(|error| {
            ObjectSinkError::Spool {
                sink: name.clone(),
                path: spool_dir.display().to_string(),
                error,
            }
        })?;
        // A run that was killed left its open object's records in the journal: seal them first.
        let journal_path = options
            .spool_dir
            .join(format!("{}.journal", spool_name(&name, &layout)));
        recover_journal(&name, &journal_path, &layout, &renderer, &spool).map_err(|error| {
            ObjectSinkError::Spool {
                sink: name.clone(),
                path: journal_path.display().to_string(),
                error,
            }
        })?;
        let waiting = spool.pending();
        if !waiting.is_empty() {
            tracing::info!(
                sink = %name,
                objects = waiting.len(),
                records = spool.pending_records(),
                "objects left in the spool by an earlier run will be uploaded first"
            );
        }
        let spool = Arc::new(spool);
        let bytes_uploaded = Counter::default();
        let uploader = Uploader::spawn(
            name.clone(),
            store,
            Arc::clone(&spool),
            bytes_uploaded.clone(),
        );
        tracing::info!(
            sink = %name,
            flow_log_id = %layout.flow_log_id,
            file_format = ?layout.file_format,
            spool = %spool_dir.display(),
            "object-store sink ready"
        );
        Ok(ObjectStoreSink {
            name,
            layout,
            renderer,
            rotate: options.rotate.as_secs().max(1),
            max_object_size: options.max_object_size as usize,
            open: None,
            sealed: None,
            spool,
            journal_path,
            uploader: Some(uploader),
            bytes_uploaded,
        })
    }

    /// Seals the open object, if any, and hands it to the spool and the uploader. If the spool
    /// cannot take it (a full disk), the sealed object and its journal stay, and the next call
    /// tries again: nothing is lost, nothing is sealed twice.
    async fn seal(&mut self) -> Result<(), SinkError> {
        self.spool_sealed().await?;
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let layout = self.layout.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            let bytes = finish(open.encoder)?;
            let key = layout.key(open.window_start, content_suffix(&bytes));
            Ok::<_, std::io::Error>(SealedObject {
                key,
                records: open.records,
                bytes,
                journal: open.journal,
            })
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))?
        .map_err(|e| SinkError::Fatal(format!("encoding the object: {e}")))?;
        self.sealed = Some(sealed);
        self.spool_sealed().await
    }

    /// Writes the sealed object to the spool, then forgets its journal.
    async fn spool_sealed(&mut self) -> Result<(), SinkError> {
        let Some(sealed) = self.sealed.take() else {
            return Ok(());
        };
        let spool = Arc::clone(&self.spool);
        let (sealed, pushed) = tokio::task::spawn_blocking(move || {
            let pushed = spool.push(&sealed.key, sealed.records, &sealed.bytes);
            (sealed, pushed)
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))?;
        match pushed {
            Ok(spooled) => {
                let mut journal = sealed.journal;
                if let Err(error) = journal.clear() {
                    // Harmless but for a duplicate upload under the same key after a crash.
                    tracing::warn!(%error, "cannot remove the journal of a sealed object");
                }
                tracing::debug!(sink = %self.name, key = %spooled.key, records = spooled.records, "object sealed");
                if let Some(uploader) = &self.uploader {
                    uploader.wake();
                }
                Ok(())
            }
            Err(error) => {
                let message = format!(
                    "spooling object {} ({} records) in {}: {error}; it waits, its records stay journaled",
                    sealed.key,
                    sealed.records,
                    self.spool.directory().display()
                );
                self.sealed = Some(sealed);
                Err(SinkError::Retriable(message))
            }
        }
    }

    fn new_object(&self, window_start: u64) -> Result<OpenObject, SinkError> {
        let mut journal = Journal::new(self.journal_path.clone());
        // Without its journal a kill would lose the object's records: the records wait instead.
        journal.start(window_start).map_err(|error| {
            SinkError::Retriable(format!(
                "starting the journal {}: {error}",
                self.journal_path.display()
            ))
        })?;
        Ok(OpenObject {
            window_start,
            records: 0,
            encoder: new_encoder(self.layout.file_format, &self.renderer)?,
            journal,
        })
    }
}

impl Sink for ObjectStoreSink {
    fn name(&self) -> String {
        self.name.clone()
    }

    /// Adds the interval to the open object, journaled first: the records are in the object
    /// and its journal, or in neither (the write fails and the interval waits). Sealing the
    /// previous window's object comes first; if the spool cannot take it, the interval waits.
    async fn write(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        if interval.records.is_empty() {
            return Ok(());
        }
        self.spool_sealed().await?;
        let window_start = interval.start / self.rotate * self.rotate;
        if self
            .open
            .as_ref()
            .is_some_and(|open| open.window_start != window_start)
        {
            self.seal().await?;
        }
        let open = match self.open.take() {
            Some(open) => open,
            None => self.new_object(window_start)?,
        };
        let renderer = self.renderer.clone();
        let max_size = self.max_object_size;
        // Journaling and encoding a big interval take a while: off the async workers.
        let (open, result) = tokio::task::spawn_blocking(move || {
            let mut open = open;
            let result = match open.journal.append(&interval.records) {
                Ok(()) => append(&mut open, &renderer, &interval.records),
                Err(error) => Err(SinkError::Retriable(format!(
                    "journaling the open object: {error}"
                ))),
            };
            (open, result)
        })
        .await
        .map_err(|e| SinkError::Fatal(e.to_string()))?;
        let full = encoded_size(&open) >= max_size;
        self.open = Some(open);
        result?;
        if full && let Err(error) = self.seal().await {
            // The interval is in the object; the object waits for the spool.
            tracing::warn!(sink = %self.name, %error, "object full but not spooled yet");
        }
        Ok(())
    }

    /// Seals the open object and uploads everything waiting, until `deadline` (at most
    /// [`SHUTDOWN_UPLOAD_TIME`]); what is left stays in the spool for the next run, and an
    /// object the spool could not take stays in its journal, which the next start seals.
    async fn flush(&mut self, deadline: tokio::time::Instant) -> Result<(), SinkError> {
        if let Err(error) = self.seal().await {
            tracing::warn!(
                sink = %self.name,
                %error,
                journal = %self.journal_path.display(),
                "the last object stays in its journal; the next start seals and uploads it"
            );
        }
        let Some(uploader) = self.uploader.take() else {
            return Ok(());
        };
        let until = deadline
            .into_std()
            .min(Instant::now() + SHUTDOWN_UPLOAD_TIME);
        let report = uploader.finish(until).await;
        let left = self.spool.pending();
        let lost = self.spool.lost();
        tracing::info!(
            sink = %self.name,
            uploaded_objects = report.objects,
            uploaded_records = report.records,
            failed_attempts = report.failed_attempts,
            spooled_objects = left.len(),
            spooled_records = self.spool.pending_records(),
            dropped_records = lost.records,
            "object uploads finished"
        );
        if !left.is_empty() {
            tracing::warn!(
                sink = %self.name,
                spool = %self.spool.directory().display(),
                objects = left.len(),
                "objects not uploaded stay in the spool and go first at the next start"
            );
        }
        Ok(())
    }

    fn records_lost_after_write(&self) -> u64 {
        self.spool.lost().records
    }

    /// Object bytes as stored (gzip text or Parquet), counted when an upload succeeds.
    fn bytes_written(&self) -> Counter {
        self.bytes_uploaded.clone()
    }

    fn spool_gauges(&self) -> Option<SpoolGauges> {
        Some(self.spool.gauges())
    }
}

fn append(
    open: &mut OpenObject,
    renderer: &LineRenderer,
    records: &[FlowRecord],
) -> Result<(), SinkError> {
    match &mut open.encoder {
        // In memory: a failure is a bug, never retried (the records are journaled already).
        Encoder::Text(text) => text
            .append(renderer, records)
            .map_err(|e| SinkError::Fatal(format!("gzip encoding: {e}")))?,
        Encoder::Parquet(parquet) => parquet
            .append(renderer, records)
            .map_err(|e| SinkError::Fatal(format!("parquet encoding: {e}")))?,
    }
    open.records += records.len() as u64;
    Ok(())
}

fn new_encoder(format: FileFormat, renderer: &LineRenderer) -> Result<Encoder, SinkError> {
    Ok(match format {
        FileFormat::Text => Encoder::Text(TextObject::new(renderer)),
        FileFormat::Parquet => Encoder::Parquet(
            ParquetObject::new(&renderer.format).map_err(|e| SinkError::Fatal(e.to_string()))?,
        ),
    })
}

fn finish(encoder: Encoder) -> std::io::Result<Vec<u8>> {
    match encoder {
        Encoder::Text(text) => text.finish(),
        Encoder::Parquet(parquet) => parquet
            .finish()
            .map_err(|e| std::io::Error::other(e.to_string())),
    }
}

/// Seals what a killed run journaled into an object of its window, in the spool. The object
/// is the one the run would have sealed, under the same key (its name derives from its
/// content), so a run killed between sealing and removing the journal causes no duplicate.
fn recover_journal(
    name: &str,
    path: &std::path::Path,
    layout: &KeyLayout,
    renderer: &LineRenderer,
    spool: &Spool,
) -> std::io::Result<()> {
    let Some((window_start, records)) = Journal::recover(path)? else {
        return Ok(());
    };
    if !records.is_empty() {
        let mut encoder =
            new_encoder(layout.file_format, renderer).map_err(std::io::Error::other)?;
        match &mut encoder {
            Encoder::Text(text) => text.append(renderer, &records)?,
            Encoder::Parquet(parquet) => parquet
                .append(renderer, &records)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        }
        let bytes = finish(encoder)?;
        let key = layout.key(window_start, content_suffix(&bytes));
        spool.push(&key, records.len() as u64, &bytes)?;
        tracing::info!(
            sink = %name,
            records = records.len(),
            %key,
            "sealed the records a stopped run had journaled but not sealed"
        );
    }
    Journal::new(path.to_owned()).clear()
}

fn encoded_size(open: &OpenObject) -> usize {
    match &open.encoder {
        Encoder::Text(text) => text.size(),
        Encoder::Parquet(parquet) => parquet.size(),
    }
}

/// The 8-hex tail of an object's file name, from its content: objects of one window differ,
/// and the same object always gets the same key.
fn content_suffix(bytes: &[u8]) -> u32 {
    let mut hash = key::Fnv1a::new(0xcbf2_9ce4_8422_2325);
    hash.write(bytes);
    (hash.0 ^ (hash.0 >> 32)) as u32
}

/// The spool directory of one sink: its flow-log id and a hash of its destination, so two
/// sinks never share one.
fn spool_name(name: &str, layout: &KeyLayout) -> String {
    let mut hash = key::Fnv1a::new(0xcbf2_9ce4_8422_2325);
    hash.write(name.as_bytes());
    format!("{}-{:08x}", layout.flow_log_id, hash.0 as u32)
}

/// Lists the flow log's prefix once. Refuses to start when the answer says the destination
/// is wrong; only warns when there is no answer (the spool holds objects until there is).
async fn health_check(
    name: &str,
    store: &dyn ObjectStore,
    layout: &KeyLayout,
) -> Result<(), ObjectSinkError> {
    let prefix = if layout.prefix.is_empty() {
        Path::from("AWSLogs")
    } else {
        Path::from(format!("{}/AWSLogs", layout.prefix))
    };
    let check = tokio::time::timeout(
        Duration::from_secs(30),
        store.list_with_delimiter(Some(&prefix)),
    )
    .await;
    match check {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if diagnose(&error) != Diagnosis::Unreachable => {
            Err(ObjectSinkError::HealthCheck {
                sink: name.to_owned(),
                reason: describe(&error),
            })
        }
        Ok(Err(error)) => {
            tracing::warn!(
                sink = %name,
                error = %describe(&error),
                "destination unreachable at start-up; starting anyway, objects wait in the spool"
            );
            Ok(())
        }
        Err(_) => {
            tracing::warn!(
                sink = %name,
                "destination did not answer within 30 s; starting anyway, objects wait in the spool"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
