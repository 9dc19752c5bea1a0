//! The encrypted per-source credential vault.
//!
//! Addressed by (owner, source, credential name). Each value is sealed in an
//! [`envelope`] under its own random data key; the data key is wrapped by the
//! data directory's key-encryption key ([`keyring`]). Both are bound by
//! associated data to (owner id, source id, name, version), so a row copied
//! to another source, name or version does not open. Every operation appends
//! to the hash-chained [`audit`] log inside the same transaction; a read
//! whose audit row cannot be written fails.

mod aside;
pub mod audit;
pub mod backup;
mod credential;
pub mod envelope;
mod error;
pub mod grant;
pub mod keyring;
mod pkcs11;
pub mod secret;
pub mod testing;

use rusqlite::{Connection, OptionalExtension, params};

pub use aside::{Aside, AsideOf};
pub use credential::{
    Actor, CredentialClass, CredentialMeta, NewCredential, Provenance, Rotation, VaultHealth,
    metadata,
};
use credential::{META_SELECT, meta_row};
pub use error::{VaultError, WrapperKind};
pub use grant::Grant;
pub use keyring::Keyring;
pub use secret::{Key256, Secret};

use crate::store::{SourceRef, Store, now_ms};
use audit::AuditEntry;
use envelope::EnvelopeError;

/// The vault over one open store.
#[derive(Debug)]
pub struct Vault {
    store: Store,
    keyring: Keyring,
}

const DATA_KEY_DOMAIN: &[u8] = b"sourcebox/data-key/v1\0";
const VALUE_DOMAIN: &[u8] = b"sourcebox/credential/v1\0";
/// Credential names: 1-64 of `a-z 0-9 _ - .`, starting with a letter.
fn check_name(name: &str) -> Result<(), VaultError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && name.len() <= 64
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::Invalid(format!(
            "invalid credential name '{name}': use 1-64 of a-z, 0-9, '_', '-', '.', starting with a letter"
        )))
    }
}

/// Checks a value against its class; returns the expiry an OAuth bundle
/// carries. Errors describe the shape, never the value.
fn check_value(class: CredentialClass, value: &Secret) -> Result<Option<i64>, VaultError> {
    if value.is_empty() {
        return Err(VaultError::Invalid(
            "an empty value is not a credential; nothing was stored".into(),
        ));
    }
    if class != CredentialClass::Oauth {
        return Ok(None);
    }
    Ok(Grant::parse(value)?.expires_at_ms())
}

/// Runs `f` inside `BEGIN IMMEDIATE`: the write lock is taken up front so
/// the audit chain is extended by one writer at a time across processes.
fn immediate<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, VaultError>,
) -> Result<T, VaultError> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    match f(conn) {
        Ok(value) => match conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))
        {
            Ok(_) => Ok(value),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(VaultError::AuditFailed(e))
            }
        },
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Deletes credential `name` of `source` and its data key, with its audit
/// row, inside the caller's transaction; returns the rows deleted. (An
/// audit row is written only for a deletion.)
fn delete_in(
    conn: &Connection,
    actor: Actor<'_>,
    source: &SourceRef,
    name: &str,
) -> Result<usize, VaultError> {
    let deleted = conn.execute(
        "DELETE FROM credentials WHERE source_id = ?1 AND name = ?2",
        params![source.source_id, name],
    )?;
    if deleted > 0 {
        audit(
            conn,
            actor,
            "credential.delete",
            Some(source),
            Some(name),
            "ok",
        )?;
    }
    Ok(deleted)
}

fn audit(
    conn: &Connection,
    actor: Actor<'_>,
    action: &str,
    source: Option<&SourceRef>,
    credential: Option<&str>,
    outcome: &str,
) -> Result<(), VaultError> {
    audit::append(
        conn,
        &AuditEntry {
            actor: actor.name,
            action,
            owner: source.map(|s| s.owner.as_str()),
            source: source.map(|s| s.source.as_str()),
            credential,
            run_id: actor.run_id,
            outcome,
        },
    )
    .map_err(VaultError::AuditFailed)
}

