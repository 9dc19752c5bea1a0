//! API tokens: owner tokens for the owner surface, client tokens for the
//! read surface, each scoped to one source and some of its streams. Only a
//! SHA-256 hash of a token is stored; the token itself is shown once, when
//! it is created.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, new_id, now_ms};
use crate::vault::Secret;

/// Prefix of owner tokens.
pub const OWNER_PREFIX: &str = "sbo_";
/// Prefix of client tokens.
pub const CLIENT_PREFIX: &str = "sbc_";

/// Who a presented token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The owner.
    Owner {
        /// Token id.
        id: String,
    },
    /// A client allowed to read `streams` of `source`.
    Client(Grant),
}

/// What a client token may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Grant {
    /// Token id.
    pub id: String,
    /// Source name.
    pub source: String,
    /// Source row id.
    #[serde(skip)]
    pub source_id: i64,
    /// Streams it may read.
    pub streams: Vec<String>,
    /// Label the owner gave it.
    pub label: Option<String>,
    /// Created, ms since the Unix epoch.
    pub created_at: i64,
    /// Expiry, ms since the Unix epoch.
    pub expires_at: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
}

/// A token's SHA-256, as stored: what identifies it without holding it.
pub(crate) fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// 256 random bits, base64url, after `prefix`.
pub(crate) fn fresh(prefix: &str) -> Secret {
    use base64::Engine;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).expect("the operating system's random source failed");
    let mut token = zeroize::Zeroizing::new(prefix.to_owned());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&bytes[..], &mut token);
    Secret::from_slice(token.as_bytes())
}

/// Creates the owner token if there is none yet; returns it (to be shown
/// once) or `None` when one exists.
pub fn ensure_owner_token(store: &Store) -> Result<Option<Secret>, StoreError> {
    let exists: bool = store.conn().query_row(
        "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE kind = 'owner' AND revoked_at IS NULL)",
        [],
        |r| r.get(0),
    )?;
    if exists {
        return Ok(None);
    }
    let token = fresh(OWNER_PREFIX);
    insert_owner(store.conn(), &token, now_ms())?;
    Ok(Some(token))
}

/// Stores the hash of a new owner token.
fn insert_owner(conn: &rusqlite::Connection, token: &Secret, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT INTO api_tokens (id, kind, hash, owner_id, created_at)
         SELECT ?1, 'owner', ?2, id, ?3 FROM owners WHERE name = ?4",
        params![
            new_id(),
            digest(token.expose_secret()),
            now,
            crate::store::DEFAULT_OWNER
        ],
    )
}

/// Replaces the owner token: every earlier one stops working at once, in
/// the same transaction that stores the new one. Returns the new token,
/// to be shown once.
pub fn rotate_owner(store: &Store) -> Result<Secret, StoreError> {
    let token = fresh(OWNER_PREFIX);
    store.write(|conn| {
        let now = now_ms();
        conn.execute(
            "UPDATE api_tokens SET revoked_at = ?1 WHERE kind = 'owner' AND revoked_at IS NULL",
            [now],
        )?;
        insert_owner(conn, &token, now)
    })?;
    Ok(token)
}

/// The shortest lifetime a client token may be given.
pub const MIN_CLIENT_TTL_SECS: u64 = 60;
/// The longest lifetime a client token may be given: one year. A token
/// without one lives until it is revoked.
pub const MAX_CLIENT_TTL_SECS: u64 = 365 * 24 * 3600;

