//! The uploader: one task per object-store sink that sends spooled objects to the store,
//! oldest first, each under the key it was given when it was sealed, so a retry overwrites
//! rather than duplicates. Failures are retried with capped exponential backoff and full
//! jitter for as long as the agent runs; the spool bounds what waits.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::spool::Spool;
use crate::sink::backoff::Backoff;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the uploader did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub objects: u64,
    pub records: u64,
    pub failed_attempts: u64,
}

pub struct Uploader {
    wake: Arc<Notify>,
    /// `Some(deadline)` once the agent is stopping: upload what is left until then.
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<UploadReport>,
}

impl Uploader {
    /// Starts the upload task; `bytes_uploaded` grows by each object's size once the store has
    /// it.
    pub fn spawn(
        name: String,
        store: Arc<dyn ObjectStore>,
        spool: Arc<Spool>,
        bytes_uploaded: Counter,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let (stop, stopping) = watch::channel(None);
        let task = tokio::spawn(upload_loop(
            name,
            store,
            spool,
            bytes_uploaded,
            Arc::clone(&wake),
            stopping,
        ));
        Uploader { wake, stop, task }
    }

    /// A new object is in the spool.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Uploads what is left until `deadline`, then stops; what could not be sent stays in the
    /// spool for the next run.
    pub async fn finish(self, deadline: Instant) -> UploadReport {
        let _ = self.stop.send(Some(deadline));
        self.task.await.unwrap_or_default()
    }
}

async fn upload_loop(
    name: String,
    store: Arc<dyn ObjectStore>,
    spool: Arc<Spool>,
    bytes_uploaded: Counter,
    wake: Arc<Notify>,
    mut stopping: watch::Receiver<Option<Instant>>,
) -> UploadReport {
    let mut report = UploadReport::default();
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    loop {
        let deadline = *stopping.borrow();
        let next = {
            let spool = Arc::clone(&spool);
            tokio::task::spawn_blocking(move || spool.take_oldest()).await
        };
        let (object, bytes) = match next {
            Ok(Ok(Some(next))) => next,
            Ok(Ok(None)) => {
                if deadline.is_some() {
                    return report;
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    changed = stopping.changed() => if changed.is_err() {
                        // The sink is gone without finishing: the spool keeps the rest.
                        return report;
                    }
                }
                continue;
            }
            Ok(Err(error)) => {
                tracing::error!(sink = %name, spool = %spool.directory().display(), %error, "reading the spool failed");
                if backoff.wait_or_give_up(&mut stopping).await {
                    return report;
                }
                continue;
            }
            Err(error) => {
                tracing::error!(sink = %name, %error, "spool reader task failed");
                return report;
            }
        };
        let location = Path::from(object.key.as_str());
        let size = bytes.len() as u64;
        match store.put(&location, PutPayload::from(bytes)).await {
            Ok(_) => {
                bytes_uploaded.inc_by(size);
                report.objects += 1;
                report.records += object.records;
                backoff.reset();
                tracing::info!(sink = %name, key = %object.key, records = object.records, "object uploaded");
                let spool = Arc::clone(&spool);
                let sequence = object.sequence;
                match tokio::task::spawn_blocking(move || spool.remove(sequence)).await {
                    Ok(Ok(())) => {}
                    // Uploading it again later reuses its key: a duplicate upload, never a
                    // duplicate object.
                    Ok(Err(error)) => {
                        tracing::error!(sink = %name, %error, "removing an uploaded object from the spool")
                    }
                    Err(error) => tracing::error!(sink = %name, %error, "spool task failed"),
                }
            }
            Err(error) => {
                spool.release(object.sequence);
                report.failed_attempts += 1;
                tracing::warn!(
                    sink = %name,
                    key = %object.key,
                    error = %describe(&error),
                    waiting_objects = spool.pending().len(),
                    retry_within = ?backoff.ceiling(),
                    "upload failed; the object stays in the spool"
                );
                if backoff.wait_or_give_up(&mut stopping).await {
                    return report;
                }
            }
        }
    }
}

/// What an error from the store says about the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnosis {
    /// No such bucket or container.
    NoBucket,
    /// The credentials were refused, or lack a permission.
    Credentials,
    /// Another request the store refused: trying again will not help.
    Refused,
    /// No answer, or a server error: the store may come back.
    Unreachable,
}

/// Classifies a store error. `object_store` gives list and put failures of the cloud stores
/// as `Generic` errors whose text carries the HTTP status, so that text is read too.
pub fn diagnose(error: &object_store::Error) -> Diagnosis {
    use object_store::Error::*;
    match error {
        NotFound { .. } => return Diagnosis::NoBucket,
        PermissionDenied { .. } | Unauthenticated { .. } => return Diagnosis::Credentials,
        _ => {}
    }
    let text = error.to_string();
    let has = |needle: &str| text.contains(needle);
    if has("status code: 404") || has("NoSuchBucket") || has("ContainerNotFound") {
        Diagnosis::NoBucket
    } else if has("status code: 401") || has("status code: 403") {
        Diagnosis::Credentials
    } else if has("status code: 4") {
        Diagnosis::Refused
    } else {
        Diagnosis::Unreachable
    }
}

/// An error in words an operator can act on. Store errors carry the request's URL and the
/// response, never the credentials.
pub fn describe(error: &object_store::Error) -> String {
    match diagnose(error) {
        Diagnosis::NoBucket => format!("the bucket or container does not exist ({error})"),
        Diagnosis::Credentials => {
            format!("the credentials were refused or lack permission ({error})")
        }
        Diagnosis::Refused | Diagnosis::Unreachable => error.to_string(),
    }
}
