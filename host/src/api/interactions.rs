//! Questions a run asks its owner: list, answer, decline.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::{OWNER_API, Owner};
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, InteractionId, Params, Path};
use super::state::Api;
use crate::runs::{self};
use crate::setup::{self};
use crate::vault::Secret;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct InteractionsQuery {
    /// Also the answered, declined and expired ones.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(get, path = "/v1/owner/interactions", tag = "owner", security(("owner" = [])), params(InteractionsQuery), responses((status = 200, description = "Interactions, pending ones unless `all`", body = Vec<crate::interactions::Interaction>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_interactions(
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
pub(super) struct Answer {
    value: String,
    /// Also keep the answer as this credential of the interaction's source.
    #[serde(default)]
    keep_as: Option<String>,
}

/// Answers an interaction; the answer is sealed for its source only and
/// never returned.
#[utoipa::path(post, path = "/v1/owner/interactions/{id}/answer", tag = "owner", security(("owner" = [])), params(InteractionId), request_body = Answer, responses((status = 200, description = "The answered interaction; never the answer", body = crate::interactions::Interaction), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_answer(
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
pub(super) async fn owner_decline(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let vault = api.vault();
    runs::recover(vault.store())?;
    Ok(Json(crate::interactions::decline(vault.store(), &id)?).into_response())
}
