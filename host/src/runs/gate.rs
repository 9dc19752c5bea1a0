//! What a run must pass before it collects: the readiness decision when
//! it is launched ([`resolve`]), and its account, verified first, when it
//! runs ([`attempt`]): another account than the source's, or one
//! another source of the connector has unconfirmed, collects nothing.

use rusqlite::params;

use std::sync::Mutex;

use super::error::LaunchError;
use super::record::{FailureKind, Trigger, immediate};
use crate::catalog;
use crate::readiness::{self, Blocked, Purpose};
use crate::runtime::{Binding, Call, LoadedConnector, Outcome, RunFailure, Runtime};
use crate::setup;
use crate::store::{Store, StoreError};
use crate::vault::Vault;

/// One attempt at `call`: the account is verified first, and a
/// collection goes on only when it is the account the source is
/// connected to (or its first, recorded now) and no other source of
/// the connector is connected to it unconfirmed. Otherwise nothing is
/// collected, and the run ends with the typed failure.
///
/// Checking the account asks the owner nothing while the source holds
/// a session: a session the site refuses ends the run for re-auth, as
/// collecting with it would, rather than opening a login unasked. A
/// source with no session (one that keeps none between runs, or not
/// yet) logs in while it is checked, as its collection would.
pub(super) async fn attempt(
    runtime: &Runtime,
    vault: &Mutex<Vault>,
    loaded: &LoadedConnector,
    binding: &Binding,
    setup: &catalog::SourceSetup,
    call: &Call,
    session_held: bool,
) -> Result<Outcome, Stop> {
    let mut check = binding.clone();
    if matches!(call, Call::Collect(_)) && session_held {
        check.control.interactive = false;
    }
    let verified = runtime
        .run(loaded, check, Call::Verify)
        .await
        .map_err(Stop::Failed)?;
    let (Call::Collect(_), Outcome::Verified(identity)) = (call, &verified) else {
        return Ok(verified);
    };
    let identity = setup::Identity {
        id: identity.id.clone(),
        display: identity.display.clone(),
    };
    let decided = {
        let vault = vault.lock().expect("vault lock");
        let store = vault.store();
        immediate(store, || {
            setup::record_verification(store, setup.source.source_id, Ok(&identity))?;
            note_account(store, &binding.run_id, &identity)?;
            Ok(readiness::decide(
                &readiness::facts(store, setup)?,
                Purpose::Collect,
            ))
        })
        .map_err(Stop::Launch)?
    };
    if let Err(blocked) = decided {
        return Err(Stop::Refused(
            refused_kind(&blocked),
            blocked.refusal(&setup.source.source),
        ));
    }
    runtime
        .run(loaded, binding.clone(), call.clone())
        .await
        .map_err(Stop::Failed)
}

/// Why an attempt at a call did not end with an outcome.
pub(super) enum Stop {
    /// The connector's call failed.
    Failed(RunFailure),
    /// The host refused to collect, with this typed failure.
    Refused(FailureKind, String),
    /// The store could not record what the attempt found.
    Launch(LaunchError),
}

/// Records on run `run_id` the account it verified.
pub(super) fn note_account(
    store: &Store,
    run_id: &str,
    identity: &setup::Identity,
) -> Result<(), StoreError> {
    store
        .conn()
        .prepare_cached("UPDATE runs SET account = ?2 WHERE id = ?1")?
        .execute(params![
            run_id,
            format!("{} (provider id {})", identity.display, identity.id)
        ])?;
    Ok(())
}

/// A source resolved at execution time, its connector's run limits, and
/// the refusal of its launch if its required credentials are not all
/// there.
pub(super) type Resolved = (
    catalog::SourceSetup,
    catalog::LimitOverrides,
    Option<Ending>,
);

/// The source's limits, and its launch refused, with its typed failure,
/// when [`readiness::decide`] says it may not run now for `trigger`.
pub(super) fn resolve(
    vault: &Vault,
    setup: catalog::SourceSetup,
    trigger: Trigger,
) -> Result<Resolved, LaunchError> {
    let store = vault.store();
    let limits = catalog::connector_limits(store, &setup.connector.id)?;
    let purpose = match trigger {
        Trigger::SetupVerification => Purpose::Verify,
        _ => Purpose::Collect,
    };
    let refused = match readiness::decide(&readiness::facts(store, &setup)?, purpose) {
        Ok(()) => None,
        Err(Blocked::Paused { version }) => {
            return Err(LaunchError::Paused {
                source_name: setup.source.source.clone(),
                connector: setup.connector.id.clone(),
                to: version,
            });
        }
        Err(blocked) => Some(Ending::Refused(
            refused_kind(&blocked),
            blocked.refusal(&setup.source.source),
        )),
    };
    Ok((setup, limits, refused))
}

/// The failure a run refused by the readiness decision records.
fn refused_kind(blocked: &Blocked) -> FailureKind {
    match blocked {
        Blocked::CredentialRevoked { .. } => FailureKind::CredentialRevoked,
        Blocked::CredentialsMissing { .. } => FailureKind::CredentialsMissing,
        Blocked::AccountChanged { .. } => FailureKind::AccountChanged,
        Blocked::IdentityUnconfirmed { .. } => FailureKind::IdentityUnconfirmed,
        // A source without a connector or paused never gets a run
        // (see `resolve` and `catalog::source_setup`).
        Blocked::NeedsReauth { .. } | Blocked::NoConnector | Blocked::Paused { .. } => {
            FailureKind::AuthRejected
        }
    }
}

/// What the connector call came to, before it is recorded.
pub(super) enum Ending {
    Done(Outcome),
    Failed(RunFailure),
    Refused(FailureKind, String),
}
