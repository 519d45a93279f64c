//! The delivery loop: one task per CloudWatch sink that sends spooled batches to the log
//! group, oldest first, and deletes each only once PutLogEvents has accepted it.
//!
//! - **In order, none twice.** Batches of one stream go out in the order they were spooled;
//!   a call may carry several consecutive batches of a stream (catching up after an outage)
//!   while it stays within the call's limits. A batch is deleted from the spool only after
//!   the call that carried it succeeded, so a restart, a kill or an outage resends only what
//!   CloudWatch has not confirmed. CloudWatch has no idempotency token: what can still come
//!   twice is a batch whose call succeeded but whose answer was lost (a timeout or a cut
//!   connection after the request went out), or whose deletion a crash prevented in the
//!   microseconds after the answer. Those are counted (`ambiguous`) and logged.
//! - **Errors.** `ResourceNotFoundException`: the stream (or group) was never made or was
//!   deleted: it is created (the group first if that is missing too) and the call made again
//!   at once. `DataAlreadyAcceptedException` (only ever answered while sequence tokens
//!   existed): the batch is already stored, so it is deleted as delivered. `InvalidParameterException`:
//!   a call of several batches is tried batch by batch; a single batch that is refused can
//!   never be accepted, so it is dropped, counted lost and logged with the service's reason
//!   (flowlog builds batches within every documented limit, so this means a limit it does
//!   not know). Events outside the accepted window (older than 14 days after so long an
//!   outage, or 2 hours ahead of the clock) are not sent but counted lost, as are events the
//!   answer still rejects as too old, too new or expired.
//!   Everything else (throttling, 5xx, no answer, refused or expired credentials, a denied
//!   action) is retried with capped exponential backoff and full jitter for as long as the
//!   agent runs, the batches waiting in the spool, its bound limiting what waits.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aws_sdk_cloudwatchlogs::{Client, types::InputLogEvent};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::{
    batch::{BatchKey, MAX_BATCH_BYTES, MAX_EVENTS, MAX_SPAN_MS, decode},
    client::{Diagnosis, describe, diagnose},
};
use crate::sink::{
    backoff::Backoff,
    object::{Spool, SpooledObject},
};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the delivery loop did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub calls: u64,
    pub events: u64,
    pub failed_attempts: u64,
    /// Calls whose outcome was unknown (no answer after the request may have gone out): their
    /// batches were sent again, so their events may be stored twice.
    pub ambiguous: u64,
}

pub struct Delivery {
    wake: Arc<Notify>,
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<DeliveryReport>,
}

/// Where the loop delivers, and what it counts.
pub struct Destination {
    pub name: String,
    pub client: Client,
    pub group: String,
    pub spool: Arc<Spool>,
    /// Message bytes CloudWatch accepted.
    pub bytes: Counter,
    /// Events given up after they were spooled: refused batches and rejected events.
    pub lost: Arc<AtomicU64>,
}

impl Delivery {
    pub fn spawn(destination: Destination) -> Self {
        let wake = Arc::new(Notify::new());
        let (stop, stopping) = watch::channel(None);
        let deliverer = Deliverer {
            to: destination,
            report: DeliveryReport::default(),
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
        };
        let task = tokio::spawn(deliverer.run(Arc::clone(&wake), stopping));
        Delivery { wake, stop, task }
    }

    /// New batches are in the spool.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers what is left until `deadline`, then stops; the rest stays in the spool for the
    /// next run.
    pub async fn finish(self, deadline: Instant) -> DeliveryReport {
        let _ = self.stop.send(Some(deadline));
        self.wake.notify_one();
        self.task.await.unwrap_or_default()
    }
}

struct Deliverer {
    to: Destination,
    report: DeliveryReport,
    backoff: Backoff,
}

/// How one call went.
enum Outcome {
    /// Stored, but for `rejected` events the answer names.
    Accepted {
        rejected: u64,
    },
    Missing,
    AlreadyAccepted,
    Invalid(String),
    /// Try again later; `ambiguous` when the request may have been stored.
    Retry {
        reason: String,
        ambiguous: bool,
    },
}

