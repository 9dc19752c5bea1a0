//! The account a source is connected to: confirmed, changed, recorded at each verification.

use rusqlite::params;

use super::error::SetupError;
use super::source_view::source_view;
use super::view::{AccountChoice, Identity, NextStep, SourceView};
use crate::catalog::{self};
use crate::store::{Store, StoreError, now_ms};
use crate::vault::Vault;

/// The owner confirms that `name` may connect the same account as another
/// source of its connector.
pub fn confirm_identity(
    vault: &Vault,
    actor: crate::vault::Actor<'_>,
    name: &str,
) -> Result<SourceView, SetupError> {
    let view = source_view(vault.store(), name)?;
    let source_id = vault.store().source(name)?.source_id;
    match &view.next_step {
        NextStep::ConfirmAccountChange { .. } => {
            return choose_account(vault, actor, name, AccountChoice::Accept);
        }
        NextStep::ConfirmIdentity { identity, .. } => vault.store().conn().execute(
            "UPDATE sources SET confirmed_identity = ?2 WHERE id = ?1",
            params![source_id, identity.id],
        )?,
        _ => {
            return Err(SetupError::NotNow(format!(
                "source '{name}' has no identity to confirm (it is {:?})",
                view.state
            )));
        }
    };
    source_view(vault.store(), name)
}

/// Carries out the owner's choice for source `name`, whose credentials now
/// belong to another account than the one it was connected to (see
/// [`AccountChoice`]). Refused, with nothing changed, when the source has
/// no such change, or the new source's name is taken or invalid.
pub fn choose_account(
    vault: &Vault,
    actor: crate::vault::Actor<'_>,
    name: &str,
    choice: AccountChoice,
) -> Result<SourceView, SetupError> {
    let store = vault.store();
    let setup = catalog::source_setup(store, name)?;
    let source = &setup.source;
    let changed: bool = store.conn().query_row(
        "SELECT previous_identity_display IS NOT NULL FROM sources WHERE id = ?1",
        [source.source_id],
        |r| r.get(0),
    )?;
    if !changed {
        return Err(SetupError::NotNow(format!(
            "source '{name}' has no account change to choose for; see `sourcebox source show {name}`"
        )));
    }
    // Back to the account the source was connected to, verified again
    // when it has credentials again.
    const BACK: &str = "UPDATE sources SET identity_id = previous_identity_id,
         identity_display = CASE WHEN previous_identity_id IS NULL THEN NULL
                                 ELSE previous_identity_display END,
         previous_identity_id = NULL, previous_identity_display = NULL, verified_at = NULL
         WHERE id = ?1";
    match choice {
        AccountChoice::Accept => {
            store.conn().execute(
                "UPDATE sources SET previous_identity_id = NULL, previous_identity_display = NULL
                 WHERE id = ?1",
                [source.source_id],
            )?;
        }
        AccountChoice::Discard => {
            vault.remove_all(actor, source, |conn| {
                conn.execute(BACK, [source.source_id])?;
                Ok(())
            })?;
        }
        AccountChoice::NewSource { name: None } => {
            return Err(SetupError::NotNow(format!(
                "name the new source: `sourcebox source account {name} --new-source NAME`"
            )));
        }
        AccountChoice::NewSource {
            name: Some(new_name),
        } => {
            // The new source: the same connector, version, modality and
            // setup values, connected (and verified) to the new account.
            let new = store.add_source(&new_name)?;
            let moved = vault.move_credentials(actor, source, &new, |conn| {
                conn.execute(
                    "UPDATE sources SET (connector_id, connector_version, setup, modality,
                         ephemeral_session, identity_id, identity_display, verified_at) =
                       (SELECT connector_id, connector_version, setup, modality,
                         ephemeral_session, identity_id, identity_display, ?3
                        FROM sources WHERE id = ?2)
                     WHERE id = ?1",
                    // Verified when its run verified the account: the
                    // values moved are the ones that run used.
                    params![new.source_id, source.source_id, now_ms()],
                )?;
                conn.execute(BACK, [source.source_id])?;
                Ok(())
            });
            if let Err(e) = moved {
                // Nothing moved: the empty new source goes too.
                store
                    .conn()
                    .execute("DELETE FROM sources WHERE id = ?1", [new.source_id])?;
                return Err(e.into());
            }
        }
    }
    source_view(store, name)
}

/// Records what a setup verification found, inside the caller's
/// transaction: the identity on success, the failure otherwise.
pub(crate) fn record_verification(
    store: &Store,
    source_id: i64,
    outcome: Result<&Identity, (&str, &str)>,
) -> Result<(), StoreError> {
    match outcome {
        // Another account than the one the source was connected to keeps
        // that one beside it until the owner chooses; the account it was
        // connected to, found again, ends the change.
        Ok(identity) => store.conn().prepare_cached(
            "UPDATE sources SET
                 previous_identity_id = CASE
                     WHEN previous_identity_id = ?2 THEN NULL
                     WHEN previous_identity_display IS NOT NULL THEN previous_identity_id
                     WHEN identity_id != ?2 THEN identity_id END,
                 previous_identity_display = CASE
                     WHEN previous_identity_id = ?2 THEN NULL
                     WHEN previous_identity_display IS NOT NULL THEN previous_identity_display
                     WHEN identity_id != ?2 THEN identity_display END,
                 identity_id = ?2, identity_display = ?3, verified_at = ?4,
                 verify_failure_kind = NULL, verify_failure = NULL, verify_failed_at = NULL
             WHERE id = ?1",
        )?
        .execute(params![source_id, identity.id, identity.display, now_ms()])?,
        Err((kind, detail)) => store.conn().prepare_cached(
            "UPDATE sources SET verified_at = NULL, verify_failure_kind = ?2, verify_failure = ?3,
                 verify_failed_at = ?4 WHERE id = ?1",
        )?
        .execute(params![source_id, kind, detail, now_ms()])?,
    };
    Ok(())
}

/// Records, inside the caller's transaction, that a collection succeeded
/// for a verified source: its connector version's modality is proven.
pub(crate) fn record_proof(store: &Store, source_id: i64, run_id: &str) -> Result<(), StoreError> {
    store
        .conn()
        .prepare_cached(
            "INSERT OR IGNORE INTO proofs (connector_id, version, modality, evidence, proven_at)
             SELECT connector_id, connector_version, modality, 'verified, then collected in run ' || ?2, ?3
             FROM sources WHERE id = ?1 AND verified_at IS NOT NULL AND modality IS NOT NULL
                 AND connector_id IS NOT NULL",
        )?
        .execute(params![source_id, run_id, now_ms()])?;
    Ok(())
}
