//! A run as the store keeps it: why it started, how it failed, its row,
//! and how runs are queued, cancelled, recovered, found and listed.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::error::LaunchError;
use super::runner::{IN_FLIGHT, runner_alive};
use crate::contract::ConnectorError;
use crate::runtime::RunFailure;
use crate::store::{Store, StoreError, new_id, now_ms};

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The owner asked for it.
    Manual,
    /// The source's schedule came due.
    Scheduled,
    /// A transient failure of an earlier run is retried.
    Retry,
    /// Setup checks the credentials (`verify()`).
    SetupVerification,
}

impl Trigger {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::Retry => "retry",
            Self::SetupVerification => "setup_verification",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        [
            Self::Manual,
            Self::Scheduled,
            Self::Retry,
            Self::SetupVerification,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// The typed reason a run failed, as stored on the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A required credential is not stored.
    CredentialsMissing,
    /// A required credential was revoked.
    CredentialRevoked,
    /// A stored credential cannot be decrypted.
    CredentialUnrecoverable,
    /// The provider refused the credentials, or they lack a permission.
    AuthRejected,
    /// The owner did not answer an interaction in time.
    InteractionTimeout,
    /// A request to a host or address the run may not reach.
    EgressDenied,
    /// A time, memory, record or HTTP limit.
    ResourceExhausted,
    /// The component trapped or could not be instantiated.
    ConnectorTrap,
    /// A temporary provider failure (retried).
    UpstreamTransient,
    /// The provider limits how often it is asked (retried, after the wait
    /// it names when it names one).
    RateLimited,
    /// The connector gave up for another reason.
    ConnectorFatal,
    /// The host stopped while the run was in flight.
    Interrupted,
    /// The credentials belong to another account than the one the source
    /// is connected to: nothing was collected; the owner chooses.
    AccountChanged,
    /// Another source of the connector is connected to the same account,
    /// and the owner has not confirmed that this one may be too.
    IdentityUnconfirmed,
}

impl FailureKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialsMissing => "credentials_missing",
            Self::CredentialRevoked => "credential_revoked",
            Self::CredentialUnrecoverable => "credential_unrecoverable",
            Self::AuthRejected => "auth_rejected",
            Self::InteractionTimeout => "interaction_timeout",
            Self::EgressDenied => "egress_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::ConnectorTrap => "connector_trap",
            Self::UpstreamTransient => "upstream_transient",
            Self::RateLimited => "rate_limited",
            Self::ConnectorFatal => "connector_fatal",
            Self::Interrupted => "interrupted",
            Self::AccountChanged => "account_changed",
            Self::IdentityUnconfirmed => "identity_unconfirmed",
        }
    }

    /// The kind of a failed run; `None` for a cancelled one.
    pub fn of(failure: &RunFailure) -> Option<Self> {
        Some(match failure {
            RunFailure::ResourceExhausted(_) => Self::ResourceExhausted,
            RunFailure::ConnectorTrap(_) | RunFailure::Instantiation(_) => Self::ConnectorTrap,
            RunFailure::EgressDenied(_) => Self::EgressDenied,
            RunFailure::Connector(
                ConnectorError::AuthRejected(_) | ConnectorError::AuthInsufficient(_),
            ) => Self::AuthRejected,
            RunFailure::Connector(ConnectorError::RateLimited(_)) => Self::RateLimited,
            RunFailure::Connector(ConnectorError::UpstreamTransient(_)) => Self::UpstreamTransient,
            RunFailure::CredentialRevoked(_) => Self::CredentialRevoked,
            RunFailure::CredentialUnrecoverable(_) => Self::CredentialUnrecoverable,
            RunFailure::Connector(ConnectorError::Fatal(_)) => Self::ConnectorFatal,
            RunFailure::InteractionTimeout(_) => Self::InteractionTimeout,
            RunFailure::Cancelled => return None,
        })
    }
}

/// A run as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Source name.
    pub source: String,
    /// Why it started: manual, scheduled, retry or setup_verification.
    pub trigger: String,
    /// queued, running, waiting_for_owner, succeeded, failed, cancelled or
    /// interrupted.
    pub state: String,
    /// Typed failure kind, if it failed.
    pub failure: Option<String>,
    /// What happened, in words (never a secret).
    pub detail: Option<String>,
    /// Records collected.
    pub records: u64,
    /// `id version` of the connector.
    pub connector: Option<String>,
    /// 1 for a first attempt, 2 for its first retry, ...
    pub attempt: u32,
    /// The first attempt, for a retry.
    pub retry_of: Option<String>,
    /// A queued run does not start before this time (ms since the Unix
    /// epoch).
    pub not_before: Option<i64>,
    /// Queued or started, ms since the Unix epoch.
    pub started_at: i64,
    /// End, ms since the Unix epoch.
    pub finished_at: Option<i64>,
    /// The account the run verified before it did anything else, as
    /// shown to the owner.
    pub account: Option<String>,
}

