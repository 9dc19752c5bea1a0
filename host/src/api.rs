//! The HTTP API: an owner control surface under `/v1/owner/` and a client
//! read surface under `/v1/`, on separate routers with separate token
//! types. Tokens only in the `Authorization: Bearer` header (no cookies).
//! Every error is one JSON shape, `{"error": {"code", "message",
//! "next_step"}}`; internal errors are logged, never returned.
//!
//! The API decides nothing about setup: it returns the setup engine's
//! documents ([`crate::setup`]) as they are.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

use base64::Engine;
use peers::{Failures, forwarded_for};
use rusqlite::params;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::catalog::{self, CatalogError};
use crate::oauth::{self, OauthError};
use crate::runs::{self, LaunchError, Launcher, Trigger};
use crate::setup::{self, SetupError};
use crate::store::StoreError;
use crate::tokens::{self, Grant, Principal};
use crate::vault::{Actor, Secret, VaultError};

mod health;
mod kept;
mod peers;
mod server;

pub use server::{Tls, TlsError, serve};

/// Largest request body accepted.
const BODY_LIMIT: usize = 64 * 1024;
/// Largest connector component accepted for upload.
const COMPONENT_LIMIT: usize = 32 * 1024 * 1024;
/// A browser's cookie export, every site's cookies in it.
const EXPORT_LIMIT: usize = 4 * 1024 * 1024;
/// The API's limits, as the operator sets them on `serve`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Failed authentications from one peer address within a minute,
    /// after which it is refused for the rest of that minute.
    pub auth_failures: u32,
    /// How long a request may take, from its head to its response head
    /// (reading its body included). `verify` answers 202 with the view as
    /// it stands after two thirds of it, and its run goes on.
    pub request_timeout: Duration,
    /// Reverse proxies in front of this server: for a request from one,
    /// the address failed authentications count against is the last one
    /// its `X-Forwarded-For` names that is not itself a trusted proxy.
    pub trusted_proxies: Vec<IpAddr>,
    /// This server's public base URL (`serve --public-url`, else the
    /// address it listens on): an OAuth client registered through the API
    /// must send the owner's browser back to its callback there.
    pub public_url: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_failures: 20,
            request_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            public_url: None,
        }
    }
}

/// Records per page, by default and at most.
const PAGE_DEFAULT: u32 = 100;
const PAGE_MAX: u32 = 1000;

/// What the handlers share.
pub struct Api {
    launcher: Arc<Launcher>,
    failures: Mutex<Failures>,
    limits: Limits,
    readers: Arc<Readers>,
    kept: kept::Kept,
}

/// Connections of their own for what only reads (authentication, setup
/// views, record pages, lists): in WAL mode readers run side by side and
/// never wait for the writer, so they need not queue on the vault's lock.
/// Nothing on them decrypts; the vault's keys stay behind its lock.
struct Readers {
    dir: std::path::PathBuf,
    idle: Mutex<Vec<crate::store::Store>>,
}

/// Idle read connections kept for reuse.
const IDLE_READERS: usize = 8;

impl Readers {
    fn get(self: &Arc<Self>) -> Result<Reader, ApiError> {
        let idle = self.idle.lock().expect("readers lock").pop();
        let store = match idle {
            Some(store) => store,
            None => crate::store::Store::open(&self.dir)?,
        };
        Ok(Reader {
            store: Some(store),
            readers: Arc::clone(self),
        })
    }
}

/// A read connection, back to the idle ones when dropped.
struct Reader {
    store: Option<crate::store::Store>,
    readers: Arc<Readers>,
}

impl std::ops::Deref for Reader {
    type Target = crate::store::Store;

    fn deref(&self) -> &Self::Target {
        self.store.as_ref().expect("held until dropped")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // A connection left inside a transaction (a handler that panicked
        // mid-read) would hold back WAL checkpoints: it is closed instead.
        if let Some(store) = self.store.take().filter(|s| s.conn().is_autocommit()) {
            let mut idle = self.readers.idle.lock().expect("readers lock");
            if idle.len() < IDLE_READERS {
                idle.push(store);
            }
        }
    }
}

/// One read transaction for a whole request: the token is authenticated
/// in the snapshot the handler then reads, so a request takes and
/// releases the WAL read lock once, and what it reads is what its token
/// was checked against. Only for handlers that read and return at once:
/// a snapshot held open (an event stream) would hold back checkpoints.
struct Snapshot(Reader);

impl Snapshot {
    fn begin(api: &Api) -> Result<Self, ApiError> {
        let reader = api.reader()?;
        reader.begin_read()?;
        Ok(Self(reader))
    }
}

impl std::ops::Deref for Snapshot {
    type Target = crate::store::Store;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // If the transaction will not end, the reader sees it still open
        // and closes the connection.
        let _ = self.0.end_read();
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api")
    }
}

impl Api {
    /// The API over `launcher`'s vault and runs, with the default limits.
    pub fn new(launcher: Arc<Launcher>) -> Arc<Self> {
        Self::with_limits(launcher, Limits::default())
    }

    /// The API with the operator's limits.
    pub fn with_limits(launcher: Arc<Launcher>, limits: Limits) -> Arc<Self> {
        let dir = launcher
            .vault()
            .lock()
            .expect("vault lock")
            .store()
            .dir()
            .to_owned();
        Arc::new(Self {
            launcher,
            failures: Mutex::default(),
            limits,
            kept: kept::Kept::new(&dir),
            readers: Arc::new(Readers {
                dir,
                idle: Mutex::default(),
            }),
        })
    }

    /// A read connection (see [`Readers`]).
    fn reader(&self) -> Result<Reader, ApiError> {
        self.readers.get()
    }

    fn vault(&self) -> std::sync::MutexGuard<'_, crate::vault::Vault> {
        self.launcher.vault().lock().expect("vault lock")
    }
}

/// The API's description: bearer schemes for the two token types, and
/// what every route says of itself through `#[utoipa::path]`.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "sourcebox",
        description = "The owner control surface (under /v1/owner/, owner token) and the client read surface (under /v1/, client tokens) of a sourcebox server."
    ),
    modifiers(&BearerSchemes),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct BearerSchemes;

impl utoipa::Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (
                "owner",
                "The owner token (sbo_...), printed once when the data directory is created",
            ),
            (
                "client",
                "A client token (sbc_...), created with POST /v1/owner/clients",
            ),
        ] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(what))
                        .build(),
                ),
            );
        }
    }
}

/// Every route, each registered with its description: a route cannot be
/// served without being in the OpenAPI document.
fn routes() -> OpenApiRouter<Arc<Api>> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(openapi_json))
        .routes(routes!(health::liveness))
        .routes(routes!(health::owner_health))
        .routes(routes!(owner_sources, owner_add_source))
        .routes(routes!(owner_source, owner_delete_source))
        .routes(routes!(owner_schedule))
        .routes(routes!(owner_set_setup))
        .routes(routes!(owner_capture))
        .routes(routes!(owner_revoke))
        .routes(routes!(owner_verify))
        .routes(routes!(owner_confirm))
        .routes(routes!(owner_account))
        .routes(body_limit(EXPORT_LIMIT, routes!(owner_import)))
        .routes(routes!(owner_start_run))
        .routes(routes!(owner_runs))
        .routes(routes!(owner_run))
        .routes(routes!(owner_cancel))
        .routes(routes!(owner_run_events))
        .routes(body_limit(
            COMPONENT_LIMIT,
            routes!(owner_connectors, owner_install),
        ))
        .routes(routes!(owner_connector))
        .routes(routes!(owner_connector_limits, owner_set_connector_limits))
        .routes(routes!(owner_oauth_clients))
        .routes(routes!(owner_set_oauth_client, owner_remove_oauth_client))
        .routes(routes!(owner_authorize))
        .routes(routes!(oauth_callback))
        .routes(routes!(owner_approve))
        .routes(routes!(owner_interactions))
        .routes(routes!(owner_answer))
        .routes(routes!(owner_decline))
        .routes(routes!(owner_login_screen))
        .routes(routes!(owner_login_input))
        .routes(routes!(owner_audit))
        .routes(routes!(owner_audit_verify))
        .routes(routes!(owner_clients, owner_create_client))
        .routes(routes!(owner_rotate_token))
        .routes(routes!(owner_revoke_client))
        .routes(routes!(client_sources))
        .routes(routes!(client_records))
}

