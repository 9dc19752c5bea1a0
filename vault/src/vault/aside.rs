//! Secrets kept beside the credentials table — an interaction's answer, an
//! OAuth authorization's PKCE verifier, an OAuth client's secret — each
//! sealed under a data key of its own, bound to its row, and re-wrapped
//! with the credentials when the KEK rotates.

use rusqlite::{Connection, params};

use super::envelope::{self, EnvelopeError};
use super::error::VaultError;
use super::keyring::Keyring;
use super::secret::{Key256, Secret};
use crate::store::{SourceRef, now_ms, source_ref};

/// What a value kept aside belongs to: the row its sealing is bound to.
#[derive(Debug, Clone, Copy)]
pub enum AsideOf<'a> {
    /// The owner's answer to an interaction of a source.
    Answer {
        /// The source that asked.
        source: &'a SourceRef,
        /// The interaction answered.
        interaction: &'a str,
    },
    /// The client secret of a connector's OAuth client.
    OauthClient {
        /// The connector the client is registered for.
        connector: &'a str,
    },
    /// The PKCE verifier of a started OAuth authorization.
    OauthVerifier {
        /// The source's owner.
        owner_id: i64,
        /// The source authorizing.
        source_id: i64,
        /// The pending authorization.
        id: &'a str,
    },
}

impl AsideOf<'_> {
    /// The (data key, value) domains: they keep the key's and the value's
    /// associated data apart, and each kind of value from the others.
    fn domains(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Self::Answer { .. } => (b"sourcebox/answer-key/v1\0", b"sourcebox/answer/v1\0"),
            Self::OauthClient { .. } => (
                b"sourcebox/oauth-client-key/v1\0",
                b"sourcebox/oauth-client-secret/v1\0",
            ),
            Self::OauthVerifier { .. } => (
                b"sourcebox/oauth-verifier-key/v1\0",
                b"sourcebox/oauth-verifier/v1\0",
            ),
        }
    }

    /// The associated data of `domain` bound to this row.
    fn aad(self, domain: &[u8]) -> Vec<u8> {
        match self {
            Self::Answer {
                source,
                interaction,
            } => bound_to(domain, source, interaction, 1),
            Self::OauthClient { connector } => [domain, connector.as_bytes()].concat(),
            Self::OauthVerifier {
                owner_id,
                source_id,
                id,
            } => {
                let mut aad = domain.to_vec();
                aad.extend_from_slice(&owner_id.to_le_bytes());
                aad.extend_from_slice(&source_id.to_le_bytes());
                aad.extend_from_slice(id.as_bytes());
                aad
            }
        }
    }
}

