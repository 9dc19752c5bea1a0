//! Run events on an in-process broadcast: state changes, progress counts,
//! log lines and owner interactions. The HTTP API streams these; nothing in
//! an event is ever a secret (log lines are redacted before they get here).

use serde::Serialize;
use tokio::sync::broadcast;

/// Events kept for a subscriber that falls behind before it misses some.
const BACKLOG: usize = 1024;

/// One thing that happened in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunEvent {
    /// The run.
    pub run: String,
    /// Its source's name.
    pub source: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The run moved to `state`; `failure` is its typed kind when it failed.
    State {
        /// queued, running, waiting_for_owner, succeeded, failed, cancelled
        /// or interrupted.
        state: String,
        /// Typed failure kind.
        failure: Option<String>,
    },
    /// Records stored so far.
    Progress {
        /// Count.
        records: u64,
    },
    /// A log line of the connector, redacted.
    Log {
        /// trace, debug, info, warn or error.
        level: String,
        /// The line.
        line: String,
    },
    /// The run asked its owner something and waits for the answer.
    Interaction {
        /// Interaction id.
        id: String,
        /// otp, login, identity-confirmation or challenge.
        kind: String,
        /// What the connector asked.
        prompt: String,
    },
}

/// The sending side; cheap to clone. Sending with no subscriber is fine.
#[derive(Debug, Clone)]
pub struct Events(broadcast::Sender<RunEvent>);

impl Default for Events {
    fn default() -> Self {
        Self(broadcast::channel(BACKLOG).0)
    }
}

impl Events {
    /// Publishes an event to every current subscriber.
    pub fn send(&self, run: &str, source: &str, kind: EventKind) {
        let _ = self.0.send(RunEvent {
            run: run.to_owned(),
            source: source.to_owned(),
            kind,
        });
    }

    /// A receiver of every event sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.0.subscribe()
    }
}