impl Deliverer {
    async fn run(
        mut self,
        wake: Arc<Notify>,
        mut stopping: watch::Receiver<Option<Instant>>,
    ) -> DeliveryReport {
        // After a refused call of several batches: one batch per call until one succeeds.
        let mut one_at_a_time = false;
        // Creations made for the current call: a second `ResourceNotFound` after them backs off.
        let mut created = false;
        loop {
            let deadline = *stopping.borrow();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return self.report;
            }
            let pending = self.to.spool.pending();
            let call = plan(&pending, one_at_a_time);
            if call.is_empty() {
                if deadline.is_some() {
                    return self.report;
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    changed = stopping.changed() => if changed.is_err() {
                        return self.report;
                    }
                }
                continue;
            }
            let spool = Arc::clone(&self.to.spool);
            let objects = call
                .iter()
                .map(|(object, _)| object.clone())
                .collect::<Vec<_>>();
            let taken = {
                let objects = objects.clone();
                tokio::task::spawn_blocking(move || spool.take(&objects)).await
            };
            let bodies = match taken {
                Ok(Ok(bodies)) => bodies,
                Ok(Err(error)) => {
                    tracing::error!(sink = %self.to.name, %error, "reading the spool failed");
                    if self.backoff.wait_or_give_up(&mut stopping).await {
                        return self.report;
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(sink = %self.to.name, %error, "spool reader task failed");
                    return self.report;
                }
            };
            let stream = call[0].1.stream.clone();
            let Some(events) = self.events(&objects, &bodies, unix_millis()) else {
                continue;
            };
            if events.is_empty() {
                // Every event was outside the accepted window: counted lost already.
                self.remove(&objects).await;
                continue;
            }
            let count = events.len() as u64;
            let message_bytes: u64 = events.iter().map(|e| e.message.len() as u64).sum();
            // A call the stop deadline overtakes is abandoned: its batches stay in the spool.
            let outcome = {
                let mut watch = stopping.clone();
                tokio::select! {
                    outcome = self.put(&stream, events) => Some(outcome),
                    () = stop_deadline(&mut watch) => None,
                }
            };
            let Some(outcome) = outcome else {
                self.release(&objects);
                self.report.ambiguous += 1;
                tracing::warn!(sink = %self.to.name, stream = %stream, events = count,
                    "the stop deadline passed during a call; its batches stay in the spool and are sent again at the next start (the service may have stored them)");
                return self.report;
            };
            match outcome {
                Outcome::Accepted { rejected } => {
                    self.remove(&objects).await;
                    self.report.calls += 1;
                    self.report.events += count - rejected;
                    self.to.bytes.inc_by(message_bytes);
                    if rejected > 0 {
                        self.to.lost.fetch_add(rejected, Ordering::Relaxed);
                        tracing::error!(sink = %self.to.name, stream = %stream, events_rejected = rejected,
                            "CloudWatch rejected events outside its time window (too old, too new or expired); they are lost");
                    }
                    tracing::debug!(sink = %self.to.name, stream = %stream, events = count, batches = objects.len(), "events delivered");
                    self.backoff.reset();
                    one_at_a_time = false;
                    created = false;
                }
                Outcome::AlreadyAccepted => {
                    tracing::info!(sink = %self.to.name, stream = %stream, events = count,
                        "CloudWatch says these events were accepted before; not sent again");
                    self.remove(&objects).await;
                    self.report.events += count;
                    self.backoff.reset();
                }
                Outcome::Missing => {
                    self.release(&objects);
                    if created {
                        // Created, and still missing (deleted again at once, or eventual
                        // consistency): wait before the next round.
                        created = false;
                        self.report.failed_attempts += 1;
                        if self.backoff.wait_or_give_up(&mut stopping).await {
                            return self.report;
                        }
                        continue;
                    }
                    let created_now = {
                        let mut watch = stopping.clone();
                        tokio::select! {
                            result = self.create(&stream) => Some(result),
                            () = stop_deadline(&mut watch) => None,
                        }
                    };
                    let Some(created_now) = created_now else {
                        return self.report;
                    };
                    match created_now {
                        Ok(()) => created = true,
                        Err(reason) => {
                            self.report.failed_attempts += 1;
                            tracing::error!(sink = %self.to.name, stream = %stream, %reason,
                                waiting_batches = pending.len(), retry_within = ?self.backoff.ceiling(),
                                "cannot create the log stream; the events wait in the spool");
                            if self.backoff.wait_or_give_up(&mut stopping).await {
                                return self.report;
                            }
                        }
                    }
                }
                Outcome::Invalid(reason) if objects.len() > 1 => {
                    self.release(&objects);
                    tracing::warn!(sink = %self.to.name, stream = %stream, %reason, batches = objects.len(),
                        "a call of several batches was refused; sending them one by one");
                    one_at_a_time = true;
                }
                Outcome::Invalid(reason) => {
                    self.remove(&objects).await;
                    self.to.lost.fetch_add(count, Ordering::Relaxed);
                    tracing::error!(sink = %self.to.name, stream = %stream, %reason, events_lost = count,
                        "CloudWatch refused a batch as invalid; it can never be accepted, so it is dropped");
                }
                Outcome::Retry { reason, ambiguous } => {
                    self.release(&objects);
                    self.report.failed_attempts += 1;
                    if ambiguous {
                        self.report.ambiguous += 1;
                    }
                    tracing::warn!(sink = %self.to.name, stream = %stream, error = %reason,
                        waiting_batches = pending.len(), retry_within = ?self.backoff.ceiling(),
                        "delivery failed; the events wait in the spool");
                    if self.backoff.wait_or_give_up(&mut stopping).await {
                        return self.report;
                    }
                }
            }
        }
    }

