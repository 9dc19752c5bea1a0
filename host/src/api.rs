//! The HTTP API: an owner control surface under `/v1/owner/` and a client
//! read surface under `/v1/`, on separate routers with separate token
//! types. Tokens only in the `Authorization: Bearer` header (no cookies).
//! Every error is one JSON shape, `{"error": {"code", "message",
//! "next_step"}}`; internal errors are logged, never returned.
//!
//! The API decides nothing about setup: it returns the setup engine's
//! documents ([`crate::setup`]) as they are.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::catalog::{self, CatalogError};
use crate::runs::{self, LaunchError, Launcher, Trigger};
use crate::setup::{self, SetupError};
use crate::store::StoreError;
use crate::tokens::{self, Grant, Principal};
use crate::vault::{Actor, Secret, VaultError};

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// Failed authentications allowed per peer address per window.
const AUTH_FAILURES: u32 = 20;
/// The window failed authentications are counted in.
const AUTH_WINDOW: Duration = Duration::from_secs(60);
/// Records per page, by default and at most.
const PAGE_DEFAULT: u32 = 100;
const PAGE_MAX: u32 = 1000;

/// What the handlers share.
pub struct Api {
    launcher: Arc<Launcher>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api")
    }
}

impl Api {
    /// The API over `launcher`'s vault and runs.
    pub fn new(launcher: Arc<Launcher>) -> Arc<Self> {
        Arc::new(Self {
            launcher,
            failures: Mutex::default(),
        })
    }

    fn vault(&self) -> std::sync::MutexGuard<'_, crate::vault::Vault> {
        self.launcher.vault().lock().expect("vault lock")
    }
}

/// Every route: the owner router under `/v1/owner`, the client router
/// under `/v1`.
pub fn router(api: Arc<Api>) -> Router {
    let owner = Router::new()
        .route("/sources", get(owner_sources).post(owner_add_source))
        .route(
            "/sources/{name}",
            get(owner_source).delete(owner_delete_source),
        )
        .route("/sources/{name}/schedule", put(owner_schedule))
        .route(
            "/sources/{name}/credentials/{credential}/revoke",
            post(owner_revoke),
        )
        .route("/interactions", get(owner_interactions))
        .route("/interactions/{id}/answer", post(owner_answer))
        .route("/audit", get(owner_audit))
        .route("/audit/verify", get(owner_audit_verify))
        .route(
            "/sources/{name}/credentials/{credential}",
            put(owner_capture),
        )
        .route("/sources/{name}/verify", post(owner_verify))
        .route("/sources/{name}/runs", post(owner_start_run))
        .route("/runs", get(owner_runs))
        .route("/runs/{id}", get(owner_run))
        .route("/runs/{id}/cancel", post(owner_cancel))
        .route("/runs/{id}/events", get(owner_run_events))
        .route("/connectors/{id}", get(owner_connector))
        .route("/clients", get(owner_clients).post(owner_create_client))
        .route("/clients/{id}", axum::routing::delete(owner_revoke_client));
    let client = Router::new().route("/sources", get(client_sources)).route(
        "/sources/{name}/streams/{stream}/records",
        get(client_records),
    );
    Router::new()
        .nest("/v1/owner", owner)
        .nest("/v1", client)
        .fallback(|| async { ApiError::not_found("no such route; the owner surface is under /v1/owner/, the client surface under /v1/sources") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(api)
}

/// The one error shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    next_step: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_step: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            next_step: None,
        }
    }

    fn next(mut self, step: impl Into<String>) -> Self {
        self.next_step = Some(step.into());
        self
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is required in the Authorization header (Bearer)",
        )
    }

    fn internal(e: &dyn std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorInner {
                code: self.code,
                message: &self.message,
                next_step: self.next_step.as_deref(),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownSource(_) | StoreError::NotFound(_) => {
                Self::not_found(e.to_string())
            }
            StoreError::SourceExists(_) | StoreError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::InvalidSourceName(_) => Self::bad_request(e.to_string()),
            other => Self::internal(&other),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Store(e) => e.into(),
            CatalogError::Unknown(_) => Self::not_found(e.to_string()),
            CatalogError::Exists(..) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            CatalogError::Setup(_) | CatalogError::NoConnector(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_setup",
                e.to_string(),
            ),
            other => Self::internal(&other),
        }
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Invalid(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                e.to_string(),
            ),
            VaultError::Missing { .. } => Self::not_found(e.to_string()),
            other => Self::internal(&other),
        }
    }
}

