//! The setup engine: everything about setting a source up is decided here,
//! as a [`SourceView`] or [`ConnectorView`] document. The CLI (and the HTTP
//! API) render these documents and nothing else; `--json` prints them as
//! they are.
//!
//! A source's lifecycle state is derived, never stored: from what the
//! vault holds for it (metadata only, nothing is decrypted), its last
//! verification, its runs and its pending interactions.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::catalog::{self, CatalogError, Installed};
use crate::contract::{Manifest, SetupField};
use crate::store::{Store, StoreError, now_ms};
use crate::vault::{CredentialClass, Provenance, Vault, VaultError};

/// Why a view could not be built or a setup step taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A step that does not apply in the source's state.
    #[error("{0}")]
    NotNow(String),
}

impl From<rusqlite::Error> for SetupError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

/// Where a source is in its setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// No connector chosen yet.
    Draft,
    /// Required credentials are not stored (static secret).
    NeedsCredentials,
    /// The provider's OAuth authorization has not been given.
    NeedsAuthorization,
    /// The owner has not logged in through the browser.
    NeedsBrowserLogin,
    /// Credentials are stored but not yet (or being) verified.
    Verifying,
    /// The owner must answer a question or confirm something.
    WaitingForOwner,
    /// Verified; runs may collect.
    Ready,
    /// A run's credentials were refused; new ones are needed.
    NeedsReauth,
    /// A connector upgrade asks for more than was approved.
    NeedsApproval,
    /// Verification failed for a reason new credentials would not fix.
    Failed,
}

/// What the owner must do next, exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum NextStep {
    /// Pick a connector for the source.
    ChooseConnector,
    /// Provide these credential fields (rendered from the connector's
    /// credentials schema).
    ProvideCredentials {
        /// The fields still missing.
        fields: Vec<CredentialFieldView>,
        /// Why, when a verification or run refused the previous ones.
        reason: Option<String>,
    },
    /// Authorize with the provider (OAuth): start it with
    /// `POST /v1/owner/sources/{name}/authorize` or `sourcebox source
    /// authorize NAME`, then open the URL it returns.
    Authorize {
        /// Whether this host can run the authorization now.
        supported: bool,
        /// Why a new authorization is needed, when the provider refused
        /// the previous grant.
        reason: Option<String>,
        /// What the operator must do first, when it is not supported.
        operator: Option<String>,
    },
    /// Log in through the streamed login browser. Without `interaction`,
    /// start it with a setup verification (`POST
    /// /v1/owner/sources/{name}/verify` on `sourcebox serve`): the
    /// connector opens its login page. With one, stream that browser
    /// (`GET /v1/owner/interactions/{id}/screen`, `POST …/input`) and
    /// answer the interaction once logged in; the session is then kept as
    /// the source's session credential.
    BrowserLogin {
        /// Whether this host has a browser for logins.
        supported: bool,
        /// The login under way, when the connector has opened one.
        interaction: Option<String>,
        /// The page the login started at.
        url: Option<String>,
        /// Why a new login is needed, when the previous session was
        /// refused.
        reason: Option<String>,
        /// What the operator must do first, when it is not supported.
        operator: Option<String>,
    },
    /// Import the session from a cookie export of a browser that is
    /// logged in to the site (`cookies.txt` or a JSON array of cookies):
    /// `sourcebox source import NAME FILE` or `POST
    /// /v1/owner/sources/{name}/import` with the file as the body. Only
    /// the cookies for the connector's hosts are kept.
    ImportSession {
        /// The session credential it is stored as; none when the
        /// connector declares no session credential.
        credential: Option<String>,
        /// Why a new import is needed, when the site refused the session.
        reason: Option<String>,
    },
    /// Run the setup verification.
    Verify,
    /// A verification run is in flight.
    Wait {
        /// The run.
        run: String,
    },
    /// Answer the interaction a run asked.
    AnswerInteraction {
        /// Interaction id.
        id: String,
        /// otp, login, identity-confirmation or challenge.
        kind: String,
        /// What the connector asked.
        prompt: String,
    },
    /// Confirm that this source is another connection to an account that
    /// is already connected.
    ConfirmIdentity {
        /// The account this source's credentials belong to.
        identity: Identity,
        /// The source already connected to it.
        existing: String,
    },
    /// The credentials now belong to another account than the one this
    /// source was connected to, and nothing collects until the owner
    /// chooses one of `choices`.
    ConfirmAccountChange {
        /// The account the source was connected to.
        previous: String,
        /// The account the credentials belong to now.
        identity: Identity,
        /// Records the source holds from before.
        records: u64,
        /// What the owner may do: every [`AccountChoice`].
        choices: Vec<AccountChoice>,
    },
    /// Look at the failed verification.
    Inspect {
        /// The failure kind.
        failure: String,
        /// What happened.
        detail: String,
    },
    /// Approve what a newer version of the connector asks for beyond the
    /// version the source runs.
    ApproveUpgrade {
        /// The version the source runs.
        from: String,
        /// The version waiting for approval.
        to: String,
        /// What it asks for beyond `from`.
        changes: Vec<String>,
        /// What happens until then, as the owner chose at install (the
        /// install's `meanwhile`): `keep_running` (runs go on with `from`)
        /// or `pause` (no run starts).
        meanwhile: catalog::Meanwhile,
    },
    /// Nothing: the source is ready.
    None,
}