impl RunRecord {
    /// Whether the run has ended.
    pub fn finished(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "failed" | "cancelled" | "interrupted"
        )
    }
}

/// Runs `f` inside `BEGIN IMMEDIATE`, committing on success.
pub(super) fn immediate<T>(
    store: &Store,
    f: impl FnOnce() -> Result<T, LaunchError>,
) -> Result<T, LaunchError> {
    let conn = store.conn();
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    match f() {
        Ok(value) => {
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Queues a manual run of `source`, unless a run of it is queued already:
/// then that run is returned, and no other is queued. One statement, so
/// two requests at once queue one run.
pub fn request(store: &Store, source: &str) -> Result<RunRecord, StoreError> {
    let src = store.source(source)?;
    let id = new_id();
    store
        .conn()
        .prepare_cached(
            "INSERT INTO runs (id, source_id, trigger, state, started_at, attempt)
             SELECT ?1, ?2, 'manual', 'queued', ?3, 1
             WHERE NOT EXISTS (SELECT 1 FROM runs WHERE source_id = ?2 AND state = 'queued')",
        )?
        .execute(params![id, src.source_id, now_ms()])?;
    let queued: String = store
        .conn()
        .prepare_cached(
            "SELECT id FROM runs WHERE source_id = ?1 AND state = 'queued'
             ORDER BY started_at, rowid LIMIT 1",
        )?
        .query_row([src.source_id], |r| r.get(0))?;
    find(store, &queued)
}

/// Queues a run of `source`; the scheduler starts it at `not_before` or
/// after. Returns its id.
pub fn enqueue(
    store: &Store,
    source: &str,
    trigger: Trigger,
    not_before: Option<i64>,
    retry_of: Option<&str>,
    attempt: u32,
) -> Result<String, StoreError> {
    let src = store.source(source)?;
    let id = new_id();
    store.conn().execute(
        "INSERT INTO runs (id, source_id, trigger, state, started_at, not_before, retry_of, attempt)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7)",
        params![
            id,
            src.source_id,
            trigger.as_str(),
            now_ms(),
            not_before,
            retry_of,
            attempt
        ],
    )?;
    Ok(id)
}

/// Cancels a run: a queued one at once, one in flight at its next check
/// (it ends `cancelled`). A finished run is left as it is.
pub fn cancel(store: &Store, run_id: &str) -> Result<RunRecord, StoreError> {
    let record = find(store, run_id)?;
    match record.state.as_str() {
        "queued" => {
            store.conn().execute(
                "UPDATE runs SET state = 'cancelled', detail = 'cancelled by the owner before it started',
                 finished_at = ?2 WHERE id = ?1 AND state = 'queued'",
                params![run_id, now_ms()],
            )?;
        }
        "running" | "waiting_for_owner" => {
            store.conn().execute(
                "UPDATE runs SET cancel_requested = 1 WHERE id = ?1",
                [run_id],
            )?;
        }
        state => {
            return Err(StoreError::Conflict(format!(
                "run {run_id} already ended ({state}); nothing to cancel"
            )));
        }
    }
    find(store, run_id)
}

/// Marks runs whose process is gone interrupted, expires their pending
/// interactions (and drops any sealed answer), and brings their sources'
/// schedules due again. Returns the interrupted runs.
pub fn recover(store: &Store) -> Result<Vec<String>, StoreError> {
    let dir = store.dir();
    let in_flight: Vec<(String, Option<String>, i64)> = store
        .conn()
        .prepare(&format!(
            "SELECT id, runner, source_id FROM runs WHERE state IN {IN_FLIGHT}"
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut interrupted = Vec::new();
    for (id, runner, source_id) in in_flight {
        if runner.as_deref().is_some_and(|t| runner_alive(dir, t)) {
            continue;
        }
        store.write(|conn| {
            conn.execute(
                &format!(
                    "UPDATE runs SET state = 'interrupted', failure = 'interrupted',
                     detail = 'the host stopped while this run was in flight', finished_at = ?2
                     WHERE id = ?1 AND state IN {IN_FLIGHT}"
                ),
                params![id, now_ms()],
            )?;
            conn.execute(
                "DELETE FROM interaction_answers WHERE interaction_id IN
                     (SELECT id FROM interactions WHERE run_id = ?1)",
                [&id],
            )?;
            conn.execute(
                "UPDATE interactions SET state = 'expired' WHERE run_id = ?1 AND state IN ('pending', 'answered')",
                [&id],
            )?;
            conn.execute(
                "UPDATE schedules SET next_at = MIN(next_at, ?2) WHERE source_id = ?1",
                params![source_id, now_ms()],
            )?;
            Ok(())
        })?;
        tracing::warn!(run = id, "run interrupted: its process is gone");
        interrupted.push(id);
    }
    // Lock files of runners that are gone.
    if let Ok(entries) = std::fs::read_dir(dir.join("runners")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some(token) = path.file_stem().and_then(|s| s.to_str())
                && !runner_alive(dir, token)
            {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(interrupted)
}

/// (connector, state, failure, detail, records) of an ended run.
type End<'a> = (
    Option<&'a str>,
    &'a str,
    Option<FailureKind>,
    Option<&'a str>,
    u64,
);

pub(super) fn record_end(store: &Store, id: &str, end: End<'_>, at: i64) -> Result<(), StoreError> {
    let (connector, state, failure, detail, records) = end;
    store
        .conn()
        .prepare_cached(
            "UPDATE runs SET state = ?2, failure = ?3, detail = ?4, records = ?5, finished_at = ?6,
             connector = COALESCE(?7, connector) WHERE id = ?1",
        )?
        .execute(params![
            id,
            state,
            failure.map(FailureKind::as_str),
            detail,
            records as i64,
            at,
            connector
        ])?;
    Ok(())
}

const SELECT: &str =
    "SELECT r.id, s.name, r.trigger, r.state, r.failure, r.detail, r.records, r.connector,
     r.attempt, r.retry_of, r.not_before, r.started_at, r.finished_at, r.account
     FROM runs r JOIN sources s ON s.id = r.source_id";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        source: r.get(1)?,
        trigger: r.get(2)?,
        state: r.get(3)?,
        failure: r.get(4)?,
        detail: r.get(5)?,
        records: r.get::<_, i64>(6)? as u64,
        connector: r.get(7)?,
        attempt: r.get(8)?,
        retry_of: r.get(9)?,
        not_before: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        account: r.get(13)?,
    })
}

/// One run by id.
pub fn find(store: &Store, id: &str) -> Result<RunRecord, StoreError> {
    store
        .conn()
        .prepare_cached(&format!("{SELECT} WHERE r.id = ?1"))?
        .query_row([id], run_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no run '{id}'; see `sourcebox runs`")))
}

/// The most runs one page holds.
pub const MAX_PAGE: u32 = 500;

/// One page of runs, newest first, and where the next page starts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunsPage {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Up to `limit` runs of one source, or of all, newest first, after
/// `cursor` (from the page before). A limit out of 1..=[`MAX_PAGE`] or a
/// cursor this did not give is refused.
pub fn page(
    store: &Store,
    source: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
) -> Result<RunsPage, StoreError> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(StoreError::Conflict(format!(
            "limit must be between 1 and {MAX_PAGE} (it was {limit})"
        )));
    }
    let after = match cursor {
        None => None,
        Some(cursor) => Some(
            cursor
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "cursor '{cursor}' is not one a page of runs gave; start without it"
                    ))
                })?,
        ),
    };
    let source_id = source
        .map(|s| store.source(s))
        .transpose()?
        .map(|s| s.source_id);
    let (at, id) = after.unzip();
    let mut stmt = store.conn().prepare_cached(&format!(
        "{SELECT} WHERE (?1 IS NULL OR r.source_id = ?1)
           AND (?2 IS NULL OR (r.started_at, r.id) < (?2, ?3))
         ORDER BY r.started_at DESC, r.id DESC LIMIT ?4"
    ))?;
    let mut runs: Vec<RunRecord> = stmt
        .query_map(params![source_id, at, id, i64::from(limit) + 1], run_row)?
        .collect::<Result<_, _>>()?;
    let next_cursor = if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        runs.last().map(|r| format!("{}.{}", r.started_at, r.id))
    } else {
        None
    };
    Ok(RunsPage { runs, next_cursor })
}

/// Runs of one source, or of all, newest first.
pub fn list(store: &Store, source: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
    let source_id = source
        .map(|s| store.source(s))
        .transpose()?
        .map(|s| s.source_id);
    let mut stmt = store.conn().prepare(&format!(
        "{SELECT} WHERE (?1 IS NULL OR r.source_id = ?1) ORDER BY r.started_at DESC, r.rowid DESC"
    ))?;
    let rows = stmt.query_map([source_id], run_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}
