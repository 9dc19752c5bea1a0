//! A connector's run limits: what the operator set, within the host's bounds, over the defaults.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::error::CatalogError;
use super::installed::latest;
use crate::runtime::Limits;
use crate::store::Store;

/// Run limits the operator set for one connector; a limit left `None`
/// keeps the host's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Seconds a run may take, its waits for the owner left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_secs: Option<u64>,
    /// Seconds a run may take in all, waits for the owner included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_secs: Option<u64>,
    /// Questions a run may ask the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub questions: Option<u32>,
    /// Linear memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Records emitted per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Bytes of records emitted per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_bytes: Option<u64>,
    /// Outbound HTTP requests per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_requests: Option<u64>,
    /// Bytes of HTTP response bodies per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_response_bytes: Option<u64>,
    /// Log lines per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_lines: Option<u64>,
    /// Bytes of log lines per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
    /// Largest checkpoint, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_bytes: Option<u64>,
    /// Largest record, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_size: Option<u64>,
    /// Largest session a connector may store, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_bytes: Option<u64>,
    /// Largest OAuth grant a connector may store, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_bytes: Option<u64>,
}

/// The most a connector may be given: a day of run time, 4 GiB of memory.
pub(super) const MAX_TIME_SECS: u64 = 24 * 3600;

pub(super) const MAX_MEMORY: u64 = 4 << 30;

pub(super) const MIN_MEMORY: u64 = 1 << 20;

impl LimitOverrides {
    /// `base` with these limits in place of its own.
    pub fn apply(&self, base: &Limits) -> Limits {
        let time = self
            .time_secs
            .map_or(base.time, std::time::Duration::from_secs);
        Limits {
            time,
            // A longer time limit set for a connector takes the wall clock
            // with it.
            wall: match (self.wall_secs, self.time_secs) {
                (Some(wall), _) => std::time::Duration::from_secs(wall),
                (None, Some(_)) => base.wall.max(time),
                (None, None) => base.wall,
            },
            questions: self.questions.unwrap_or(base.questions),
            log_lines: self.log_lines.unwrap_or(base.log_lines),
            log_bytes: self.log_bytes.unwrap_or(base.log_bytes),
            checkpoint_bytes: self.checkpoint_bytes.unwrap_or(base.checkpoint_bytes),
            record_size: self.record_size.unwrap_or(base.record_size),
            session_bytes: self.session_bytes.unwrap_or(base.session_bytes),
            oauth_bytes: self.oauth_bytes.unwrap_or(base.oauth_bytes),
            memory: self
                .memory_bytes
                .map_or(base.memory, |m| usize::try_from(m).unwrap_or(usize::MAX)),
            records: self.records.unwrap_or(base.records),
            record_bytes: self.record_bytes.unwrap_or(base.record_bytes),
            http_requests: self.http_requests.unwrap_or(base.http_requests),
            http_response_bytes: self.http_response_bytes.unwrap_or(base.http_response_bytes),
            ..base.clone()
        }
    }

    /// These limits, with each one `newer` sets taking its place.
    pub fn updated(&self, newer: &Self) -> Self {
        Self {
            time_secs: newer.time_secs.or(self.time_secs),
            wall_secs: newer.wall_secs.or(self.wall_secs),
            questions: newer.questions.or(self.questions),
            log_lines: newer.log_lines.or(self.log_lines),
            log_bytes: newer.log_bytes.or(self.log_bytes),
            checkpoint_bytes: newer.checkpoint_bytes.or(self.checkpoint_bytes),
            record_size: newer.record_size.or(self.record_size),
            session_bytes: newer.session_bytes.or(self.session_bytes),
            oauth_bytes: newer.oauth_bytes.or(self.oauth_bytes),
            memory_bytes: newer.memory_bytes.or(self.memory_bytes),
            records: newer.records.or(self.records),
            record_bytes: newer.record_bytes.or(self.record_bytes),
            http_requests: newer.http_requests.or(self.http_requests),
            http_response_bytes: newer.http_response_bytes.or(self.http_response_bytes),
        }
    }

    /// Every limit of `limits`, as overrides (to show the effective ones).
    pub fn all(limits: &Limits) -> Self {
        Self {
            time_secs: Some(limits.time.as_secs()),
            wall_secs: Some(limits.wall.as_secs()),
            questions: Some(limits.questions),
            log_lines: Some(limits.log_lines),
            log_bytes: Some(limits.log_bytes),
            checkpoint_bytes: Some(limits.checkpoint_bytes),
            record_size: Some(limits.record_size),
            session_bytes: Some(limits.session_bytes),
            oauth_bytes: Some(limits.oauth_bytes),
            memory_bytes: Some(limits.memory as u64),
            records: Some(limits.records),
            record_bytes: Some(limits.record_bytes),
            http_requests: Some(limits.http_requests),
            http_response_bytes: Some(limits.http_response_bytes),
        }
    }

    fn check(&self) -> Result<(), CatalogError> {
        let refuse = |what: &str| Err(CatalogError::Setup(format!("{what}; nothing was changed")));
        if self.time_secs.is_some_and(|t| t == 0 || t > MAX_TIME_SECS) {
            return refuse("the time limit must be between 1 s and 24 h");
        }
        if self.wall_secs.is_some_and(|t| t == 0 || t > MAX_TIME_SECS) {
            return refuse("the wall-clock limit must be between 1 s and 24 h");
        }
        if self
            .memory_bytes
            .is_some_and(|m| !(MIN_MEMORY..=MAX_MEMORY).contains(&m))
        {
            return refuse("the memory limit must be between 1 MiB and 4 GiB");
        }
        for (name, value) in [
            ("records", self.records),
            ("record bytes", self.record_bytes),
            ("HTTP requests", self.http_requests),
            ("HTTP response bytes", self.http_response_bytes),
            ("log lines", self.log_lines),
            ("log bytes", self.log_bytes),
            ("checkpoint bytes", self.checkpoint_bytes),
            ("record size", self.record_size),
            ("session bytes", self.session_bytes),
            ("OAuth bytes", self.oauth_bytes),
        ] {
            if value == Some(0) {
                return refuse(&format!("the {name} limit must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The limits the operator set for connector `id` (every version).
pub fn connector_limits(store: &Store, id: &str) -> Result<LimitOverrides, CatalogError> {
    let text: Option<String> = store
        .conn()
        .prepare_cached("SELECT limits FROM connector_limits WHERE connector_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    match text {
        None => Ok(LimitOverrides::default()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| CatalogError::Setup(format!("stored limits of {id}: {e}"))),
    }
}

/// Sets the run limits of connector `id` (an installed one); the default
/// (all `None`) removes them.
pub fn set_connector_limits(
    store: &Store,
    id: &str,
    limits: &LimitOverrides,
) -> Result<(), CatalogError> {
    latest(store, id)?;
    limits.check()?;
    if *limits == LimitOverrides::default() {
        store
            .conn()
            .execute("DELETE FROM connector_limits WHERE connector_id = ?1", [id])?;
    } else {
        store.conn().execute(
            "INSERT OR REPLACE INTO connector_limits (connector_id, limits) VALUES (?1, ?2)",
            params![id, serde_json::to_string(limits).expect("limits serialize")],
        )?;
    }
    Ok(())
}