/// A route whose body may be larger than a JSON body: a component (up to
/// [`COMPONENT_LIMIT`]) or a cookie export (up to [`EXPORT_LIMIT`]).
fn body_limit(
    limit: usize,
    (schemas, paths, method): utoipa_axum::router::UtoipaMethodRouter<Arc<Api>>,
) -> utoipa_axum::router::UtoipaMethodRouter<Arc<Api>> {
    (schemas, paths, method.layer(DefaultBodyLimit::max(limit)))
}

/// The OpenAPI 3.1 document of every route, as served at
/// `/v1/openapi.json`.
pub fn openapi_document() -> String {
    let mut doc = routes().into_openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json()
        .expect("the OpenAPI document serializes")
}

/// The router: every route of [`routes`], the error shape for unknown
/// routes, and the body limit.
pub fn router(api: Arc<Api>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("no such route; the owner surface is under /v1/owner/, the client surface under /v1/sources") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method; /v1/openapi.json lists what it takes")
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&api),
            deadline,
        ))
        .with_state(api)
}

/// Every request has [`Limits::request_timeout`] to produce its response
/// head (reading its body included); an event stream, once started, is
/// not cut.
async fn deadline(
    State(api): State<Arc<Api>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = api.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} and was stopped; try again",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta", responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT.get_or_init(openapi_document).clone(),
    )
        .into_response()
}

/// One Server-Sent Event of a run's event stream, as a client's event
/// parser sees it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct EventFrame {
    /// `state`, `progress`, `log` or `interaction`.
    event: String,
    /// The run event, as JSON: `run`, `source`, `event` and the fields of
    /// that kind of event.
    data: String,
}

/// A source, by name.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct SourceName {
    /// The source's name.
    name: String,
}

/// A credential, by its declared name.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct CredentialName {
    /// The credential's name, as the connector declares it.
    credential: String,
}

/// A stream, by name.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct StreamName {
    /// The stream's name, as the connector declares it.
    stream: String,
}

/// A run, by id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, names("id"))]
#[allow(dead_code)]
struct RunId(
    /// The run's id.
    String,
);

/// An interaction, by id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, names("id"))]
#[allow(dead_code)]
struct InteractionId(
    /// The interaction's id.
    String,
);

/// A client token, by id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, names("id"))]
#[allow(dead_code)]
struct ClientId(
    /// The client token's id (not the token).
    String,
);

/// A connector, by id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, names("id"))]
#[allow(dead_code)]
struct ConnectorId(
    /// The connector's id.
    String,
);

/// The one error shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    next_step: Option<String>,
}

/// Every error: `{"error": {"code", "message", "next_step"}}`.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorBody {
    error: ErrorInner,
}

/// What went wrong, and what to do.
#[derive(Serialize, utoipa::ToSchema)]
struct ErrorInner {
    /// A stable machine-readable code, e.g. `not_found`, `bad_request`.
    code: &'static str,
    /// What went wrong, for a person.
    message: String,
    /// What to do next, where there is one thing to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_step: Option<String>,
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
                message: self.message,
                next_step: self.next_step,
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

impl From<OauthError> for ApiError {
    fn from(e: OauthError) -> Self {
        match e {
            OauthError::Store(e) => e.into(),
            OauthError::Vault(e) => e.into(),
            OauthError::Catalog(e) => e.into(),
            OauthError::Invalid(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_oauth",
                e.to_string(),
            ),
            OauthError::NoClient(ref connector) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_oauth_client",
                e.to_string(),
            )
            .next(format!("PUT /v1/owner/oauth-clients/{connector}")),
            // Which source it was for is not known here (an unknown state
            // names none); the message says to start again, and the
            // routes that know the source name the step.
            OauthError::UnknownState => {
                Self::new(StatusCode::BAD_REQUEST, "unknown_state", e.to_string())
            }
            OauthError::Refused(_) => {
                Self::new(StatusCode::BAD_REQUEST, "provider_refused", e.to_string())
            }
            OauthError::Transient(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                e.to_string(),
            ),
        }
    }
}

impl From<LaunchError> for ApiError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Catalog(e) => e.into(),
            LaunchError::Store(e) => e.into(),
            LaunchError::Vault(e) => e.into(),
            LaunchError::Paused { ref connector, .. } => {
                let next = format!("POST /v1/owner/connectors/{connector}/approve");
                Self::new(StatusCode::CONFLICT, "paused", e.to_string()).next(next)
            }
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

/// Path segments whose rejections take the error shape: one that is not
/// UTF-8 text once percent-decoded, say.
struct Path<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|e: PathRejection| {
                ApiError::bad_request(format!(
                    "{}; every path segment must be UTF-8 text, percent-encoded",
                    e.body_text()
                ))
            })
    }
}

/// The peer's address, when the connection has one: behind a trusted
/// proxy, the client address it forwards.
async fn peer(parts: &mut Parts, api: &Arc<Api>) -> Option<IpAddr> {
    let addr = ConnectInfo::<SocketAddr>::from_request_parts(parts, api)
        .await
        .map(|ConnectInfo(addr)| addr.ip())
        .ok()?;
    Some(forwarded_for(
        addr,
        &parts.headers,
        &api.limits.trusted_proxies,
    ))
}

impl Api {
    /// Refused with 429 while `peer` is past the failed-authentication
    /// limit.
    fn check_failures(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let refused = peer.is_some_and(|ip| {
            self.failures
                .lock()
                .expect("failures lock")
                .refused(ip, self.limits.auth_failures)
        });
        if refused {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                "too many failed authentications from this address; wait a minute",
            ));
        }
        Ok(())
    }

    /// Counts a failed authentication of `peer`.
    fn count_failure(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer {
            self.failures.lock().expect("failures lock").count(ip);
        }
    }
}

/// The request's bearer token, if it has one, and its peer address, once
/// the peer is under the failed-authentication limit (429 past it).
async fn bearer(
    parts: &mut Parts,
    api: &Arc<Api>,
) -> Result<(Option<IpAddr>, Option<Secret>), ApiError> {
    let peer = peer(parts, api).await;
    api.check_failures(peer)?;
    let token = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(|t| Secret::from_slice(t.as_bytes()));
    Ok((peer, token))
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme's name
/// is case-insensitive (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The principal behind the token whose digest is `digest`, read from
/// `store`, and kept (see [`kept`]) when a lookup gave `generation`; a
/// failure is counted against `peer`.
fn principal_in(
    api: &Api,
    store: &crate::store::Store,
    peer: Option<IpAddr>,
    digest: Option<&[u8; 32]>,
    generation: Option<u64>,
) -> Result<Principal, ApiError> {
    let found = match digest {
        Some(digest) => tokens::authenticate_digest(store, digest)?,
        None => None,
    };
    let (principal, expires_at) = found.ok_or_else(|| {
        api.count_failure(peer);
        ApiError::unauthorized()
    })?;
    if let (Some(generation), Some(digest)) = (generation, digest) {
        api.kept
            .keep(*digest, principal.clone(), expires_at, generation);
    }
    Ok(principal)
}

/// The principal behind the request's bearer token, as kept since the
/// database last changed (see [`kept`]) or read from it; failures are
/// counted per peer address and refused with 429 past a limit.
async fn principal(parts: &mut Parts, api: &Arc<Api>) -> Result<Principal, ApiError> {
    let (peer, token) = bearer(parts, api).await?;
    let digest = token.map(|t| tokens::digest(t.expose_secret()));
    let generation = match digest.as_ref().map(|d| api.kept.get(d)) {
        Some(kept::Lookup::Kept(principal)) => return Ok(principal),
        Some(kept::Lookup::Read(generation)) => generation,
        None => None,
    };
    principal_in(api, &*api.reader()?, peer, digest.as_ref(), generation)
}

/// Refuses anyone but the owner.
fn owner_only(principal: Principal) -> Result<(), ApiError> {
    match principal {
        Principal::Owner { .. } => Ok(()),
        Principal::Client(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_token_type",
            "a client token cannot use the owner surface; use the owner token",
        )),
    }
}