    /// The events of the batches of a call, or `None` if a batch file is not one (dropped and
    /// counted).
    fn events(
        &mut self,
        objects: &[SpooledObject],
        bodies: &[Vec<u8>],
        now: i64,
    ) -> Option<Vec<InputLogEvent>> {
        let mut events = Vec::new();
        let mut outside = 0u64;
        for (object, body) in objects.iter().zip(bodies) {
            let Some(decoded) = decode(body) else {
                tracing::error!(sink = %self.to.name, spool = %self.to.spool.directory().display(),
                    sequence = object.sequence, events_lost = object.records, "unreadable spooled batch dropped");
                self.to.lost.fetch_add(object.records, Ordering::Relaxed);
                for object in objects {
                    self.to.spool.release(object.sequence);
                }
                let _ = self.to.spool.remove(object.sequence);
                return None;
            };
            for (timestamp, message) in decoded {
                if !within_window(timestamp, now) {
                    outside += 1;
                    continue;
                }
                events.push(
                    InputLogEvent::builder()
                        .timestamp(timestamp)
                        .message(message)
                        .build()
                        .expect("timestamp and message are set"),
                );
            }
        }
        if outside > 0 {
            self.to.lost.fetch_add(outside, Ordering::Relaxed);
            tracing::error!(sink = %self.to.name, events_lost = outside,
                "events older than CloudWatch accepts (14 days: the outage lasted that long) or more than 2 hours ahead of the clock are dropped");
        }
        Some(events)
    }

    async fn put(&self, stream: &str, events: Vec<InputLogEvent>) -> Outcome {
        let count = events.len();
        let sent = self
            .to
            .client
            .put_log_events()
            .log_group_name(&self.to.group)
            .log_stream_name(stream)
            .set_log_events(Some(events))
            .send()
            .await;
        match sent {
            Ok(answer) => {
                let rejected = answer.rejected_log_events_info().map_or(0, |info| {
                    rejected_events(
                        count,
                        info.too_new_log_event_start_index(),
                        info.too_old_log_event_end_index(),
                        info.expired_log_event_end_index(),
                    )
                });
                Outcome::Accepted { rejected }
            }
            Err(error) => match diagnose(&error) {
                Diagnosis::NotFound => Outcome::Missing,
                Diagnosis::AlreadyAccepted => Outcome::AlreadyAccepted,
                Diagnosis::InvalidParameter => Outcome::Invalid(describe(&error)),
                Diagnosis::AccessDenied => Outcome::Retry {
                    reason: format!("logs:PutLogEvents denied: {}", describe(&error)),
                    ambiguous: false,
                },
                _ => Outcome::Retry {
                    ambiguous: may_have_arrived(&error),
                    reason: describe(&error),
                },
            },
        }
    }

    /// Creates the stream, and the group first if it is missing too.
    async fn create(&self, stream: &str) -> Result<(), String> {
        match self.create_stream(stream).await {
            Err(Diagnosis::NotFound) => {
                self.create_group().await?;
                self.create_stream(stream)
                    .await
                    .map_err(|_| format!("creating log stream {stream} after its group failed"))
            }
            Err(Diagnosis::AccessDenied) => Err(format!(
                "log stream {stream} does not exist and logs:CreateLogStream is denied"
            )),
            Err(other) => Err(format!("creating log stream {stream}: {other:?}")),
            Ok(()) => Ok(()),
        }
    }