impl Vault {
    /// Opens the vault of `store` with an unlocked keyring.
    pub fn new(store: Store, keyring: Keyring) -> Self {
        Self { store, keyring }
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Stores a new value for (source, name): a fresh data key, nonce and
    /// version. Returns the stored metadata.
    pub fn set(
        &self,
        actor: Actor<'_>,
        source: &SourceRef,
        new: NewCredential<'_>,
    ) -> Result<CredentialMeta, VaultError> {
        check_name(new.name)?;
        immediate(self.store.conn(), |conn| {
            let meta = self.seal_in(conn, source, &new)?;
            if !new.provenance.is_refresh() {
                // A new value from the owner is what a needs-reauth source waits for.
                conn.prepare_cached("UPDATE sources SET needs_reauth = NULL WHERE id = ?1")?
                    .execute([source.source_id])?;
            }
            audit(
                conn,
                actor,
                "credential.write",
                Some(source),
                Some(new.name),
                "ok",
            )?;
            Ok(meta)
        })
    }

    /// Seals `new` for `source` under a fresh data key, nonce and version,
    /// inside the caller's transaction.
    fn seal_in(
        &self,
        conn: &Connection,
        source: &SourceRef,
        new: &NewCredential<'_>,
    ) -> Result<CredentialMeta, VaultError> {
        let expires_at = new.expires_at.or(check_value(new.class, &new.value)?);
        {
            let previous: Option<i64> = conn
                .prepare_cached(
                    "SELECT version FROM credentials WHERE source_id = ?1 AND name = ?2",
                )?
                .query_row(params![source.source_id, new.name], |r| r.get(0))
                .optional()?;
            let version = previous.unwrap_or(0) + 1;
            let (kek_version, wrapper) = self.keyring.current(conn)?;
            let data_key = Key256::generate();
            let sealed = envelope::seal(
                &data_key,
                new.value.expose_secret(),
                &aside::bound_to(VALUE_DOMAIN, source, new.name, version),
            );
            let wrapped = wrapper.wrap(
                &data_key,
                &aside::bound_to(DATA_KEY_DOMAIN, source, new.name, version),
            )?;
            let now = now_ms();
            conn.prepare_cached(
                "INSERT INTO credentials (owner_id, source_id, name, class, provenance, version, kek_version,
                     wrapped_key, sealed_value, value_len, created_at, rotated_at, expires_at, given_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?11)
                 ON CONFLICT (source_id, name) DO UPDATE SET
                     class = excluded.class, provenance = excluded.provenance, version = excluded.version,
                     kek_version = excluded.kek_version, wrapped_key = excluded.wrapped_key,
                     sealed_value = excluded.sealed_value, value_len = excluded.value_len,
                     rotated_at = excluded.rotated_at, expires_at = excluded.expires_at, revoked_at = NULL,
                     given_at = CASE WHEN excluded.provenance IN ('oauth-refresh', 'connector-refresh')
                                     THEN credentials.given_at ELSE excluded.given_at END",
            )?
            .execute(params![
                source.owner_id,
                source.source_id,
                new.name,
                new.class.as_str(),
                new.provenance.as_str(),
                version,
                kek_version,
                wrapped,
                sealed,
                new.value.len() as i64,
                now,
                expires_at,
            ])?;
            self.meta_in(conn, source, new.name)?
                .ok_or_else(|| VaultError::Corrupt("row vanished after write".into()))
        }
    }

    /// Moves every usable credential of `from` to `to`: each value is
    /// sealed again for `to` (a seal names its source, so a value cannot
    /// simply change hands) and deleted from `from`. `and` runs in the
    /// same transaction, which also writes one audit row per credential on
    /// each side: all of it happens, or none. Returns the names moved.
    pub fn move_credentials(
        &self,
        actor: Actor<'_>,
        from: &SourceRef,
        to: &SourceRef,
        and: impl FnOnce(&Connection) -> Result<(), VaultError>,
    ) -> Result<Vec<String>, VaultError> {
        let moved = immediate(self.store.conn(), |conn| {
            let metas: Vec<CredentialMeta> = metadata(&self.store, Some(from))?
                .into_iter()
                .filter(|m| m.revoked_at.is_none())
                .collect();
            for meta in &metas {
                let value = self.open_value(conn, from, &meta.name)?;
                self.seal_in(
                    conn,
                    to,
                    &NewCredential {
                        name: &meta.name,
                        class: meta.class,
                        provenance: meta.provenance,
                        value,
                        expires_at: meta.expires_at,
                    },
                )?;
                conn.execute(
                    "DELETE FROM credentials WHERE source_id = ?1 AND name = ?2",
                    params![from.source_id, meta.name],
                )?;
                let to_note = format!("ok: moved to source '{}'", to.source);
                audit(
                    conn,
                    actor,
                    "credential.move",
                    Some(from),
                    Some(&meta.name),
                    &to_note,
                )?;
                let from_note = format!("ok: moved from source '{}'", from.source);
                audit(
                    conn,
                    actor,
                    "credential.move",
                    Some(to),
                    Some(&meta.name),
                    &from_note,
                )?;
            }
            and(conn)?;
            Ok(metas.into_iter().map(|m| m.name).collect())
        })?;
        self.checkpoint()?;
        Ok(moved)
    }

