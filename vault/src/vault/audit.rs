//! The hash-chained audit log of every vault operation.
//!
//! Each row carries the hash of the row before it:
//! `hash = SHA-256(prev_hash || seq || at || actor || action || owner || source
//! || credential || run_id || outcome)`, every field length-prefixed and
//! absent fields marked, so no two different rows encode alike. Rows hold
//! names and outcomes only, never secret bytes. Appends happen inside the
//! caller's write transaction (`BEGIN IMMEDIATE`), so concurrent processes
//! extend one chain rather than forking it.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::store::now_ms;

const GENESIS: [u8; 32] = [0; 32];

/// One audit row to append. `at`, `seq` and the hashes are filled in.
#[derive(Debug, Clone, Copy)]
pub struct AuditEntry<'a> {
    /// Who acted: `owner:cli`, later `run:<id>` and API principals.
    pub actor: &'a str,
    /// What was done, e.g. `credential.read`.
    pub action: &'a str,
    /// Owner name, when the action concerns one.
    pub owner: Option<&'a str>,
    /// Source name, when the action concerns one.
    pub source: Option<&'a str>,
    /// Credential name, when the action concerns one.
    pub credential: Option<&'a str>,
    /// The run on whose behalf the action happened, if any.
    pub run_id: Option<&'a str>,
    /// `ok` or why not.
    pub outcome: &'a str,
}

/// Result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainCheck {
    /// Every row links to the one before and hashes to what it claims.
    Intact {
        /// Number of rows checked.
        rows: u64,
    },
    /// The first row whose link or hash does not match.
    BrokenAt {
        /// Its sequence number.
        seq: i64,
    },
}

/// Appends `entry` to the chain on `conn`, which must be inside a write
/// transaction.
pub fn append(conn: &Connection, entry: &AuditEntry<'_>) -> rusqlite::Result<()> {
    let last: Option<(i64, Vec<u8>)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_vec()),
    };
    let at = now_ms();
    let hash = row_hash(&prev_hash, seq, at, entry);
    conn.prepare_cached(
        "INSERT INTO audit (seq, at, actor, action, owner, source, credential, run_id, outcome, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        seq,
        at,
        entry.actor,
        entry.action,
        entry.owner,
        entry.source,
        entry.credential,
        entry.run_id,
        entry.outcome,
        prev_hash,
        hash.as_slice(),
    ])?;
    Ok(())
}

/// The columns a row's check reads, in [`row_holds`]'s order.
const ROW: &str =
    "SELECT seq, at, actor, action, owner, source, credential, run_id, outcome, prev_hash, hash
     FROM audit";

/// Walks the whole chain from the first row.
pub fn verify(conn: &Connection) -> rusqlite::Result<ChainCheck> {
    let mut stmt = conn.prepare(&format!("{ROW} ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut expected_prev = GENESIS.to_vec();
    let mut expected_seq = 1;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let (seq, prev_hash, hash, holds) = row_holds(row)?;
        if seq != expected_seq || prev_hash != expected_prev || !holds {
            return Ok(ChainCheck::BrokenAt { seq });
        }
        expected_prev = hash;
        expected_seq += 1;
        count += 1;
    }
    Ok(ChainCheck::Intact { rows: count })
}

/// Checks the head of the chain only: the newest row hashes to what it
/// claims and links to the row before it (cheap enough for every health
/// report; [`verify`] walks the whole chain).
pub fn verify_head(conn: &Connection) -> rusqlite::Result<ChainCheck> {
    let mut stmt = conn.prepare(&format!("{ROW} ORDER BY seq DESC LIMIT 2"))?;
    let mut rows = stmt.query([])?;
    let Some(head) = rows.next()? else {
        return Ok(ChainCheck::Intact { rows: 0 });
    };
    let (seq, prev_hash, _, holds) = row_holds(head)?;
    let before = match rows.next()? {
        Some(row) => Some(row_holds(row)?),
        None => None,
    };
    let links = match &before {
        Some((before_seq, _, before_hash, _)) => {
            *before_seq == seq - 1 && prev_hash == *before_hash
        }
        None => seq == 1 && prev_hash == GENESIS,
    };
    Ok(if holds && links {
        ChainCheck::Intact { rows: seq as u64 }
    } else {
        ChainCheck::BrokenAt { seq }
    })
}

/// A row of [`ROW`]: its sequence number, the hash it links to, its own
/// hash, and whether that hash is the row's.
fn row_holds(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Vec<u8>, Vec<u8>, bool)> {
    let seq: i64 = row.get(0)?;
    let actor: String = row.get(2)?;
    let action: String = row.get(3)?;
    let owner: Option<String> = row.get(4)?;
    let source: Option<String> = row.get(5)?;
    let credential: Option<String> = row.get(6)?;
    let run_id: Option<String> = row.get(7)?;
    let outcome: String = row.get(8)?;
    let prev_hash: Vec<u8> = row.get(9)?;
    let hash: Vec<u8> = row.get(10)?;
    let entry = AuditEntry {
        actor: &actor,
        action: &action,
        owner: owner.as_deref(),
        source: source.as_deref(),
        credential: credential.as_deref(),
        run_id: run_id.as_deref(),
        outcome: &outcome,
    };
    let holds = hash == row_hash(&prev_hash, seq, row.get(1)?, &entry).as_slice();
    Ok((seq, prev_hash, hash, holds))
}

fn row_hash(prev_hash: &[u8], seq: i64, at: i64, entry: &AuditEntry<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(seq.to_le_bytes());
    h.update(at.to_le_bytes());
    for field in [
        Some(entry.actor),
        Some(entry.action),
        entry.owner,
        entry.source,
        entry.credential,
        entry.run_id,
        Some(entry.outcome),
    ] {
        match field {
            Some(text) => {
                h.update([1]);
                h.update((text.len() as u64).to_le_bytes());
                h.update(text.as_bytes());
            }
            None => h.update([0]),
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn entry(outcome: &str) -> AuditEntry<'_> {
        AuditEntry {
            actor: "owner:cli",
            action: "credential.read",
            owner: Some("owner"),
            source: Some("work"),
            credential: Some("token"),
            run_id: None,
            outcome,
        }
    }

    #[test]
    fn chain_detects_edits_deletions_and_reorders() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::init(tmp.path(), &[]).expect("init");
        let conn = store.conn();
        for _ in 0..5 {
            append(conn, &entry("ok")).expect("append");
        }
        assert_eq!(
            verify(conn).expect("verify"),
            ChainCheck::Intact { rows: 5 }
        );

        let tampering: &[(&str, i64)] = &[
            ("UPDATE audit SET outcome = 'denied' WHERE seq = 3", 3),
            ("DELETE FROM audit WHERE seq = 2", 3),
            ("UPDATE audit SET at = at + 1 WHERE seq = 4", 4),
            ("UPDATE audit SET credential = NULL WHERE seq = 1", 1),
        ];
        for (sql, broken) in tampering {
            conn.execute_batch("SAVEPOINT t").expect("savepoint");
            conn.execute_batch(sql).expect("tamper");
            assert_eq!(
                verify(conn).expect("verify"),
                ChainCheck::BrokenAt { seq: *broken },
                "{sql}"
            );
            conn.execute_batch("ROLLBACK TO t; RELEASE t")
                .expect("rollback");
        }
        assert_eq!(
            verify(conn).expect("verify"),
            ChainCheck::Intact { rows: 5 }
        );
    }
}