impl From<SetupError> for ApiError {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Catalog(e) => e.into(),
            SetupError::Store(e) => e.into(),
            SetupError::Vault(e) => e.into(),
            SetupError::NotNow(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "not_now", m),
        }
    }
}

impl From<LaunchError> for ApiError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Catalog(e) => e.into(),
            LaunchError::Store(e) => e.into(),
            LaunchError::Vault(e) => e.into(),
            LaunchError::Busy { ref run, .. } => {
                let run = run.clone();
                Self::new(StatusCode::CONFLICT, "busy", e.to_string())
                    .next(format!("POST /v1/owner/runs/{run}/cancel"))
            }
            other => Self::internal(&other),
        }
    }
}

/// JSON bodies whose rejections take the error shape.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::BytesRejection(_)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request bodies are limited to {BODY_LIMIT} bytes"),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send a JSON body with content-type: application/json",
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Query strings whose rejections take the error shape.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// The principal behind the request's bearer token; failures are counted
/// per peer address and refused with 429 past a limit.
async fn principal(parts: &mut Parts, api: &Arc<Api>) -> Result<Principal, ApiError> {
    let peer = ConnectInfo::<SocketAddr>::from_request_parts(parts, api)
        .await
        .map(|ConnectInfo(addr)| addr.ip())
        .ok();
    if let Some(ip) = peer {
        let failures = api.failures.lock().expect("failures lock");
        if let Some((count, since)) = failures.get(&ip)
            && *count >= AUTH_FAILURES
            && since.elapsed() < AUTH_WINDOW
        {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                "too many failed authentications from this address; wait a minute",
            ));
        }
    }
    let token = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Secret::from_slice(t.trim().as_bytes()));
    let found = match &token {
        Some(token) => tokens::authenticate(api.vault().store(), token.expose_secret())?,
        None => None,
    };
    match found {
        Some(principal) => Ok(principal),
        None => {
            if let Some(ip) = peer {
                let mut failures = api.failures.lock().expect("failures lock");
                let entry = failures.entry(ip).or_insert((0, Instant::now()));
                if entry.1.elapsed() >= AUTH_WINDOW {
                    *entry = (0, Instant::now());
                }
                entry.0 += 1;
            }
            Err(ApiError::unauthorized())
        }
    }
}

/// The owner, by an owner token.
struct Owner;

impl FromRequestParts<Arc<Api>> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        match principal(parts, api).await? {
            Principal::Owner { .. } => Ok(Self),
            Principal::Client(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_token_type",
                "a client token cannot use the owner surface; use the owner token",
            )),
        }
    }
}

/// A client, by a client token.
struct Client(Grant);

impl FromRequestParts<Arc<Api>> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        match principal(parts, api).await? {
            Principal::Client(grant) => Ok(Self(grant)),
            Principal::Owner { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_token_type",
                "the owner token cannot use the client surface; create a client token with POST /v1/owner/clients",
            )),
        }
    }
}

const OWNER_API: Actor<'static> = Actor {
    name: "owner:api",
    run_id: None,
};

