//! Capped exponential backoff with full jitter: the n-th wait is uniform in
//! `0..=min(max, first * 2^n)`, so many agents retrying against one recovering store spread
//! out instead of arriving together.

use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            ceiling: first.min(max),
        }
    }

    /// The next wait, and doubles the ceiling (up to `max`) for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let millis = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    /// The ceiling of the next wait (what a log line reports).
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// After a success, start again from `first`.
    pub fn reset(&mut self) {
        self.ceiling = self.first.min(self.max);
    }

    /// Waits one step, cut short by a stop: `stopping` holds the shutdown deadline once the sink
    /// is told to stop. True when the deadline has passed (or the stop was dropped): give up.
    pub async fn wait_or_give_up(
        &mut self,
        stopping: &mut watch::Receiver<Option<Instant>>,
    ) -> bool {
        let delay = self.next_delay();
        let deadline = *stopping.borrow();
        match deadline {
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return true;
                }
                tokio::time::sleep(delay.min(deadline - now)).await;
                Instant::now() >= deadline
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => false,
                    // Stopping: try again at once, then within the deadline; gone: give up.
                    changed = stopping.changed() => changed.is_err(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_below_a_doubling_capped_ceiling() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let ceilings: Vec<u64> = (0..6)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
                ceiling.as_millis() as u64
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
        // Full jitter: over many draws the waits are spread, not all at the ceiling.
        let mut backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
        let draws: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(draws.iter().any(|d| *d < Duration::from_secs(5)));
        assert!(draws.iter().any(|d| *d > Duration::from_secs(5)));
    }
}
