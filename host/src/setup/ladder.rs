//! What is known about a source's setup, read in one statement, and the
//! one decision taken from it: the source's lifecycle state and what the
//! owner does next ([`decide`], a pure function of what it is given).

use super::error::SetupError;
use super::view::{AccountChoice, CredentialFieldView, Identity, Lifecycle, NextStep};
use crate::catalog;
use crate::store::Store;

/// What the store says about a source's setup.
pub(super) struct Facts {
    pub(super) modality: Option<String>,
    pub(super) identity: Option<Identity>,
    pub(super) verified_at: Option<i64>,
    pub(super) failure: Option<(String, String, i64)>,
    pub(super) confirmed_identity: Option<String>,
    pub(super) needs_reauth: Option<String>,
    pub(super) pending: Option<(String, Vec<String>)>,
    pub(super) changed_from: Option<String>,
    /// Records the source holds, counted only after an account change.
    pub(super) records: u64,
    /// Its unfinished setup verification run.
    pub(super) verifying: Option<String>,
    /// The oldest other verified source of the same connector and account.
    pub(super) older_same_account: Option<String>,
    /// Its oldest pending interaction.
    pub(super) asked: Option<Asked>,
}

/// A pending interaction, as the view needs it.
pub(super) struct Asked {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) prompt: String,
}

/// What the store says about a source's setup ([`Facts`]), in one
/// statement. Its unfinished setup verification comes off the index of
/// unfinished runs (the planner would take the (source, state) index and
/// build a temporary table for the list of states on every view); an
/// older verified source of the same connector and account is looked for
/// only once this one is verified; its oldest pending interaction comes
/// off the index of pending interactions, in their order.
pub(crate) const FACTS: &str = "SELECT modality, identity_id, identity_display, verified_at,
        verify_failure_kind, verify_failure, verify_failed_at, confirmed_identity, needs_reauth,
        pending_version, pending_changes, previous_identity_display,
        CASE WHEN previous_identity_display IS NULL THEN 0
             ELSE (SELECT COUNT(*) FROM records WHERE source_id = s.id) END,
        (SELECT id FROM runs INDEXED BY runs_active
          WHERE source_id = s.id AND trigger = 'setup_verification'
            AND state IN ('queued', 'running', 'waiting_for_owner') LIMIT 1),
        CASE WHEN s.verified_at IS NOT NULL AND s.identity_id IS NOT NULL THEN
          (SELECT d.name FROM sources d
            WHERE d.connector_id = s.connector_id AND d.identity_id = s.identity_id
              AND d.id < s.id AND d.verified_at IS NOT NULL ORDER BY d.id LIMIT 1) END,
        i.id, i.kind, i.prompt, previous_identity_id
     FROM sources s
     LEFT JOIN interactions i ON i.rowid =
       (SELECT rowid FROM interactions WHERE state = 'pending' AND source_id = s.id
         ORDER BY created_at, rowid LIMIT 1)
     WHERE s.id = ?1";

/// The facts of source `source_id`, in one statement ([`FACTS`]).
pub(super) fn read(store: &Store, source_id: i64) -> Result<Facts, SetupError> {
    Ok(store
        .conn()
        .prepare_cached(FACTS)?
        .query_row([source_id], |r| {
            let identity = match (r.get::<_, Option<String>>(1)?, r.get(2)?) {
                (Some(id), Some(display)) => Some(Identity { id, display }),
                _ => None,
            };
            let failure = match (r.get(4)?, r.get(5)?, r.get(6)?) {
                (Some(kind), Some(detail), Some(at)) => Some((kind, detail, at)),
                _ => None,
            };
            Ok(Facts {
                modality: r.get(0)?,
                identity,
                verified_at: r.get(3)?,
                failure,
                confirmed_identity: r.get(7)?,
                needs_reauth: r.get(8)?,
                pending: match (
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ) {
                    (Some(version), Some(changes)) => {
                        Some((version, serde_json::from_str(&changes).unwrap_or_default()))
                    }
                    _ => None,
                },
                changed_from: r
                    .get::<_, Option<String>>(11)?
                    .map(|display| {
                        Ok::<_, rusqlite::Error>(crate::readiness::previous(&display, r.get(18)?))
                    })
                    .transpose()?,
                records: r.get::<_, i64>(12)? as u64,
                verifying: r.get(13)?,
                older_same_account: r.get(14)?,
                asked: match (r.get(15)?, r.get(16)?, r.get(17)?) {
                    (Some(id), Some(kind), Some(prompt)) => Some(Asked { id, kind, prompt }),
                    _ => None,
                },
            })
        })?)
}