/// Refuses anyone but a client; its grant.
fn client_only(principal: Principal) -> Result<Grant, ApiError> {
    match principal {
        Principal::Client(grant) => Ok(grant),
        Principal::Owner { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_token_type",
            "the owner token cannot use the client surface; create a client token with POST /v1/owner/clients",
        )),
    }
}

/// The owner, by an owner token.
struct Owner;

impl FromRequestParts<Arc<Api>> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        owner_only(principal(parts, api).await?).map(|()| Self)
    }
}

/// A request for a setup view, by its bearer token: checked with the view.
struct OwnerView {
    api: Arc<Api>,
    peer: Option<IpAddr>,
    token: Option<Secret>,
}

impl FromRequestParts<Arc<Api>> for OwnerView {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let (peer, token) = bearer(parts, api).await?;
        Ok(Self {
            api: Arc::clone(api),
            peer,
            token,
        })
    }
}

impl OwnerView {
    /// Source `name`'s setup view, for the owner only: as kept since the
    /// database last changed (see [`kept`]), or read in one snapshot with
    /// the token's authentication.
    fn respond(self, name: &str) -> Result<Response, ApiError> {
        let Self { api, peer, token } = self;
        let digest = token.map(|t| tokens::digest(t.expose_secret()));
        let generation = match digest.as_ref().map(|d| api.kept.view(d, name)) {
            Some(kept::ViewLookup::Kept(principal, view)) => {
                owner_only(principal)?;
                return Ok(json_bytes(view));
            }
            Some(kept::ViewLookup::Read(generation)) => generation,
            None => None,
        };
        let snapshot = Snapshot::begin(&api)?;
        owner_only(principal_in(
            &api,
            &snapshot,
            peer,
            digest.as_ref(),
            generation,
        )?)?;
        let view = view_body(&setup::source_view(&snapshot, name)?)?;
        if let Some(generation) = generation {
            api.kept.keep_view(name, view.clone(), generation);
        }
        Ok(json_bytes(view))
    }
}

/// A client, by a client token.
struct Client(Grant);

impl FromRequestParts<Arc<Api>> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        client_only(principal(parts, api).await?).map(Self)
    }
}

/// A client, authenticated in the [`Snapshot`] the handler reads.
struct ClientReads(Grant, Snapshot);

impl FromRequestParts<Arc<Api>> for ClientReads {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let (peer, token) = bearer(parts, api).await?;
        let snapshot = Snapshot::begin(api)?;
        let digest = token.map(|t| tokens::digest(t.expose_secret()));
        let grant = client_only(principal_in(api, &snapshot, peer, digest.as_ref(), None)?)?;
        Ok(Self(grant, snapshot))
    }
}

const OWNER_API: Actor<'static> = Actor {
    name: "owner:api",
    run_id: None,
};

#[utoipa::path(get, path = "/v1/owner/sources", tag = "owner", security(("owner" = [])), responses((status = 200, description = "Every source, with its schedule and needs-reauth state", body = Vec<runs::scheduler::SourceStatus>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_sources(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let sources = runs::scheduler::statuses(&*api.reader()?)?;
    Ok(Json(sources).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
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
    /// Browser login: erase the session when each run ends, so every run
    /// asks the owner to log in (by default it is kept for later runs).
    #[serde(default)]
    ephemeral_session: bool,
}

#[utoipa::path(post, path = "/v1/owner/sources", tag = "owner", security(("owner" = [])), request_body = NewSource, responses((status = 201, description = "The new source's setup view", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
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
            ephemeral_session: new.ephemeral_session,
        },
    )?;
    let view = setup::source_view(vault.store(), &new.name)?;
    Ok((StatusCode::CREATED, view_response(&view)).into_response())
}

/// Replaces the source's setup values (non-secret fields such as a base
/// URL), checked against its connector's setup descriptor; a field left out
/// takes its default. A change means the source is verified again.
#[utoipa::path(put, path = "/v1/owner/sources/{name}/setup", tag = "owner", security(("owner" = [])), params(SourceName), request_body(content = BTreeMap<String, String>, description = "Every setup value, by field name"), responses((status = 200, description = "The source's setup view", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_set_setup(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Body(values): Body<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    let values: Vec<(String, String)> = values.into_iter().collect();
    catalog::set_setup(
        vault.store(),
        &name,
        &values,
        &api.launcher.config().egress_allow,
    )?;
    Ok(view_response(&setup::source_view(vault.store(), &name)?))
}

/// Room reserved for a setup view's JSON before serializing it (the view
/// of a connector with a few fields is about a kilobyte).
const VIEW_BYTES: usize = 2048;

/// A setup view as a JSON response, serialized into a buffer sized for it
/// up front: axum's `Json` starts at 128 bytes and grows, copying, four
/// times on the way to a view's kilobyte.
fn view_response(view: &setup::SourceView) -> Response {
    match view_body(view) {
        Ok(body) => json_bytes(body),
        Err(e) => e.into_response(),
    }
}

/// A setup view's response body (see [`view_response`]).
fn view_body(view: &setup::SourceView) -> Result<bytes::Bytes, ApiError> {
    let mut body = Vec::with_capacity(VIEW_BYTES);
    serde_json::to_writer(&mut body, view).map_err(|e| ApiError::internal(&e))?;
    Ok(body.into())
}

/// A 200 with JSON already serialized.
fn json_bytes(body: bytes::Bytes) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[utoipa::path(get, path = "/v1/owner/sources/{name}", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The source's setup view", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_source(owner: OwnerView, Path(name): Path<String>) -> Result<Response, ApiError> {
    owner.respond(&name)
}

/// The owner confirms that the source may connect the account another
/// source of its connector is connected to, or the account its
/// credentials changed to (the same as choosing `accept`).
#[utoipa::path(post, path = "/v1/owner/sources/{name}/confirm", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The source's setup view", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_confirm(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    Ok(view_response(&setup::confirm_identity(
        &vault, OWNER_API, &name,
    )?))
}

/// The owner's choice for a source whose credentials now belong to another
/// account than the one it was connected to: the choices its view offers.
#[utoipa::path(post, path = "/v1/owner/sources/{name}/account", tag = "owner", security(("owner" = [])), params(SourceName), request_body = setup::AccountChoice, responses((status = 200, description = "The source's setup view after the choice", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_account(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Body(choice): Body<setup::AccountChoice>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    Ok(view_response(&setup::choose_account(
        &vault, OWNER_API, &name, choice,
    )?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Capture {
    value: String,
}

