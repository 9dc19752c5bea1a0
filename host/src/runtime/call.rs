//! One call of a run: the source it is bound to, how the launch steers it,
//! what it calls and what it returns.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::clock::RunClock;
use super::limits::Limits;
use crate::contract::{AccountIdentity, RunSummary};
use crate::events::Events;
use crate::store::SourceRef;
use crate::vault::Vault;

/// The source a run is bound to, and how to reach its credentials.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The vault holding every source's credentials; the run only ever
    /// asks it for `source`'s.
    pub vault: Arc<Mutex<Vault>>,
    /// The one source this run is for.
    pub source: SourceRef,
    /// Non-secret setup field values.
    pub setup: Vec<(String, String)>,
    /// Identifies the run in audit rows and records.
    pub run_id: String,
    /// Limits for this run.
    pub limits: Limits,
    /// Non-public addresses the operator allowed (`--egress-allow`).
    pub egress_allow: Vec<std::net::SocketAddr>,
    /// Cancellation, events and owner interactions.
    pub control: RunControl,
}

/// How the launch seam steers a run from outside.
#[derive(Debug, Clone)]
pub struct RunControl {
    /// Cancelled to end the run: whatever its guest is doing, the call is
    /// abandoned at once (within [`CHECK_EVERY`] while guest code runs).
    pub cancel: CancellationToken,
    /// The run's clock and its count of questions, shared by every call
    /// of the run (an `authenticate` that waited for an OTP, then the
    /// `collect`), started when the control is made.
    pub clock: RunClock,
    /// Where the run's events go.
    pub events: Events,
    /// Whether the run may ask its owner; `interaction.ask` answers
    /// `unsupported` otherwise.
    pub interactive: bool,
    /// How long an interaction waits for the owner.
    pub interaction_wait: Duration,
    /// How often a waiting interaction looks for the answer.
    pub poll: Duration,
    /// Where a login interaction opens its browser.
    pub logins: crate::browser::Logins,
}

impl Default for RunControl {
    fn default() -> Self {
        Self {
            cancel: CancellationToken::new(),
            clock: RunClock::start(),
            events: Events::default(),
            interactive: false,
            interaction_wait: Duration::from_secs(15 * 60),
            poll: Duration::from_millis(200),
            logins: crate::browser::Logins::default(),
        }
    }
}

/// What a run calls.
#[derive(Debug, Clone)]
pub enum Call {
    /// `verify()`.
    Verify,
    /// `authenticate()`: password and OTP-seed credentials resolve.
    Authenticate,
    /// `collect(request)`.
    Collect(Vec<String>),
}

/// What a successful run returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// From `verify()`.
    Verified(AccountIdentity),
    /// From `authenticate()`.
    Authenticated,
    /// From `collect()`.
    Collected(RunSummary),
}
