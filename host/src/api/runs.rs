//! Runs: start, list, show, cancel, and a run's live events.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Owner;
use super::error::{ApiError, ErrorBody};
use super::extract::{Params, Path, RunId, SourceName};
use super::state::Api;
use crate::runs::{self};
use crate::store::StoreError;

/// One Server-Sent Event of a run's event stream, as a client's event
/// parser sees it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct EventFrame {
    /// `state`, `progress`, `log` or `interaction`.
    event: String,
    /// The run event, as JSON: `run`, `source`, `event` and the fields of
    /// that kind of event.
    data: String,
}

/// Queues a manual run; the scheduler starts it at its next tick.
#[utoipa::path(post, path = "/v1/owner/sources/{name}/runs", tag = "owner", security(("owner" = [])), params(SourceName), responses((status = 202, description = "The queued run: a new one, or the one already queued for the source", body = runs::RunRecord), (status = 409, description = "Paused until an upgrade is approved (`paused`)", body = ErrorBody), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_start_run(
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
pub(super) struct RunsQuery {
    /// Only this source's runs.
    source: Option<String>,
    /// Runs per page, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Where the page starts: the `next_cursor` of the page before.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/owner/runs", tag = "owner", security(("owner" = [])), params(RunsQuery), responses((status = 200, description = "A page of runs, newest first", body = runs::RunsPage), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_runs(
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
pub(super) async fn owner_run(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(runs::find(&*api.reader()?, &id)?).into_response())
}

#[utoipa::path(post, path = "/v1/owner/runs/{id}/cancel", tag = "owner", security(("owner" = [])), params(RunId), responses((status = 200, description = "The run, cancelled or asked to stop", body = runs::RunRecord), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_cancel(
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
pub(super) async fn owner_run_events(
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
