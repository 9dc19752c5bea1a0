//! OAuth provider authorization: the authorization-code grant with PKCE
//! (RFC 6749 §4.1, RFC 7636 S256), the token exchange into the vault, and
//! the refresh of an expiring grant before a run.
//!
//! The operator registers one OAuth client per connector (the provider's
//! endpoints, the client id, the scopes, the redirect URI registered with
//! the provider, and a confidential client's secret, which is sealed). The
//! owner starts an authorization for a source and gets the URL to open;
//! the provider sends the browser back to the redirect URI with a code and
//! the state. The state is the only thing that ties the callback to the
//! source: 256 random bits, kept only as a hash, single use, expiring. The
//! code is exchanged by the host, under the same address rules as a run's
//! requests, and the grant is stored as the source's `oauth`-class
//! credential with provenance `oauth-grant`. No token ever reaches a
//! response, a log line or the guest (the host injects the access token).

use std::net::SocketAddr;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::catalog::{self, CatalogError};
use crate::contract::{CredentialClass, Modality};
use crate::store::{Store, StoreError, new_id, now_ms};
use crate::vault::{
    Actor, Aside, AsideOf, Grant, NewCredential, Provenance, Secret, Vault, VaultError,
};

/// How long a started authorization waits for the provider's callback.
pub const PENDING_FOR: Duration = Duration::from_secs(600);
/// A grant expiring within this margin is refreshed before a run.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// The largest token response read.
const MAX_TOKEN_RESPONSE: u64 = 64 * 1024;

/// Why an OAuth step failed. Messages never carry a token, code, state or
/// secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OauthError {
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A registration or request that cannot be taken as given.
    #[error("{0}")]
    Invalid(String),
    /// No OAuth client is registered for the connector.
    #[error(
        "no OAuth client is registered for connector {0}; the operator registers the one made with the provider: `sourcebox oauth-client set {0} --authorize-url URL --token-url URL --client-id ID --redirect-uri URL`"
    )]
    NoClient(String),
    /// The callback's state matches no authorization waiting (unknown,
    /// used already or expired).
    #[error(
        "this authorization is unknown, was completed already or has expired; start it again (`sourcebox source authorize NAME`)"
    )]
    UnknownState,
    /// The provider refused (the owner declined, a bad code, a revoked
    /// refresh token).
    #[error("the provider refused: {0}")]
    Refused(String),
    /// The provider could not be reached or answered something else than
    /// a token response.
    #[error("the token exchange failed: {0}")]
    Transient(String),
}

impl From<rusqlite::Error> for OauthError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

/// An OAuth client as the operator registers it.
#[derive(Debug)]
pub struct Registration {
    /// The connector it is for.
    pub connector: String,
    /// The provider's authorization endpoint.
    pub authorize_url: String,
    /// The provider's token endpoint.
    pub token_url: String,
    /// The client id the provider issued.
    pub client_id: String,
    /// Scopes to ask for.
    pub scopes: Vec<String>,
    /// The redirect URI registered with the provider: this server's
    /// `/v1/oauth/callback`, as the owner's browser reaches it.
    pub redirect_uri: String,
    /// A confidential client's secret; `None` for a public (PKCE-only)
    /// client.
    pub client_secret: Option<Secret>,
}

/// A registered OAuth client, as shown: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ClientView {
    /// Connector id.
    pub connector: String,
    /// The provider's authorization endpoint.
    pub authorize_url: String,
    /// The provider's token endpoint.
    pub token_url: String,
    /// The client id.
    pub client_id: String,
    /// Scopes asked for.
    pub scopes: Vec<String>,
    /// The registered redirect URI.
    pub redirect_uri: String,
    /// Whether a client secret is held (sealed).
    pub confidential: bool,
}

/// A started authorization: the URL the owner opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Started {
    /// The source.
    pub source: String,
    /// Open this in a browser and authorize; the provider then sends the
    /// browser to the redirect URI.
    pub authorize_url: String,
    /// The authorization is void after this, ms since the Unix epoch.
    pub expires_at: i64,
}

