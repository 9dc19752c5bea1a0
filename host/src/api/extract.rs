//! Extractors whose rejections speak the error shape, and the path parameters the OpenAPI document describes.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::error::ApiError;
use super::state::BODY_LIMIT;

/// A source, by name.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct SourceName {
    /// The source's name.
    pub(super) name: String,
}

/// A credential, by its declared name.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct CredentialName {
    /// The credential's name, as the connector declares it.
    pub(super) credential: String,
}

/// A stream, by name.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(super) struct StreamName {
    /// The stream's name, as the connector declares it.
    pub(super) stream: String,
}

/// A run, by id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, names("id"))]
#[allow(dead_code)]
pub(super) struct RunId(
    /// The run's id.
    String,
);

/// An interaction, by id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, names("id"))]
#[allow(dead_code)]
pub(super) struct InteractionId(
    /// The interaction's id.
    String,
);

/// A client token, by id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, names("id"))]
#[allow(dead_code)]
pub(super) struct ClientId(
    /// The client token's id (not the token).
    String,
);

/// A connector, by id.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path, names("id"))]
#[allow(dead_code)]
pub(super) struct ConnectorId(
    /// The connector's id.
    String,
);

/// JSON bodies whose rejections take the error shape.
pub(super) struct Body<T>(pub(super) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(JsonRejection::BytesRejection(_)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request bodies are limited to {BODY_LIMIT} bytes"),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send a JSON body with content-type: application/json",
            )),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Query strings whose rejections take the error shape.
pub(super) struct Params<T>(pub(super) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// Path segments whose rejections take the error shape: one that is not
/// UTF-8 text once percent-decoded, say.
pub(super) struct Path<T>(pub(super) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Self(v))
            .map_err(|e: PathRejection| {
                ApiError::bad_request(format!(
                    "{}; every path segment must be UTF-8 text, percent-encoded",
                    e.body_text()
                ))
            })
    }
}