async fn owner_sources(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let sources = runs::scheduler::statuses(api.vault().store())?;
    Ok(Json(sources).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSource {
    name: String,
    connector: String,
    #[serde(default)]
    setup: BTreeMap<String, String>,
    #[serde(default)]
    modality: Option<String>,
    #[serde(default)]
    allow_unproven: bool,
}

async fn owner_add_source(
    _: Owner,
    State(api): State<Arc<Api>>,
    Body(new): Body<NewSource>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    let values: Vec<(String, String)> = new.setup.into_iter().collect();
    catalog::add_source(
        vault.store(),
        &new.name,
        &new.connector,
        &values,
        catalog::AddOptions {
            modality: new.modality.as_deref(),
            allow_unproven: new.allow_unproven,
            egress_allow: &api.launcher.config().egress_allow,
        },
    )?;
    let view = setup::source_view(&vault, &new.name)?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn owner_source(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(setup::source_view(&api.vault(), &name)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Capture {
    value: String,
}

/// Write-only: the response carries the credential's metadata, never its
/// value.
async fn owner_capture(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path((name, credential)): Path<(String, String)>,
    Body(capture): Body<Capture>,
) -> Result<Response, ApiError> {
    let value = Secret::new(capture.value.into_bytes());
    let meta = setup::capture_credential(
        &api.vault(),
        OWNER_API,
        &name,
        &credential,
        None,
        value,
        None,
    )?;
    Ok(Json(meta).into_response())
}

async fn owner_verify(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    api.launcher
        .launch(&name, Trigger::SetupVerification)
        .await?;
    Ok(Json(setup::source_view(&api.vault(), &name)?).into_response())
}

/// Queues a manual run; the scheduler starts it at its next tick.
async fn owner_start_run(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    let id = runs::enqueue(vault.store(), &name, Trigger::Manual, None, None, 1)?;
    let record = runs::find(vault.store(), &id)?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    source: Option<String>,
}

async fn owner_runs(
    _: Owner,
    State(api): State<Arc<Api>>,
    Params(query): Params<RunsQuery>,
) -> Result<Response, ApiError> {
    let list = runs::list(api.vault().store(), query.source.as_deref())?;
    Ok(Json(list).into_response())
}

async fn owner_run(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(runs::find(api.vault().store(), &id)?).into_response())
}

async fn owner_cancel(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(api.launcher.cancel(&id)?).into_response())
}

/// The run's events as Server-Sent Events: its current state first, then
/// every event as it happens (state changes, progress, log lines,
/// interactions), ending after the run ends. Log lines are redacted before
/// they are published; no event carries a secret.
async fn owner_run_events(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // Subscribe before reading the state, so nothing falls in between.
    let receiver = api.launcher.events().subscribe();
    let record = runs::find(api.vault().store(), &id)?;
    let first = crate::events::RunEvent {
        run: record.id.clone(),
        source: record.source.clone(),
        kind: crate::events::EventKind::State {
            state: record.state.clone(),
            failure: record.failure.clone(),
        },
    };
    let done = record.finished();
    let event = |e: &crate::events::RunEvent| {
        Event::default()
            .event(match &e.kind {
                crate::events::EventKind::State { .. } => "state",
                crate::events::EventKind::Progress { .. } => "progress",
                crate::events::EventKind::Log { .. } => "log",
                crate::events::EventKind::Interaction { .. } => "interaction",
            })
            .json_data(e)
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    let initial = futures_util::stream::iter(vec![event(&first)]);
    let live = futures_util::stream::unfold(
        (receiver, id, done),
        move |(mut receiver, id, done)| async move {
            if done {
                return None;
            }
            loop {
                match receiver.recv().await {
                    Ok(e) if e.run == id => {
                        let ended = matches!(&e.kind, crate::events::EventKind::State { state, .. }
                            if matches!(state.as_str(), "succeeded" | "failed" | "cancelled" | "interrupted"));
                        return Some((event(&e), (receiver, id, ended)));
                    }
                    Ok(_) => {}
                    // A slow reader skips what it missed and goes on.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    use futures_util::StreamExt;
    Ok(Sse::new(initial.chain(live))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn owner_connector(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(setup::connector_view(api.vault().store(), &id)?).into_response())
}

async fn owner_clients(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    Ok(Json(tokens::clients(api.vault().store())?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    source: String,
    streams: Vec<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

#[derive(Serialize)]
struct CreatedClient {
    /// Shown once; only its hash is kept.
    token: String,
    #[serde(flatten)]
    grant: Grant,
}

async fn owner_create_client(
    _: Owner,
    State(api): State<Arc<Api>>,
    Body(new): Body<NewClient>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    let setup = catalog::source_setup(vault.store(), &new.source)?;
    let declared: Vec<&str> = setup
        .connector
        .manifest
        .streams
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    if new.streams.is_empty() {
        return Err(ApiError::bad_request(format!(
            "name the streams the client may read; {} has: {}",
            new.source,
            declared.join(", ")
        )));
    }
    if let Some(unknown) = new.streams.iter().find(|s| !declared.contains(&s.as_str())) {
        return Err(ApiError::bad_request(format!(
            "source '{}' has no stream '{unknown}'; it has: {}",
            new.source,
            declared.join(", ")
        )));
    }
    let (token, grant) = tokens::create_client(
        vault.store(),
        &new.source,
        &new.streams,
        new.label.as_deref(),
        new.expires_in_secs,
    )?;
    let token = String::from_utf8_lossy(token.expose_secret()).into_owned();
    Ok((StatusCode::CREATED, Json(CreatedClient { token, grant })).into_response())
}

async fn owner_revoke_client(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(tokens::revoke_client(api.vault().store(), &id)?).into_response())
}

async fn owner_delete_source(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    let source = vault.store().source(&name)?;
    let destroyed = vault.delete_source(OWNER_API, &source)?;
    Ok(
        Json(serde_json::json!({"deleted": name, "credentials_destroyed": destroyed}))
            .into_response(),
    )
}

async fn owner_revoke(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path((name, credential)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    let source = vault.store().source(&name)?;
    vault.revoke(OWNER_API, &source, &credential)?;
    let meta = vault
        .list(Some(&source))?
        .into_iter()
        .find(|m| m.name == credential)
        .ok_or_else(|| ApiError::not_found(format!("no credential '{credential}'")))?;
    Ok(Json(meta).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    #[serde(default)]
    every_secs: Option<u64>,
    #[serde(default)]
    cron: Option<String>,
}

/// `{"every_secs": N}`, `{"cron": "EXPR"}`, or `{}` to remove it.
async fn owner_schedule(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Body(body): Body<ScheduleBody>,
) -> Result<Response, ApiError> {
    use runs::scheduler::{self, Schedule};
    let schedule = match (body.every_secs, body.cron) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give every_secs or cron, not both"));
        }
        (Some(secs), None) => Some(Schedule::Every(Duration::from_secs(secs))),
        (None, Some(expr)) => Some(Schedule::Cron(expr)),
        (None, None) => None,
    };
    let row =
        scheduler::set_schedule(api.vault().store(), &name, schedule).map_err(|e| match e {
            StoreError::Conflict(m) => ApiError::bad_request(m),
            other => other.into(),
        })?;
    Ok(Json(row).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InteractionsQuery {
    #[serde(default)]
    all: bool,
}

async fn owner_interactions(
    _: Owner,
    State(api): State<Arc<Api>>,
    Params(query): Params<InteractionsQuery>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    runs::recover(vault.store())?;
    Ok(Json(crate::interactions::list(vault.store(), query.all)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    value: String,
    /// Also keep the answer as this credential of the interaction's source.
    #[serde(default)]
    keep_as: Option<String>,
}

/// Answers an interaction; the answer is sealed for its source only and
/// never returned.
async fn owner_answer(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Body(answer): Body<Answer>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    runs::recover(vault.store())?;
    let asked = crate::interactions::find(vault.store(), &id)?;
    let source = vault.store().source(&asked.source)?;
    let value = Secret::new(answer.value.into_bytes());
    if let Some(name) = &answer.keep_as {
        // Checked before the answer is given, so a bad name changes nothing.
        let declared = catalog::source_setup(vault.store(), &asked.source)?
            .connector
            .manifest
            .credentials
            .iter()
            .any(|c| &c.name == name);
        if !declared {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_now",
                format!(
                    "the connector of '{}' declares no credential '{name}'",
                    asked.source
                ),
            ));
        }
    }
    vault.answer_interaction(OWNER_API, &source, &id, &value)?;
    if let Some(name) = &answer.keep_as {
        let class = catalog::source_setup(vault.store(), &asked.source)?
            .connector
            .manifest
            .credentials
            .iter()
            .find(|c| &c.name == name)
            .map(|c| crate::vault::CredentialClass::from(c.class))
            .ok_or_else(|| ApiError::not_found(format!("no credential '{name}'")))?;
        vault.set(
            OWNER_API,
            &source,
            crate::vault::NewCredential {
                name,
                class,
                provenance: crate::vault::Provenance::Interaction,
                value,
                expires_at: None,
            },
        )?;
    }
    Ok(Json(crate::interactions::find(vault.store(), &id)?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<u32>,
}

#[derive(Serialize)]
struct AuditRow {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    source: Option<String>,
    credential: Option<String>,
    run_id: Option<String>,
    outcome: String,
}

/// The newest audit rows, newest first.
async fn owner_audit(
    _: Owner,
    State(api): State<Arc<Api>>,
    Params(query): Params<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let vault = api.vault();
    let mut stmt = vault
        .store()
        .conn()
        .prepare_cached(
            "SELECT seq, at, actor, action, source, credential, run_id, outcome FROM audit
             ORDER BY seq DESC LIMIT ?1",
        )
        .map_err(|e| ApiError::internal(&e))?;
    let rows: Vec<AuditRow> = stmt
        .query_map([limit], |r| {
            Ok(AuditRow {
                seq: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                source: r.get(4)?,
                credential: r.get(5)?,
                run_id: r.get(6)?,
                outcome: r.get(7)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(rows).into_response())
}

async fn owner_audit_verify(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let check = api.vault().verify_audit()?;
    Ok(Json(match check {
        crate::vault::audit::ChainCheck::Intact { rows } => {
            serde_json::json!({"intact": true, "rows": rows})
        }
        crate::vault::audit::ChainCheck::BrokenAt { seq } => {
            serde_json::json!({"intact": false, "broken_at": seq})
        }
    })
    .into_response())
}

#[derive(Serialize)]
struct Granted {
    source: String,
    streams: Vec<String>,
}

async fn client_sources(Client(grant): Client) -> Result<Response, ApiError> {
    Ok(Json(vec![Granted {
        source: grant.source,
        streams: grant.streams,
    }])
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordsQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    /// Only records updated at or after this time (ms since the Unix
    /// epoch).
    updated_since: Option<i64>,
}

#[derive(Serialize)]
struct Record {
    key: serde_json::Value,
    updated_at: i64,
    data: serde_json::Value,
}

#[derive(Serialize)]
struct Page {
    records: Vec<Record>,
    next_cursor: Option<String>,
}

fn encode_cursor(updated_at: i64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{updated_at}:{key}"))
}

fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, key) = text.split_once(':')?;
    Some((at.parse().ok()?, key.to_owned()))
}

async fn client_records(
    Client(grant): Client,
    State(api): State<Arc<Api>>,
    Path((name, stream)): Path<(String, String)>,
    Params(query): Params<RecordsQuery>,
) -> Result<Response, ApiError> {
    // Another source, or a stream the token does not grant, is simply not
    // there for this client.
    if name != grant.source || !grant.streams.contains(&stream) {
        return Err(ApiError::not_found(format!(
            "no stream '{stream}' of source '{name}' is granted to this token"
        )));
    }
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {PAGE_MAX}"
        )));
    }
    let after = match &query.cursor {
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
            ApiError::bad_request("cursor is not one this API returned; start without one")
        })?),
        None => None,
    };
    let (after_at, after_key) = after.unwrap_or((i64::MIN, String::new()));
    let vault = api.vault();
    let mut stmt = vault
        .store()
        .conn()
        .prepare_cached(
            "SELECT key, updated_at, data FROM records
             WHERE source_id = ?1 AND stream = ?2 AND updated_at >= ?3
               AND (updated_at, key) > (?4, ?5)
             ORDER BY updated_at, key LIMIT ?6",
        )
        .map_err(|e| ApiError::internal(&e))?;
    let rows: Vec<(String, i64, String)> = stmt
        .query_map(
            params![
                grant.source_id,
                stream,
                query.updated_since.unwrap_or(i64::MIN),
                after_at,
                after_key,
                i64::from(limit) + 1
            ],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .and_then(|rows| rows.collect())
        .map_err(|e| ApiError::internal(&e))?;
    let more = rows.len() > limit as usize;
    let page: Vec<(String, i64, String)> = rows.into_iter().take(limit as usize).collect();
    let next_cursor = if more {
        page.last().map(|(key, at, _)| encode_cursor(*at, key))
    } else {
        None
    };
    let records = page
        .into_iter()
        .map(|(key, updated_at, data)| Record {
            key: serde_json::from_str(&key).unwrap_or(serde_json::Value::String(key)),
            updated_at,
            data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(Json(Page {
        records,
        next_cursor,
    })
    .into_response())
}