/// Registers (or replaces) the OAuth client of `registration.connector`.
/// The token endpoint must be https, or plain http to an address the
/// operator allowed; nothing is stored when any field is refused.
pub fn register(
    vault: &Vault,
    actor: Actor<'_>,
    registration: Registration,
    egress_allow: &[SocketAddr],
) -> Result<ClientView, OauthError> {
    let store = vault.store();
    let installed = catalog::latest(store, &registration.connector)?;
    if !installed
        .manifest
        .setup
        .modalities
        .contains(&Modality::Oauth)
    {
        return Err(OauthError::Invalid(format!(
            "connector {} {} does not offer OAuth authorization; nothing was stored",
            installed.id, installed.version
        )));
    }
    check_url("--authorize-url", &registration.authorize_url, &[], true)?;
    check_url("--token-url", &registration.token_url, egress_allow, false)?;
    check_url("--redirect-uri", &registration.redirect_uri, &[], true)?;
    check_redirect(&registration.redirect_uri)?;
    if registration.client_id.trim().is_empty() {
        return Err(OauthError::Invalid(
            "--client-id is empty; give the client id the provider issued".into(),
        ));
    }
    if let Some(bad) = registration
        .scopes
        .iter()
        .find(|s| s.is_empty() || s.contains(char::is_whitespace))
    {
        return Err(OauthError::Invalid(format!(
            "scope '{bad}' is empty or has whitespace; give one --scope per scope"
        )));
    }
    if registration
        .client_secret
        .as_ref()
        .is_some_and(Secret::is_empty)
    {
        return Err(OauthError::Invalid(
            "the client secret is empty; leave it out for a public client".into(),
        ));
    }
    let connector = registration.connector.clone();
    vault.write(actor, "oauth.client.set", None, |conn| {
        let sealed = registration
            .client_secret
            .as_ref()
            .map(|secret| {
                vault.seal_aside(
                    conn,
                    AsideOf::OauthClient {
                        connector: &connector,
                    },
                    secret.expose_secret(),
                )
            })
            .transpose()?;
        conn.execute(
            "INSERT OR REPLACE INTO oauth_clients (connector_id, authorize_url, token_url, client_id,
                 scopes, redirect_uri, kek_version, wrapped_key, sealed_secret, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                connector,
                registration.authorize_url,
                registration.token_url,
                registration.client_id,
                serde_json::to_string(&registration.scopes).expect("strings serialize"),
                registration.redirect_uri,
                sealed.as_ref().map(|s| s.kek_version),
                sealed.as_ref().map(|s| s.wrapped_key.clone()),
                sealed.as_ref().map(|s| s.sealed.clone()),
                now_ms(),
            ],
        )?;
        Ok(())
    })?;
    client(store, &registration.connector)?.ok_or(OauthError::NoClient(registration.connector))
}

/// Removes the OAuth client of `connector`; sources keep the grants they
/// hold, but cannot refresh them or authorize again.
pub fn unregister(vault: &Vault, actor: Actor<'_>, connector: &str) -> Result<(), OauthError> {
    let removed = vault.write(actor, "oauth.client.remove", None, |conn| {
        Ok(conn.execute(
            "DELETE FROM oauth_clients WHERE connector_id = ?1",
            [connector],
        )?)
    })?;
    if removed == 0 {
        return Err(OauthError::NoClient(connector.to_owned()));
    }
    Ok(())
}

const CLIENT_SELECT: &str = "SELECT connector_id, authorize_url, token_url, client_id, scopes,
    redirect_uri, wrapped_key IS NOT NULL FROM oauth_clients";

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientView> {
    Ok(ClientView {
        connector: r.get(0)?,
        authorize_url: r.get(1)?,
        token_url: r.get(2)?,
        client_id: r.get(3)?,
        scopes: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        redirect_uri: r.get(5)?,
        confidential: r.get(6)?,
    })
}

/// The OAuth client registered for `connector`, if any.
pub fn client(store: &Store, connector: &str) -> Result<Option<ClientView>, StoreError> {
    Ok(store
        .conn()
        .prepare_cached(&format!("{CLIENT_SELECT} WHERE connector_id = ?1"))?
        .query_row([connector], client_row)
        .optional()?)
}

/// Every registered OAuth client.
pub fn clients(store: &Store) -> Result<Vec<ClientView>, StoreError> {
    Ok(store
        .conn()
        .prepare(&format!("{CLIENT_SELECT} ORDER BY connector_id"))?
        .query_map([], client_row)?
        .collect::<Result<_, _>>()?)
}

