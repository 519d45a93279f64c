//! The driver under tokio's paused clock, with sinks that fail as told: retries, give-ups,
//! queue-full drops and the final totals, exactly.

use std::sync::Mutex;

use super::*;
use crate::record::{FlowRecord, RecordKind};

/// How a scripted sink answers each write.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// Transient failures for this many attempts, then success.
    FailTimes(u32),
    /// Transient failures until the (paused) clock reaches this instant, then success.
    FailUntil(Instant),
    /// A permanent failure after delivering this many records of the interval.
    Permanent { delivered: u64 },
    /// The write never completes.
    Hang,
}

#[derive(Default)]
struct Seen {
    attempts: u32,
    written: Vec<u64>,
    reopened: u32,
}

struct Scripted {
    script: Script,
    failures: u32,
    seen: Arc<Mutex<Seen>>,
}

impl Sink for Scripted {
    fn name(&self) -> String {
        "scripted".into()
    }

    async fn write(&mut self, interval: Arc<IntervalRecords>) -> Result<(), SinkError> {
        self.seen.lock().unwrap().attempts += 1;
        let fail = match self.script {
            Script::FailTimes(n) => self.failures < n,
            Script::FailUntil(at) => Instant::now() < at,
            Script::Permanent { .. } => return Err(SinkError::Fatal("closed".into())),
            Script::Hang => std::future::pending().await,
        };
        if fail {
            self.failures += 1;
            return Err(SinkError::Retriable("full".into()));
        }
        self.seen.lock().unwrap().written.push(interval.start);
        Ok(())
    }

    fn give_up(&mut self, _interval: &IntervalRecords) -> u64 {
        match self.script {
            Script::Permanent { delivered } => delivered,
            _ => 0,
        }
    }

    async fn flush(&mut self, _deadline: Instant) -> Result<(), SinkError> {
        Ok(())
    }

    fn reopen(&mut self) {
        self.seen.lock().unwrap().reopened += 1;
    }

    fn bytes_written(&self) -> Counter {
        Counter::default()
    }
}

fn scripted(script: Script) -> (SinkHandle, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sink = Scripted {
        script,
        failures: 0,
        seen: Arc::clone(&seen),
    };
    (spawn(sink), seen)
}

fn interval(start: u64, records: usize) -> Arc<IntervalRecords> {
    let record = FlowRecord {
        interface: Arc::from("eth0"),
        ifindex: 2,
        interface_type: None,
        start,
        end: start + 1,
        kind: RecordKind::NoData,
    };
    Arc::new(IntervalRecords {
        start,
        end: start + 1,
        records: vec![record; records],
    })
}

fn later(seconds: u64) -> Instant {
    Instant::now() + Duration::from_secs(seconds)
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_until_written() {
    let (mut handle, seen) = scripted(Script::FailTimes(3));
    let started = Instant::now();
    handle.offer(&interval(10, 5)).unwrap();
    handle.offer(&interval(11, 2)).unwrap();
    let report = handle.finish(later(60)).await;
    assert_eq!(
        report,
        SinkReport {
            intervals_written: 2,
            records_written: 7,
            retries: 3,
            records_lost: 0,
            records_not_delivered: 0,
        }
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.attempts, 5);
    assert_eq!(seen.written, [10, 11], "in order, each once");
    // Three waits, each within its doubling ceiling: 0.2 + 0.4 + 0.8 s at most.
    assert!(
        started.elapsed() <= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_fault_that_clears_loses_nothing_and_counts_each_retry() {
    // Down for five minutes: the backoff reaches its ceiling and stays there.
    let (mut handle, seen) = scripted(Script::FailUntil(later(300)));
    let live = handle.live().clone();
    handle.offer(&interval(1, 4)).unwrap();
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(live.records_waiting.get(), 4, "the records wait");
    let retries_so_far = live.retries.get();
    // 100 s with waits of at most 10 s after the first few: at least 10 retries, and not a spin.
    assert!((10..=100).contains(&retries_so_far), "{retries_so_far}");
    handle.offer(&interval(2, 3)).unwrap();
    let report = handle.finish(later(600)).await;
    assert_eq!(report.records_written, 7);
    assert_eq!(report.records_lost, 0);
    assert_eq!(report.retries, live.retries.get());
    assert_eq!(live.write_errors.get(), report.retries);
    assert_eq!(live.records_waiting.get(), 0);
    assert_eq!(seen.lock().unwrap().written, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_loses_exactly_what_was_not_delivered() {
    let (mut handle, seen) = scripted(Script::Permanent { delivered: 2 });
    let live = handle.live().clone();
    handle.offer(&interval(1, 5)).unwrap();
    handle.offer(&interval(2, 5)).unwrap();
    let report = handle.finish(later(60)).await;
    assert_eq!(report.records_written, 4, "two of each interval went out");
    assert_eq!(report.records_lost, 6);
    assert_eq!(report.retries, 0, "a permanent error is not retried");
    assert_eq!(seen.lock().unwrap().attempts, 2);
    assert_eq!(live.records_lost.get(), 6);
    assert_eq!(live.records_written.get(), 4);
    assert_eq!(live.write_errors.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_new_intervals_and_the_deadline_ends_the_retries() {
    let (mut handle, seen) = scripted(Script::FailTimes(u32::MAX));
    let live = handle.live().clone();
    // The driver takes the first interval out of the queue to retry it; QUEUE_INTERVALS more
    // wait; the ones after that are dropped.
    handle.offer(&interval(0, 10)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    for start in 1..=QUEUE_INTERVALS as u64 {
        handle.offer(&interval(start, 10)).unwrap();
    }
    assert_eq!(handle.offer(&interval(99, 7)), Err(7));
    assert_eq!(handle.offer(&interval(100, 3)), Err(3));
    assert_eq!(live.records_waiting.get(), 170);
    assert_eq!(live.records_lost.get(), 10);

    let stopping = Instant::now();
    let report = handle.finish(later(15)).await;
    assert!(
        stopping.elapsed() <= Duration::from_secs(15),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(report.records_written, 0);
    assert_eq!(report.records_not_delivered, 170);
    assert_eq!(
        report.records_lost, 180,
        "170 not delivered + 10 dropped at the queue"
    );
    assert_eq!(live.records_lost.get(), 180);
    assert!(seen.lock().unwrap().written.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_sink_that_never_returns_is_abandoned_at_the_deadline() {
    let (mut handle, _seen) = scripted(Script::Hang);
    handle.offer(&interval(1, 4)).unwrap();
    handle.offer(&interval(2, 6)).unwrap();
    let stopping = Instant::now();
    let report = handle.finish(later(15)).await;
    assert!(
        stopping.elapsed() <= Duration::from_secs(16),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(report.records_written, 0);
    assert_eq!(report.records_not_delivered, 10);
    assert_eq!(report.records_lost, 10);
}

#[tokio::test(start_paused = true)]
async fn reopen_reaches_the_sink_before_its_next_write() {
    let (mut handle, seen) = scripted(Script::FailTimes(0));
    handle.offer(&interval(1, 1)).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(seen.lock().unwrap().reopened, 0);
    handle.reopen();
    handle.offer(&interval(2, 1)).unwrap();
    let report = handle.finish(later(15)).await;
    assert_eq!(report.records_written, 2);
    assert_eq!(seen.lock().unwrap().reopened, 1);
}
