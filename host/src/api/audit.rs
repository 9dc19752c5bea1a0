//! The audit log and its hash chain.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::auth::Owner;
use super::error::{ApiError, ErrorBody};
use super::extract::Params;
use super::state::Api;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// Rows to return, at most 1000 (default 100).
    limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AuditRow {
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
pub(super) async fn owner_audit(
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
pub(super) async fn owner_audit_verify(
    _: Owner,
    State(api): State<Arc<Api>>,
) -> Result<Response, ApiError> {
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
pub(super) struct AuditCheck {
    /// True when every row chains to the one before.
    intact: bool,
    /// Rows checked, when intact.
    #[serde(skip_serializing_if = "Option::is_none")]
    rows: Option<u64>,
    /// The first row that does not chain, when broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    broken_at: Option<i64>,
}