/// Starts an authorization for source `name`: a fresh state and PKCE
/// verifier, kept for [`PENDING_FOR`]; returns the URL the owner opens.
pub fn begin(vault: &Vault, actor: Actor<'_>, name: &str) -> Result<Started, OauthError> {
    let store = vault.store();
    let setup = catalog::source_setup(store, name)?;
    let connector = &setup.connector;
    let modality: Option<String> = store.conn().query_row(
        "SELECT modality FROM sources WHERE id = ?1",
        [setup.source.source_id],
        |r| r.get(0),
    )?;
    if modality.as_deref() != Some("oauth") {
        return Err(OauthError::Invalid(format!(
            "source '{name}' is set up with {}, not OAuth; add a source with --modality oauth to authorize with the provider",
            modality.as_deref().unwrap_or("no modality")
        )));
    }
    let credential = grant_field(&setup.connector.manifest).ok_or_else(|| {
        OauthError::Invalid(format!(
            "connector {} {} declares no oauth-class credential to hold the grant",
            connector.id, connector.version
        ))
    })?;
    let client = client(store, &connector.id)?.ok_or(OauthError::NoClient(connector.id.clone()))?;
    let state = crate::tokens::fresh("");
    let verifier = crate::tokens::fresh("");
    let challenge = pkce_challenge(&verifier);
    let id = new_id();
    let now = now_ms();
    let expires_at = now + PENDING_FOR.as_millis() as i64;
    let source = &setup.source;
    vault.write(actor, "oauth.begin", Some(source), |conn| {
        conn.execute(
            "DELETE FROM oauth_pending WHERE expires_at < ?1",
            [now],
        )?;
        let sealed = vault.seal_aside(
            conn,
            AsideOf::OauthVerifier {
                owner_id: source.owner_id,
                source_id: source.source_id,
                id: &id,
            },
            verifier.expose_secret(),
        )?;
        conn.execute(
            "INSERT INTO oauth_pending (id, state_hash, owner_id, source_id, credential, kek_version,
                 wrapped_key, sealed_verifier, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                id,
                Sha256::digest(state.expose_secret()).to_vec(),
                source.owner_id,
                source.source_id,
                credential,
                sealed.kek_version,
                sealed.wrapped_key,
                sealed.sealed,
                now,
                expires_at,
            ],
        )?;
        Ok(())
    })?;
    let mut url = url::Url::parse(&client.authorize_url)
        .map_err(|e| OauthError::Invalid(format!("the registered authorize URL: {e}")))?;
    {
        let state = std::str::from_utf8(state.expose_secret()).expect("base64 is ASCII");
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &client.redirect_uri);
        if !client.scopes.is_empty() {
            query.append_pair("scope", &client.scopes.join(" "));
        }
        query
            .append_pair("state", state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
    }
    Ok(Started {
        source: name.to_owned(),
        authorize_url: url.into(),
        expires_at,
    })
}

/// What the provider sent the owner's browser back with.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Callback {
    /// The state of the authorization.
    pub state: String,
    /// The authorization code, when the owner authorized.
    #[serde(default)]
    pub code: Option<String>,
    /// The provider's error code, when the owner declined or it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The provider's description of the error.
    #[serde(default)]
    pub error_description: Option<String>,
    /// The issuer the response comes from (RFC 9207), when the provider
    /// says: it must be the provider this authorization went to.
    #[serde(default)]
    pub iss: Option<String>,
}

