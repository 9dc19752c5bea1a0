//! Setup views as response bodies.

use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::setup::{self};

/// Room reserved for a setup view's JSON before serializing it (the view
/// of a connector with a few fields is about a kilobyte).
pub(super) const VIEW_BYTES: usize = 2048;

/// A setup view as a JSON response, serialized into a buffer sized for it
/// up front: axum's `Json` starts at 128 bytes and grows, copying, four
/// times on the way to a view's kilobyte.
pub(super) fn view_response(view: &setup::SourceView) -> Response {
    match view_body(view) {
        Ok(body) => json_bytes(body),
        Err(e) => e.into_response(),
    }
}

/// A setup view's response body (see [`view_response`]).
pub(super) fn view_body(view: &setup::SourceView) -> Result<bytes::Bytes, ApiError> {
    let mut body = Vec::with_capacity(VIEW_BYTES);
    serde_json::to_writer(&mut body, view).map_err(|e| ApiError::internal(&e))?;
    Ok(body.into())
}

/// A 200 with JSON already serialized.
pub(super) fn json_bytes(body: bytes::Bytes) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}