    async fn create_stream(&self, stream: &str) -> Result<(), Diagnosis> {
        let created = self
            .to
            .client
            .create_log_stream()
            .log_group_name(&self.to.group)
            .log_stream_name(stream)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(sink = %self.to.name, stream, "log stream created");
                Ok(())
            }
            Err(error) => match diagnose(&error) {
                Diagnosis::AlreadyExists => Ok(()),
                diagnosis => {
                    tracing::debug!(sink = %self.to.name, stream, error = %describe(&error), "creating a log stream failed");
                    Err(diagnosis)
                }
            },
        }
    }

    async fn create_group(&self) -> Result<(), String> {
        let created = self
            .to
            .client
            .create_log_group()
            .log_group_name(&self.to.group)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(sink = %self.to.name, group = %self.to.group, "log group created");
                Ok(())
            }
            Err(error) => match diagnose(&error) {
                Diagnosis::AlreadyExists => Ok(()),
                Diagnosis::AccessDenied => Err(format!(
                    "log group {} does not exist and logs:CreateLogGroup is denied: create it, or allow the action ({})",
                    self.to.group,
                    describe(&error)
                )),
                _ => Err(format!(
                    "creating log group {}: {}",
                    self.to.group,
                    describe(&error)
                )),
            },
        }
    }

    async fn remove(&self, objects: &[SpooledObject]) {
        let spool = Arc::clone(&self.to.spool);
        let sequences: Vec<u64> = objects.iter().map(|o| o.sequence).collect();
        let removed = tokio::task::spawn_blocking(move || {
            sequences
                .into_iter()
                .try_for_each(|sequence| spool.remove(sequence))
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            // Sent again later: the one way a batch the service has could go twice.
            Ok(Err(error)) => tracing::error!(sink = %self.to.name, %error,
                "removing delivered batches from the spool failed; they may be sent again"),
            Err(error) => tracing::error!(sink = %self.to.name, %error, "spool task failed"),
        }
    }

    fn release(&self, objects: &[SpooledObject]) {
        for object in objects {
            self.to.spool.release(object.sequence);
        }
    }
}

/// PutLogEvents accepts events at most 14 days old and at most 2 hours ahead.
const MAX_AGE_MS: i64 = 14 * 24 * 3600 * 1000;
const MAX_AHEAD_MS: i64 = 2 * 3600 * 1000;

/// Whether CloudWatch accepts an event of `timestamp` at `now` (both Unix milliseconds). Edge
/// cases (the clock moving during the call) are left to the answer's `rejectedLogEventsInfo`.
fn within_window(timestamp: i64, now: i64) -> bool {
    timestamp >= now - MAX_AGE_MS && timestamp <= now + MAX_AHEAD_MS
}

fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Returns once the agent is stopping and its delivery deadline has passed.
async fn stop_deadline(stopping: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *stopping.borrow_and_update();
        if let Some(deadline) = deadline {
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
            return;
        }
        if stopping.changed().await.is_err() {
            // The sink is gone without a deadline: nothing will set one.
            std::future::pending::<()>().await;
        }
    }
}

/// The next call: the oldest batch, and after it the following batches of the same stream
/// while the call stays within PutLogEvents' limits and in time order (unless `single`).
pub fn plan(pending: &[SpooledObject], single: bool) -> Vec<(SpooledObject, BatchKey)> {
    let mut call: Vec<(SpooledObject, BatchKey)> = Vec::new();
    let (mut events, mut size) = (0usize, 0usize);
    for object in pending {
        let Ok(key) = object.key.parse::<BatchKey>() else {
            // Not a batch (a foreign file's header): sent alone, and dropped as unreadable.
            if call.is_empty() {
                let key = BatchKey {
                    first: 0,
                    last: 0,
                    size: 0,
                    stream: String::new(),
                };
                return vec![(object.clone(), key)];
            }
            continue;
        };
        if let Some((_, first)) = call.first() {
            let (_, previous) = call.last().expect("not empty");
            let fits = key.stream == first.stream
                && key.first >= previous.last
                && key.last - first.first <= MAX_SPAN_MS
                && events + object.records as usize <= MAX_EVENTS
                && size + key.size <= MAX_BATCH_BYTES;
            if key.stream != first.stream {
                continue;
            }
            if single || !fits {
                break;
            }
        }
        events += object.records as usize;
        size += key.size;
        call.push((object.clone(), key));
    }
    call
}

