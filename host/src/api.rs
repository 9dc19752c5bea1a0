//! The HTTP API: an owner control surface under `/v1/owner/` and a client
//! read surface under `/v1/`, on separate routers with separate token
//! types. Tokens only in the `Authorization: Bearer` header (no cookies).
//! Every error is one JSON shape, `{"error": {"code", "message",
//! "next_step"}}`; internal errors are logged, never returned.
//!
//! The API decides nothing about setup: it returns the setup engine's
//! documents ([`crate::setup`]) as they are.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use error::ErrorBody;
use state::{BODY_LIMIT, COMPONENT_LIMIT, EXPORT_LIMIT};

mod audit;
mod auth;
mod client;
#[cfg(test)]
pub(crate) use client::{PAGE_AFTER, PAGE_FROM};
mod connectors;
mod credentials;
mod error;
mod extract;
mod health;
mod interactions;
mod login;
mod oauth;
mod render;
mod runs;
mod sources;
mod state;
mod tokens;

mod kept;

mod peers;

mod server;

pub use error::ApiError;
pub use server::{Tls, TlsError, serve};
pub use state::{Api, Limits};

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
        .routes(routes!(sources::owner_sources, sources::owner_add_source))
        .routes(routes!(sources::owner_source, sources::owner_delete_source))
        .routes(routes!(sources::owner_schedule))
        .routes(routes!(sources::owner_set_setup))
        .routes(routes!(credentials::owner_capture))
        .routes(routes!(credentials::owner_revoke))
        .routes(routes!(sources::owner_verify))
        .routes(routes!(sources::owner_confirm))
        .routes(routes!(sources::owner_account))
        .routes(body_limit(EXPORT_LIMIT, routes!(credentials::owner_import)))
        .routes(routes!(runs::owner_start_run))
        .routes(routes!(runs::owner_runs))
        .routes(routes!(runs::owner_run))
        .routes(routes!(runs::owner_cancel))
        .routes(routes!(runs::owner_run_events))
        .routes(body_limit(
            COMPONENT_LIMIT,
            routes!(connectors::owner_connectors, connectors::owner_install),
        ))
        .routes(routes!(connectors::owner_connector))
        .routes(routes!(
            connectors::owner_connector_limits,
            connectors::owner_set_connector_limits
        ))
        .routes(routes!(oauth::owner_oauth_clients))
        .routes(routes!(
            oauth::owner_set_oauth_client,
            oauth::owner_remove_oauth_client
        ))
        .routes(routes!(oauth::owner_authorize))
        .routes(routes!(oauth::oauth_callback))
        .routes(routes!(connectors::owner_approve))
        .routes(routes!(interactions::owner_interactions))
        .routes(routes!(interactions::owner_answer))
        .routes(routes!(interactions::owner_decline))
        .routes(routes!(login::owner_login_screen))
        .routes(routes!(login::owner_login_input))
        .routes(routes!(audit::owner_audit))
        .routes(routes!(audit::owner_audit_verify))
        .routes(routes!(tokens::owner_clients, tokens::owner_create_client))
        .routes(routes!(tokens::owner_rotate_token))
        .routes(routes!(tokens::owner_revoke_client))
        .routes(routes!(client::client_sources))
        .routes(routes!(client::client_records))
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
