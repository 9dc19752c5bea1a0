//! OAuth: the registered clients, starting an authorization, and the provider's callback.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{OWNER_API, Owner};
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, ConnectorId, Params, Path, SourceName};
use super::render::view_response;
use super::state::Api;
use crate::oauth::{self, OauthError};
use crate::setup::{self};
use crate::vault::{Actor, Secret};

#[utoipa::path(get, path = "/v1/owner/oauth-clients", tag = "owner", security(("owner" = [])), responses((status = 200, description = "The registered OAuth clients; never a client secret", body = Vec<oauth::ClientView>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_oauth_clients(
    _: Owner,
    State(api): State<Arc<Api>>,
) -> Result<Response, ApiError> {
    Ok(Json(oauth::clients(&*api.reader()?)?).into_response())
}

/// An OAuth client made with the provider, as the operator registers it.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OauthClientBody {
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
pub(super) async fn owner_set_oauth_client(
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
pub(super) async fn owner_remove_oauth_client(
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
pub(super) async fn owner_authorize(
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
pub(super) async fn oauth_callback(
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
