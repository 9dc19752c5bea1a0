//! Who is asking: the bearer token of a request, the principal behind it, and the extractors that admit the owner or a client; failed authentications are counted per peer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;

use super::error::ApiError;
use super::kept;
use super::peers::forwarded_for;
use super::render::{json_bytes, view_body};
use super::state::{Api, Snapshot};
use crate::setup::{self};
use crate::tokens::{self, Grant, Principal};
use crate::vault::{Actor, Secret};

/// The peer's address, when the connection has one: behind a trusted
/// proxy, the client address it forwards.
pub(super) async fn peer(parts: &mut Parts, api: &Arc<Api>) -> Option<IpAddr> {
    let addr = ConnectInfo::<SocketAddr>::from_request_parts(parts, api)
        .await
        .map(|ConnectInfo(addr)| addr.ip())
        .ok()?;
    Some(forwarded_for(
        addr,
        &parts.headers,
        &api.limits.trusted_proxies,
    ))
}

impl Api {
    /// Refused with 429 while `peer` is past the failed-authentication
    /// limit.
    pub(super) fn check_failures(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let refused = peer.is_some_and(|ip| {
            self.failures
                .lock()
                .expect("failures lock")
                .refused(ip, self.limits.auth_failures)
        });
        if refused {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                "too many failed authentications from this address; wait a minute",
            ));
        }
        Ok(())
    }

    /// Counts a failed authentication of `peer`.
    pub(super) fn count_failure(&self, peer: Option<IpAddr>) {
        if let Some(ip) = peer {
            self.failures.lock().expect("failures lock").count(ip);
        }
    }
}

/// The request's bearer token, if it has one, and its peer address, once
/// the peer is under the failed-authentication limit (429 past it).
pub(super) async fn bearer(
    parts: &mut Parts,
    api: &Arc<Api>,
) -> Result<(Option<IpAddr>, Option<Secret>), ApiError> {
    let peer = peer(parts, api).await;
    api.check_failures(peer)?;
    let token = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(|t| Secret::from_slice(t.as_bytes()));
    Ok((peer, token))
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme's name
/// is case-insensitive (RFC 9110, 11.1).
pub(super) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The principal behind the token whose digest is `digest`, read from
/// `store`, and kept (see [`kept`]) when a lookup gave `generation`; a
/// failure is counted against `peer`.
pub(super) fn principal_in(
    api: &Api,
    store: &crate::store::Store,
    peer: Option<IpAddr>,
    digest: Option<&[u8; 32]>,
    generation: Option<u64>,
) -> Result<Principal, ApiError> {
    let found = match digest {
        Some(digest) => tokens::authenticate_digest(store, digest)?,
        None => None,
    };
    let (principal, expires_at) = found.ok_or_else(|| {
        api.count_failure(peer);
        ApiError::unauthorized()
    })?;
    if let (Some(generation), Some(digest)) = (generation, digest) {
        api.kept
            .keep(*digest, principal.clone(), expires_at, generation);
    }
    Ok(principal)
}

/// The principal behind the request's bearer token, as kept since the
/// database last changed (see [`kept`]) or read from it; failures are
/// counted per peer address and refused with 429 past a limit.
pub(super) async fn principal(parts: &mut Parts, api: &Arc<Api>) -> Result<Principal, ApiError> {
    let (peer, token) = bearer(parts, api).await?;
    let digest = token.map(|t| tokens::digest(t.expose_secret()));
    let generation = match digest.as_ref().map(|d| api.kept.get(d)) {
        Some(kept::Lookup::Kept(principal)) => return Ok(principal),
        Some(kept::Lookup::Read(generation)) => generation,
        None => None,
    };
    principal_in(api, &*api.reader()?, peer, digest.as_ref(), generation)
}

/// Refuses anyone but the owner.
pub(super) fn owner_only(principal: Principal) -> Result<(), ApiError> {
    match principal {
        Principal::Owner { .. } => Ok(()),
        Principal::Client(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_token_type",
            "a client token cannot use the owner surface; use the owner token",
        )),
    }
}

/// Refuses anyone but a client; its grant.
pub(super) fn client_only(principal: Principal) -> Result<Grant, ApiError> {
    match principal {
        Principal::Client(grant) => Ok(grant),
        Principal::Owner { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_token_type",
            "the owner token cannot use the client surface; create a client token with POST /v1/owner/clients",
        )),
    }
}

/// The owner, by an owner token.
pub(super) struct Owner;

impl FromRequestParts<Arc<Api>> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        owner_only(principal(parts, api).await?).map(|()| Self)
    }
}

/// A request for a setup view, by its bearer token: checked with the view.
pub(super) struct OwnerView {
    pub(super) api: Arc<Api>,
    pub(super) peer: Option<IpAddr>,
    pub(super) token: Option<Secret>,
}

impl FromRequestParts<Arc<Api>> for OwnerView {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let (peer, token) = bearer(parts, api).await?;
        Ok(Self {
            api: Arc::clone(api),
            peer,
            token,
        })
    }
}

impl OwnerView {
    /// Source `name`'s setup view, for the owner only: as kept since the
    /// database last changed (see [`kept`]), or read in one snapshot with
    /// the token's authentication.
    pub(super) fn respond(self, name: &str) -> Result<Response, ApiError> {
        let Self { api, peer, token } = self;
        let digest = token.map(|t| tokens::digest(t.expose_secret()));
        let generation = match digest.as_ref().map(|d| api.kept.view(d, name)) {
            Some(kept::ViewLookup::Kept(principal, view)) => {
                owner_only(principal)?;
                return Ok(json_bytes(view));
            }
            Some(kept::ViewLookup::Read(generation)) => generation,
            None => None,
        };
        let snapshot = Snapshot::begin(&api)?;
        owner_only(principal_in(
            &api,
            &snapshot,
            peer,
            digest.as_ref(),
            generation,
        )?)?;
        let view = view_body(&setup::source_view(&snapshot, name)?)?;
        if let Some(generation) = generation {
            api.kept.keep_view(name, view.clone(), generation);
        }
        Ok(json_bytes(view))
    }
}

/// A client, by a client token.
pub(super) struct Client(pub(super) Grant);

impl FromRequestParts<Arc<Api>> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        client_only(principal(parts, api).await?).map(Self)
    }
}

/// A client, authenticated in the [`Snapshot`] the handler reads.
pub(super) struct ClientReads(pub(super) Grant, pub(super) Snapshot);

impl FromRequestParts<Arc<Api>> for ClientReads {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Arc<Api>) -> Result<Self, ApiError> {
        let (peer, token) = bearer(parts, api).await?;
        let snapshot = Snapshot::begin(api)?;
        let digest = token.map(|t| tokens::digest(t.expose_secret()));
        let grant = client_only(principal_in(api, &snapshot, peer, digest.as_ref(), None)?)?;
        Ok(Self(grant, snapshot))
    }
}

pub(super) const OWNER_API: Actor<'static> = Actor {
    name: "owner:api",
    run_id: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER   abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerabc", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }
}
