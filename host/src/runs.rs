//! The launch seam: the one way a connector runs, and the record of every
//! run.
//!
//! [`launch`] resolves everything at execution time from the store and the
//! vault: the source's connector version, its setup values, and whether
//! its required credentials are present (checked without decrypting). If
//! they are not, the launch is refused with a typed failure, recorded on the
//! run, and no instance is created. There is no fallback to anything else.

use std::sync::{Arc, Mutex};

use rusqlite::params;
use serde::Serialize;

use crate::catalog::{self, CatalogError};
use crate::runtime::bindings::sourcebox::connector::types::ConnectorError;
use crate::runtime::{Binding, Call, Limits, Outcome, RunFailure, Runtime, RuntimeError};
use crate::store::{Store, StoreError, now_ms};
use crate::vault::{Vault, VaultError};

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The owner asked for it.
    Manual,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
        }
    }
}

/// The typed reason a run failed, as stored on the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A required credential is not stored.
    CredentialsMissing,
    /// A required credential was revoked.
    CredentialRevoked,
    /// A stored credential cannot be decrypted.
    CredentialUnrecoverable,
    /// The provider refused the credentials, or they lack a permission.
    AuthRejected,
    /// A request to a host or address the run may not reach.
    EgressDenied,
    /// A time, memory, record or HTTP limit.
    ResourceExhausted,
    /// The component trapped or could not be instantiated.
    ConnectorTrap,
    /// A temporary provider failure, rate limits included.
    UpstreamTransient,
    /// The connector gave up for another reason.
    ConnectorFatal,
}

impl FailureKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialsMissing => "credentials_missing",
            Self::CredentialRevoked => "credential_revoked",
            Self::CredentialUnrecoverable => "credential_unrecoverable",
            Self::AuthRejected => "auth_rejected",
            Self::EgressDenied => "egress_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::ConnectorTrap => "connector_trap",
            Self::UpstreamTransient => "upstream_transient",
            Self::ConnectorFatal => "connector_fatal",
        }
    }

    /// The kind of a failed run.
    pub fn of(failure: &RunFailure) -> Self {
        match failure {
            RunFailure::ResourceExhausted(_) => Self::ResourceExhausted,
            RunFailure::ConnectorTrap(_) | RunFailure::Instantiation(_) => Self::ConnectorTrap,
            RunFailure::EgressDenied(_) => Self::EgressDenied,
            RunFailure::Connector(
                ConnectorError::AuthRejected(_) | ConnectorError::AuthInsufficient(_),
            ) => Self::AuthRejected,
            RunFailure::Connector(
                ConnectorError::RateLimited(_) | ConnectorError::UpstreamTransient(_),
            ) => Self::UpstreamTransient,
            RunFailure::CredentialRevoked(_) => Self::CredentialRevoked,
            RunFailure::CredentialUnrecoverable(_) => Self::CredentialUnrecoverable,
            RunFailure::Connector(ConnectorError::Fatal(_)) => Self::ConnectorFatal,
        }
    }
}

/// Why a launch could not even be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The source or its connector.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The component could not be loaded.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A run as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Source name.
    pub source: String,
    /// Why it started.
    pub trigger: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Typed failure kind, if it failed.
    pub failure: Option<String>,
    /// What happened, in words (never a secret).
    pub detail: Option<String>,
    /// Records collected.
    pub records: u64,
    /// `id version` of the connector.
    pub connector: Option<String>,
    /// Start, ms since the Unix epoch.
    pub started_at: i64,
    /// End, ms since the Unix epoch.
    pub finished_at: Option<i64>,
}

