//! Connectors: list, show, limits, install (review first), approve an upgrade.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::Owner;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, ConnectorId, Params, Path};
use super::state::{Api, COMPONENT_LIMIT};
use crate::catalog::{self};
use crate::setup::{self};

#[utoipa::path(get, path = "/v1/owner/connectors/{id}", tag = "owner", security(("owner" = [])), params(ConnectorId), responses((status = 200, description = "The connector's setup view", body = setup::ConnectorView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_connector(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(setup::connector_view(&*api.reader()?, &id)?).into_response())
}

#[utoipa::path(get, path = "/v1/owner/connectors", tag = "owner", security(("owner" = [])), responses((status = 200, description = "Every installed connector at its latest version, with its setup view", body = Vec<setup::ConnectorView>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_connectors(
    _: Owner,
    State(api): State<Arc<Api>>,
) -> Result<Response, ApiError> {
    Ok(Json(setup::connector_views(&*api.reader()?)?).into_response())
}

/// A connector's run limits: those the operator set, and the ones runs get.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ConnectorLimits {
    /// Connector id.
    connector: String,
    /// What the operator set; a limit left out keeps the host's default.
    set: catalog::LimitOverrides,
    /// Every limit a run of this connector gets.
    effective: catalog::LimitOverrides,
}

/// The limits view of connector `id`, known to be installed.
pub(super) fn connector_limits_view(
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
pub(super) async fn owner_connector_limits(
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
pub(super) async fn owner_set_connector_limits(
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct InstallQuery {
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
pub(super) struct Upload {
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
pub(super) struct Component(bytes::Bytes);

/// A component's bytes, as the OpenAPI document describes them.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub(super) struct ComponentBytes(Vec<u8>);

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
pub(super) async fn owner_install(
    _: Owner,
    State(api): State<Arc<Api>>,
    Params(query): Params<InstallQuery>,
    Component(bytes): Component,
) -> Result<Response, ApiError> {
    // Compiling takes a while: off the request workers, so other requests
    // go on and the request deadline holds.
    let launcher = Arc::clone(&api.launcher);
    let handle = tokio::runtime::Handle::current();
    // The upload's own buffer, not a copy of it.
    let component = Vec::from(bytes);
    let review = tokio::task::spawn_blocking(move || {
        handle.block_on(catalog::review(launcher.runtime(), component))
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let digest = review.digest().to_owned();
    let Some(approved) = query.approve else {
        return Ok(Json(Upload {
            installed: false,
            next_step: format!(
                "review what it asks for, then POST the same bytes to /v1/owner/connectors?approve={digest}"
            ),
            digest,
            api_version: review.api_version().to_owned(),
            connector: setup::connector_preview(review.manifest()),
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
    let (installed, upgrades) =
        catalog::install_reviewed(vault.store(), &review, query.meanwhile.unwrap_or_default())?;
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
pub(super) struct ApproveBody {
    /// Only this source; every waiting source when absent.
    #[serde(default)]
    source: Option<String>,
}

/// The owner approves what a newer version asks for: the source (or every
/// source waiting on that connector) moves to it.
#[utoipa::path(post, path = "/v1/owner/connectors/{id}/approve", tag = "owner", security(("owner" = [])), params(ConnectorId), request_body = ApproveBody, responses((status = 200, description = "The sources moved, and what was approved for each", body = Vec<catalog::Upgrade>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_approve(
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