/// What the decision needs beyond the stored facts: what the vault holds
/// for the source (metadata only) and what its connector says.
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    /// The required credentials not stored.
    pub(super) missing: Vec<CredentialFieldView>,
    /// Whether a session credential is stored.
    pub(super) logged_in: bool,
    /// When the owner last gave a credential (ms): a verification older
    /// than it says nothing about the credentials now held.
    pub(super) last_write: i64,
    /// Whether the source keeps no session past a run.
    pub(super) ephemeral_session: bool,
    /// Whether the source is paused until an upgrade is approved.
    pub(super) paused: bool,
    /// The connector version the source runs.
    pub(super) version: String,
    /// The session credential the connector declares.
    pub(super) session_credential: Option<String>,
}

/// The next step as decided, before it is completed: a browser login
/// says whether this machine has a browser, and new credentials say how
/// the connector's modality takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Complete as it is.
    Step(NextStep),
    /// A login in the streamed browser, after the reason (if any).
    BrowserLogin(Option<String>),
    /// New credentials (or an authorization, for OAuth), after the reason.
    NewCredentials(Option<String>),
}

/// Whether the source's last verification covers the credentials it holds.
pub(super) fn verified(facts: &Facts, held: &Held) -> bool {
    facts.verified_at.is_some_and(|at| at >= held.last_write)
}

