//! What the vault keeps of a credential besides its value: its class,
//! where it came from, who acts on it, and its metadata as listed
//! (nothing decrypted).

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use serde::Serialize;

use super::error::VaultError;
use super::secret::Secret;
use crate::store::{SourceRef, Store};

/// What kind of secret a credential is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialClass {
    /// A password for an interactive login.
    Password,
    /// An API key, personal access token or app password.
    Token,
    /// Cookies or browser storage state.
    Session,
    /// A TOTP/HOTP seed.
    OtpSeed,
    /// An OAuth bundle: JSON with `access_token`, optional `refresh_token`
    /// and optional `expires_at` (Unix seconds).
    Oauth,
}

/// Where a credential value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Provenance {
    /// Entered by the owner (CLI or API).
    Owner,
    /// Answered by the owner in an interaction.
    Interaction,
    /// Obtained through an OAuth grant.
    OauthGrant,
    /// Refreshed by the host with the OAuth refresh token.
    OauthRefresh,
    /// Refreshed by the connector.
    ConnectorRefresh,
    /// Imported from a vault backup.
    Imported,
}

macro_rules! string_enum {
    ($ty:ty { $($variant:ident = $text:literal),* $(,)? }) => {
        impl $ty {
            /// The stored and displayed name.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
        }
        impl FromStr for $ty {
            type Err = VaultError;
            fn from_str(s: &str) -> Result<Self, VaultError> {
                match s {
                    $($text => Ok(Self::$variant),)*
                    other => Err(VaultError::Invalid(format!(
                        "unknown {} '{other}'; expected one of: {}",
                        stringify!($ty).to_lowercase(),
                        [$($text),*].join(", ")
                    ))),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

string_enum!(CredentialClass { Password = "password", Token = "token", Session = "session", OtpSeed = "otp-seed", Oauth = "oauth" });

string_enum!(Provenance { Owner = "owner", Interaction = "interaction", OauthGrant = "oauth-grant", OauthRefresh = "oauth-refresh", ConnectorRefresh = "connector-refresh", Imported = "imported" });

impl Provenance {
    /// A refreshed value of a credential the owner already gave: it
    /// neither clears a needs-reauth state nor makes a verification stale.
    pub fn is_refresh(self) -> bool {
        matches!(self, Self::OauthRefresh | Self::ConnectorRefresh)
    }
}

/// Who is asking, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// `owner:cli`, later `run:<id>` and API principals.
    pub name: &'a str,
    /// The run on whose behalf, if any.
    pub run_id: Option<&'a str>,
}

impl Actor<'static> {
    /// The owner at the command line.
    pub const OWNER_CLI: Actor<'static> = Actor {
        name: "owner:cli",
        run_id: None,
    };
}

/// A credential's metadata: everything but the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CredentialMeta {
    /// Source name.
    pub source: String,
    /// Credential name.
    pub name: String,
    /// Class.
    pub class: CredentialClass,
    /// Where the value came from.
    pub provenance: Provenance,
    /// Incremented by every write of a new value.
    pub version: i64,
    /// First stored, ms since the Unix epoch.
    pub created_at: i64,
    /// Last new value, ms since the Unix epoch.
    pub rotated_at: i64,
    /// When the owner last gave its value (a refresh keeps it), ms since
    /// the Unix epoch.
    pub given_at: i64,
    /// Expiry, if known.
    pub expires_at: Option<i64>,
    /// Revocation time; a revoked credential never resolves.
    pub revoked_at: Option<i64>,
    /// A masked hint that reveals nothing of the value but its length.
    pub hint: String,
}

/// A value to store.
#[derive(Debug)]
pub struct NewCredential<'a> {
    /// Credential name, declared by the connector.
    pub name: &'a str,
    /// Class.
    pub class: CredentialClass,
    /// Where it came from.
    pub provenance: Provenance,
    /// The value.
    pub value: Secret,
    /// Expiry, if known; an OAuth bundle's `expires_at` fills it.
    pub expires_at: Option<i64>,
}

/// Outcome of a KEK rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The new KEK version.
    pub version: i64,
    /// Data keys re-wrapped under it.
    pub rewrapped: u64,
}

/// The vault's part of the owner's health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VaultHealth {
    /// The key wrapper: `local`, `passphrase` or `pkcs11`.
    pub key_wrapper: String,
    /// Whether it wrapped and unwrapped a fresh key just now.
    pub key_wrapper_reachable: bool,
    /// Why it could not, if it could not.
    pub key_wrapper_problem: Option<String>,
    /// Whether the newest audit row hashes to what it claims and links to
    /// the row before it.
    pub audit_head_verified: bool,
    /// Rows in the audit chain, when its head holds.
    pub audit_rows: u64,
}

pub(super) const META_SELECT: &str = "SELECT s.name, c.name, c.class, c.provenance, c.version, c.created_at, c.rotated_at,
    c.expires_at, c.revoked_at, c.value_len, COALESCE(c.given_at, c.created_at) FROM credentials c JOIN sources s ON s.id = c.source_id";

pub(super) fn meta_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<CredentialMeta, VaultError>> {
    let class: String = r.get(2)?;
    let provenance: String = r.get(3)?;
    let len: i64 = r.get(9)?;
    let revoked_at: Option<i64> = r.get(8)?;
    Ok((|| {
        Ok(CredentialMeta {
            source: r.get(0)?,
            name: r.get(1)?,
            class: class.parse()?,
            provenance: provenance.parse()?,
            version: r.get(4)?,
            created_at: r.get(5)?,
            rotated_at: r.get(6)?,
            expires_at: r.get(7)?,
            revoked_at,
            given_at: r.get(10)?,
            hint: if revoked_at.is_some() {
                "revoked".into()
            } else {
                format!("•••• {len} bytes")
            },
        })
    })())
}

/// Credential metadata (never values, nothing decrypted or audited) of one
/// source or all, read on any connection to the store: what a setup view
/// needs, without the vault.
pub fn metadata(
    store: &Store,
    source: Option<&SourceRef>,
) -> Result<Vec<CredentialMeta>, VaultError> {
    // Two statements: one source's rows come straight off the
    // (source_id, name) index, already in order, without reading other
    // sources' rows (a plan fixed for `?1 IS NULL OR ...` would scan them
    // all and sort).
    match source {
        Some(source) => {
            static ONE: LazyLock<String> =
                LazyLock::new(|| format!("{META_SELECT} WHERE c.source_id = ?1 ORDER BY c.name"));
            let mut stmt = store.conn().prepare_cached(&ONE)?;
            let rows = stmt.query_map([source.source_id], meta_row)?;
            rows.map(|r| r?).collect()
        }
        None => {
            let mut stmt = store
                .conn()
                .prepare_cached(&format!("{META_SELECT} ORDER BY s.name, c.name"))?;
            let rows = stmt.query_map([], meta_row)?;
            rows.map(|r| r?).collect()
        }
    }
}