/// Associated data binding a sealed value or wrapped key to a row of a
/// source: a credential (by name and version) or an interaction's answer.
pub(super) fn bound_to(domain: &[u8], source: &SourceRef, name: &str, version: i64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(domain.len() + 24 + name.len());
    aad.extend_from_slice(domain);
    aad.extend_from_slice(&source.owner_id.to_le_bytes());
    aad.extend_from_slice(&source.source_id.to_le_bytes());
    aad.extend_from_slice(&version.to_le_bytes());
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// A value kept aside: sealed under a data key of its own, wrapped by a
/// KEK version.
#[derive(Debug)]
pub struct Aside {
    /// The KEK version that wraps `wrapped_key`.
    pub kek_version: i64,
    /// The data key, wrapped.
    pub wrapped_key: Vec<u8>,
    /// The value, sealed under the data key.
    pub sealed: Vec<u8>,
}

impl Aside {
    /// Reads (kek_version, wrapped key, sealed value) from columns
    /// `first`, `first + 1` and `first + 2` of a row.
    pub fn from_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Self> {
        Ok(Self {
            kek_version: r.get(first)?,
            wrapped_key: r.get(first + 1)?,
            sealed: r.get(first + 2)?,
        })
    }
}

/// Seals `value` for `of` under a fresh data key wrapped by the current
/// KEK.
pub(super) fn seal(
    keyring: &Keyring,
    conn: &Connection,
    of: AsideOf<'_>,
    value: &[u8],
) -> Result<Aside, VaultError> {
    let (key_domain, value_domain) = of.domains();
    let (kek_version, wrapper) = keyring.current(conn)?;
    let data_key = Key256::generate();
    Ok(Aside {
        kek_version,
        sealed: envelope::seal(&data_key, value, &of.aad(value_domain)),
        wrapped_key: wrapper.wrap(&data_key, &of.aad(key_domain))?,
    })
}

/// Opens what [`seal`] sealed for the same row. The inner error is why it
/// cannot be opened (another row's value, a destroyed KEK).
pub(super) fn open(
    keyring: &Keyring,
    conn: &Connection,
    of: AsideOf<'_>,
    aside: &Aside,
) -> Result<Result<Secret, EnvelopeError>, VaultError> {
    let (key_domain, value_domain) = of.domains();
    let data_key = match keyring
        .wrapper(conn, aside.kek_version)?
        .unwrap(&aside.wrapped_key, &of.aad(key_domain))
    {
        Err(VaultError::KeyUnwrap(reason)) => return Ok(Err(reason)),
        other => other?,
    };
    Ok(envelope::open(
        &data_key,
        &aside.sealed,
        &of.aad(value_domain),
    ))
}

/// The data key of `of`, wrapped by KEK `old`, wrapped under KEK `version`
/// instead; `None` when it cannot be unwrapped any more (the value was
/// unreadable already, and whoever waits for it fails on it).
fn rewrap(
    keyring: &Keyring,
    conn: &Connection,
    of: AsideOf<'_>,
    old: i64,
    wrapped: &[u8],
    version: i64,
) -> Result<Option<Vec<u8>>, VaultError> {
    let key_aad = of.aad(of.domains().0);
    let Ok(key) = keyring.wrapper(conn, old)?.unwrap(wrapped, &key_aad) else {
        return Ok(None);
    };
    Ok(Some(keyring.wrapper(conn, version)?.wrap(&key, &key_aad)?))
}

/// Re-wraps every value kept aside under KEK `version`, inside the
/// rotation's transaction: pending answers, OAuth client secrets, and the
/// verifiers of authorizations still pending (an owner who is at the
/// provider while the KEK rotates can still finish). Only the data keys
/// change; the sealed values stay.
pub(super) fn rewrap_all(
    keyring: &Keyring,
    conn: &Connection,
    version: i64,
) -> Result<(), VaultError> {
    // Pending interaction answers are few and short-lived.
    let answers: Vec<(SourceRef, String, i64, Vec<u8>)> = conn
        .prepare(
            "SELECT o.id, o.name, s.id, s.name, a.interaction_id, a.kek_version, a.wrapped_key
             FROM interaction_answers a JOIN sources s ON s.id = a.source_id JOIN owners o ON o.id = a.owner_id
             WHERE a.kek_version != ?1",
        )?
        .query_map([version], |r| {
            Ok((source_ref(r)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })?
        .collect::<Result<_, _>>()?;
    for (source, interaction, old, wrapped) in answers {
        let of = AsideOf::Answer {
            source: &source,
            interaction: &interaction,
        };
        if let Some(rewrapped) = rewrap(keyring, conn, of, old, &wrapped, version)? {
            conn.execute(
                "UPDATE interaction_answers SET kek_version = ?2, wrapped_key = ?3 WHERE interaction_id = ?1",
                params![interaction, version, rewrapped],
            )?;
        }
    }
    let clients: Vec<(String, i64, Vec<u8>)> = conn
        .prepare(
            "SELECT connector_id, kek_version, wrapped_key FROM oauth_clients
             WHERE wrapped_key IS NOT NULL AND kek_version != ?1",
        )?
        .query_map([version], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (connector, old, wrapped) in clients {
        let of = AsideOf::OauthClient {
            connector: &connector,
        };
        if let Some(rewrapped) = rewrap(keyring, conn, of, old, &wrapped, version)? {
            conn.execute(
                "UPDATE oauth_clients SET kek_version = ?2, wrapped_key = ?3 WHERE connector_id = ?1",
                params![connector, version, rewrapped],
            )?;
        }
    }
    let pending: Vec<(String, i64, i64, i64, Vec<u8>)> = conn
        .prepare(
            "SELECT id, owner_id, source_id, kek_version, wrapped_key
             FROM oauth_pending WHERE kek_version != ?1 AND expires_at >= ?2",
        )?
        .query_map(params![version, now_ms()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, owner_id, source_id, old, wrapped) in pending {
        let of = AsideOf::OauthVerifier {
            owner_id,
            source_id,
            id: &id,
        };
        if let Some(rewrapped) = rewrap(keyring, conn, of, old, &wrapped, version)? {
            conn.execute(
                "UPDATE oauth_pending SET kek_version = ?2, wrapped_key = ?3 WHERE id = ?1",
                params![id, version, rewrapped],
            )?;
        }
    }
    Ok(())
}
