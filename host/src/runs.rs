//! The launch seam: the one way a connector runs, and the record of every
//! run.
//!
//! [`Launcher::launch`] (manual runs) and [`Launcher::execute`] (queued
//! scheduled and retry runs) both end in one function that resolves
//! everything at execution time from the store and the vault: the source's
//! connector version, its setup values, and whether its required
//! credentials are present (checked without decrypting). If they are not,
//! the launch is refused with a typed failure, recorded on the run, and no
//! instance is created. There is no fallback to anything else.
//!
//! Each process that runs connectors holds a lock file under `runners/`
//! for as long as it lives. A run whose runner's lock is free was cut off
//! (kill -9, power loss): [`recover`] marks it interrupted and expires its
//! interactions.

mod error;
mod gate;
pub mod heartbeat;
mod launcher;
mod record;
mod runner;
pub mod scheduler;

pub use error::{LaunchError, refuse_paused};
pub use launcher::{LaunchConfig, Launcher, RetryPolicy};
pub use record::{
    FailureKind, MAX_PAGE, RunRecord, RunsPage, Trigger, cancel, enqueue, find, list, page,
    recover, request,
};