/// Write-only: the response carries the credential's metadata, never its
/// value.
#[utoipa::path(put, path = "/v1/owner/sources/{name}/credentials/{credential}", tag = "owner", security(("owner" = [])), params(SourceName, CredentialName), request_body = Capture, responses((status = 200, description = "The stored credential's metadata; never its value", body = crate::vault::CredentialMeta), (status = "4XX", description = "The error shape", body = ErrorBody)))]
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

/// A cookie export as the request body: all of it, as text.
struct Export(Secret);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Export {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a cookie export is limited to {EXPORT_LIMIT} bytes"),
            )
        })?;
        Ok(Self(Secret::from_slice(&bytes)))
    }
}

/// Imports the source's session from a cookie export of a browser that is
/// logged in to the site (`cookies.txt` in the Netscape format, or a JSON
/// array of cookies), sent as the body. Only the unexpired cookies that
/// requests to the connector's hosts carry are kept; the response counts
/// them and never shows one.
#[utoipa::path(post, path = "/v1/owner/sources/{name}/import", tag = "owner", security(("owner" = [])), params(SourceName), request_body(content = String, content_type = "text/plain", description = "The cookie export"), responses((status = 200, description = "What was kept; then verify", body = setup::ImportSummary), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_import(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
    Export(export): Export,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    let summary = setup::import_session(
        &vault,
        OWNER_API,
        &name,
        &export,
        &api.launcher.config().egress_allow,
    )?;
    Ok(Json(summary).into_response())
}

#[utoipa::path(post, path = "/v1/owner/sources/{name}/verify", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The setup view after the verification run", body = setup::SourceView), (status = 202, description = "The verification run goes on (e.g. waiting for the owner to answer an interaction): the setup view as it stands", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_verify(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let launcher = Arc::clone(&api.launcher);
    let source = name.clone();
    // The run is a task of its own: a client that goes away, or the
    // request deadline, never cuts a verification short.
    let run =
        tokio::spawn(async move { launcher.launch(&source, Trigger::SetupVerification).await });
    match tokio::time::timeout(api.limits.request_timeout * 2 / 3, run).await {
        Ok(Ok(launched)) => {
            launched?;
            Ok(view_response(&setup::source_view(
                api.vault().store(),
                &name,
            )?))
        }
        Ok(Err(e)) => Err(ApiError::internal(&e)),
        // Still verifying, or waiting for the owner: the view says which.
        Err(_) => Ok((
            StatusCode::ACCEPTED,
            view_response(&setup::source_view(api.vault().store(), &name)?),
        )
            .into_response()),
    }
}

/// Queues a manual run; the scheduler starts it at its next tick.
#[utoipa::path(post, path = "/v1/owner/sources/{name}/runs", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 202, description = "The queued run: a new one, or the one already queued for the source", body = runs::RunRecord), (status = 409, description = "Paused until an upgrade is approved (`paused`)", body = ErrorBody), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_start_run(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    runs::refuse_paused(vault.store(), &name)?;
    let record = runs::request(vault.store(), &name)?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    /// Only this source's runs.
    source: Option<String>,
    /// Runs per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Where the page starts: the `next_cursor` of the page before.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/owner/runs", tag = "owner", security(("owner" = [])), params(RunsQuery), responses((status = 200, description = "A page of runs, newest first", body = runs::RunsPage), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_runs(
    _: Owner,
    State(api): State<Arc<Api>>,
    Params(query): Params<RunsQuery>,
) -> Result<Response, ApiError> {
    let page = runs::page(
        &*api.reader()?,
        query.source.as_deref(),
        query.limit.unwrap_or(50),
        query.cursor.as_deref(),
    )
    .map_err(|e| match e {
        StoreError::Conflict(m) => ApiError::bad_request(m),
        other => other.into(),
    })?;
    Ok(Json(page).into_response())
}

#[utoipa::path(get, path = "/v1/owner/runs/{id}", tag = "owner", security(("owner" = [])), params(RunId), responses((status = 200, description = "The run", body = runs::RunRecord), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_run(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(runs::find(&*api.reader()?, &id)?).into_response())
}

#[utoipa::path(post, path = "/v1/owner/runs/{id}/cancel", tag = "owner", security(("owner" = [])), params(RunId), responses((status = 200, description = "The run, cancelled or asked to stop", body = runs::RunRecord), (status = "4XX", description = "The error shape", body = ErrorBody)))]
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
#[utoipa::path(get, path = "/v1/owner/runs/{id}/events", tag = "owner", security(("owner" = [])), params(RunId), responses((status = 200, description = "Server-Sent Events: `state`, `progress`, `log` and `interaction`, each a JSON run event; the stream ends after the run ends", content_type = "text/event-stream", body = EventFrame), (status = "4XX", description = "The error shape", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/v1/owner/connectors/{id}", tag = "owner", security(("owner" = [])), params(ConnectorId), responses((status = 200, description = "The connector's setup view", body = setup::ConnectorView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_connector(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(setup::connector_view(&*api.reader()?, &id)?).into_response())
}

#[utoipa::path(get, path = "/v1/owner/connectors", tag = "owner", security(("owner" = [])), responses((status = 200, description = "Every installed connector at its latest version, with its setup view", body = Vec<setup::ConnectorView>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_connectors(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    Ok(Json(setup::connector_views(&*api.reader()?)?).into_response())
}

/// A connector's run limits: those the operator set, and the ones runs get.
#[derive(Serialize, utoipa::ToSchema)]
struct ConnectorLimits {
    /// Connector id.
    connector: String,
    /// What the operator set; a limit left out keeps the host's default.
    set: catalog::LimitOverrides,
    /// Every limit a run of this connector gets.
    effective: catalog::LimitOverrides,
}

/// The limits view of connector `id`, known to be installed.
fn connector_limits_view(
    api: &Api,
    store: &crate::store::Store,
    id: &str,
) -> Result<ConnectorLimits, ApiError> {
    let set = catalog::connector_limits(store, id)?;
    let effective = catalog::LimitOverrides::all(&set.apply(&api.launcher.config().limits));
    Ok(ConnectorLimits {
        connector: id.to_owned(),
        set,
        effective,
    })
}

#[utoipa::path(get, path = "/v1/owner/connectors/{id}/limits", tag = "owner", security(("owner" = [])), params(ConnectorId), responses((status = 200, description = "The connector's run limits", body = ConnectorLimits), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_connector_limits(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = api.reader()?;
    catalog::latest(&store, &id)?;
    let view = connector_limits_view(&api, &store, &id)?;
    Ok(Json(view).into_response())
}

/// Replaces the connector's run limits: a limit left out takes the host's
/// default (`{}` resets them all). Runs that start afterwards get them.
#[utoipa::path(put, path = "/v1/owner/connectors/{id}/limits", tag = "owner", security(("owner" = [])), params(ConnectorId), request_body = catalog::LimitOverrides, responses((status = 200, description = "The connector's run limits", body = ConnectorLimits), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_set_connector_limits(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Body(limits): Body<catalog::LimitOverrides>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    catalog::set_connector_limits(vault.store(), &id, &limits)?;
    let view = connector_limits_view(&api, vault.store(), &id)?;
    Ok(Json(view).into_response())
}

#[utoipa::path(get, path = "/v1/owner/oauth-clients", tag = "owner", security(("owner" = [])), responses((status = 200, description = "The registered OAuth clients; never a client secret", body = Vec<oauth::ClientView>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_oauth_clients(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    Ok(Json(oauth::clients(&*api.reader()?)?).into_response())
}