/// Creates a client token for `streams` of `source`, expiring after
/// `ttl_secs` if given (between [`MIN_CLIENT_TTL_SECS`] and
/// [`MAX_CLIENT_TTL_SECS`]), else living until revoked. Returns the token
/// (shown once) and its grant; a lifetime out of range stores nothing.
pub fn create_client(
    store: &Store,
    source: &str,
    streams: &[String],
    label: Option<&str>,
    ttl_secs: Option<u64>,
) -> Result<(Secret, Grant), StoreError> {
    let src = store.source(source)?;
    let now = now_ms();
    let expires_at = match ttl_secs {
        None => None,
        Some(ttl) => Some(
            (MIN_CLIENT_TTL_SECS..=MAX_CLIENT_TTL_SECS)
                .contains(&ttl)
                .then(|| now.checked_add(ttl as i64 * 1000))
                .flatten()
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "a client token's lifetime must be between {MIN_CLIENT_TTL_SECS} and {MAX_CLIENT_TTL_SECS} seconds (it was {ttl}); leave it out for a token that lives until revoked; nothing was stored"
                    ))
                })?,
        ),
    };
    let token = fresh(CLIENT_PREFIX);
    let id = new_id();
    store.conn().execute(
        "INSERT INTO api_tokens (id, kind, hash, owner_id, source_id, streams, label, created_at, expires_at)
         VALUES (?1, 'client', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id,
            digest(token.expose_secret()),
            src.owner_id,
            src.source_id,
            serde_json::to_string(streams).expect("json"),
            label,
            now,
            expires_at
        ],
    )?;
    let grant = clients(store)?
        .into_iter()
        .find(|g| g.id == id)
        .ok_or_else(|| StoreError::NotFound(format!("client token {id} vanished")))?;
    Ok((token, grant))
}

const CLIENT_SELECT: &str =
    "SELECT t.id, s.name, s.id, t.streams, t.label, t.created_at, t.expires_at, t.revoked_at
     FROM api_tokens t JOIN sources s ON s.id = t.source_id WHERE t.kind = 'client'";

fn grant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        source: r.get(1)?,
        source_id: r.get(2)?,
        streams: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
        label: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

/// Every client token's grant, newest first.
pub fn clients(store: &Store) -> Result<Vec<Grant>, StoreError> {
    let mut stmt = store
        .conn()
        .prepare(&format!("{CLIENT_SELECT} ORDER BY t.created_at DESC"))?;
    let rows = stmt.query_map([], grant_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes a client token.
pub fn revoke_client(store: &Store, id: &str) -> Result<Grant, StoreError> {
    let changed = store.conn().execute(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND kind = 'client' AND revoked_at IS NULL",
        params![id, now_ms()],
    )?;
    let grant = store
        .conn()
        .query_row(&format!("{CLIENT_SELECT} AND t.id = ?1"), [id], grant_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no client token '{id}'")))?;
    if changed == 0 {
        return Err(StoreError::Conflict(format!(
            "client token {id} is already revoked"
        )));
    }
    Ok(grant)
}

/// Who the token whose [`digest`] is `digest` belongs to, if it is a live
/// token, and when it expires, if it does. One statement: it runs on every
/// API request the server has no kept decision for (`api::kept`).
pub(crate) fn authenticate_digest(
    store: &Store,
    digest: &[u8; 32],
) -> Result<Option<(Principal, Option<i64>)>, StoreError> {
    // The columns of CLIENT_SELECT, then the kind; a left join, so an
    // owner token (no source) is found too.
    let row = store
        .conn()
        .prepare_cached(
            "SELECT t.id, s.name, s.id, t.streams, t.label, t.created_at, t.expires_at,
                    t.revoked_at, t.kind
             FROM api_tokens t LEFT JOIN sources s ON s.id = t.source_id
             WHERE t.hash = ?1",
        )?
        .query_row([digest], |r| {
            let kind: String = r.get(8)?;
            let grant = match (kind.as_str(), r.get::<_, Option<String>>(1)?) {
                ("client", Some(_)) => Some(grant_row(r)?),
                _ => None,
            };
            let id: String = r.get(0)?;
            let expires_at: Option<i64> = r.get(6)?;
            let revoked_at: Option<i64> = r.get(7)?;
            Ok((id, kind, expires_at, revoked_at, grant))
        })
        .optional()?;
    let Some((id, kind, expires_at, revoked_at, grant)) = row else {
        return Ok(None);
    };
    if revoked_at.is_some() || expires_at.is_some_and(|at| at <= now_ms()) {
        return Ok(None);
    }
    let principal = match kind.as_str() {
        "owner" => Some(Principal::Owner { id }),
        // A client token whose source is gone grants nothing.
        _ => grant.map(Principal::Client),
    };
    Ok(principal.map(|p| (p, expires_at)))
}