/// The issuer identifier a provider's responses name (RFC 9207): the
/// origin of its authorization endpoint.
fn issuer_of(authorize_url: &str) -> Option<String> {
    url::Url::parse(authorize_url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

/// Completes the authorization the callback's state names: the state is
/// used up, the code exchanged for a grant, and the grant stored as the
/// source's credential. Returns the source's name.
pub async fn complete(
    vault: &std::sync::Mutex<Vault>,
    actor: Actor<'_>,
    callback: Callback,
    egress_allow: &[SocketAddr],
) -> Result<String, OauthError> {
    let Callback {
        state,
        code,
        error,
        error_description,
        iss,
    } = callback;
    let state = Secret::new(state.into_bytes());
    let code = code.map(|c| Secret::new(c.into_bytes()));
    // Used up first, whatever the provider said: a state works once.
    let (source, credential, verifier, code, client, secret) = {
        let vault = vault.lock().expect("vault lock");
        let store = vault.store();
        let found: Option<(String, i64, String, Aside)> = store
            .conn()
            .query_row(
                "SELECT id, source_id, credential, kek_version, wrapped_key, sealed_verifier
                 FROM oauth_pending WHERE state_hash = ?1 AND expires_at >= ?2",
                params![Sha256::digest(state.expose_secret()).to_vec(), now_ms()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, Aside::from_row(r, 3)?)),
            )
            .optional()?;
        let Some((id, source_id, credential, sealed)) = found else {
            return Err(OauthError::UnknownState);
        };
        let source = store.source_by_id(source_id)?;
        // Its deletion, counted, in one write transaction: of two
        // callbacks with one state (one delivered to `serve`, one to
        // `source authorize --finish`, in two processes), one removes the
        // row and exchanges the code; the other finds it gone. A provider
        // revokes a grant whose code is exchanged twice.
        let verifier = vault.write(actor, "oauth.complete", Some(&source), |conn| {
            let removed = conn.execute("DELETE FROM oauth_pending WHERE id = ?1", [&id])?;
            if removed == 0 {
                return Ok(None);
            }
            vault
                .open_aside(
                    conn,
                    AsideOf::OauthVerifier {
                        owner_id: source.owner_id,
                        source_id: source.source_id,
                        id: &id,
                    },
                    &sealed,
                )?
                .map(Some)
                .map_err(|_| {
                    VaultError::Invalid(
                        "the authorization's verifier does not open; start it again".into(),
                    )
                })
        })?;
        let Some(verifier) = verifier else {
            return Err(OauthError::UnknownState);
        };
        if let Some(error) = error {
            return Err(OauthError::Refused(match error_description {
                Some(description) => format!("{error}: {description}"),
                None => error,
            }));
        }
        let code = code.ok_or_else(|| {
            OauthError::Invalid("the callback carries neither a code nor an error".into())
        })?;
        // Only for a code to exchange: the client and its secret.
        let connector = catalog::source_setup(store, &source.source)?.connector.id;
        let client =
            client(store, &connector)?.ok_or_else(|| OauthError::NoClient(connector.clone()))?;
        // A response that names another issuer than the provider this
        // authorization went to is another provider's (a mix-up): its code
        // is not sent to this provider's token endpoint.
        if let Some(iss) = &iss {
            let expected = issuer_of(&client.authorize_url).unwrap_or_default();
            if iss.trim_end_matches('/') != expected {
                return Err(OauthError::Refused(format!(
                    "the response names issuer {}, not {expected}, where this authorization went (RFC 9207); start it again",
                    crate::inert::text(iss, 200)
                )));
            }
        }
        let secret = client_secret(&vault, &connector)?;
        (source, credential, verifier, code, client, secret)
    };
    let form = form(&[
        ("grant_type", b"authorization_code"),
        ("code", code.expose_secret()),
        ("redirect_uri", client.redirect_uri.as_bytes()),
        ("client_id", client.client_id.as_bytes()),
        ("code_verifier", verifier.expose_secret()),
    ]);
    let grant = exchange(&client, secret.as_ref(), form, None, egress_allow).await?;
    let vault = vault.lock().expect("vault lock");
    vault.set(
        actor,
        &source,
        NewCredential {
            name: &credential,
            class: crate::vault::CredentialClass::Oauth,
            provenance: Provenance::OauthGrant,
            value: grant,
            expires_at: None,
        },
    )?;
    Ok(source.source)
}

/// Refreshes `source`'s grant with its refresh token when it expires within
/// [`REFRESH_MARGIN`]. Reads metadata first: nothing is decrypted for a
/// grant that is not expiring. True when it was refreshed.
pub async fn refresh_expiring(
    vault: &std::sync::Mutex<Vault>,
    actor: Actor<'_>,
    setup: &catalog::SourceSetup,
    egress_allow: &[SocketAddr],
) -> Result<bool, OauthError> {
    refresh(vault, actor, setup, egress_allow, true).await
}

/// Refreshes `source`'s grant after the provider rejected its access token
/// before the expiry the host knew of (or the provider gave none). True
/// when it was refreshed; false when the source has no grant or the grant
/// holds no refresh token, so the rejection stands.
pub async fn refresh_rejected(
    vault: &std::sync::Mutex<Vault>,
    actor: Actor<'_>,
    setup: &catalog::SourceSetup,
    egress_allow: &[SocketAddr],
) -> Result<bool, OauthError> {
    refresh(vault, actor, setup, egress_allow, false).await
}

async fn refresh(
    vault: &std::sync::Mutex<Vault>,
    actor: Actor<'_>,
    setup: &catalog::SourceSetup,
    egress_allow: &[SocketAddr],
    only_expiring: bool,
) -> Result<bool, OauthError> {
    let Some(name) = grant_field(&setup.connector.manifest) else {
        return Ok(false);
    };
    let source = &setup.source;
    let (current, client, secret) = {
        let vault = vault.lock().expect("vault lock");
        let Some(meta) = crate::vault::metadata(vault.store(), Some(source))?
            .into_iter()
            .find(|m| m.name == name && m.revoked_at.is_none())
        else {
            return Ok(false);
        };
        let expiring = meta
            .expires_at
            .is_some_and(|at| at <= now_ms() + REFRESH_MARGIN.as_millis() as i64);
        if only_expiring && !expiring {
            return Ok(false);
        }
        let Some(client) = client(vault.store(), &setup.connector.id)? else {
            return Err(OauthError::Refused(format!(
                "the grant needs a refresh and no OAuth client is registered for {} to do it",
                setup.connector.id
            )));
        };
        let secret = client_secret(&vault, &setup.connector.id)?;
        (vault.get(actor, source, &name)?, client, secret)
    };
    let bundle = Grant::parse(&current)
        .map_err(|_| OauthError::Invalid(format!("the stored grant '{name}' is not a grant")))?;
    let Some(refresh) = bundle.refresh_token.as_deref() else {
        if !only_expiring {
            return Ok(false);
        }
        return Err(OauthError::Refused(format!(
            "the grant '{name}' has expired and holds no refresh token; authorize again"
        )));
    };
    let form = form(&[
        ("grant_type", b"refresh_token"),
        ("refresh_token", refresh.as_bytes()),
        ("client_id", client.client_id.as_bytes()),
    ]);
    let grant = exchange(&client, secret.as_ref(), form, Some(bundle), egress_allow).await?;
    vault.lock().expect("vault lock").set(
        actor,
        source,
        NewCredential {
            name: &name,
            class: crate::vault::CredentialClass::Oauth,
            provenance: Provenance::OauthRefresh,
            value: grant,
            expires_at: None,
        },
    )?;
    Ok(true)
}

/// A token endpoint's answer (RFC 6749 §5.1, §5.2).
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

impl Drop for TokenResponse {
    fn drop(&mut self) {
        if let Some(token) = self.access_token.as_mut() {
            token.zeroize();
        }
        if let Some(token) = self.refresh_token.as_mut() {
            token.zeroize();
        }
    }
}

/// Posts `form` to the client's token endpoint and returns the new grant
/// as the stored bundle. A refresh that returns no new refresh token keeps
/// the previous one.
async fn exchange(
    client: &ClientView,
    secret: Option<&Secret>,
    mut form: Vec<u8>,
    previous: Option<Grant>,
    egress_allow: &[SocketAddr],
) -> Result<Secret, OauthError> {
    // A confidential client authenticates with HTTP Basic (RFC 6749 §2.3.1).
    let authorization = secret.map(|secret| {
        use base64::Engine;
        let mut pair = zeroize::Zeroizing::new(form_encode(client.client_id.as_bytes()));
        pair.push(b':');
        pair.extend_from_slice(&form_encode(secret.expose_secret()));
        let mut header = zeroize::Zeroizing::new(String::from("Basic "));
        base64::engine::general_purpose::STANDARD.encode_string(&pair[..], &mut header);
        http::HeaderValue::from_str(&header).expect("base64 is a header value")
    });
    let sent = crate::runtime::egress::post_form(
        &client.token_url,
        authorization,
        form.clone(),
        egress_allow,
        MAX_TOKEN_RESPONSE,
    )
    .await;
    form.zeroize();
    let (status, mut body) = sent.map_err(|e| match e {
        // The endpoint may not be reached at all: no retry helps.
        crate::runtime::egress::PostError::Refused(why) => {
            OauthError::Invalid(format!("the token endpoint is refused: {why}"))
        }
        crate::runtime::egress::PostError::Failed(why) => OauthError::Transient(why),
    })?;
    let parsed: Result<TokenResponse, _> = serde_json::from_slice(&body);
    body.zeroize();
    let mut response = match parsed {
        Ok(response) => response,
        Err(_) if status >= 500 => {
            return Err(OauthError::Transient(format!(
                "the token endpoint answered {status}"
            )));
        }
        Err(_) => {
            return Err(OauthError::Transient(format!(
                "the token endpoint answered {status} without a JSON token response"
            )));
        }
    };
    if let Some(error) = response.error.take() {
        let said = match response.error_description.take() {
            Some(description) => format!("{error}: {description}"),
            None => error,
        };
        return Err(if status >= 500 {
            OauthError::Transient(said)
        } else {
            OauthError::Refused(said)
        });
    }
    let Some(access_token) = response.access_token.take().filter(|t| !t.is_empty()) else {
        return Err(OauthError::Transient(format!(
            "the token endpoint answered {status} without an access token"
        )));
    };
    let refresh_token = response
        .refresh_token
        .take()
        .or_else(|| previous.as_ref().and_then(|p| p.refresh_token.clone()));
    let grant = Grant {
        access_token,
        refresh_token,
        // Whatever the provider says: saturated, never wrapped.
        expires_at: response
            .expires_in
            .map(|s| (now_ms() / 1000).saturating_add(s.max(0))),
    };
    Ok(grant.to_secret())
}

/// The credential a connector's grant is stored as: its first
/// `oauth`-class field.
pub(crate) fn grant_field(manifest: &crate::contract::Manifest) -> Option<String> {
    manifest
        .credentials
        .iter()
        .find(|c| c.class == CredentialClass::Oauth)
        .map(|c| c.name.clone())
}

fn client_secret(vault: &Vault, connector: &str) -> Result<Option<Secret>, OauthError> {
    let conn = vault.store().conn();
    let sealed: Option<Aside> = conn
        .query_row(
            "SELECT kek_version, wrapped_key, sealed_secret FROM oauth_clients
             WHERE connector_id = ?1 AND wrapped_key IS NOT NULL",
            [connector],
            |r| Aside::from_row(r, 0),
        )
        .optional()?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    vault
        .open_aside(conn, AsideOf::OauthClient { connector }, &sealed)?
        .map(Some)
        .map_err(|e| {
            OauthError::Invalid(format!(
                "the client secret of connector {connector} does not open ({e}); register the client again"
            ))
        })
}

/// `BASE64URL(SHA256(verifier))` (RFC 7636 §4.2).
fn pkce_challenge(verifier: &Secret) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.expose_secret()))
}

