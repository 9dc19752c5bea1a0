//! A source's credentials: capture one, import a cookie export, revoke one.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{OWNER_API, Owner};
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, CredentialName, Path, SourceName};
use super::state::{Api, EXPORT_LIMIT};
use crate::setup::{self};
use crate::vault::Secret;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Capture {
    value: String,
}

/// Write-only: the response carries the credential's metadata, never its
/// value.
#[utoipa::path(put, path = "/v1/owner/sources/{name}/credentials/{credential}", tag = "owner", security(("owner" = [])), params(SourceName, CredentialName), request_body = Capture, responses((status = 200, description = "The stored credential's metadata; never its value", body = crate::vault::CredentialMeta), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_capture(
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
pub(super) struct Export(Secret);

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
pub(super) async fn owner_import(
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

#[utoipa::path(post, path = "/v1/owner/sources/{name}/credentials/{credential}/revoke", tag = "owner", security(("owner" = [])), params(SourceName, CredentialName), responses((status = 200, description = "The revoked credential's metadata", body = crate::vault::CredentialMeta), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_revoke(
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