/// The account a source's credentials belong to, as the provider reported
/// it at verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Identity {
    /// Stable provider-side id.
    pub id: String,
    /// Human-readable name.
    pub display: String,
}

/// One credential field, from the connector's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialFieldView {
    /// Name to store it under.
    pub name: String,
    /// Label to show.
    pub label: String,
    /// Where to find it.
    pub help: String,
    /// Credential class, as the vault names it.
    pub class: String,
    /// Never echoed back when true.
    pub secret: bool,
    /// Whether runs need it.
    pub required: bool,
    /// A regular expression the value must match.
    pub pattern: Option<String>,
}

/// One non-secret setup field, from the connector's setup descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetupFieldView {
    /// Name.
    pub name: String,
    /// Label to show.
    pub label: String,
    /// Help text.
    pub help: String,
    /// Whether it must be given.
    pub required: bool,
    /// The source's value (filled in for a source view).
    pub value: Option<String>,
}

/// A setup modality and whether it is proven for this connector version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModalityView {
    /// static-secret, oauth, browser-login or local-import.
    pub modality: String,
    /// `proven` once a source set up this way verified and collected (or
    /// the catalog ships such a proof); otherwise `unproven`.
    pub support: String,
    /// What proved it.
    pub evidence: Option<String>,
}

/// Everything about setting up sources of one connector version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectorView {
    /// Connector id.
    pub id: String,
    /// Version.
    pub version: String,
    /// Display name.
    pub name: String,
    /// Ways to set up a source, with their support state.
    pub modalities: Vec<ModalityView>,
    /// The credentials a source needs.
    pub credentials: Vec<CredentialFieldView>,
    /// Non-secret setup fields.
    pub setup_fields: Vec<SetupFieldView>,
    /// Hosts it may reach (fixed, and `field:NAME` for hosts taken from a
    /// setup field).
    pub hosts: Vec<String>,
}

/// Everything about one source's setup, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceView {
    /// Source name.
    pub source: String,
    /// `id version` of its connector.
    pub connector: Option<String>,
    /// How it is set up.
    pub modality: Option<String>,
    /// Browser login only: whether its session is `kept` (sealed, for
    /// later runs) or `ephemeral` (erased when each run ends, so every run
    /// asks the owner to log in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Where it is.
    pub state: Lifecycle,
    /// The account its credentials belong to, once verified.
    pub identity: Option<Identity>,
    /// Credential fields, and whether each is stored for this source.
    pub credentials: Vec<CredentialStatus>,
    /// Setup field values.
    pub setup: Vec<SetupFieldView>,
    /// What the owner must do next.
    pub next_step: NextStep,
    /// Why it may not collect now, if it may not: the launch and the
    /// scheduler decide the same ([`crate::readiness`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked: Option<crate::readiness::Blocked>,
}