/// Events of a call of `count` the answer rejects: from `too_new` on, up to `too_old` and
/// `expired` (inclusive).
fn rejected_events(
    count: usize,
    too_new: Option<i32>,
    too_old: Option<i32>,
    expired: Option<i32>,
) -> u64 {
    let count = count as i64;
    let below = too_old
        .into_iter()
        .chain(expired)
        .map(|end| i64::from(end) + 1)
        .max()
        .unwrap_or(0)
        .clamp(0, count);
    let above = too_new.map_or(count, |start| i64::from(start).clamp(below, count));
    (below + (count - above)) as u64
}

/// Whether a failed call may have been stored all the same: an answer that was cut, or no
/// answer in time after the request went out. A refused connection, or an answer, says no.
fn may_have_arrived<E, R>(error: &aws_sdk_cloudwatchlogs::error::SdkError<E, R>) -> bool
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_cloudwatchlogs::error::SdkError;
    match error {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => true,
        SdkError::DispatchFailure(_) => {
            // The connection never opened: nothing was sent.
            let text = describe(error);
            ![
                "Connection refused",
                "error trying to connect",
                "dns error",
                "No route to host",
            ]
            .iter()
            .any(|cause| text.contains(cause))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(
        sequence: u64,
        stream: &str,
        first: i64,
        last: i64,
        records: u64,
        size: usize,
    ) -> SpooledObject {
        SpooledObject {
            sequence,
            key: BatchKey {
                first,
                last,
                size,
                stream: stream.to_owned(),
            }
            .to_string(),
            records,
            bytes: size as u64,
        }
    }

    fn sequences(call: &[(SpooledObject, BatchKey)]) -> Vec<u64> {
        call.iter().map(|(o, _)| o.sequence).collect()
    }

    #[test]
    fn a_call_takes_the_oldest_batch_and_the_next_ones_of_its_stream() {
        let pending = [
            batch(1, "eth0-all", 1000, 2000, 10, 1000),
            batch(2, "eth1-all", 1000, 2000, 10, 1000),
            batch(3, "eth0-all", 2000, 3000, 10, 1000),
            batch(4, "eth0-all", 3000, 4000, 10, 1000),
        ];
        assert_eq!(sequences(&plan(&pending, false)), [1, 3, 4]);
        assert_eq!(sequences(&plan(&pending, true)), [1]);
        assert_eq!(sequences(&plan(&pending[1..], false)), [2]);
    }

    #[test]
    fn a_call_stays_within_the_limits_and_in_time_order() {
        let events = [
            batch(1, "s", 0, 10, 6_000, 1000),
            batch(2, "s", 10, 20, 4_000, 1000),
            batch(3, "s", 20, 30, 1, 100),
        ];
        assert_eq!(sequences(&plan(&events, false)), [1, 2], "10,000 events");
        let bytes = [
            batch(1, "s", 0, 10, 1, 600_000),
            batch(2, "s", 10, 20, 1, 448_576),
            batch(3, "s", 20, 30, 1, 1),
        ];
        assert_eq!(sequences(&plan(&bytes, false)), [1, 2], "a megabyte");
        let out_of_order = [batch(1, "s", 100, 200, 1, 1), batch(2, "s", 150, 300, 1, 1)];
        assert_eq!(sequences(&plan(&out_of_order, false)), [1]);
        let a_day = [
            batch(1, "s", 0, 10, 1, 1),
            batch(2, "s", 10, MAX_SPAN_MS + 1, 1, 1),
        ];
        assert_eq!(sequences(&plan(&a_day, false)), [1]);
        assert!(plan(&[], false).is_empty());
    }

    #[test]
    fn the_accepted_window_is_14_days_back_and_2_hours_ahead() {
        let now = 1_800_000_000_000;
        assert!(within_window(now, now));
        assert!(within_window(now - MAX_AGE_MS, now));
        assert!(!within_window(now - MAX_AGE_MS - 1, now));
        assert!(within_window(now + 2 * 3600 * 1000, now));
        assert!(!within_window(now + 2 * 3600 * 1000 + 1, now));
    }

    #[test]
    fn rejected_events_are_counted_from_the_indices() {
        assert_eq!(rejected_events(10, None, None, None), 0);
        assert_eq!(rejected_events(10, Some(7), None, None), 3);
        assert_eq!(rejected_events(10, None, Some(2), None), 3);
        assert_eq!(rejected_events(10, None, Some(2), Some(4)), 5);
        assert_eq!(rejected_events(10, Some(8), Some(1), None), 4);
        assert_eq!(rejected_events(10, Some(0), Some(9), None), 10);
    }
}
