//! What the scheduler last did, for the health report: kept by the
//! launcher, beaten by the scheduler.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::store::now_ms;

/// What the scheduler last did, for the health report.
#[derive(Debug, Default)]
pub struct Heartbeat {
    /// When a tick last completed, ms since the Unix epoch (0: never).
    last_tick: AtomicI64,
    /// Ticks failed since the last one that completed.
    failures: AtomicU32,
    /// Why the last failed tick failed.
    last_error: Mutex<Option<String>>,
    /// Whether a scheduler runs now.
    running: AtomicBool,
}

/// The scheduler's health as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SchedulerHealth {
    /// Whether the scheduler runs.
    pub running: bool,
    /// When its last tick completed, ms since the Unix epoch.
    pub last_tick: Option<i64>,
    /// Ticks failed in a row since then (each retried, with backoff).
    pub failures: u32,
    /// Why the last failed tick failed.
    pub last_error: Option<String>,
}

impl Heartbeat {
    /// The report.
    pub fn health(&self) -> SchedulerHealth {
        let last_tick = self.last_tick.load(Ordering::Relaxed);
        SchedulerHealth {
            running: self.running.load(Ordering::Relaxed),
            last_tick: (last_tick > 0).then_some(last_tick),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("heartbeat lock").clone(),
        }
    }

    pub(super) fn ticked(&self) {
        self.last_tick.store(now_ms(), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        *self.last_error.lock().expect("heartbeat lock") = None;
    }

    /// Records a failed tick; returns how many failed in a row.
    pub(super) fn failed(&self, why: String) -> u32 {
        *self.last_error.lock().expect("heartbeat lock") = Some(why);
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Marks the scheduler running until dropped.
pub(super) struct Running(Arc<Heartbeat>);

impl Running {
    pub(super) fn start(heartbeat: Arc<Heartbeat>) -> Self {
        heartbeat.running.store(true, Ordering::Relaxed);
        Self(heartbeat)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}