/// A credential field of a source and whether it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialStatus {
    /// The field.
    #[serde(flatten)]
    pub field: CredentialFieldView,
    /// Stored, usable (not revoked) for this source.
    pub stored: bool,
}

fn field_views(manifest: &Manifest) -> Vec<CredentialFieldView> {
    manifest
        .credentials
        .iter()
        .map(|c| CredentialFieldView {
            name: c.name.clone(),
            label: c.label.clone(),
            help: c.help.clone(),
            class: CredentialClass::from(c.class).as_str().to_owned(),
            secret: c.secret,
            required: c.required,
            pattern: c.pattern.clone(),
        })
        .collect()
}

fn setup_field_view(field: &SetupField, value: Option<String>) -> SetupFieldView {
    SetupFieldView {
        name: field.name.clone(),
        label: field.label.clone(),
        help: field.help.clone(),
        required: field.required,
        value,
    }
}

/// The view of the latest installed version of connector `id`.
pub fn connector_view(store: &Store, id: &str) -> Result<ConnectorView, SetupError> {
    let installed = catalog::latest(store, id)?;
    let proven = catalog::proofs(store, &installed)?;
    Ok(view_of(
        &installed.version,
        &installed.manifest,
        &installed.approved.hosts,
        &proven,
    ))
}

/// The view of every installed connector, at its latest version.
pub fn connector_views(store: &Store) -> Result<Vec<ConnectorView>, SetupError> {
    let mut ids: Vec<String> = catalog::list(store)?.into_iter().map(|c| c.id).collect();
    ids.dedup();
    ids.iter().map(|id| connector_view(store, id)).collect()
}

/// The view of a component that is not installed yet: what installing it
/// would approve. No modality of it is proven.
pub fn connector_preview(manifest: &Manifest) -> ConnectorView {
    view_of(
        &manifest.version,
        manifest,
        &catalog::approval_for(manifest).hosts,
        &[],
    )
}

fn view_of(
    version: &str,
    manifest: &Manifest,
    hosts: &[String],
    proven: &[catalog::CatalogProof],
) -> ConnectorView {
    ConnectorView {
        id: manifest.id.clone(),
        version: version.to_owned(),
        name: manifest.name.clone(),
        modalities: manifest
            .setup
            .modalities
            .iter()
            .map(|m| {
                let name = catalog::modality_name(*m);
                let evidence = proven
                    .iter()
                    .find(|p| p.modality == name)
                    .map(|p| p.evidence.clone());
                ModalityView {
                    modality: name.to_owned(),
                    support: if evidence.is_some() {
                        "proven"
                    } else {
                        "unproven"
                    }
                    .to_owned(),
                    evidence,
                }
            })
            .collect(),
        credentials: field_views(manifest),
        setup_fields: manifest
            .setup
            .fields
            .iter()
            .map(|f| setup_field_view(f, f.default_value.clone()))
            .collect(),
        hosts: hosts.to_vec(),
    }
}

