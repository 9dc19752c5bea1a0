//! Health: a liveness answer anyone may ask for, and the owner's report of
//! what the host depends on.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;

use super::auth::Owner;
use super::error::{ApiError, ErrorBody};
use super::state::Api;
use crate::runs::heartbeat::SchedulerHealth;
use crate::vault::VaultHealth;

/// Whether this server is alive, for a load balancer or a supervisor.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Liveness {
    /// `ok`, or `unavailable` when the scheduler has stopped or the
    /// database does not answer.
    status: &'static str,
}

/// Unauthenticated: `ok` or not, nothing more.
#[utoipa::path(get, path = "/v1/health", tag = "meta", responses((status = 200, description = "Alive: the scheduler runs and the database answers", body = Liveness), (status = 503, description = "Not alive", body = Liveness)))]
pub(super) async fn liveness(State(api): State<Arc<Api>>) -> Response {
    let scheduler = api.launcher.heartbeat().health().running;
    let database = api
        .reader()
        .is_ok_and(|reader| reader.conn().query_row("SELECT 1", [], |_| Ok(())).is_ok());
    if scheduler && database {
        Json(Liveness { status: "ok" }).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Liveness {
                status: "unavailable",
            }),
        )
            .into_response()
    }
}

/// What the host depends on, as the owner sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct OwnerHealth {
    /// `ok` when everything below is as it should be, else `degraded`.
    status: &'static str,
    /// The vault: unlocked (or this server would not serve), its key
    /// wrapper reachable, its audit chain's head intact.
    vault: VaultHealth,
    /// The scheduler: running, its last tick, failures since.
    scheduler: SchedulerHealth,
    /// Runs waiting for a slot, and runs in flight.
    queue: Queue,
    /// Free space under the data directory.
    disk: Disk,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Queue {
    /// Queued runs, those not yet due included.
    queued: u64,
    /// Runs running or waiting for the owner.
    in_flight: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Disk {
    /// Bytes free to this process under the data directory.
    free_bytes: Option<u64>,
    /// Why it could not be read, if it could not.
    problem: Option<String>,
}

/// Free space below which the report says `degraded`.
const LOW_DISK: u64 = 256 << 20;

#[utoipa::path(get, path = "/v1/owner/health", tag = "owner", security(("owner" = [])), responses((status = 200, description = "The health report", body = OwnerHealth), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn owner_health(
    _: Owner,
    State(api): State<Arc<Api>>,
) -> Result<Response, ApiError> {
    let (vault, dir) = {
        let vault = api.vault();
        (vault.health(), vault.store().dir().to_owned())
    };
    let scheduler = api.launcher.heartbeat().health();
    let queue = {
        let reader = api.reader()?;
        let (queued, in_flight) = reader
            .conn()
            .query_row(
                "SELECT COUNT(*) FILTER (WHERE state = 'queued'),
                    COUNT(*) FILTER (WHERE state IN ('running', 'waiting_for_owner'))
             FROM runs WHERE state IN ('queued', 'running', 'waiting_for_owner')",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .map_err(crate::store::StoreError::from)?;
        Queue {
            queued: queued as u64,
            in_flight: in_flight as u64,
        }
    };
    let disk = match nix::sys::statvfs::statvfs(&dir) {
        Ok(stat) => Disk {
            free_bytes: Some(stat.blocks_available().saturating_mul(stat.fragment_size())),
            problem: None,
        },
        Err(e) => Disk {
            free_bytes: None,
            problem: Some(format!(
                "cannot read free space under {}: {e}",
                dir.display()
            )),
        },
    };
    let ok = vault.key_wrapper_reachable
        && vault.audit_head_verified
        && scheduler.running
        && scheduler.failures == 0
        && disk.free_bytes.is_some_and(|free| free >= LOW_DISK);
    Ok(Json(OwnerHealth {
        status: if ok { "ok" } else { "degraded" },
        vault,
        scheduler,
        queue,
        disk,
    })
    .into_response())
}