/// An OAuth client made with the provider, as the operator registers it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OauthClientBody {
    /// The provider's authorization endpoint.
    authorize_url: String,
    /// The provider's token endpoint: https, or http to an address allowed
    /// with --egress-allow.
    token_url: String,
    /// The client id the provider issued.
    client_id: String,
    /// Scopes to ask for.
    #[serde(default)]
    scopes: Vec<String>,
    /// The redirect URI registered with the provider: this server's
    /// /v1/oauth/callback as the owner's browser reaches it.
    redirect_uri: String,
    /// A confidential client's secret (write-only); leave it out for a
    /// public client.
    #[serde(default)]
    client_secret: Option<String>,
}

/// Registers or replaces the connector's OAuth client. Write-only for the
/// secret: the response says only whether one is held.
#[utoipa::path(put, path = "/v1/owner/oauth-clients/{id}", tag = "owner", security(("owner" = [])), params(ConnectorId), request_body = OauthClientBody, responses((status = 200, description = "The registered client; never its secret", body = oauth::ClientView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_set_oauth_client(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(connector): Path<String>,
    Body(body): Body<OauthClientBody>,
) -> Result<Response, ApiError> {
    if let Some(expected) = api.limits.public_url.as_deref().map(oauth::callback_url)
        && body.redirect_uri != expected
    {
        return Err(ApiError::bad_request(format!(
            "redirect_uri must be this server's callback, {expected} (its public base URL is set with `serve --public-url`); nothing was stored"
        )));
    }
    let registration = oauth::Registration {
        connector,
        authorize_url: body.authorize_url,
        token_url: body.token_url,
        client_id: body.client_id,
        scopes: body.scopes,
        redirect_uri: body.redirect_uri,
        client_secret: body.client_secret.map(|s| Secret::new(s.into_bytes())),
    };
    let view = oauth::register(
        &api.vault(),
        OWNER_API,
        registration,
        &api.launcher.config().egress_allow,
    )?;
    Ok(Json(view).into_response())
}

#[utoipa::path(delete, path = "/v1/owner/oauth-clients/{id}", tag = "owner", security(("owner" = [])), params(ConnectorId), responses((status = 204, description = "Removed; sources keep their grants but cannot refresh them"), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_remove_oauth_client(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(connector): Path<String>,
) -> Result<Response, ApiError> {
    oauth::unregister(&api.vault(), OWNER_API, &connector)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Starts an OAuth authorization for an OAuth source: open the URL it
/// returns; the provider sends the browser back to /v1/oauth/callback.
#[utoipa::path(post, path = "/v1/owner/sources/{name}/authorize", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The URL to open, and until when it works", body = oauth::Started), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_authorize(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let started = oauth::begin(&api.vault(), OWNER_API, &name).map_err(|e| {
        let again = matches!(
            e,
            OauthError::UnknownState | OauthError::Refused(_) | OauthError::Transient(_)
        );
        let error = ApiError::from(e);
        if again {
            error.next(format!("POST /v1/owner/sources/{name}/authorize"))
        } else {
            error
        }
    })?;
    Ok(Json(started).into_response())
}

/// Where the provider sends the owner's browser back. No token: the
/// authorization's state (single use, expiring) is what authenticates it.
/// Answers with the source's setup view.
#[utoipa::path(get, path = "/v1/oauth/callback", tag = "oauth", params(oauth::Callback), responses((status = 200, description = "Authorized: the source's setup view", body = setup::SourceView), (status = 502, description = "The provider's token endpoint could not be reached; start again", body = ErrorBody), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn oauth_callback(
    State(api): State<Arc<Api>>,
    Params(callback): Params<oauth::Callback>,
) -> Result<Response, ApiError> {
    let actor = Actor {
        name: "oauth:callback",
        run_id: None,
    };
    // 256 random bits are not guessed: a wrong state is refused without
    // counting against the peer's authentication failures.
    let name = oauth::complete(
        api.launcher.vault(),
        actor,
        callback,
        &api.launcher.config().egress_allow,
    )
    .await?;
    Ok(view_response(&setup::source_view(
        api.vault().store(),
        &name,
    )?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct InstallQuery {
    /// The SHA-256 (hex) of the component the owner reviewed; without it,
    /// nothing is installed and the review is returned.
    approve: Option<String>,
    /// What a source does while the upgrade waits for the owner's approval
    /// of what it asks for beyond its version: `keep_running` its version
    /// (the default) or `pause`.
    meanwhile: Option<catalog::Meanwhile>,
}

/// What an uploaded component asks for, and whether it was installed.
#[derive(Serialize, utoipa::ToSchema)]
struct Upload {
    /// True when it was installed (the request approved this digest).
    installed: bool,
    /// SHA-256 of the component, hex: approve it with `?approve=DIGEST`.
    digest: String,
    /// The contract version it was built for.
    api_version: String,
    /// What it asks for: credentials, setup fields, hosts, modalities.
    connector: setup::ConnectorView,
    /// Once installed: the sources moved to it, or waiting for the
    /// owner's approval of what it asks for beyond their version.
    upgrades: Vec<catalog::Upgrade>,
    /// What to do next.
    next_step: String,
}

/// A component upload: raw bytes, `content-type: application/wasm` (or
/// `application/octet-stream`, as `curl --data-binary` sends them).
struct Component(bytes::Bytes);

/// A component's bytes, as the OpenAPI document describes them.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct ComponentBytes(Vec<u8>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Component {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let wasm = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| {
                v.as_bytes() == b"application/wasm" || v.as_bytes() == b"application/octet-stream"
            });
        if !wasm {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the component's bytes with content-type: application/wasm",
            ));
        }
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("components are limited to {COMPONENT_LIMIT} bytes"),
            )
        })?;
        Ok(Self(bytes))
    }
}

/// Uploads a component. Without `approve` nothing is stored: the response
/// says what it asks for and its digest. With `approve=DIGEST` (the digest
/// of these same bytes) it is installed, as `connector install --yes` does,
/// and sources of an older version move to it or wait for approval.
#[utoipa::path(post, path = "/v1/owner/connectors", tag = "owner", security(("owner" = [])), params(InstallQuery), request_body(content((ComponentBytes = "application/wasm"), (ComponentBytes = "application/octet-stream")), description = "A connector component built for wasm32-wasip2"), responses((status = 200, description = "Not installed: what it asks for, to review", body = Upload), (status = 201, description = "Installed", body = Upload), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_install(
    _: Owner,
    State(api): State<Arc<Api>>,
    Params(query): Params<InstallQuery>,
    Component(bytes): Component,
) -> Result<Response, ApiError> {
    // Compiling takes a while: off the request workers, so other requests
    // go on and the request deadline holds.
    let launcher = Arc::clone(&api.launcher);
    let handle = tokio::runtime::Handle::current();
    let component = bytes.clone();
    let loaded =
        tokio::task::spawn_blocking(move || handle.block_on(launcher.runtime().load(&component)))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map_err(|e| match e {
                crate::runtime::RuntimeError::Engine(_) => ApiError::internal(&e),
                other => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_component",
                    other.to_string(),
                ),
            })?;
    let digest = crate::runtime::digest(&bytes);
    let manifest = loaded.manifest();
    let Some(approved) = query.approve else {
        return Ok(Json(Upload {
            installed: false,
            next_step: format!(
                "review what it asks for, then POST the same bytes to /v1/owner/connectors?approve={digest}"
            ),
            digest,
            api_version: loaded.api_version().to_owned(),
            connector: setup::connector_preview(manifest),
            upgrades: Vec::new(),
        })
        .into_response());
    };
    if !approved.eq_ignore_ascii_case(&digest) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "digest_mismatch",
            format!("these bytes have digest {digest}, not the approved {approved}; nothing was installed"),
        )
        .next("POST without approve to review this component"));
    }
    let vault = api.vault();
    let installed = catalog::install(vault.store(), &bytes, loaded.api_version(), manifest)?;
    let upgrades = catalog::offer_upgrade(
        vault.store(),
        &installed,
        query.meanwhile.unwrap_or_default(),
    )?;
    let waiting = upgrades.iter().any(|u| !u.changes.is_empty());
    Ok((
        StatusCode::CREATED,
        Json(Upload {
            installed: true,
            next_step: if waiting {
                format!("sources wait for approval of what {} {} asks for beyond their version: POST /v1/owner/connectors/{}/approve", installed.id, installed.version, installed.id)
            } else {
                "add a source with POST /v1/owner/sources".to_owned()
            },
            digest,
            api_version: installed.api_version.clone(),
            connector: setup::connector_view(vault.store(), &installed.id)?,
            upgrades,
        }),
    )
        .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// Only this source; every waiting source when absent.
    #[serde(default)]
    source: Option<String>,
}