/// What the owner may do when a source's credentials turn out to belong
/// to another account than the one it was connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "choice", rename_all = "snake_case")]
pub enum AccountChoice {
    /// Connect this source to the new account; its records stay.
    Accept,
    /// Move the credentials into a new source of their own, connected to
    /// the new account; this source goes back to the account it was
    /// connected to and asks for its credentials again.
    NewSource {
        /// The new source's name (the owner's choice; none is offered
        /// when the view is built).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Delete the credentials; this source goes back to the account it was
    /// connected to and asks for its credentials again.
    Discard,
}

impl AccountChoice {
    /// Every choice, as a view offers them.
    pub fn all() -> Vec<Self> {
        vec![Self::Accept, Self::NewSource { name: None }, Self::Discard]
    }
}

/// What the store says about a source's setup.
struct Facts {
    modality: Option<String>,
    identity: Option<Identity>,
    verified_at: Option<i64>,
    failure: Option<(String, String, i64)>,
    confirmed_identity: Option<String>,
    needs_reauth: Option<String>,
    pending: Option<(String, Vec<String>)>,
    changed_from: Option<String>,
    /// Records the source holds, counted only after an account change.
    records: u64,
    /// Its unfinished setup verification run.
    verifying: Option<String>,
    /// The oldest other verified source of the same connector and account.
    older_same_account: Option<String>,
    /// Its oldest pending interaction.
    asked: Option<Asked>,
}

/// A pending interaction, as the view needs it.
struct Asked {
    id: String,
    kind: String,
    prompt: String,
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

/// The view of source `name`.
pub fn source_view(store: &Store, name: &str) -> Result<SourceView, SetupError> {
    // An unknown source is refused here, by its lookup.
    let setup = match catalog::source_setup(store, name) {
        Ok(setup) => setup,
        Err(CatalogError::NoConnector(_)) => {
            return Ok(SourceView {
                source: name.to_owned(),
                connector: None,
                modality: None,
                session: None,
                state: Lifecycle::Draft,
                identity: None,
                credentials: Vec::new(),
                setup: Vec::new(),
                next_step: NextStep::ChooseConnector,
                blocked: Some(crate::readiness::Blocked::NoConnector),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let source = &setup.source;
    let facts = store
        .conn()
        .prepare_cached(FACTS)?
        .query_row([source.source_id], |r| {
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
        })?;
    let manifest = &setup.connector.manifest;
    let metas = crate::vault::metadata(store, Some(source))?;
    let credentials: Vec<CredentialStatus> = field_views(manifest)
        .into_iter()
        .map(|field| CredentialStatus {
            stored: metas
                .iter()
                .any(|m| m.name == field.name && m.revoked_at.is_none()),
            field,
        })
        .collect();
    // The newest value the owner gave: a verification older than it says
    // nothing about the credentials now held. A refresh since keeps when
    // the owner gave it (re-authorizing, then a refresh, is still a new
    // grant to verify).
    let last_write = metas
        .iter()
        .filter(|m| m.revoked_at.is_none())
        .map(|m| m.given_at)
        .max()
        .unwrap_or(0);
    let missing: Vec<CredentialFieldView> = credentials
        .iter()
        .filter(|c| c.field.required && !c.stored)
        .map(|c| c.field.clone())
        .collect();
    let verified = facts.verified_at.is_some_and(|at| at >= last_write);
    let duplicate = match (&facts.identity, verified) {
        (Some(identity), true) => facts
            .older_same_account
            .clone()
            .filter(|_| facts.confirmed_identity.as_deref() != Some(identity.id.as_str())),
        _ => None,
    };

    let oauth = facts.modality.as_deref() == Some("oauth");
    let browser = facts.modality.as_deref() == Some("browser-login");
    let import = facts.modality.as_deref() == Some("local-import");
    // A browser-login (or imported) source is logged in when it holds a
    // session.
    let logged_in = credentials
        .iter()
        .any(|c| c.stored && c.field.class == CredentialClass::Session.as_str());
    let (state, next_step) = if let Some(asked) = facts.asked {
        if asked.kind == "login" && browser {
            (
                Lifecycle::WaitingForOwner,
                NextStep::BrowserLogin {
                    supported: true,
                    interaction: Some(asked.id),
                    url: Some(asked.prompt),
                    reason: None,
                    operator: None,
                },
            )
        } else {
            (
                Lifecycle::WaitingForOwner,
                NextStep::AnswerInteraction {
                    id: asked.id,
                    kind: asked.kind,
                    prompt: asked.prompt,
                },
            )
        }
    } else if let Some((to, changes)) = facts.pending.clone() {
        (
            Lifecycle::NeedsApproval,
            NextStep::ApproveUpgrade {
                from: setup.connector.version.clone(),
                to,
                changes,
                meanwhile: catalog::Meanwhile::paused_if(setup.paused_for.is_some()),
            },
        )
    } else if let Some(run) = facts.verifying.clone() {
        (Lifecycle::Verifying, NextStep::Wait { run })
    } else if let Some(reason) = facts.needs_reauth.clone() {
        (
            Lifecycle::NeedsReauth,
            if browser {
                browser_login(Some(reason))
            } else if import {
                import_step(manifest, Some(reason))
            } else {
                new_credentials(store, &setup.connector, oauth, Some(reason))?
            },
        )
    } else if browser && !logged_in && !(setup.ephemeral_session && verified) {
        (Lifecycle::NeedsBrowserLogin, browser_login(None))
    } else if import && !logged_in {
        (Lifecycle::NeedsCredentials, import_step(manifest, None))
    } else if !missing.is_empty() {
        match facts.modality.as_deref() {
            Some("oauth") => (
                Lifecycle::NeedsAuthorization,
                new_credentials(store, &setup.connector, oauth, None)?,
            ),
            _ => (
                Lifecycle::NeedsCredentials,
                NextStep::ProvideCredentials {
                    fields: missing,
                    reason: None,
                },
            ),
        }
    } else if let Some((kind, detail, _)) = facts
        .failure
        .clone()
        .filter(|(_, _, at)| *at >= last_write && !verified)
    {
        let refused = kind == "auth_rejected" || kind.starts_with("credential");
        if refused && browser {
            (Lifecycle::NeedsBrowserLogin, browser_login(Some(detail)))
        } else if refused && import {
            (
                Lifecycle::NeedsCredentials,
                import_step(manifest, Some(detail)),
            )
        } else if refused {
            (
                if oauth {
                    Lifecycle::NeedsAuthorization
                } else {
                    Lifecycle::NeedsCredentials
                },
                new_credentials(store, &setup.connector, oauth, Some(detail))?,
            )
        } else {
            (
                Lifecycle::Failed,
                NextStep::Inspect {
                    failure: kind,
                    detail,
                },
            )
        }
    } else if !verified {
        (Lifecycle::Verifying, NextStep::Verify)
    } else if let (Some(previous), Some(identity)) =
        (facts.changed_from.clone(), facts.identity.clone())
    {
        (
            Lifecycle::WaitingForOwner,
            NextStep::ConfirmAccountChange {
                previous,
                identity,
                records: facts.records,
                choices: AccountChoice::all(),
            },
        )
    } else if let (Some(existing), Some(identity)) = (duplicate, facts.identity.clone()) {
        (
            Lifecycle::WaitingForOwner,
            NextStep::ConfirmIdentity { identity, existing },
        )
    } else {
        (Lifecycle::Ready, NextStep::None)
    };

    Ok(SourceView {
        source: name.to_owned(),
        connector: Some(format!(
            "{} {}",
            setup.connector.id, setup.connector.version
        )),
        session: browser.then(|| {
            if setup.ephemeral_session {
                "ephemeral"
            } else {
                "kept"
            }
            .to_owned()
        }),
        modality: facts.modality,
        state,
        identity: facts.identity.filter(|_| verified),
        credentials,
        setup: manifest
            .setup
            .fields
            .iter()
            .map(|f| {
                let value = setup.setup.iter().find(|(k, _)| *k == f.name);
                setup_field_view(f, value.map(|(_, v)| v.clone()))
            })
            .collect(),
        next_step,
        blocked: crate::readiness::decide(
            &crate::readiness::facts(store, &setup)?,
            crate::readiness::Purpose::Collect,
        )
        .err(),
    })
}

/// A session imported from the owner's cookie export, after `reason` (or
/// for the first time).
fn import_step(manifest: &Manifest, reason: Option<String>) -> NextStep {
    NextStep::ImportSession {
        credential: crate::contract::session_credential(manifest).map(str::to_owned),
        reason,
    }
}

/// What an owner's cookie export came to, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportSummary {
    /// The session credential it was stored as.
    pub credential: String,
    /// Cookies kept: those a request to the connector's hosts carries.
    pub kept: usize,
    /// Cookies left out, for hosts the connector does not reach.
    pub other_hosts: usize,
    /// Cookies left out, expired.
    pub expired: usize,
}

/// Stores, as `source`'s session credential, the cookies of a browser's
/// cookie export (`cookies.txt` or a JSON array) that requests to its
/// connector's hosts carry; every other cookie in it is left out. Nothing
/// is stored when the export is unreadable or holds none of them.
pub fn import_session(
    vault: &Vault,
    actor: crate::vault::Actor<'_>,
    source: &str,
    export: &crate::vault::Secret,
    egress_allow: &[std::net::SocketAddr],
) -> Result<ImportSummary, SetupError> {
    let setup = catalog::source_setup(vault.store(), source)?;
    let manifest = &setup.connector.manifest;
    let Some(credential) = crate::contract::session_credential(manifest).map(str::to_owned) else {
        return Err(SetupError::NotNow(format!(
            "connector {} declares no session credential to import cookies into",
            setup.connector.id
        )));
    };
    let policy = crate::egress::EgressPolicy::for_source(manifest, &setup.setup, egress_allow);
    let imported = crate::cookies::from_export(export, policy.hosts())
        .map_err(|e| SetupError::NotNow(format!("{e}; nothing was stored")))?;
    vault.set(
        actor,
        &setup.source,
        crate::vault::NewCredential {
            name: &credential,
            class: CredentialClass::Session,
            provenance: Provenance::Imported,
            value: imported.session,
            expires_at: None,
        },
    )?;
    Ok(ImportSummary {
        credential,
        kept: imported.kept,
        other_hosts: imported.other_hosts,
        expired: imported.expired,
    })
}

/// A new browser login, after `reason` (or for the first time).
fn browser_login(reason: Option<String>) -> NextStep {
    let supported = crate::browser::find_chromium().is_some();
    NextStep::BrowserLogin {
        supported,
        interaction: None,
        url: None,
        reason,
        operator: (!supported).then(|| match std::env::var_os("SOURCEBOX_CHROMIUM") {
            Some(path) => format!(
                "SOURCEBOX_CHROMIUM names {}, which is not a browser binary: fix it, then restart `sourcebox serve`",
                std::path::Path::new(&path).display()
            ),
            None => "this host has no browser for logins: install Chromium (Debian: apt-get install chromium) or set SOURCEBOX_CHROMIUM to its path, then restart `sourcebox serve`".to_owned(),
        }),
    }
}

/// What gets a source new credentials after `reason` (or for the first
/// time): a provider authorization for an OAuth source, the required
/// fields otherwise.
fn new_credentials(
    store: &Store,
    connector: &Installed,
    oauth: bool,
    reason: Option<String>,
) -> Result<NextStep, SetupError> {
    if !oauth {
        return Ok(NextStep::ProvideCredentials {
            fields: field_views(&connector.manifest)
                .into_iter()
                .filter(|f| f.required)
                .collect(),
            reason,
        });
    }
    let operator = if crate::oauth::grant_field(&connector.manifest).is_none() {
        Some(format!(
            "connector {} {} declares no oauth-class credential to hold a grant; it cannot be authorized",
            connector.id, connector.version
        ))
    } else if crate::oauth::client(store, &connector.id)?.is_none() {
        Some(crate::oauth::OauthError::NoClient(connector.id.clone()).to_string())
    } else {
        None
    };
    Ok(NextStep::Authorize {
        supported: operator.is_none(),
        reason,
        operator,
    })
}

/// The class `name` is stored as for `source`, once `value` passes its
/// connector's credentials schema: the name declared, the class the
/// declared one (taken from the schema when not given), the value matching
/// the declared pattern. Errors name the field and the rule, never the
/// value. A source without a connector takes any name, with the class
/// given. Every way a credential is stored from the owner's hand (typed,
/// or an answer kept) goes through here.
fn checked_class(
    store: &Store,
    source: &str,
    name: &str,
    class: Option<CredentialClass>,
    value: &crate::vault::Secret,
) -> Result<CredentialClass, SetupError> {
    match catalog::source_setup(store, source) {
        Ok(setup) => {
            let manifest = &setup.connector.manifest;
            let Some(field) = manifest.credentials.iter().find(|c| c.name == name) else {
                let declared: Vec<&str> = manifest
                    .credentials
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                return Err(SetupError::NotNow(format!(
                    "connector {} declares no credential '{name}'; it declares: {}; nothing was stored",
                    setup.connector.id,
                    declared.join(", ")
                )));
            };
            let declared = CredentialClass::from(field.class);
            if let Some(given) = class.filter(|c| *c != declared) {
                return Err(SetupError::NotNow(format!(
                    "connector {} declares '{name}' as class {declared}, not {given}; nothing was stored",
                    setup.connector.id
                )));
            }
            if let Some(pattern) = &field.pattern {
                let re = regex::Regex::new(pattern).map_err(|e| {
                    SetupError::NotNow(format!(
                        "connector {} declares an invalid pattern for '{name}' ({e}); nothing was stored",
                        setup.connector.id
                    ))
                })?;
                let matches = std::str::from_utf8(value.expose_secret())
                    .map(|text| re.is_match(text))
                    .unwrap_or(false);
                if !matches {
                    return Err(SetupError::NotNow(format!(
                        "the value for '{name}' does not look like a {} (it must match {pattern}); nothing was stored",
                        field.label
                    )));
                }
            }
            Ok(declared)
        }
        Err(CatalogError::NoConnector(_)) => class.ok_or_else(|| {
            SetupError::NotNow(format!(
                "source '{source}' has no connector to declare '{name}'; pass --class"
            ))
        }),
        Err(e) => Err(e.into()),
    }
}

/// Answers interaction `id` with `value` and, with `keep_as`, keeps the
/// answer as that credential of the interaction's source, checked against
/// the connector's credentials schema first (as a credential the owner
/// types is): a refused name, class or value answers nothing and stores
/// nothing. A login is kept from its browser, never from an answer.
pub fn answer(
    vault: &Vault,
    actor: crate::vault::Actor<'_>,
    id: &str,
    value: crate::vault::Secret,
    keep_as: Option<&str>,
) -> Result<crate::interactions::Interaction, SetupError> {
    let store = vault.store();
    let asked = crate::interactions::find(store, id)?;
    let source = store.source(&asked.source)?;
    let keep = match keep_as {
        Some(_) if asked.kind == "login" => {
            return Err(SetupError::NotNow(
                "a login is kept from its browser, not from the answer; answer it without keeping it"
                    .into(),
            ));
        }
        Some(name) => Some((
            name,
            checked_class(store, &asked.source, name, None, &value)?,
        )),
        None => None,
    };
    vault.answer_interaction(actor, &source, id, &value)?;
    if let Some((name, class)) = keep {
        vault.set(
            actor,
            &source,
            crate::vault::NewCredential {
                name,
                class,
                provenance: Provenance::Interaction,
                value,
                expires_at: None,
            },
        )?;
    }
    Ok(crate::interactions::find(store, id)?)
}

/// Stores a credential the owner provides for `source`, checked against
/// its connector's credentials schema first: the name must be declared,
/// the class must be the declared one (taken from the schema when not
/// given), and the value must match the declared pattern. Errors name the
/// field and the rule, never the value. A source without a connector takes
/// any name, with the class given.
pub fn capture_credential(
    vault: &Vault,
    actor: crate::vault::Actor<'_>,
    source: &str,
    name: &str,
    class: Option<CredentialClass>,
    value: crate::vault::Secret,
    expires_at: Option<i64>,
) -> Result<crate::vault::CredentialMeta, SetupError> {
    let source_ref = vault.store().source(source)?;
    let class = checked_class(vault.store(), source, name, class, &value)?;
    Ok(vault.set(
        actor,
        &source_ref,
        crate::vault::NewCredential {
            name,
            class,
            provenance: Provenance::Owner,
            value,
            expires_at,
        },
    )?)
}

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