/// The source's lifecycle state and what the owner does next, from what
/// is known about it: the first that applies of a question waiting for
/// the owner, an upgrade to approve, a verification running, a refused
/// grant or session, a login or import missing, credentials missing, the
/// last verification's failure, no verification yet, an account change,
/// an account another source already has; else ready.
pub(super) fn decide(facts: &Facts, held: &Held) -> (Lifecycle, Next) {
    let modality = facts.modality.as_deref();
    let oauth = modality == Some("oauth");
    let browser = modality == Some("browser-login");
    let import = modality == Some("local-import");
    let verified = verified(facts, held);
    let import_step = |reason| {
        Next::Step(NextStep::ImportSession {
            credential: held.session_credential.clone(),
            reason,
        })
    };
    if let Some(asked) = &facts.asked {
        let step = if asked.kind == "login" && browser {
            NextStep::BrowserLogin {
                supported: true,
                interaction: Some(asked.id.clone()),
                url: Some(asked.prompt.clone()),
                reason: None,
                operator: None,
            }
        } else {
            NextStep::AnswerInteraction {
                id: asked.id.clone(),
                kind: asked.kind.clone(),
                prompt: asked.prompt.clone(),
            }
        };
        return (Lifecycle::WaitingForOwner, Next::Step(step));
    }
    if let Some((to, changes)) = &facts.pending {
        let step = NextStep::ApproveUpgrade {
            from: held.version.clone(),
            to: to.clone(),
            changes: changes.clone(),
            meanwhile: catalog::Meanwhile::paused_if(held.paused),
        };
        return (Lifecycle::NeedsApproval, Next::Step(step));
    }
    if let Some(run) = &facts.verifying {
        let step = NextStep::Wait { run: run.clone() };
        return (Lifecycle::Verifying, Next::Step(step));
    }
    if let Some(reason) = &facts.needs_reauth {
        let reason = Some(reason.clone());
        let next = if browser {
            Next::BrowserLogin(reason)
        } else if import {
            import_step(reason)
        } else {
            Next::NewCredentials(reason)
        };
        return (Lifecycle::NeedsReauth, next);
    }
    if browser && !held.logged_in && !(held.ephemeral_session && verified) {
        return (Lifecycle::NeedsBrowserLogin, Next::BrowserLogin(None));
    }
    if import && !held.logged_in {
        return (Lifecycle::NeedsCredentials, import_step(None));
    }
    if !held.missing.is_empty() {
        if oauth {
            return (Lifecycle::NeedsAuthorization, Next::NewCredentials(None));
        }
        let step = NextStep::ProvideCredentials {
            fields: held.missing.clone(),
            reason: None,
        };
        return (Lifecycle::NeedsCredentials, Next::Step(step));
    }
    if let Some((kind, detail, at)) = &facts.failure
        && *at >= held.last_write
        && !verified
    {
        return failed(kind, detail, browser, import, oauth, import_step);
    }
    if !verified {
        return (Lifecycle::Verifying, Next::Step(NextStep::Verify));
    }
    if let (Some(previous), Some(identity)) = (&facts.changed_from, &facts.identity) {
        let step = NextStep::ConfirmAccountChange {
            previous: previous.clone(),
            identity: identity.clone(),
            records: facts.records,
            choices: AccountChoice::all(),
        };
        return (Lifecycle::WaitingForOwner, Next::Step(step));
    }
    // Another source of the connector already has this account, and the
    // owner has not said that is intended.
    if let (Some(identity), Some(existing)) = (&facts.identity, &facts.older_same_account)
        && facts.confirmed_identity.as_deref() != Some(identity.id.as_str())
    {
        let step = NextStep::ConfirmIdentity {
            identity: identity.clone(),
            existing: existing.clone(),
        };
        return (Lifecycle::WaitingForOwner, Next::Step(step));
    }
    (Lifecycle::Ready, Next::Step(NextStep::None))
}

