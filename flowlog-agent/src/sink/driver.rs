//! The delivery driver every sink runs behind: a bounded queue of intervals, retries with
//! capped exponential backoff and full jitter, exact accounting of what was written, lost or
//! left undelivered, and a bounded stop.
//!
//! - An interval is retried until it is written while the error is transient (a full disk, a
//!   collector away): records wait, bounded by the queue ([`QUEUE_INTERVALS`] intervals), and
//!   delivery resumes by itself when the fault clears. An interval offered to a full queue is
//!   dropped for this sink, counted and logged with its records.
//! - A permanent error gives the interval up at once; [`Sink::give_up`] says what of it was
//!   delivered, the rest is counted lost and logged with its number.
//! - [`SinkHandle::finish`] stops within a deadline whatever the sink does: retries end at the
//!   deadline, and a sink still busy then is abandoned; what it could not deliver is counted and
//!   reported.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use super::{Backoff, Sink, SinkError, SpoolGauges};
use crate::record::IntervalRecords;

/// Intervals a sink may fall behind before new ones are dropped (and counted) for it.
pub const QUEUE_INTERVALS: usize = 16;
/// The first retry comes within this; each later one within twice the previous ceiling...
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// ... up to this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long stopping sinks may take after SIGINT/SIGTERM: all sinks finish concurrently within
/// it (the systemd unit's `TimeoutStopSec` is twice as long).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(15);
/// After the deadline, how long a sink's task has to notice it before it is abandoned.
const ABANDON_AFTER: Duration = Duration::from_millis(500);

/// A running sink: its queue and its task.
pub struct SinkHandle {
    name: String,
    queue: mpsc::Sender<Arc<IntervalRecords>>,
    task: JoinHandle<SinkReport>,
    /// Records of intervals that found the queue full.
    dropped_at_queue: u64,
    /// Records of intervals the queue took.
    queued_total: u64,
    live: LiveCounters,
    reopen: Arc<AtomicBool>,
    deadline: watch::Sender<Option<Instant>>,
}

/// A sink's counts as they happen, for the metrics endpoint: the driver's (the same counts the
/// final [`SinkReport`] gives) and those the sink keeps itself. Clones share the values.
#[derive(Clone, Debug, Default)]
pub struct LiveCounters {
    pub records_written: Counter,
    pub retries: Counter,
    pub write_errors: Counter,
    pub records_lost: Counter,
    /// Records in the queue or being retried: waiting to be written.
    pub records_waiting: Gauge,
    /// Kept by the sink: [`Sink::bytes_written`].
    pub bytes_written: Counter,
    /// Kept by the sink's spool, if it has one.
    pub spool: Option<SpoolGauges>,
}

/// What a sink did over its life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkReport {
    pub intervals_written: u64,
    pub records_written: u64,
    pub retries: u64,
    /// Records given up: queue full, a permanent error, or not delivered when the agent
    /// stopped (those are also in `records_not_delivered`).
    pub records_lost: u64,
    /// Records still waiting (queued or being retried) when the shutdown deadline passed.
    pub records_not_delivered: u64,
}

/// Starts `sink` as its own task.
pub fn spawn<S: Sink>(sink: S) -> SinkHandle {
    let name = sink.name();
    let (queue, incoming) = mpsc::channel::<Arc<IntervalRecords>>(QUEUE_INTERVALS);
    let live = LiveCounters {
        bytes_written: sink.bytes_written(),
        spool: sink.spool_gauges(),
        ..LiveCounters::default()
    };
    let reopen = Arc::new(AtomicBool::new(false));
    let (deadline, deadline_rx) = watch::channel(None);
    let driver = Driver {
        sink,
        name: name.clone(),
        live: live.clone(),
        reopen: Arc::clone(&reopen),
        deadline: deadline_rx,
        report: SinkReport::default(),
    };
    let task = tokio::spawn(driver.run(incoming));
    SinkHandle {
        name,
        queue,
        task,
        dropped_at_queue: 0,
        queued_total: 0,
        live,
        reopen,
        deadline,
    }
}

struct Driver<S> {
    sink: S,
    name: String,
    live: LiveCounters,
    reopen: Arc<AtomicBool>,
    deadline: watch::Receiver<Option<Instant>>,
    report: SinkReport,
}

impl<S: Sink> Driver<S> {
    async fn run(mut self, mut incoming: mpsc::Receiver<Arc<IntervalRecords>>) -> SinkReport {
        while let Some(interval) = incoming.recv().await {
            let records = interval.records.len() as u64;
            self.deliver(interval).await;
            self.live.records_waiting.dec_by(records as i64);
        }
        // Without a deadline (the handle was dropped), a flush still may not hang forever.
        let deadline = self
            .deadline
            .borrow()
            .unwrap_or_else(|| Instant::now() + SHUTDOWN_DEADLINE);
        let flushed = tokio::time::timeout_at(deadline, self.sink.flush(deadline)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(sink = %self.name, %error, "final flush failed"),
            Err(_) => {
                tracing::error!(sink = %self.name, "final flush cut short by the shutdown deadline")
            }
        }
        self.report.records_lost += self.sink.records_lost_after_write();
        self.report
    }