/// Runs `source`'s connector once (`collect` of every stream) and records
/// the run, a refused launch included.
pub async fn launch(
    runtime: &Runtime,
    vault: &Arc<Mutex<Vault>>,
    source: &str,
    trigger: Trigger,
    egress_allow: &[std::net::SocketAddr],
) -> Result<RunRecord, LaunchError> {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the operating system's random source failed");
    let run_id = hex::encode(id);
    let (setup, component) = {
        let vault = vault.lock().expect("vault lock");
        let setup = catalog::source_setup(vault.store(), source)?;
        let connector = format!("{} {}", setup.connector.id, setup.connector.version);
        record_start(
            vault.store(),
            &run_id,
            setup.source.source_id,
            trigger,
            &connector,
        )?;
        let required: Vec<&str> = setup
            .connector
            .manifest
            .credentials
            .iter()
            .filter(|c| c.required)
            .map(|c| c.name.as_str())
            .collect();
        let names = vault.missing(&setup.source, &required)?;
        if !names.is_empty() {
            let revoked = vault
                .list(Some(&setup.source))?
                .iter()
                .any(|m| m.revoked_at.is_some() && names.contains(&m.name));
            let kind = if revoked {
                FailureKind::CredentialRevoked
            } else {
                FailureKind::CredentialsMissing
            };
            let detail = format!(
                "source '{source}' needs {} stored; use `sourcebox credential set {source} NAME --class CLASS`",
                names.join(", ")
            );
            record_end(vault.store(), &run_id, Err((kind, &detail)), 0)?;
            return Ok(find(vault.store(), &run_id)?);
        }
        let component = catalog::component(vault.store(), &setup.connector)?;
        (setup, component)
    };
    let result = match runtime.load(&component).await {
        Ok(loaded) => {
            let binding = Binding {
                vault: Arc::clone(vault),
                source: setup.source,
                setup: setup.setup,
                run_id: run_id.clone(),
                limits: Limits::default(),
                egress_allow: egress_allow.to_vec(),
            };
            runtime
                .run(&loaded, binding, Call::Collect(Vec::new()))
                .await
        }
        Err(e) => Err(RunFailure::Instantiation(e.to_string())),
    };
    let vault = vault.lock().expect("vault lock");
    match &result {
        Ok(Outcome::Collected(summary)) => {
            record_end(vault.store(), &run_id, Ok(()), summary.records)?
        }
        Ok(_) => record_end(vault.store(), &run_id, Ok(()), 0)?,
        Err(failure) => record_end(
            vault.store(),
            &run_id,
            Err((FailureKind::of(failure), &failure.to_string())),
            0,
        )?,
    }
    Ok(find(vault.store(), &run_id)?)
}

fn record_start(
    store: &Store,
    id: &str,
    source_id: i64,
    trigger: Trigger,
    connector: &str,
) -> Result<(), StoreError> {
    store.conn().execute(
        "INSERT INTO runs (id, source_id, trigger, state, connector, started_at) VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
        params![id, source_id, trigger.as_str(), connector, now_ms()],
    )?;
    Ok(())
}

fn record_end(
    store: &Store,
    id: &str,
    result: Result<(), (FailureKind, &str)>,
    records: u64,
) -> Result<(), StoreError> {
    let (state, failure, detail) = match result {
        Ok(()) => ("succeeded", None, None),
        Err((kind, detail)) => ("failed", Some(kind.as_str()), Some(detail)),
    };
    store.conn().execute(
        "UPDATE runs SET state = ?2, failure = ?3, detail = ?4, records = ?5, finished_at = ?6 WHERE id = ?1",
        params![id, state, failure, detail, records as i64, now_ms()],
    )?;
    Ok(())
}

const SELECT: &str = "SELECT r.id, s.name, r.trigger, r.state, r.failure, r.detail, r.records, r.connector, r.started_at, r.finished_at
     FROM runs r JOIN sources s ON s.id = r.source_id";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        source: r.get(1)?,
        trigger: r.get(2)?,
        state: r.get(3)?,
        failure: r.get(4)?,
        detail: r.get(5)?,
        records: r.get::<_, i64>(6)? as u64,
        connector: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
    })
}

fn find(store: &Store, id: &str) -> Result<RunRecord, StoreError> {
    Ok(store
        .conn()
        .query_row(&format!("{SELECT} WHERE r.id = ?1"), [id], run_row)?)
}

/// Runs of one source, or of all, newest first.
pub fn list(store: &Store, source: Option<&str>) -> Result<Vec<RunRecord>, StoreError> {
    let source_id = source
        .map(|s| store.source(s))
        .transpose()?
        .map(|s| s.source_id);
    let mut stmt = store.conn().prepare(&format!(
        "{SELECT} WHERE (?1 IS NULL OR r.source_id = ?1) ORDER BY r.started_at DESC, r.rowid DESC"
    ))?;
    let rows = stmt.query_map([source_id], run_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}