/// After a verification that failed: credentials the provider refused
/// are asked for again, the modality's way; any other failure is shown.
fn failed(
    kind: &str,
    detail: &str,
    browser: bool,
    import: bool,
    oauth: bool,
    import_step: impl Fn(Option<String>) -> Next,
) -> (Lifecycle, Next) {
    let refused = kind == "auth_rejected" || kind.starts_with("credential");
    if !refused {
        let step = NextStep::Inspect {
            failure: kind.to_owned(),
            detail: detail.to_owned(),
        };
        return (Lifecycle::Failed, Next::Step(step));
    }
    let detail = Some(detail.to_owned());
    match (browser, import, oauth) {
        (true, _, _) => (Lifecycle::NeedsBrowserLogin, Next::BrowserLogin(detail)),
        (_, true, _) => (Lifecycle::NeedsCredentials, import_step(detail)),
        (_, _, true) => (Lifecycle::NeedsAuthorization, Next::NewCredentials(detail)),
        (_, _, false) => (Lifecycle::NeedsCredentials, Next::NewCredentials(detail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(modality: &str) -> Facts {
        Facts {
            modality: Some(modality.to_owned()),
            identity: None,
            verified_at: None,
            failure: None,
            confirmed_identity: None,
            needs_reauth: None,
            pending: None,
            changed_from: None,
            records: 0,
            verifying: None,
            older_same_account: None,
            asked: None,
        }
    }

    fn token_field() -> CredentialFieldView {
        CredentialFieldView {
            name: "token".into(),
            label: "Token".into(),
            help: String::new(),
            class: "token".into(),
            secret: true,
            required: true,
            pattern: None,
        }
    }

    fn alice() -> Identity {
        Identity {
            id: "1".into(),
            display: "alice".into(),
        }
    }

    /// Verified at 20, after the credentials were given at 10.
    fn verified_facts(modality: &str) -> Facts {
        Facts {
            identity: Some(alice()),
            verified_at: Some(20),
            ..facts(modality)
        }
    }

    fn held() -> Held {
        Held {
            last_write: 10,
            version: "1.0.0".into(),
            session_credential: Some("session".into()),
            ..Held::default()
        }
    }

    fn step(next: NextStep) -> Next {
        Next::Step(next)
    }

    /// One row per rung of the ladder, in its order, with the fact that
    /// puts a source on it; each row also holds what the rungs below it
    /// would have answered, so a rung that stopped applying first would
    /// fail its row.
    #[test]
    fn each_fact_decides_its_state_and_next_step() {
        let missing = Held {
            missing: vec![token_field()],
            ..held()
        };
        let asked = |kind: &str| Asked {
            id: "i1".into(),
            kind: kind.into(),
            prompt: "https://example.test/login".into(),
        };
        let rows: Vec<(&str, Facts, Held, Lifecycle, Next)> = vec![
            (
                "a question waits for the owner",
                Facts {
                    asked: Some(asked("otp")),
                    pending: Some(("2.0.0".into(), vec!["a host".into()])),
                    ..facts("static-secret")
                },
                missing.clone(),
                Lifecycle::WaitingForOwner,
                step(NextStep::AnswerInteraction {
                    id: "i1".into(),
                    kind: "otp".into(),
                    prompt: "https://example.test/login".into(),
                }),
            ),
            (
                "a browser connector's login question is a streamed login",
                Facts {
                    asked: Some(asked("login")),
                    ..facts("browser-login")
                },
                held(),
                Lifecycle::WaitingForOwner,
                step(NextStep::BrowserLogin {
                    supported: true,
                    interaction: Some("i1".into()),
                    url: Some("https://example.test/login".into()),
                    reason: None,
                    operator: None,
                }),
            ),
            (
                "an upgrade waits for approval",
                Facts {
                    pending: Some(("2.0.0".into(), vec!["a host".into()])),
                    verifying: Some("r1".into()),
                    ..facts("static-secret")
                },
                Held {
                    paused: true,
                    ..missing.clone()
                },
                Lifecycle::NeedsApproval,
                step(NextStep::ApproveUpgrade {
                    from: "1.0.0".into(),
                    to: "2.0.0".into(),
                    changes: vec!["a host".into()],
                    meanwhile: catalog::Meanwhile::Pause,
                }),
            ),
            (
                "a verification runs",
                Facts {
                    verifying: Some("r1".into()),
                    needs_reauth: Some("expired".into()),
                    ..facts("static-secret")
                },
                missing.clone(),
                Lifecycle::Verifying,
                step(NextStep::Wait { run: "r1".into() }),
            ),
            (
                "a refused grant is authorized again",
                Facts {
                    needs_reauth: Some("invalid_grant".into()),
                    ..verified_facts("oauth")
                },
                held(),
                Lifecycle::NeedsReauth,
                Next::NewCredentials(Some("invalid_grant".into())),
            ),
            (
                "a refused session is a login again",
                Facts {
                    needs_reauth: Some("logged out".into()),
                    ..verified_facts("browser-login")
                },
                held(),
                Lifecycle::NeedsReauth,
                Next::BrowserLogin(Some("logged out".into())),
            ),
            (
                "a refused imported session is imported again",
                Facts {
                    needs_reauth: Some("logged out".into()),
                    ..verified_facts("local-import")
                },
                held(),
                Lifecycle::NeedsReauth,
                step(NextStep::ImportSession {
                    credential: Some("session".into()),
                    reason: Some("logged out".into()),
                }),
            ),
            (
                "a browser connector without a session logs in",
                facts("browser-login"),
                held(),
                Lifecycle::NeedsBrowserLogin,
                Next::BrowserLogin(None),
            ),
            (
                "an ephemeral session, verified, needs no login kept",
                verified_facts("browser-login"),
                Held {
                    ephemeral_session: true,
                    ..held()
                },
                Lifecycle::Ready,
                step(NextStep::None),
            ),
            (
                "an import connector without a session imports one",
                facts("local-import"),
                held(),
                Lifecycle::NeedsCredentials,
                step(NextStep::ImportSession {
                    credential: Some("session".into()),
                    reason: None,
                }),
            ),
            (
                "missing credentials are asked for",
                Facts {
                    failure: Some(("auth_rejected".into(), "bad".into(), 30)),
                    ..facts("static-secret")
                },
                missing.clone(),
                Lifecycle::NeedsCredentials,
                step(NextStep::ProvideCredentials {
                    fields: vec![token_field()],
                    reason: None,
                }),
            ),
            (
                "a missing grant is an authorization",
                facts("oauth"),
                missing.clone(),
                Lifecycle::NeedsAuthorization,
                Next::NewCredentials(None),
            ),
            (
                "refused credentials are asked for again, with the reason",
                Facts {
                    failure: Some(("auth_rejected".into(), "401".into(), 30)),
                    ..facts("static-secret")
                },
                held(),
                Lifecycle::NeedsCredentials,
                Next::NewCredentials(Some("401".into())),
            ),
            (
                "a refused grant found by verifying is authorized again",
                Facts {
                    failure: Some(("credential_revoked".into(), "gone".into(), 30)),
                    ..facts("oauth")
                },
                held(),
                Lifecycle::NeedsAuthorization,
                Next::NewCredentials(Some("gone".into())),
            ),
            (
                "any other failure is shown",
                Facts {
                    failure: Some(("upstream_transient".into(), "503".into(), 30)),
                    ..facts("static-secret")
                },
                held(),
                Lifecycle::Failed,
                step(NextStep::Inspect {
                    failure: "upstream_transient".into(),
                    detail: "503".into(),
                }),
            ),
            (
                "a failure older than the credentials says nothing of them",
                Facts {
                    failure: Some(("auth_rejected".into(), "401".into(), 5)),
                    ..facts("static-secret")
                },
                held(),
                Lifecycle::Verifying,
                step(NextStep::Verify),
            ),
            (
                "a verification older than the credentials is done again",
                Facts {
                    verified_at: Some(5),
                    ..verified_facts("static-secret")
                },
                held(),
                Lifecycle::Verifying,
                step(NextStep::Verify),
            ),
            (
                "an account change waits for the owner's choice",
                Facts {
                    changed_from: Some("bob (provider id 2)".into()),
                    records: 7,
                    older_same_account: Some("work".into()),
                    ..verified_facts("static-secret")
                },
                held(),
                Lifecycle::WaitingForOwner,
                step(NextStep::ConfirmAccountChange {
                    previous: "bob (provider id 2)".into(),
                    identity: alice(),
                    records: 7,
                    choices: AccountChoice::all(),
                }),
            ),
            (
                "an account another source has is confirmed first",
                Facts {
                    older_same_account: Some("work".into()),
                    ..verified_facts("static-secret")
                },
                held(),
                Lifecycle::WaitingForOwner,
                step(NextStep::ConfirmIdentity {
                    identity: alice(),
                    existing: "work".into(),
                }),
            ),
            (
                "an account the owner confirmed is ready",
                Facts {
                    older_same_account: Some("work".into()),
                    confirmed_identity: Some("1".into()),
                    ..verified_facts("static-secret")
                },
                held(),
                Lifecycle::Ready,
                step(NextStep::None),
            ),
            (
                "verified and nothing waiting: ready",
                verified_facts("static-secret"),
                held(),
                Lifecycle::Ready,
                step(NextStep::None),
            ),
        ];
        for (what, facts, held, state, next) in rows {
            assert_eq!(decide(&facts, &held), (state, next), "{what}");
        }
    }
}