    /// Deletes every credential of `source` and its data key; `and` runs
    /// in the same audited transaction. Returns the names deleted.
    pub fn remove_all(
        &self,
        actor: Actor<'_>,
        source: &SourceRef,
        and: impl FnOnce(&Connection) -> Result<(), VaultError>,
    ) -> Result<Vec<String>, VaultError> {
        let removed = immediate(self.store.conn(), |conn| {
            let names: Vec<String> = metadata(&self.store, Some(source))?
                .into_iter()
                .map(|m| m.name)
                .collect();
            for name in &names {
                delete_in(conn, actor, source, name)?;
            }
            and(conn)?;
            Ok(names)
        })?;
        self.checkpoint()?;
        Ok(removed)
    }

    /// Resolves a credential's value. Audited: if the audit row cannot be
    /// written, the value is not returned.
    pub fn get(
        &self,
        actor: Actor<'_>,
        source: &SourceRef,
        name: &str,
    ) -> Result<Secret, VaultError> {
        // The audit row of a refused read is committed too; the refusal is
        // returned after the transaction.
        immediate(self.store.conn(), |conn| {
            let outcome = self.open_value(conn, source, name);
            let label = match &outcome {
                Ok(_) => "ok",
                Err(VaultError::Missing { .. }) => "missing",
                Err(VaultError::Revoked { .. }) => "revoked",
                Err(VaultError::Unrecoverable { .. }) => "unrecoverable",
                Err(_) => "error",
            };
            audit(
                conn,
                actor,
                "credential.read",
                Some(source),
                Some(name),
                label,
            )?;
            Ok(outcome)
        })?
    }

    /// Records that a run read credential `name` `times` more times after
    /// its first read, which was audited itself: a run resolves each
    /// credential from the vault once and answers the rest from that.
    pub fn audit_reads_again(
        &self,
        actor: Actor<'_>,
        source: &SourceRef,
        name: &str,
        times: u64,
    ) -> Result<(), VaultError> {
        let mut count = itoa::Buffer::new();
        immediate(self.store.conn(), |conn| {
            audit(
                conn,
                actor,
                "credential.read-again",
                Some(source),
                Some(name),
                count.format(times),
            )
        })
    }

    fn open_value(
        &self,
        conn: &Connection,
        source: &SourceRef,
        name: &str,
    ) -> Result<Secret, VaultError> {
        struct Stored {
            version: i64,
            kek_version: i64,
            wrapped_key: Option<Vec<u8>>,
            sealed_value: Vec<u8>,
            revoked: bool,
        }
        let stored = conn
            .prepare_cached(
                "SELECT version, kek_version, wrapped_key, sealed_value, revoked_at IS NOT NULL
                 FROM credentials WHERE source_id = ?1 AND name = ?2",
            )?
            .query_row(params![source.source_id, name], |r| {
                Ok(Stored {
                    version: r.get(0)?,
                    kek_version: r.get(1)?,
                    wrapped_key: r.get(2)?,
                    sealed_value: r.get(3)?,
                    revoked: r.get(4)?,
                })
            })
            .optional()?
            .ok_or_else(|| VaultError::Missing {
                source_name: source.source.clone(),
                name: name.to_owned(),
            })?;
        let wrapped = match stored.wrapped_key {
            Some(wrapped) if !stored.revoked => wrapped,
            _ => {
                return Err(VaultError::Revoked {
                    source_name: source.source.clone(),
                    name: name.to_owned(),
                });
            }
        };
        let unrecoverable = |reason| VaultError::Unrecoverable {
            source_name: source.source.clone(),
            name: name.to_owned(),
            reason,
        };
        let key_aad = aside::bound_to(DATA_KEY_DOMAIN, source, name, stored.version);
        let data_key = match self
            .keyring
            .wrapper(conn, stored.kek_version)?
            .unwrap(&wrapped, &key_aad)
        {
            Err(VaultError::KeyUnwrap(reason)) => return Err(unrecoverable(reason)),
            other => other?,
        };
        envelope::open(
            &data_key,
            &stored.sealed_value,
            &aside::bound_to(VALUE_DOMAIN, source, name, stored.version),
        )
        .map_err(unrecoverable)
    }

