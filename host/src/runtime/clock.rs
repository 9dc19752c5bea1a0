//! A run's clock: how long it has taken in all, and how long without its
//! waits for the owner. Both bound the run whatever it is doing — running
//! guest code, or waiting inside the host for a sleep, an HTTP response or
//! an answer — because the call is raced against [`RunClock::spent`] and
//! abandoned when it loses, not only interrupted while guest code runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::limits::Limits;

/// Shared by every call of a run: its stores (their waits for the owner,
/// their questions) and the watchdog that races each call.
#[derive(Debug, Clone)]
pub struct RunClock(Arc<Mutex<Times>>);

#[derive(Debug)]
struct Times {
    started: Instant,
    /// Waits for the owner that have ended.
    waited: Duration,
    /// The wait for the owner in progress, if one is.
    waiting_since: Option<Instant>,
    /// Questions asked of the owner.
    asked: u32,
}

impl RunClock {
    /// A clock that starts now.
    pub fn start() -> Self {
        Self(Arc::new(Mutex::new(Times {
            started: Instant::now(),
            waited: Duration::ZERO,
            waiting_since: None,
            asked: 0,
        })))
    }

    /// Counts a question to the owner; how many the run has asked.
    pub(crate) fn ask(&self) -> u32 {
        let mut times = self.0.lock().expect("run clock lock");
        times.asked = times.asked.saturating_add(1);
        times.asked
    }

    /// What is left of `limits`' time (waits for the owner left out) and
    /// of its wall clock (everything counted), whichever is less; `None`
    /// once either is spent.
    pub(crate) fn left(&self, limits: &Limits) -> Option<Duration> {
        let now = Instant::now();
        let times = self.0.lock().expect("run clock lock");
        let elapsed = now.saturating_duration_since(times.started);
        let waiting = times
            .waiting_since
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        let active = elapsed.saturating_sub(times.waited + waiting);
        let left = limits
            .time
            .saturating_sub(active)
            .min(limits.wall.saturating_sub(elapsed));
        (!left.is_zero()).then_some(left)
    }

    /// Resolves once `limits` are spent. While the run waits for the owner
    /// only the wall clock runs, so this wakes at most once per what was
    /// left, to look again.
    pub(crate) async fn spent(&self, limits: &Limits) {
        while let Some(left) = self.left(limits) {
            tokio::time::sleep(left).await;
        }
    }

    /// Marks a wait for the owner, until the guard is dropped (the wait
    /// ended, or the call waiting was abandoned).
    pub(crate) fn waiting(&self) -> Waiting {
        self.0.lock().expect("run clock lock").waiting_since = Some(Instant::now());
        Waiting(self.clone())
    }
}

/// A wait for the owner in progress; see [`RunClock::waiting`].
#[derive(Debug)]
pub(crate) struct Waiting(RunClock);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut times = self.0.0.lock().expect("run clock lock");
        if let Some(since) = times.waiting_since.take() {
            times.waited += since.elapsed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(time_ms: u64, wall_ms: u64) -> Limits {
        Limits {
            time: Duration::from_millis(time_ms),
            wall: Duration::from_millis(wall_ms),
            ..Limits::default()
        }
    }

    #[test]
    fn waiting_for_the_owner_counts_against_the_wall_clock_only() {
        let clock = RunClock::start();
        let waiting = clock.waiting();
        std::thread::sleep(Duration::from_millis(60));
        // 60 ms waited: the time limit of 50 ms is untouched, a wall clock
        // of 50 ms is spent.
        assert!(clock.left(&limits(50, 10_000)).is_some());
        assert_eq!(clock.left(&limits(10_000, 50)), None);
        drop(waiting);
        std::thread::sleep(Duration::from_millis(60));
        // Then 60 ms not waiting: the time limit is spent too.
        assert_eq!(clock.left(&limits(50, 10_000)), None);
        assert!(clock.left(&limits(100, 10_000)).is_some());
    }

    #[tokio::test]
    async fn spent_resolves_when_the_first_limit_is() {
        let clock = RunClock::start();
        let started = Instant::now();
        clock.spent(&limits(10_000, 80)).await;
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(80), "{took:?}");
        assert!(took < Duration::from_millis(1_000), "{took:?}");
    }
}
