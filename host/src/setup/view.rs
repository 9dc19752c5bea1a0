//! The documents the setup engine answers with: a source's lifecycle state and next step, its credentials and setup fields, a connector's modalities.

use serde::{Deserialize, Serialize};

use crate::catalog::{self};
use crate::contract::{Manifest, SetupField};
use crate::vault::CredentialClass;

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

pub(super) fn field_views(manifest: &Manifest) -> Vec<CredentialFieldView> {
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

pub(super) fn setup_field_view(field: &SetupField, value: Option<String>) -> SetupFieldView {
    SetupFieldView {
        name: field.name.clone(),
        label: field.label.clone(),
        help: field.help.clone(),
        required: field.required,
        value,
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