    /// Names among `names` that `source` does not hold in usable form
    /// (absent or revoked). Reads metadata only: nothing is decrypted and no
    /// audit row is written.
    pub fn missing(&self, source: &SourceRef, names: &[&str]) -> Result<Vec<String>, VaultError> {
        let mut stmt = self.store.conn().prepare_cached(
            "SELECT 1 FROM credentials WHERE source_id = ?1 AND name = ?2
             AND revoked_at IS NULL AND wrapped_key IS NOT NULL",
        )?;
        let mut missing = Vec::new();
        for name in names {
            if !stmt.exists(params![source.source_id, name])? {
                missing.push((*name).to_owned());
            }
        }
        Ok(missing)
    }

    /// Runs `f` in one write transaction with an audit row for `action`:
    /// if the audit row cannot be written, nothing of `f` is kept.
    pub fn write<T>(
        &self,
        actor: Actor<'_>,
        action: &str,
        source: Option<&SourceRef>,
        f: impl FnOnce(&Connection) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        immediate(self.store.conn(), |conn| {
            let value = f(conn)?;
            audit(conn, actor, action, source, None, "ok")?;
            Ok(value)
        })
    }

    /// Seals `value` for `of` under a fresh data key wrapped by the
    /// current KEK.
    pub fn seal_aside(
        &self,
        conn: &Connection,
        of: AsideOf<'_>,
        value: &[u8],
    ) -> Result<Aside, VaultError> {
        aside::seal(&self.keyring, conn, of, value)
    }

    /// Opens what [`Vault::seal_aside`] sealed for the same row. The inner
    /// error is why it cannot be opened (another row's value, a destroyed
    /// KEK).
    pub fn open_aside(
        &self,
        conn: &Connection,
        of: AsideOf<'_>,
        sealed: &Aside,
    ) -> Result<Result<Secret, EnvelopeError>, VaultError> {
        aside::open(&self.keyring, conn, of, sealed)
    }

    /// Answers a pending interaction of `source`: seals `answer` under a
    /// fresh data key bound to (source, interaction) and marks the
    /// interaction answered, in one audited transaction. Refused unless the
    /// interaction belongs to `source` and is still pending.
    pub fn answer_interaction(
        &self,
        actor: Actor<'_>,
        source: &SourceRef,
        interaction: &str,
        answer: &Secret,
    ) -> Result<(), VaultError> {
        if answer.is_empty() {
            return Err(VaultError::Invalid(
                "an empty answer answers nothing; nothing was stored".into(),
            ));
        }
        immediate(self.store.conn(), |conn| {
            let flipped = conn.execute(
                "UPDATE interactions SET state = 'answered', answered_at = ?3
                 WHERE id = ?1 AND source_id = ?2 AND state = 'pending'",
                params![interaction, source.source_id, now_ms()],
            )?;
            if flipped == 0 {
                return Err(VaultError::Invalid(format!(
                    "interaction {interaction} of source '{}' is not waiting for an answer; see `sourcebox interaction list`",
                    source.source
                )));
            }
            let aside = self.seal_aside(
                conn,
                AsideOf::Answer {
                    source,
                    interaction,
                },
                answer.expose_secret(),
            )?;
            conn.execute(
                "INSERT INTO interaction_answers (interaction_id, owner_id, source_id, kek_version, wrapped_key, sealed_value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![interaction, source.owner_id, source.source_id, aside.kek_version, aside.wrapped_key, aside.sealed],
            )?;
            audit(
                conn,
                actor,
                "interaction.answer",
                Some(source),
                None,
                interaction,
            )
        })
    }