    /// Writes one interval, retrying transient errors until it is written, the error turns
    /// permanent, or the shutdown deadline passes.
    async fn deliver(&mut self, interval: Arc<IntervalRecords>) {
        let records = interval.records.len() as u64;
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut attempt = 0u32;
        loop {
            if self.past_deadline() {
                let lost = self.give_up(&interval);
                self.report.records_not_delivered += lost;
                return;
            }
            if self.reopen.swap(false, Ordering::Relaxed) {
                self.sink.reopen();
            }
            attempt += 1;
            match self.sink.write(Arc::clone(&interval)).await {
                Ok(()) => {
                    self.report.intervals_written += 1;
                    self.report.records_written += records;
                    self.live.records_written.inc_by(records);
                    if attempt > 1 {
                        tracing::info!(sink = %self.name, attempts = attempt, records, "write succeeded after retries");
                    }
                    return;
                }
                Err(SinkError::Fatal(error)) => {
                    self.live.write_errors.inc();
                    let lost = self.give_up(&interval);
                    tracing::error!(sink = %self.name, %error, records_lost = lost, "write failed permanently; records lost");
                    return;
                }
                Err(SinkError::Retriable(error)) => {
                    self.report.retries += 1;
                    self.live.retries.inc();
                    self.live.write_errors.inc();
                    let ceiling = backoff.ceiling();
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        sink = %self.name,
                        attempt,
                        %error,
                        retry_within = ?ceiling,
                        records_waiting = self.live.records_waiting.get(),
                        "write failed; records wait and the write is retried"
                    );
                    self.wait(delay).await;
                }
            }
        }
    }

    /// Gives `interval` up: what earlier attempts delivered counts as written, the rest lost.
    /// Returns the records lost.
    fn give_up(&mut self, interval: &IntervalRecords) -> u64 {
        let records = interval.records.len() as u64;
        let delivered = self.sink.give_up(interval).min(records);
        let lost = records - delivered;
        self.report.records_written += delivered;
        self.live.records_written.inc_by(delivered);
        self.report.records_lost += lost;
        self.live.records_lost.inc_by(lost);
        lost
    }

    fn past_deadline(&self) -> bool {
        self.deadline
            .borrow()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Sleeps `delay`, or less if the shutdown deadline comes first.
    async fn wait(&mut self, delay: Duration) {
        let until = Instant::now() + delay;
        loop {
            let deadline = *self.deadline.borrow_and_update();
            match deadline {
                Some(deadline) => {
                    tokio::time::sleep_until(until.min(deadline)).await;
                    return;
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => return,
                        changed = self.deadline.changed() => if changed.is_err() {
                            // The handle is gone without finishing: the task is being dropped.
                            return;
                        },
                    }
                }
            }
        }
    }
}

impl SinkHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sink's counts so far, updated as it writes.
    pub fn live(&self) -> &LiveCounters {
        &self.live
    }

    /// Queues an interval for this sink without waiting. If the sink is that far behind, the
    /// interval is not queued for it, and the loss is logged and returned.
    pub fn offer(&mut self, interval: &Arc<IntervalRecords>) -> Result<(), u64> {
        let records = interval.records.len() as u64;
        // Counted before it is sent, so the driver never takes it below zero.
        self.live.records_waiting.inc_by(records as i64);
        match self.queue.try_send(Arc::clone(interval)) {
            Ok(()) => {
                self.queued_total += records;
                Ok(())
            }
            Err(_) => {
                self.live.records_waiting.dec_by(records as i64);
                self.dropped_at_queue += records;
                self.live.records_lost.inc_by(records);
                tracing::error!(
                    sink = %self.name,
                    records,
                    records_waiting = self.live.records_waiting.get(),
                    "sink queue full; interval dropped for this sink, its records are lost"
                );
                Err(records)
            }
        }
    }

    /// Asks the sink to open its files again before its next write (SIGHUP).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Closes the queue and lets the sink write what is queued and flush, until `deadline`;
    /// returns its report. A sink still busy at the deadline is abandoned: everything it had
    /// not written counts as not delivered.
    pub async fn finish(self, deadline: Instant) -> SinkReport {
        let _ = self.deadline.send(Some(deadline));
        drop(self.queue);
        let mut task = self.task;
        let mut report = match tokio::time::timeout_at(deadline + ABANDON_AFTER, &mut task).await {
            Ok(Ok(report)) => report,
            outcome => {
                match outcome {
                    Ok(Err(error)) => {
                        tracing::error!(sink = %self.name, %error, "sink task failed")
                    }
                    _ => {
                        task.abort();
                        tracing::error!(sink = %self.name, "sink still busy at the shutdown deadline; abandoned");
                    }
                }
                // What the live counters say it wrote; everything else queued was not
                // delivered.
                let written = self.live.records_written.get();
                let lost_before = self.live.records_lost.get() - self.dropped_at_queue;
                let not_delivered = self.queued_total.saturating_sub(written + lost_before);
                self.live.records_lost.inc_by(not_delivered);
                SinkReport {
                    intervals_written: 0,
                    records_written: written,
                    retries: self.live.retries.get(),
                    records_lost: lost_before + not_delivered,
                    records_not_delivered: not_delivered,
                }
            }
        };
        report.records_lost += self.dropped_at_queue;
        report
    }
}

#[cfg(test)]
mod tests;