fn form_encode(value: &[u8]) -> Vec<u8> {
    url::form_urlencoded::byte_serialize(value)
        .flat_map(str::bytes)
        .collect()
}

/// An `application/x-www-form-urlencoded` body.
fn form(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            body.push(b'&');
        }
        body.extend_from_slice(key.as_bytes());
        body.push(b'=');
        body.extend_from_slice(&form_encode(value));
    }
    body
}

/// Where this server takes the provider's callback.
pub const CALLBACK_PATH: &str = "/v1/oauth/callback";

/// The callback URL of a server whose public base URL is `base`.
pub fn callback_url(base: &str) -> String {
    format!("{}{CALLBACK_PATH}", base.trim_end_matches('/'))
}

/// The redirect URI is this server's callback, at the address the owner's
/// browser reaches it by (its public base URL): the provider sends the
/// code nowhere else.
fn check_redirect(value: &str) -> Result<(), OauthError> {
    let url = url::Url::parse(value)
        .map_err(|e| OauthError::Invalid(format!("--redirect-uri '{value}' is not a URL ({e})")))?;
    if url.path() != CALLBACK_PATH || url.query().is_some() {
        return Err(OauthError::Invalid(format!(
            "--redirect-uri must be this server's callback, {CALLBACK_PATH} at the address the owner's browser reaches it by (e.g. https://sourcebox.example{CALLBACK_PATH}, or http://127.0.0.1:7780{CALLBACK_PATH}); nothing was stored"
        )));
    }
    Ok(())
}