    /// Takes the answer to `source`'s interaction, if there is one: opens it
    /// and deletes the sealed row, in one audited transaction. An answer
    /// sealed for another source never opens here.
    pub fn take_answer(
        &self,
        actor: Actor<'_>,
        source: &SourceRef,
        interaction: &str,
    ) -> Result<Option<Secret>, VaultError> {
        let conn = self.store.conn();
        let waiting = conn
            .prepare_cached(
                "SELECT 1 FROM interaction_answers WHERE interaction_id = ?1 AND source_id = ?2",
            )?
            .exists(params![interaction, source.source_id])?;
        if !waiting {
            return Ok(None);
        }
        immediate(conn, |conn| {
            let row: Option<Aside> = conn
                .query_row(
                    "SELECT kek_version, wrapped_key, sealed_value FROM interaction_answers
                     WHERE interaction_id = ?1 AND source_id = ?2",
                    params![interaction, source.source_id],
                    |r| Aside::from_row(r, 0),
                )
                .optional()?;
            let Some(aside) = row else {
                return Ok(None);
            };
            conn.execute(
                "DELETE FROM interaction_answers WHERE interaction_id = ?1",
                [interaction],
            )?;
            let answer = self
                .open_aside(
                    conn,
                    AsideOf::Answer {
                        source,
                        interaction,
                    },
                    &aside,
                )?
                .map_err(|reason| VaultError::Unrecoverable {
                    source_name: source.source.clone(),
                    name: format!("answer to interaction {interaction}"),
                    reason,
                })?;
            audit(
                conn,
                actor,
                "interaction.read",
                Some(source),
                None,
                interaction,
            )?;
            Ok(Some(answer))
        })
    }

    /// Metadata of every credential, of one source or of all.
    pub fn list(&self, source: Option<&SourceRef>) -> Result<Vec<CredentialMeta>, VaultError> {
        metadata(&self.store, source)
    }

    fn meta_in(
        &self,
        conn: &Connection,
        source: &SourceRef,
        name: &str,
    ) -> Result<Option<CredentialMeta>, VaultError> {
        conn.prepare_cached(&format!(
            "{META_SELECT} WHERE c.source_id = ?1 AND c.name = ?2"
        ))?
        .query_row(params![source.source_id, name], meta_row)
        .optional()?
        .transpose()
    }

    /// Revokes a credential: its data key is destroyed, the metadata row
    /// stays so runs see `credential_revoked` rather than a missing value.
    pub fn revoke(
        &self,
        actor: Actor<'_>,
        source: &SourceRef,
        name: &str,
    ) -> Result<(), VaultError> {
        immediate(self.store.conn(), |conn| {
            let changed = conn.execute(
                "UPDATE credentials SET wrapped_key = NULL, revoked_at = ?3
                 WHERE source_id = ?1 AND name = ?2 AND revoked_at IS NULL",
                params![source.source_id, name, now_ms()],
            )?;
            if changed == 0 && self.meta_in(conn, source, name)?.is_none() {
                return Err(VaultError::Missing {
                    source_name: source.source.clone(),
                    name: name.to_owned(),
                });
            }
            audit(
                conn,
                actor,
                "credential.revoke",
                Some(source),
                Some(name),
                "ok",
            )
        })?;
        self.checkpoint()
    }

    /// Deletes a credential and its data key.
    pub fn remove(
        &self,
        actor: Actor<'_>,
        source: &SourceRef,
        name: &str,
    ) -> Result<(), VaultError> {
        immediate(self.store.conn(), |conn| {
            if delete_in(conn, actor, source, name)? == 0 {
                return Err(VaultError::Missing {
                    source_name: source.source.clone(),
                    name: name.to_owned(),
                });
            }
            Ok(())
        })?;
        self.checkpoint()
    }

    /// Deletes a source with every credential and data key it holds.
    pub fn delete_source(&self, actor: Actor<'_>, source: &SourceRef) -> Result<u64, VaultError> {
        let removed = immediate(self.store.conn(), |conn| {
            let removed = conn.execute(
                "DELETE FROM credentials WHERE source_id = ?1",
                [source.source_id],
            )?;
            conn.execute("DELETE FROM sources WHERE id = ?1", [source.source_id])?;
            audit(
                conn,
                actor,
                "source.delete",
                Some(source),
                None,
                &format!("ok: {removed} credentials destroyed"),
            )?;
            Ok(removed as u64)
        })?;
        self.checkpoint()?;
        Ok(removed)
    }