/// The owner approves what a newer version asks for: the source (or every
/// source waiting on that connector) moves to it.
#[utoipa::path(post, path = "/v1/owner/connectors/{id}/approve", tag = "owner", security(("owner" = [])), params(ConnectorId), request_body = ApproveBody, responses((status = 200, description = "The sources moved, and what was approved for each", body = Vec<catalog::Upgrade>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_approve(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Body(body): Body<ApproveBody>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    catalog::latest(vault.store(), &id)?;
    let moved = catalog::approve_upgrade(vault.store(), &id, body.source.as_deref())?;
    Ok(Json(moved).into_response())
}

/// A new owner token.
#[derive(Serialize, utoipa::ToSchema)]
struct OwnerToken {
    /// Shown once; only its hash is kept. The token this request used no
    /// longer works.
    token: String,
}

/// Replaces the owner token: the one this request used stops working at
/// once.
#[utoipa::path(post, path = "/v1/owner/token/rotate", tag = "owner", security(("owner" = [])), responses((status = 201, description = "The new owner token, shown once", body = OwnerToken), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_rotate_token(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let token = tokens::rotate_owner(api.vault().store())?;
    let token = String::from_utf8_lossy(token.expose_secret()).into_owned();
    Ok((StatusCode::CREATED, Json(OwnerToken { token })).into_response())
}

#[utoipa::path(get, path = "/v1/owner/clients", tag = "owner", security(("owner" = [])), responses((status = 200, description = "Client tokens (never the tokens themselves)", body = Vec<Grant>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_clients(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    Ok(Json(tokens::clients(&*api.reader()?)?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewClient {
    source: String,
    streams: Vec<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CreatedClient {
    /// Shown once; only its hash is kept.
    token: String,
    #[serde(flatten)]
    grant: Grant,
}

#[utoipa::path(post, path = "/v1/owner/clients", tag = "owner", security(("owner" = [])), request_body = NewClient, responses((status = 201, description = "The new client token, shown once", body = CreatedClient), (status = "4XX", description = "The error shape", body = ErrorBody)))]
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
    )
    .map_err(|e| match e {
        StoreError::Conflict(m) => ApiError::bad_request(m),
        other => other.into(),
    })?;
    let token = String::from_utf8_lossy(token.expose_secret()).into_owned();
    Ok((StatusCode::CREATED, Json(CreatedClient { token, grant })).into_response())
}

#[utoipa::path(delete, path = "/v1/owner/clients/{id}", tag = "owner", security(("owner" = [])), params(ClientId), responses((status = 200, description = "The revoked client token", body = Grant), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_revoke_client(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(tokens::revoke_client(api.vault().store(), &id)?).into_response())
}

#[utoipa::path(delete, path = "/v1/owner/sources/{name}", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The source is gone and its credentials destroyed", body = Deleted), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_delete_source(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    let source = vault.store().source(&name)?;
    let destroyed = vault.delete_source(OWNER_API, &source)?;
    Ok(Json(Deleted {
        deleted: name,
        credentials_destroyed: destroyed,
    })
    .into_response())
}

/// A deleted source.
#[derive(Serialize, utoipa::ToSchema)]
struct Deleted {
    /// The source's name.
    deleted: String,
    /// How many credentials were destroyed with it.
    credentials_destroyed: u64,
}

#[utoipa::path(post, path = "/v1/owner/sources/{name}/credentials/{credential}/revoke", tag = "owner", security(("owner" = [])), params(SourceName, CredentialName), responses((status = 200, description = "The revoked credential's metadata", body = crate::vault::CredentialMeta), (status = "4XX", description = "The error shape", body = ErrorBody)))]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    #[serde(default)]
    every_secs: Option<u64>,
    #[serde(default)]
    cron: Option<String>,
}

/// `{"every_secs": N}`, `{"cron": "EXPR"}`, or `{}` to remove it.
#[utoipa::path(put, path = "/v1/owner/sources/{name}/schedule", tag = "owner", security(("owner" = [])), params(SourceName), request_body = ScheduleBody, responses((status = 200, description = "The schedule, or null when it was removed", body = Option<runs::scheduler::ScheduleRow>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct InteractionsQuery {
    /// Also the answered, declined and expired ones.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/v1/owner/interactions", tag = "owner", security(("owner" = [])), params(InteractionsQuery), responses((status = 200, description = "Interactions, pending ones unless `all`", body = Vec<crate::interactions::Interaction>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_interactions(
    _: Owner,
    State(api): State<Arc<Api>>,
    Params(query): Params<InteractionsQuery>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    runs::recover(vault.store())?;
    Ok(Json(crate::interactions::list(vault.store(), query.all)?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Answer {
    value: String,
    /// Also keep the answer as this credential of the interaction's source.
    #[serde(default)]
    keep_as: Option<String>,
}

/// Answers an interaction; the answer is sealed for its source only and
/// never returned.
#[utoipa::path(post, path = "/v1/owner/interactions/{id}/answer", tag = "owner", security(("owner" = [])), params(InteractionId), request_body = Answer, responses((status = 200, description = "The answered interaction; never the answer", body = crate::interactions::Interaction), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_answer(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Body(answer): Body<Answer>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    runs::recover(vault.store())?;
    let answered = setup::answer(
        &vault,
        OWNER_API,
        &id,
        Secret::new(answer.value.into_bytes()),
        answer.keep_as.as_deref(),
    )?;
    Ok(Json(answered).into_response())
}

/// Declines an interaction: the waiting run is told the owner declined
/// (a login's browser is closed, nothing of it kept).
#[utoipa::path(post, path = "/v1/owner/interactions/{id}/decline", tag = "owner", security(("owner" = [])), params(InteractionId), responses((status = 200, description = "The declined interaction", body = crate::interactions::Interaction), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_decline(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    runs::recover(vault.store())?;
    Ok(Json(crate::interactions::decline(vault.store(), &id)?).into_response())
}

/// The login browser of a pending login interaction.
fn login_browser(api: &Api, id: &str) -> Result<Arc<crate::browser::LoginBrowser>, ApiError> {
    api.launcher.logins().get(id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no login browser is open for interaction '{id}'; only a pending login interaction of a run this server started has one"
        ))
        .next("GET /v1/owner/interactions")
    })
}

fn browser_failed(e: &crate::browser::BrowserError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "browser",
        format!("the login browser failed: {e}; answer or decline the interaction to end it"),
    )
}

