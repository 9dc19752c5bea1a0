//! A streamed browser login: its screen and the owner's input.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Owner;
use super::error::{ApiError, ErrorBody};
use super::extract::{Body, InteractionId, Path};
use super::state::Api;
use crate::vault::Secret;

/// The login browser of a pending login interaction.
pub(super) fn login_browser(
    api: &Api,
    id: &str,
) -> Result<Arc<crate::browser::LoginBrowser>, ApiError> {
    api.launcher.logins().get(id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no login browser is open for interaction '{id}'; only a pending login interaction of a run this server started has one"
        ))
        .next("GET /v1/owner/interactions")
    })
}

pub(super) fn browser_failed(e: &crate::browser::BrowserError) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "browser",
        format!("the login browser failed: {e}; answer or decline the interaction to end it"),
    )
}

/// What the login browser of a pending login interaction shows, once its
/// page has loaded (waiting up to 5 s for it).
#[utoipa::path(get, path = "/v1/owner/interactions/{id}/screen", tag = "owner", security(("owner" = [])), params(InteractionId), responses((status = 200, description = "A PNG screenshot of the login page", content_type = "image/png", body = Vec<u8>), (status = "4XX", description = "The error shape", body = ErrorBody), (status = 502, description = "The browser failed", body = ErrorBody)))]
pub(super) async fn owner_login_screen(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let browser = login_browser(&api, &id)?;
    // A page still loading shows half a form: give it a moment.
    // (A page in the middle of navigating cannot say; that is not loaded.)
    for _ in 0..50 {
        if browser.loaded().await.unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let png = browser.screenshot().await.map_err(|e| browser_failed(&e))?;
    Ok((
        [
            (http::header::CONTENT_TYPE, "image/png"),
            (http::header::CACHE_CONTROL, "no-store"),
        ],
        png,
    )
        .into_response())
}

/// What the owner does in the streamed login browser: one of `click`,
/// `text` or `key`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) enum LoginInput {
    /// Click at this point of the screenshot (CSS pixels).
    Click {
        /// From the left.
        x: f64,
        /// From the top.
        y: f64,
    },
    /// Type this text where the focus is (it may be a password: it is
    /// never logged or returned).
    Text(String),
    /// Press a key.
    Key(crate::browser::Key),
}

/// Sends the owner's click, text or key press to the login browser of a
/// pending login interaction. Once logged in, answer the interaction
/// (any value, e.g. "done"): the browser's session is then kept as the
/// source's session credential.
#[utoipa::path(post, path = "/v1/owner/interactions/{id}/input", tag = "owner", security(("owner" = [])), params(InteractionId), request_body = LoginInput, responses((status = 204, description = "Delivered; GET the screen to see its effect"), (status = "4XX", description = "The error shape", body = ErrorBody), (status = 502, description = "The browser failed", body = ErrorBody)))]
pub(super) async fn owner_login_input(
    _: Owner,
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    Body(input): Body<LoginInput>,
) -> Result<Response, ApiError> {
    let browser = login_browser(&api, &id)?;
    let done = match input {
        LoginInput::Click { x, y } if x.is_finite() && y.is_finite() && x >= 0.0 && y >= 0.0 => {
            browser.click(x, y).await
        }
        LoginInput::Click { .. } => {
            return Err(ApiError::bad_request(
                "click needs x and y, each a number of CSS pixels from 0",
            ));
        }
        LoginInput::Text(text) => browser.type_text(&Secret::new(text.into_bytes())).await,
        LoginInput::Key(key) => browser.press(key).await,
    };
    done.map_err(|e| browser_failed(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
