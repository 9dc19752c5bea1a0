//! Owner interactions: a question a run asks its owner (an OTP, a login, an
//! identity confirmation, a challenge), kept durably while the run waits.
//!
//! The question lives here; the answer never does. The owner's answer is
//! sealed by [`crate::vault::Vault::answer_interaction`] under a key bound
//! to the interaction's source, and the waiting run takes it with
//! [`crate::vault::Vault::take_answer`], so an answer given for one source
//! cannot open in a run of another.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::store::{Store, StoreError, now_ms};

/// One interaction as the owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Interaction {
    /// Interaction id.
    pub id: String,
    /// The run that asked.
    pub run: String,
    /// Its source's name.
    pub source: String,
    /// otp, login, identity-confirmation or challenge.
    pub kind: String,
    /// What the connector asked.
    pub prompt: String,
    /// pending, answered, declined or expired.
    pub state: String,
    /// Asked, ms since the Unix epoch.
    pub created_at: i64,
    /// Unanswered past this time (ms), the run fails with
    /// interaction_timeout.
    pub deadline: i64,
}

/// Records a pending interaction of `run_id` and marks the run
/// waiting_for_owner, in one transaction. Returns its id.
pub(crate) fn open(
    store: &Store,
    run_id: &str,
    source_id: i64,
    kind: &str,
    prompt: &str,
    deadline: i64,
) -> Result<String, StoreError> {
    let id = crate::store::new_id();
    store.write(|conn| {
        conn.execute(
            "INSERT INTO interactions (id, run_id, source_id, kind, prompt, state, created_at, deadline)
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
            params![id, run_id, source_id, kind, prompt, now_ms(), deadline],
        )?;
        conn.execute(
            "UPDATE runs SET state = 'waiting_for_owner' WHERE id = ?1 AND state = 'running'",
            [run_id],
        )?;
        Ok(())
    })?;
    Ok(id)
}

/// The interaction's state: pending, answered, declined or expired.
pub(crate) fn state(store: &Store, id: &str) -> Result<String, StoreError> {
    Ok(store
        .conn()
        .query_row("SELECT state FROM interactions WHERE id = ?1", [id], |r| {
            r.get(0)
        })?)
}

/// Ends the wait: a still-pending interaction expires, and the run is
/// running again.
pub(crate) fn close(store: &Store, id: &str, run_id: &str) -> Result<(), StoreError> {
    store.conn().execute(
        "UPDATE interactions SET state = 'expired' WHERE id = ?1 AND state = 'pending'",
        [id],
    )?;
    store.conn().execute(
        "UPDATE runs SET state = 'running' WHERE id = ?1 AND state = 'waiting_for_owner'",
        [run_id],
    )?;
    Ok(())
}

/// The owner declines a pending interaction.
pub fn decline(store: &Store, id: &str) -> Result<Interaction, StoreError> {
    let found = find(store, id)?;
    let changed = store.conn().execute(
        "UPDATE interactions SET state = 'declined', answered_at = ?2 WHERE id = ?1 AND state = 'pending'",
        params![id, now_ms()],
    )?;
    if changed == 0 {
        return Err(StoreError::Conflict(format!(
            "interaction {id} is {}, not waiting for an answer",
            found.state
        )));
    }
    find(store, id)
}

const SELECT: &str =
    "SELECT i.id, i.run_id, s.name, i.kind, i.prompt, i.state, i.created_at, i.deadline
     FROM interactions i JOIN sources s ON s.id = i.source_id";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Interaction> {
    Ok(Interaction {
        id: r.get(0)?,
        run: r.get(1)?,
        source: r.get(2)?,
        kind: r.get(3)?,
        prompt: r.get(4)?,
        state: r.get(5)?,
        created_at: r.get(6)?,
        deadline: r.get(7)?,
    })
}

/// One interaction by id.
pub fn find(store: &Store, id: &str) -> Result<Interaction, StoreError> {
    store
        .conn()
        .query_row(&format!("{SELECT} WHERE i.id = ?1"), [id], row)
        .optional()?
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "no interaction '{id}'; see `sourcebox interaction list`"
            ))
        })
}

/// Interactions, pending ones only unless `all`, oldest first.
pub fn list(store: &Store, all: bool) -> Result<Vec<Interaction>, StoreError> {
    // Two statements: the pending ones come off the state index, without
    // reading every answered interaction there ever was.
    let sql = if all {
        format!("{SELECT} ORDER BY i.created_at, i.rowid")
    } else {
        format!("{SELECT} WHERE i.state = 'pending' ORDER BY i.created_at, i.rowid")
    };
    let mut stmt = store.conn().prepare_cached(&sql)?;
    let rows = stmt.query_map([], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}