/// An endpoint URL: https, or plain http only where `allowed` has the
/// address (the browser-facing URLs may be plain http to loopback, where a
/// provider sends a desktop's browser back).
fn check_url(
    flag: &str,
    value: &str,
    allowed: &[SocketAddr],
    browser: bool,
) -> Result<(), OauthError> {
    let url = url::Url::parse(value)
        .map_err(|e| OauthError::Invalid(format!("{flag} '{value}' is not a URL ({e})")))?;
    // Refused without quoting the URL, which may hold a password.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(OauthError::Invalid(format!(
            "{flag} for {} carries user information (user:password@); give it without; nothing was stored",
            url.host_str().unwrap_or("its host")
        )));
    }
    if url.fragment().is_some() || url.host_str().is_none_or(str::is_empty) {
        return Err(OauthError::Invalid(format!(
            "{flag} '{value}' must be an absolute URL with a host and no fragment"
        )));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    // Where it can be known now: an address the host may not reach is
    // refused at registration, not at every use.
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(ip) = literal
        && !browser
        && crate::runtime::egress::forbidden(ip)
        && !allowed.contains(&SocketAddr::new(ip, port))
    {
        return Err(OauthError::Invalid(format!(
            "{flag} '{value}' is a non-public address the host may not reach; give the provider's public endpoint, or allow it with --egress-allow {ip}:{port}; nothing was stored"
        )));
    }
    let plain_ok = match url.host() {
        Some(url::Host::Ipv4(ip)) => {
            (browser && ip.is_loopback()) || allowed.contains(&SocketAddr::new(ip.into(), port))
        }
        Some(url::Host::Ipv6(ip)) => {
            (browser && ip.is_loopback()) || allowed.contains(&SocketAddr::new(ip.into(), port))
        }
        Some(url::Host::Domain(host)) => browser && host == "localhost",
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if plain_ok => Ok(()),
        _ => Err(OauthError::Invalid(format!(
            "{flag} '{value}' must be https{}",
            if browser {
                " (plain http only to loopback)"
            } else {
                "; plain http is accepted only for an address allowed with --egress-allow ADDR:PORT"
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redirect_uri_is_this_servers_callback() {
        for ok in [
            "https://sourcebox.example/v1/oauth/callback",
            "http://127.0.0.1:7780/v1/oauth/callback",
        ] {
            assert!(check_redirect(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://attacker.example/collect",
            "https://sourcebox.example/v1/oauth/callback/",
            "https://sourcebox.example/v1/oauth/callback?next=x",
            "https://sourcebox.example/",
        ] {
            assert!(check_redirect(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_urls_with_user_information_are_refused_unquoted() {
        for url in [
            "https://user:hunter2@provider.example/token",
            "https://user@provider.example/token",
            "https://:hunter2@provider.example/token",
        ] {
            let e = check_url("--token-url", url, &[], false).expect_err(url);
            let text = e.to_string();
            assert!(text.contains("user information"), "{text}");
            assert!(
                !text.contains("hunter2") && !text.contains("user@"),
                "{text}"
            );
        }
        assert!(check_url("--token-url", "https://provider.example/token", &[], false).is_ok());
    }

    #[test]
    fn a_token_endpoint_at_a_forbidden_address_is_refused_at_registration() {
        for url in [
            "https://169.254.169.254/token",
            "https://10.0.0.5/token",
            "https://[::1]/token",
        ] {
            let e = check_url("--token-url", url, &[], false).expect_err(url);
            assert!(e.to_string().contains("non-public address"), "{e}");
        }
        let allowed: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
        assert!(
            check_url(
                "--token-url",
                "https://127.0.0.1:8443/token",
                &[allowed],
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn pkce_challenge_is_rfc_7636_s256() {
        // RFC 7636 appendix B.
        let verifier = Secret::from_slice(b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            pkce_challenge(&verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn form_bodies_are_url_encoded() {
        assert_eq!(
            form(&[("a", b"x y"), ("b", b"1&2=3")]),
            b"a=x+y&b=1%262%3D3".to_vec()
        );
    }

    #[test]
    fn endpoint_urls() {
        let fixture: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        assert!(check_url("t", "https://example.com/token", &[], false).is_ok());
        assert!(check_url("t", "http://example.com/token", &[], false).is_err());
        assert!(check_url("t", "http://127.0.0.1:9/token", &[], false).is_err());
        assert!(check_url("t", "http://127.0.0.1:9/token", &[fixture], false).is_ok());
        assert!(check_url("r", "http://127.0.0.1:7780/v1/oauth/callback", &[], true).is_ok());
        assert!(check_url("r", "http://example.com/cb", &[], true).is_err());
        assert!(check_url("r", "https://example.com/cb#x", &[], true).is_err());
        assert!(check_url("r", "not a url", &[], true).is_err());
    }
}
