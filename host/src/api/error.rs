//! The one error shape, `{"error": {"code", "message", "next_step"}}`, and how each part of the host's errors becomes it: internal errors are logged, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::catalog::CatalogError;
use crate::oauth::OauthError;
use crate::runs::LaunchError;
use crate::setup::SetupError;
use crate::store::StoreError;
use crate::vault::VaultError;

/// The one error shape.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) next_step: Option<String>,
}

/// Every error: `{"error": {"code", "message", "next_step"}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    pub(super) error: ErrorInner,
}

/// What went wrong, and what to do.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorInner {
    /// A stable machine-readable code, e.g. `not_found`, `bad_request`.
    pub(super) code: &'static str,
    /// What went wrong, for a person.
    pub(super) message: String,
    /// What to do next, where there is one thing to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) next_step: Option<String>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            next_step: None,
        }
    }

    pub(super) fn next(mut self, step: impl Into<String>) -> Self {
        self.next_step = Some(step.into());
        self
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is required in the Authorization header (Bearer)",
        )
    }

    pub(super) fn internal(e: &dyn std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorInner {
                code: self.code,
                message: self.message,
                next_step: self.next_step,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownSource(_) | StoreError::NotFound(_) => {
                Self::not_found(e.to_string())
            }
            StoreError::SourceExists(_) | StoreError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::InvalidSourceName(_) => Self::bad_request(e.to_string()),
            other => Self::internal(&other),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Store(e) => e.into(),
            CatalogError::Unknown(_) => Self::not_found(e.to_string()),
            CatalogError::Exists(..) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            CatalogError::Setup(_) | CatalogError::NoConnector(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_setup",
                e.to_string(),
            ),
            // A component that does not load: the uploader's to fix; the
            // engine failing is the host's.
            CatalogError::Runtime(crate::runtime::RuntimeError::Engine(_)) => Self::internal(&e),
            CatalogError::Runtime(other) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_component",
                other.to_string(),
            ),
            other => Self::internal(&other),
        }
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Invalid(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                e.to_string(),
            ),
            VaultError::Missing { .. } => Self::not_found(e.to_string()),
            other => Self::internal(&other),
        }
    }
}

impl From<SetupError> for ApiError {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Catalog(e) => e.into(),
            SetupError::Store(e) => e.into(),
            SetupError::Vault(e) => e.into(),
            SetupError::NotNow(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "not_now", m),
        }
    }
}

impl From<OauthError> for ApiError {
    fn from(e: OauthError) -> Self {
        match e {
            OauthError::Store(e) => e.into(),
            OauthError::Vault(e) => e.into(),
            OauthError::Catalog(e) => e.into(),
            OauthError::Invalid(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_oauth",
                e.to_string(),
            ),
            OauthError::NoClient(ref connector) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_oauth_client",
                e.to_string(),
            )
            .next(format!("PUT /v1/owner/oauth-clients/{connector}")),
            // Which source it was for is not known here (an unknown state
            // names none); the message says to start again, and the
            // routes that know the source name the step.
            OauthError::UnknownState => {
                Self::new(StatusCode::BAD_REQUEST, "unknown_state", e.to_string())
            }
            OauthError::Refused(_) => {
                Self::new(StatusCode::BAD_REQUEST, "provider_refused", e.to_string())
            }
            OauthError::Transient(_) => Self::new(
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                e.to_string(),
            ),
        }
    }
}

impl From<LaunchError> for ApiError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Catalog(e) => e.into(),
            LaunchError::Store(e) => e.into(),
            LaunchError::Vault(e) => e.into(),
            LaunchError::Paused { ref connector, .. } => {
                let next = format!("POST /v1/owner/connectors/{connector}/approve");
                Self::new(StatusCode::CONFLICT, "paused", e.to_string()).next(next)
            }
            LaunchError::Busy { ref run, .. } => {
                let run = run.clone();
                Self::new(StatusCode::CONFLICT, "busy", e.to_string())
                    .next(format!("POST /v1/owner/runs/{run}/cancel"))
            }
            other => Self::internal(&other),
        }
    }
}
