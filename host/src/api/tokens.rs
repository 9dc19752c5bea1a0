//! The owner token and client tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::Owner;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, ClientId, Path};
use super::state::Api;
use crate::catalog::{self};
use crate::store::StoreError;
use crate::tokens::{self, Grant};

/// A new owner token.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OwnerToken {
    /// Shown once; only its hash is kept. The token this request used no
    /// longer works.
    token: String,
}

/// Replaces the owner token: the one this request used stops working at
/// once.
#[utoipa::path(post, path = "/v1/owner/token/rotate", tag = "owner", security(("owner" = [])), responses((status = 201, description = "The new owner token, shown once", body = OwnerToken), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_rotate_token(
    _: Owner,
    State(api): State<Arc<Api>>,
) -> Result<Response, ApiError> {
    let token = tokens::rotate_owner(api.vault().store())?;
    let token = String::from_utf8_lossy(token.expose_secret()).into_owned();
    Ok((StatusCode::CREATED, Json(OwnerToken { token })).into_response())
}

#[utoipa::path(get, path = "/v1/owner/clients", tag = "owner", security(("owner" = [])), responses((status = 200, description = "Client tokens (never the tokens themselves)", body = Vec<Grant>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_clients(
    _: Owner,
    State(api): State<Arc<Api>>,
) -> Result<Response, ApiError> {
    Ok(Json(tokens::clients(&*api.reader()?)?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewClient {
    source: String,
    streams: Vec<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct CreatedClient {
    /// Shown once; only its hash is kept.
    token: String,
    #[serde(flatten)]
    grant: Grant,
}

#[utoipa::path(post, path = "/v1/owner/clients", tag = "owner", security(("owner" = [])), request_body = NewClient, responses((status = 201, description = "The new client token, shown once", body = CreatedClient), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_create_client(
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
pub(super) async fn owner_revoke_client(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(tokens::revoke_client(api.vault().store(), &id)?).into_response())
}