    /// Moves the write-ahead log into the database and truncates it, so a
    /// destroyed data key does not linger in old WAL frames (the database
    /// itself zeroes freed content: `secure_delete`).
    fn checkpoint(&self) -> Result<(), VaultError> {
        self.store
            .conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Re-wraps every data key under a new KEK version, `batch` rows per
    /// transaction. Reads keep working throughout: old and new versions are
    /// both active until no row uses the old one. A crash midway leaves each
    /// row under the old or the new KEK; running the rotation again finishes
    /// the job.
    pub fn rotate_kek(&self, actor: Actor<'_>, batch: usize) -> Result<Rotation, VaultError> {
        let conn = self.store.conn();
        let version = immediate(conn, |conn| {
            let version = self.keyring.create_version(conn)?;
            audit(
                conn,
                actor,
                "kek.rotate",
                None,
                None,
                &format!("started: version {version}"),
            )?;
            Ok(version)
        })?;
        let new_wrapper = self.keyring.wrapper(conn, version)?;
        let mut rewrapped = 0u64;
        loop {
            let moved = immediate(conn, |conn| {
                let rows: Vec<(i64, SourceRef, String, i64, i64, Vec<u8>)> = conn
                    .prepare_cached(
                        "SELECT c.id, o.id, o.name, s.id, s.name, c.name, c.version, c.kek_version, c.wrapped_key
                         FROM credentials c JOIN sources s ON s.id = c.source_id JOIN owners o ON o.id = c.owner_id
                         WHERE c.kek_version != ?1 AND c.wrapped_key IS NOT NULL ORDER BY c.id LIMIT ?2",
                    )?
                    .query_map(params![version, batch as i64], |r| {
                        Ok((
                            r.get(0)?,
                            SourceRef {
                                owner_id: r.get(1)?,
                                owner: r.get(2)?,
                                source_id: r.get(3)?,
                                source: r.get(4)?,
                            },
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                            r.get(8)?,
                        ))
                    })?
                    .collect::<Result<_, _>>()?;
                let mut update = conn.prepare_cached(
                    "UPDATE credentials SET kek_version = ?2, wrapped_key = ?3 WHERE id = ?1",
                )?;
                for (id, source, name, cred_version, old_version, wrapped) in &rows {
                    let key_aad = aside::bound_to(DATA_KEY_DOMAIN, source, name, *cred_version);
                    let data_key = self
                        .keyring
                        .wrapper(conn, *old_version)?
                        .unwrap(wrapped, &key_aad)
                        .map_err(|e| match e {
                            VaultError::KeyUnwrap(reason) => VaultError::Unrecoverable {
                                source_name: source.source.clone(),
                                name: name.clone(),
                                reason,
                            },
                            other => other,
                        })?;
                    update.execute(params![id, version, new_wrapper.wrap(&data_key, &key_aad)?])?;
                }
                Ok(rows.len() as u64)
            })?;
            rewrapped += moved;
            if moved == 0 {
                break;
            }
        }
        immediate(conn, |conn| {
            aside::rewrap_all(&self.keyring, conn, version)?;
            // Revoked rows have no data key left; they just follow along.
            conn.execute(
                "UPDATE credentials SET kek_version = ?1 WHERE wrapped_key IS NULL",
                [version],
            )?;
            conn.execute(
                "UPDATE kek_versions SET retired_at = ?2 WHERE version != ?1 AND retired_at IS NULL",
                params![version, now_ms()],
            )?;
            audit(
                conn,
                actor,
                "kek.rotate",
                None,
                None,
                &format!("ok: {rewrapped} data keys re-wrapped under version {version}"),
            )
        })?;
        self.keyring.destroy_retired(conn)?;
        self.checkpoint()?;
        Ok(Rotation { version, rewrapped })
    }

    /// Checks the audit chain.
    pub fn verify_audit(&self) -> Result<audit::ChainCheck, VaultError> {
        Ok(audit::verify(self.store.conn())?)
    }

    /// What the owner's health report says of the vault: its key wrapper
    /// wraps and unwraps a fresh key now (an HSM that cannot be reached
    /// cannot), and the head of its audit chain holds.
    pub fn health(&self) -> VaultHealth {
        let conn = self.store.conn();
        let reachable = self.keyring.current(conn).and_then(|(_, wrapper)| {
            let aad = b"sourcebox health check";
            wrapper.unwrap(&wrapper.wrap(&Key256::generate(), aad)?, aad)
        });
        let head = audit::verify_head(conn);
        VaultHealth {
            key_wrapper: self.keyring.kind().as_str().to_owned(),
            key_wrapper_reachable: reachable.is_ok(),
            key_wrapper_problem: reachable.err().map(|e| e.to_string()),
            audit_head_verified: matches!(head, Ok(audit::ChainCheck::Intact { .. })),
            audit_rows: match head {
                Ok(audit::ChainCheck::Intact { rows }) => rows,
                _ => 0,
            },
        }
    }
}
