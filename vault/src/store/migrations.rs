//! Numbered schema migrations, applied in order inside one transaction each.
//!
//! The schema version is SQLite's `user_version`. A database newer than this
//! build is refused rather than guessed at.

use rusqlite::Connection;

use super::error::StoreError;

/// Every migration this build knows, in order; index + 1 is its version.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_records.sql"),
    include_str!("migrations/0003_connectors.sql"),
    include_str!("migrations/0004_runs.sql"),
    include_str!("migrations/0005_launch.sql"),
    include_str!("migrations/0006_setup.sql"),
    include_str!("migrations/0007_api.sql"),
    include_str!("migrations/0008_oauth.sql"),
    include_str!("migrations/0009_limits.sql"),
    include_str!("migrations/0010_paused_upgrades.sql"),
    include_str!("migrations/0011_ephemeral_sessions.sql"),
    include_str!("migrations/0012_records_in_page_order.sql"),
    include_str!("migrations/0013_active_runs_and_pending_questions.sql"),
    include_str!("migrations/0014_records_hold_json.sql"),
    include_str!("migrations/0015_identity_at_launch.sql"),
    include_str!("migrations/0016_schedules_disabled.sql"),
    include_str!("migrations/0017_credentials_given_at.sql"),
];

/// The schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings `conn` up to [`LATEST`].
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, LATEST)
}

/// Brings `conn` up to `version` (tests start from an older schema).
pub fn migrate_to(conn: &mut Connection, version: i64) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if current > LATEST {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: LATEST,
        });
    }
    for (index, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(version as usize)
        .skip(current as usize)
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}
