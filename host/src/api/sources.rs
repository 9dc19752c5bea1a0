//! Sources: list, add, set up, show, confirm or choose an account, verify, schedule, delete.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::{OWNER_API, Owner, OwnerView};
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Path, SourceName};
use super::render::view_response;
use super::state::Api;
use crate::catalog::{self};
use crate::runs::{self, Trigger};
use crate::setup::{self};
use crate::store::StoreError;

#[utoipa::path(get, path = "/v1/owner/sources", tag = "owner", security(("owner" = [])), responses((status = 200, description = "Every source, with its schedule and needs-reauth state", body = Vec<runs::scheduler::SourceStatus>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_sources(
    _: Owner,
    State(api): State<Arc<Api>>,
) -> Result<Response, ApiError> {
    let sources = runs::scheduler::statuses(&*api.reader()?)?;
    Ok(Json(sources).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSource {
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
pub(super) async fn owner_add_source(
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
pub(super) async fn owner_set_setup(
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

#[utoipa::path(get, path = "/v1/owner/sources/{name}", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The source's setup view", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_source(
    owner: OwnerView,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    owner.respond(&name)
}

/// The owner confirms that the source may connect the account another
/// source of its connector is connected to, or the account its
/// credentials changed to (the same as choosing `accept`).
#[utoipa::path(post, path = "/v1/owner/sources/{name}/confirm", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The source's setup view", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_confirm(
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
pub(super) async fn owner_account(
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

#[utoipa::path(post, path = "/v1/owner/sources/{name}/verify", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The setup view after the verification run", body = setup::SourceView), (status = 202, description = "The verification run goes on (e.g. waiting for the owner to answer an interaction): the setup view as it stands", body = setup::SourceView), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_verify(
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

#[utoipa::path(delete, path = "/v1/owner/sources/{name}", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 200, description = "The source is gone and its credentials destroyed", body = Deleted), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_delete_source(
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
pub(super) struct Deleted {
    /// The source's name.
    deleted: String,
    /// How many credentials were destroyed with it.
    credentials_destroyed: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ScheduleBody {
    #[serde(default)]
    every_secs: Option<u64>,
    #[serde(default)]
    cron: Option<String>,
}

/// `{"every_secs": N}`, `{"cron": "EXPR"}`, or `{}` to remove it.
#[utoipa::path(put, path = "/v1/owner/sources/{name}/schedule", tag = "owner", security(("owner" = [])), params(SourceName), request_body = ScheduleBody, responses((status = 200, description = "The schedule, or null when it was removed", body = Option<runs::scheduler::ScheduleRow>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_schedule(
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