/// What the login browser of a pending login interaction shows, once its
/// page has loaded (waiting up to 5 s for it).
#[utoipa::path(get, path = "/v1/owner/interactions/{id}/screen", tag = "owner", security(("owner" = [])), params(InteractionId), responses((status = 200, description = "A PNG screenshot of the login page", content_type = "image/png", body = Vec<u8>), (status = "4XX", description = "The error shape", body = ErrorBody), (status = 502, description = "The browser failed", body = ErrorBody)))]
async fn owner_login_screen(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let browser = login_browser(&api, &id)?;
    // A page still loading shows half a form: give it a moment.
    // (A page in the middle of navigating cannot say; that is not loaded.)
    for _ in 0..50 {
        if browser.loaded().await.unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let png = browser.screenshot().await.map_err(|e| browser_failed(&e))?;
    Ok((
        [
            (http::header::CONTENT_TYPE, "image/png"),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        png,
    )
        .into_response())
}

/// What the owner does in the streamed login browser: one of `click`,
/// `text` or `key`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum LoginInput {
    /// Click at this point of the screenshot (CSS pixels).
    Click {
        /// From the left.
        x: f64,
        /// From the top.
        y: f64,
    },
    /// Type this text where the focus is (it may be a password: it is
    /// never logged or returned).
    Text(String),
    /// Press a key.
    Key(crate::browser::Key),
}

/// Sends the owner's click, text or key press to the login browser of a
/// pending login interaction. Once logged in, answer the interaction
/// (any value, e.g. "done"): the browser's session is then kept as the
/// source's session credential.
#[utoipa::path(post, path = "/v1/owner/interactions/{id}/input", tag = "owner", security(("owner" = [])), params(InteractionId), request_body = LoginInput, responses((status = 204, description = "Delivered; GET the screen to see its effect"), (status = "4XX", description = "The error shape", body = ErrorBody), (status = 502, description = "The browser failed", body = ErrorBody)))]
async fn owner_login_input(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Body(input): Body<LoginInput>,
) -> Result<Response, ApiError> {
    let browser = login_browser(&api, &id)?;
    let done = match input {
        LoginInput::Click { x, y } if x.is_finite() && y.is_finite() && x >= 0.0 && y >= 0.0 => {
            browser.click(x, y).await
        }
        LoginInput::Click { .. } => {
            return Err(ApiError::bad_request(
                "click needs x and y, each a number of CSS pixels from 0",
            ));
        }
        LoginInput::Text(text) => browser.type_text(&Secret::new(text.into_bytes())).await,
        LoginInput::Key(key) => browser.press(key).await,
    };
    done.map_err(|e| browser_failed(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Rows to return, at most 1000 (default 100).
    limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
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
#[utoipa::path(get, path = "/v1/owner/audit", tag = "owner", security(("owner" = [])), params(AuditQuery), responses((status = 200, description = "The newest audit rows, newest first", body = Vec<AuditRow>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_audit(
    _: Owner,
    State(api): State<Arc<Api>>,
    Params(query): Params<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let reader = api.reader()?;
    let mut stmt = reader
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

#[utoipa::path(get, path = "/v1/owner/audit/verify", tag = "owner", security(("owner" = [])), responses((status = 200, description = "Whether the audit hash chain is intact", body = AuditCheck), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn owner_audit_verify(_: Owner, State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
    let check = api.vault().verify_audit()?;
    Ok(Json(match check {
        crate::vault::audit::ChainCheck::Intact { rows } => AuditCheck {
            intact: true,
            rows: Some(rows),
            broken_at: None,
        },
        crate::vault::audit::ChainCheck::BrokenAt { seq } => AuditCheck {
            intact: false,
            rows: None,
            broken_at: Some(seq),
        },
    })
    .into_response())
}

/// Whether the audit log's hash chain is intact.
#[derive(Serialize, utoipa::ToSchema)]
struct AuditCheck {
    /// True when every row chains to the one before.
    intact: bool,
    /// Rows checked, when intact.
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    /// The first row that does not chain, when broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    broken_at: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Granted {
    source: String,
    streams: Vec<String>,
}

#[utoipa::path(get, path = "/v1/sources", tag = "client", security(("client" = [])), responses((status = 200, description = "The source and streams this token grants", body = Vec<Granted>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn client_sources(Client(grant): Client) -> Result<Response, ApiError> {
    Ok(Json(vec![Granted {
        source: grant.source,
        streams: grant.streams,
    }])
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RecordsQuery {
    /// Records per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only records changed at or after this time (ms since the Unix
    /// epoch). A record a run emitted again unchanged keeps its time.
    updated_since: Option<i64>,
}

/// The shape of a page, for the OpenAPI document: `read_page` writes
/// the body itself, and the tests read it back into these types.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "never built: read_page writes the body")
)]
mod page_shape {
    #[cfg(test)]
    use serde::Deserialize;

    /// A record as a page sends it.
    #[derive(utoipa::ToSchema)]
    #[cfg_attr(test, derive(Deserialize), serde(deny_unknown_fields))]
    pub(super) struct Record {
        /// The record's primary key, as the connector emitted it.
        #[schema(value_type = Object)]
        pub(super) key: serde_json::Value,
        /// When a run last changed the record (ms since the Unix epoch).
        pub(super) updated_at: i64,
        /// The record, as the connector emitted it.
        #[schema(value_type = Object)]
        pub(super) data: serde_json::Value,
    }

    /// A page of a stream's records, oldest update first, with the cursor
    /// of the next page when there is one.
    #[derive(utoipa::ToSchema)]
    #[cfg_attr(test, derive(Deserialize), serde(deny_unknown_fields))]
    pub(super) struct Page {
        pub(super) records: Vec<Record>,
        pub(super) next_cursor: Option<String>,
    }
}
use page_shape::Page;

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

/// A page of a stream from an update time on: one range of the records
/// table, which is kept in this order.
pub(crate) const PAGE_FROM: &str = "SELECT key, updated_at, data FROM records
     WHERE source_id = ?1 AND stream = ?2 AND updated_at >= ?3
     ORDER BY updated_at, key LIMIT ?4";

/// A page of a stream after a cursor: the same range, from the cursor on.
pub(crate) const PAGE_AFTER: &str = "SELECT key, updated_at, data FROM records
     WHERE source_id = ?1 AND stream = ?2 AND (updated_at, key) > (?3, ?4)
     ORDER BY updated_at, key LIMIT ?5";

/// The body of a [`Page`] of up to `limit` records of the stream, updated
/// at or after `since` and after the cursor position `after`, with the
/// cursor of the next page if there is one. One bound is always the
/// tighter and implies the other (SQLite seeks on one lower bound only:
/// with both in one statement, a page deep into a stream read every record
/// before it).
///
/// The body is written as the rows are read, each record's key and data
/// as stored: the records table holds only JSON text (SQLite checks every
/// write, migration 14), so they are not parsed again on the way out.
fn read_page(
    conn: &rusqlite::Connection,
    source_id: i64,
    stream: &str,
    since: Option<i64>,
    after: Option<(i64, String)>,
    limit: u32,
) -> rusqlite::Result<Vec<u8>> {
    let ahead = i64::from(limit) + 1;
    let mut stmt;
    let mut rows = match after {
        // Every record after the cursor was updated at or after it.
        Some((at, key)) if since.is_none_or(|since| at >= since) => {
            stmt = conn.prepare_cached(PAGE_AFTER)?;
            stmt.query(params![source_id, stream, at, key, ahead])?
        }
        // Every record updated at or after `since` is after the cursor.
        _ => {
            stmt = conn.prepare_cached(PAGE_FROM)?;
            stmt.query(params![source_id, stream, since.unwrap_or(i64::MIN), ahead])?
        }
    };
    // Stored text is UTF-8 (the runtime writes Rust strings); anything
    // else written behind its back goes out with replacement characters,
    // still JSON. (`from_utf8` first: it checks ASCII a word at a time,
    // `from_utf8_lossy` a byte at a time, which was a fifth of a page's
    // CPU.)
    fn text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Cow<'r, str>> {
        let bytes = row.get_ref(i)?.as_bytes()?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        })
    }
    let mut body = Vec::with_capacity(320 * limit.min(PAGE_DEFAULT) as usize + 64);
    body.extend_from_slice(br#"{"records":["#);
    let mut written = 0;
    let mut last_key = 0..0;
    let mut last_at = 0;
    let mut next_cursor = None;
    while let Some(row) = rows.next()? {
        // The row after a full page says there is a next one.
        if written == limit {
            let key = std::str::from_utf8(&body[last_key]).expect("written from a str");
            next_cursor = Some(encode_cursor(last_at, key));
            break;
        }
        if written > 0 {
            body.push(b',');
        }
        body.extend_from_slice(br#"{"key":"#);
        let key = text(row, 0)?;
        last_key = body.len()..body.len() + key.len();
        body.extend_from_slice(key.as_bytes());
        last_at = row.get(1)?;
        body.extend_from_slice(br#","updated_at":"#);
        body.extend_from_slice(itoa::Buffer::new().format(last_at).as_bytes());
        body.extend_from_slice(br#","data":"#);
        body.extend_from_slice(text(row, 2)?.as_bytes());
        body.push(b'}');
        written += 1;
    }
    body.extend_from_slice(br#"],"next_cursor":"#);
    serde_json::to_writer(&mut body, &next_cursor).expect("a string serializes");
    body.push(b'}');
    Ok(body)
}

#[utoipa::path(get, path = "/v1/sources/{name}/streams/{stream}/records", tag = "client", security(("client" = [])), params(SourceName, StreamName, RecordsQuery), responses((status = 200, description = "A page of records, oldest update first", body = Page), (status = "4XX", description = "The error shape", body = ErrorBody)))]
async fn client_records(
    ClientReads(grant, snapshot): ClientReads,
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
    let body = read_page(
        snapshot.conn(),
        grant.source_id,
        &stream,
        query.updated_since,
        after,
        limit,
    )
    .map_err(|e| ApiError::internal(&e))?;
    Ok((
        [(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER   abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }

    /// Paging through a stream, with or without `updated_since`, and
    /// with a cursor from a page read without it, returns every record
    /// the request covers exactly once, oldest update first.
    #[test]
    fn pages_cover_the_stream_once_in_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::init(&tmp.path().join("data"), &[]).expect("init");
        let source = store.add_source("s").expect("source").source_id;
        let other = store.add_source("t").expect("source").source_id;
        // Three records per millisecond, so pages end inside a millisecond;
        // keys compare as text ("[10]" before "[2]").
        let stored: Vec<(i64, String)> = (0..20).map(|i| (100 + i / 3, format!("[{i}]"))).collect();
        store
            .write(|conn| {
                for (at, key) in &stored {
                    for (id, stream) in [(source, "items"), (source, "else"), (other, "items")] {
                        conn.execute(
                            crate::runtime::UPSERT_RECORD,
                            params![id, stream, key, r#"{"x":1}"#, "r", at],
                        )?;
                    }
                }
                Ok(())
            })
            .expect("records");
        let mut ordered = stored.clone();
        ordered.sort();
        let read_all = |since: Option<i64>, mut after: Option<(i64, String)>| {
            let mut seen = Vec::new();
            loop {
                let page = parse(
                    &read_page(store.conn(), source, "items", since, after.clone(), 4)
                        .expect("page"),
                );
                assert!(page.records.len() <= 4);
                for record in &page.records {
                    seen.push((record.updated_at, record.key.to_string()));
                }
                match page.next_cursor {
                    Some(cursor) => after = Some(decode_cursor(&cursor).expect("our cursor")),
                    None => return seen,
                }
            }
        };
        for since in [None, Some(99), Some(101), Some(103), Some(106), Some(107)] {
            let expected: Vec<_> = ordered
                .iter()
                .filter(|(at, _)| since.is_none_or(|since| *at >= since))
                .cloned()
                .collect();
            assert_eq!(read_all(since, None), expected, "since {since:?}");
        }
        // The first page read without `updated_since`, the rest with one
        // later than that page's end, and with one earlier.
        let first = parse(&read_page(store.conn(), source, "items", None, None, 4).expect("page"));
        let cursor = decode_cursor(&first.next_cursor.expect("more")).expect("our cursor");
        assert_eq!(cursor, (101, "[3]".to_owned()));
        for since in [104, 100] {
            let expected: Vec<_> = ordered
                .iter()
                .filter(|(at, key)| *at >= since && (*at, key) > (cursor.0, &cursor.1))
                .cloned()
                .collect();
            assert_eq!(
                read_all(Some(since), Some(cursor.clone())),
                expected,
                "since {since}"
            );
        }
    }

    /// A page's body has the documented shape, with no field more.
    fn parse(body: &[u8]) -> Page {
        serde_json::from_slice(body).expect("a page is JSON of the page's shape")
    }

    /// A page goes out with each record's key and data as stored, not
    /// printed again; what it writes around them makes it JSON of the
    /// page's shape, with and without a next page.
    #[test]
    fn a_page_sends_stored_json_as_it_is() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::init(&tmp.path().join("data"), &[]).expect("init");
        let source = store.add_source("s").expect("source").source_id;
        let stored = [
            ("[1]", 10, r#"{"id": 1, "t": "a\"b\u00e9"}"#),
            (r#"["k\"ey", 2]"#, 20, "{\n  \"id\": 2\n}"),
        ];
        store
            .write(|conn| {
                for (key, at, data) in stored {
                    conn.execute(
                        crate::runtime::UPSERT_RECORD,
                        params![source, "items", key, data, "r", at],
                    )?;
                }
                Ok(())
            })
            .expect("records");
        let body = read_page(store.conn(), source, "items", None, None, 1).expect("page");
        let text = std::str::from_utf8(&body).expect("UTF-8");
        assert!(text.contains(stored[0].2), "{text}");
        let page = parse(&body);
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0].key, serde_json::json!([1]));
        assert_eq!(page.records[0].updated_at, 10);
        assert_eq!(
            page.records[0].data,
            serde_json::json!({"id": 1, "t": "a\"bé"})
        );
        let cursor = page.next_cursor.expect("a second page");
        assert_eq!(decode_cursor(&cursor), Some((10, "[1]".to_owned())));
        let body = read_page(
            store.conn(),
            source,
            "items",
            None,
            Some((10, "[1]".into())),
            1,
        )
        .expect("page");
        assert!(
            std::str::from_utf8(&body)
                .expect("UTF-8")
                .contains(stored[1].0)
        );
        let page = parse(&body);
        assert_eq!(page.records[0].key, serde_json::json!(["k\"ey", 2]));
        assert_eq!(page.records[0].data, serde_json::json!({"id": 2}));
        assert_eq!(page.next_cursor, None);
        let empty = parse(&read_page(store.conn(), source, "none", None, None, 5).expect("page"));
        assert!(empty.records.is_empty() && empty.next_cursor.is_none());
    }

    #[test]
    fn a_page_of_text_that_is_not_utf8_is_still_json() {
        // Written behind the runtime's back: JSON to SQLite's check, with
        // a byte (0xFF) that is not UTF-8 inside a string.
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::init(&tmp.path().join("data"), &[]).expect("init");
        let source = store.add_source("s").expect("source").source_id;
        store
            .write(|conn| {
                conn.execute(
                    "INSERT INTO records (source_id, stream, key, data, run_id, created_at, updated_at)
                     VALUES (?1, 'items', '[1]', CAST(X'7B2274223A2261FF62227D' AS TEXT), 'r', 5, 5)",
                    params![source],
                )?;
                Ok(())
            })
            .expect("record");
        let body = read_page(store.conn(), source, "items", None, None, 5).expect("page");
        let page = parse(&body);
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0].data, serde_json::json!({"t": "a\u{FFFD}b"}));
    }
}
