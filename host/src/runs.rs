//! The launch seam: the one way a connector runs, and the record of every
//! run.
//!
//! [`Launcher::launch`] (manual runs) and [`Launcher::execute`] (queued
//! scheduled and retry runs) both end in one function that resolves
//! everything at execution time from the store and the vault: the source's
//! connector version, its setup values, and whether its required
//! credentials are present (checked without decrypting). If they are not,
//! the launch is refused with a typed failure, recorded on the run, and no
//! instance is created. There is no fallback to anything else.
//!
//! Each process that runs connectors holds a lock file under `runners/`
//! for as long as it lives. A run whose runner's lock is free was cut off
//! (kill -9, power loss): [`recover`] marks it interrupted and expires its
//! interactions.

mod gate;
pub mod scheduler;

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::browser::Logins;
use crate::catalog::{self, CatalogError};
use crate::events::{EventKind, Events};
use crate::oauth::{self, OauthError};
use crate::runtime::bindings::sourcebox::connector::types::ConnectorError;
use crate::runtime::{
    Binding, Call, CancellationToken, Limits, LoadedConnector, Outcome, RunControl, RunFailure,
    Runtime, RuntimeError,
};
use crate::setup;
use crate::store::{Store, StoreError, new_id, now_ms};
use crate::vault::{Actor, Vault, VaultError};
use gate::{Resolved, Stop, note_account, resolve};

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The owner asked for it.
    Manual,
    /// The source's schedule came due.
    Scheduled,
    /// A transient failure of an earlier run is retried.
    Retry,
    /// Setup checks the credentials (`verify()`).
    SetupVerification,
}

impl Trigger {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::Retry => "retry",
            Self::SetupVerification => "setup_verification",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Manual,
            Self::Scheduled,
            Self::Retry,
            Self::SetupVerification,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
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
    /// The owner did not answer an interaction in time.
    InteractionTimeout,
    /// A request to a host or address the run may not reach.
    EgressDenied,
    /// A time, memory, record or HTTP limit.
    ResourceExhausted,
    /// The component trapped or could not be instantiated.
    ConnectorTrap,
    /// A temporary provider failure (retried).
    UpstreamTransient,
    /// The provider limits how often it is asked (retried, after the wait
    /// it names when it names one).
    RateLimited,
    /// The connector gave up for another reason.
    ConnectorFatal,
    /// The host stopped while the run was in flight.
    Interrupted,
    /// The credentials belong to another account than the one the source
    /// is connected to: nothing was collected; the owner chooses.
    AccountChanged,
    /// Another source of the connector is connected to the same account,
    /// and the owner has not confirmed that this one may be too.
    IdentityUnconfirmed,
}

impl FailureKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CredentialsMissing => "credentials_missing",
            Self::CredentialRevoked => "credential_revoked",
            Self::CredentialUnrecoverable => "credential_unrecoverable",
            Self::AuthRejected => "auth_rejected",
            Self::InteractionTimeout => "interaction_timeout",
            Self::EgressDenied => "egress_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::ConnectorTrap => "connector_trap",
            Self::UpstreamTransient => "upstream_transient",
            Self::RateLimited => "rate_limited",
            Self::ConnectorFatal => "connector_fatal",
            Self::Interrupted => "interrupted",
            Self::AccountChanged => "account_changed",
            Self::IdentityUnconfirmed => "identity_unconfirmed",
        }
    }

    /// The kind of a failed run; `None` for a cancelled one.
    pub fn of(failure: &RunFailure) -> Option<Self> {
        Some(match failure {
            RunFailure::ResourceExhausted(_) => Self::ResourceExhausted,
            RunFailure::ConnectorTrap(_) | RunFailure::Instantiation(_) => Self::ConnectorTrap,
            RunFailure::EgressDenied(_) => Self::EgressDenied,
            RunFailure::Connector(
                ConnectorError::AuthRejected(_) | ConnectorError::AuthInsufficient(_),
            ) => Self::AuthRejected,
            RunFailure::Connector(ConnectorError::RateLimited(_)) => Self::RateLimited,
            RunFailure::Connector(ConnectorError::UpstreamTransient(_)) => Self::UpstreamTransient,
            RunFailure::CredentialRevoked(_) => Self::CredentialRevoked,
            RunFailure::CredentialUnrecoverable(_) => Self::CredentialUnrecoverable,
            RunFailure::Connector(ConnectorError::Fatal(_)) => Self::ConnectorFatal,
            RunFailure::InteractionTimeout(_) => Self::InteractionTimeout,
            RunFailure::Cancelled => return None,
        })
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
    /// Another run of the source is in flight; a source never runs twice at
    /// once.
    #[error(
        "source '{source_name}' is already running (run {run}); wait for it, or `sourcebox cancel {run}`"
    )]
    Busy {
        /// The source.
        source_name: String,
        /// The run in flight.
        run: String,
    },
    /// The owner chose to pause the source until they approve what a new
    /// version of its connector asks for.
    #[error(
        "source '{source_name}' is paused until the owner approves {connector} {to}; see `sourcebox source show {source_name}`, then `sourcebox connector approve {connector} --source {source_name}`"
    )]
    Paused {
        /// The source.
        source_name: String,
        /// Its connector.
        connector: String,
        /// The version waiting for approval.
        to: String,
    },
    /// The runner lock file.
    #[error("runner lock: {0}")]
    Runner(std::io::Error),
}

/// Refused with [`LaunchError::Paused`] when the owner paused `source` until
/// they approve an upgrade, so that a run is not queued only to be
/// cancelled. Any other problem with the source is left to the launch,
/// which reports it.
pub fn refuse_paused(store: &Store, source: &str) -> Result<(), LaunchError> {
    match catalog::source_setup(store, source) {
        Ok(setup) => paused(&setup),
        Err(_) => Ok(()),
    }
}

/// [`LaunchError::Paused`] for `setup`, when it is paused.
fn paused(setup: &catalog::SourceSetup) -> Result<(), LaunchError> {
    match &setup.paused_for {
        Some(to) => Err(LaunchError::Paused {
            source_name: setup.source.source.clone(),
            connector: setup.connector.id.clone(),
            to: to.clone(),
        }),
        None => Ok(()),
    }
}

impl From<rusqlite::Error> for LaunchError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}

/// A run as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Source name.
    pub source: String,
    /// Why it started: manual, scheduled, retry or setup_verification.
    pub trigger: String,
    /// queued, running, waiting_for_owner, succeeded, failed, cancelled or
    /// interrupted.
    pub state: String,
    /// Typed failure kind, if it failed.
    pub failure: Option<String>,
    /// What happened, in words (never a secret).
    pub detail: Option<String>,
    /// Records collected.
    pub records: u64,
    /// `id version` of the connector.
    pub connector: Option<String>,
    /// 1 for a first attempt, 2 for its first retry, ...
    pub attempt: u32,
    /// The first attempt, for a retry.
    pub retry_of: Option<String>,
    /// A queued run does not start before this time (ms since the Unix
    /// epoch).
    pub not_before: Option<i64>,
    /// Queued or started, ms since the Unix epoch.
    pub started_at: i64,
    /// End, ms since the Unix epoch.
    pub finished_at: Option<i64>,
    /// The account the run verified before it did anything else, as
    /// shown to the owner.
    pub account: Option<String>,
}

impl RunRecord {
    /// Whether the run has ended.
    pub fn finished(&self) -> bool {
        matches!(
            self.state.as_str(),
            "succeeded" | "failed" | "cancelled" | "interrupted"
        )
    }
}

/// How transient failures are retried: exponential backoff from `base`
/// with jitter, at most `max_delay` apart (a provider's retry-after wins
/// when longer), `max_attempts` attempts in all.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Longest backoff.
    pub max_delay: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(30),
            max_delay: Duration::from_secs(3600),
            max_attempts: 4,
        }
    }
}

impl RetryPolicy {
    /// The wait after attempt `attempt` failed: `base * 2^(attempt-1)`,
    /// capped, with jitter in its upper half; never shorter than
    /// `retry_after`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        let half = exp / 2;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("the operating system's random source failed");
        let jitter_ms = u64::from_le_bytes(random) % (half.as_millis() as u64 + 1);
        (half + Duration::from_millis(jitter_ms)).max(retry_after.unwrap_or_default())
    }
}

/// What every launch of one host process shares.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// Non-public addresses the operator allowed (`--egress-allow`).
    pub egress_allow: Vec<SocketAddr>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// How long an interaction waits for the owner.
    pub interaction_wait: Duration,
    /// How often a run looks for an answer or a cancellation.
    pub poll: Duration,
    /// Per-run limits.
    pub limits: Limits,
    /// The browser a login interaction opens for the owner to stream;
    /// without one, a connector asking for a login hears `unsupported`.
    pub browser: Option<PathBuf>,
}

impl Default for LaunchConfig {
    fn default() -> Self {
        Self {
            egress_allow: Vec::new(),
            retry: RetryPolicy::default(),
            interaction_wait: RunControl::default().interaction_wait,
            poll: Duration::from_millis(250),
            limits: Limits::default(),
            browser: None,
        }
    }
}

/// This process, as the owner of the runs it executes: it holds
/// `runners/<token>.lock` until it exits.
#[derive(Debug)]
struct Runner {
    token: String,
    path: PathBuf,
    _lock: File,
}

impl Runner {
    fn start(dir: &Path) -> std::io::Result<Self> {
        let runners = dir.join("runners");
        std::fs::create_dir_all(&runners)?;
        let token = new_id();
        let path = runners.join(format!("{token}.lock"));
        let lock = File::create(&path)?;
        lock.lock()?;
        Ok(Self {
            token,
            path,
            _lock: lock,
        })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // The login profiles it made are gone with their browsers.
        if let Some(dir) = self.path.parent().and_then(Path::parent) {
            let _ = std::fs::remove_dir_all(login_profiles(dir).join(&self.token));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the login browsers of each process keep their profiles, under the
/// process's runner token: `<data>/logins/<runner>/`.
fn login_profiles(dir: &Path) -> PathBuf {
    dir.join("logins")
}

/// Erases the login browser profiles (`logins/<runner>/`) of processes
/// that are gone: one killed during a login leaves its browser's cookies
/// there. (Its browser itself ends when its DevTools pipe closes.)
fn sweep_login_profiles(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(login_profiles(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let token = entry.file_name().to_string_lossy().into_owned();
        if !runner_alive(dir, &token)
            && let Err(e) = std::fs::remove_dir_all(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "a gone process's login profiles could not be erased");
        }
    }
}

/// Whether the process that owns `token` still runs.
fn runner_alive(dir: &Path, token: &str) -> bool {
    match File::open(dir.join("runners").join(format!("{token}.lock"))) {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// The launch seam of one process.
pub struct Launcher {
    runtime: Runtime,
    vault: Arc<Mutex<Vault>>,
    config: LaunchConfig,
    events: Events,
    loaded: Mutex<HashMap<String, Arc<LoadedConnector>>>,
    cancels: Mutex<HashMap<String, CancellationToken>>,
    logins: Logins,
    runner: Runner,
    heartbeat: Arc<scheduler::Heartbeat>,
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("runner", &self.runner.token)
            .finish_non_exhaustive()
    }
}

/// What the connector call came to, before it is recorded.
enum Ending {
    Done(Outcome),
    Failed(RunFailure),
    Refused(FailureKind, String),
}

const IN_FLIGHT: &str = "('running', 'waiting_for_owner')";

impl Launcher {
    /// A launcher for this process. Runs left in flight by a process that
    /// is gone are marked interrupted first.
    pub fn new(
        runtime: Runtime,
        vault: Arc<Mutex<Vault>>,
        config: LaunchConfig,
    ) -> Result<Self, LaunchError> {
        let (runner, profiles) = {
            let vault = vault.lock().expect("vault lock");
            let dir = vault.store().dir();
            let runner = Runner::start(dir).map_err(LaunchError::Runner)?;
            recover(vault.store())?;
            sweep_login_profiles(dir);
            let profiles = login_profiles(dir).join(&runner.token);
            (runner, profiles)
        };
        Ok(Self {
            runtime,
            vault,
            logins: Logins::new(config.browser.clone(), profiles),
            config,
            events: Events::default(),
            loaded: Mutex::default(),
            cancels: Mutex::default(),
            runner,
            heartbeat: Arc::default(),
        })
    }

    /// What this process's scheduler last did.
    pub fn heartbeat(&self) -> &Arc<scheduler::Heartbeat> {
        &self.heartbeat
    }

    /// The vault every run resolves from.
    pub fn vault(&self) -> &Arc<Mutex<Vault>> {
        &self.vault
    }

    /// The runtime components are loaded with.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Run events of this process.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// This process's configuration.
    pub fn config(&self) -> &LaunchConfig {
        &self.config
    }

    /// The login browsers this process's runs have open.
    pub fn logins(&self) -> &Logins {
        &self.logins
    }

    /// Runs `source`'s connector now and records the run, a refused launch
    /// included. Refused with [`LaunchError::Busy`] while another run of the
    /// source is in flight.
    pub async fn launch(&self, source: &str, trigger: Trigger) -> Result<RunRecord, LaunchError> {
        let id = new_id();
        // Resolution, the refusal check and the run record: one transaction.
        let (record, resolved) = {
            let vault = self.vault.lock().expect("vault lock");
            let store = vault.store();
            immediate(store, || {
                let setup = catalog::source_setup(store, source)?;
                paused(&setup)?;
                let inserted = store
                    .conn()
                    .prepare_cached(&format!(
                        "INSERT INTO runs (id, source_id, trigger, state, runner, started_at, connector)
                         SELECT ?1, ?2, ?3, 'running', ?4, ?5, ?6
                         WHERE NOT EXISTS (SELECT 1 FROM runs WHERE source_id = ?2 AND state IN {IN_FLIGHT})"
                    ))?
                    .execute(params![
                        id,
                        setup.source.source_id,
                        trigger.as_str(),
                        self.runner.token,
                        now_ms(),
                        connector_name(&setup)
                    ])?;
                if inserted == 0 {
                    return Err(busy(store, setup.source.source_id, source)?);
                }
                let resolved = resolve(&vault, setup, trigger)?;
                Ok((find(store, &id)?, resolved))
            })?
        };
        self.run(record, Some(resolved)).await
    }

    /// Starts a queued run: refused with [`LaunchError::Busy`] (and left
    /// queued) while another run of its source is in flight; a run that is
    /// no longer queued (cancelled) is returned as it is.
    pub async fn execute(&self, run_id: &str) -> Result<RunRecord, LaunchError> {
        let record = {
            let vault = self.vault.lock().expect("vault lock");
            let store = vault.store();
            let queued = find(store, run_id)?;
            if queued.state == "queued" {
                // Queued before the owner paused the source: it does not
                // start, and says why.
                let setup = catalog::source_setup(store, &queued.source)?;
                if let Err(e) = paused(&setup) {
                    store.conn().execute(
                        "UPDATE runs SET state = 'cancelled', detail = ?2, finished_at = ?3
                         WHERE id = ?1 AND state = 'queued'",
                        params![run_id, e.to_string(), now_ms()],
                    )?;
                    return Err(e);
                }
            }
            let started = store.conn().execute(
                &format!(
                    "UPDATE runs SET state = 'running', runner = ?2, started_at = ?3
                     WHERE id = ?1 AND state = 'queued' AND NOT EXISTS
                         (SELECT 1 FROM runs o WHERE o.source_id = runs.source_id AND o.state IN {IN_FLIGHT})"
                ),
                params![run_id, self.runner.token, now_ms()],
            )?;
            let record = find(store, run_id)?;
            if started == 0 {
                if record.state == "queued" {
                    let src = store.source(&record.source)?;
                    return Err(busy(store, src.source_id, &record.source)?);
                }
                return Ok(record);
            }
            record
        };
        self.run(record, None).await
    }

    /// Asks a run of this process to stop now; other processes' runs stop
    /// within one poll of [`cancel`].
    pub fn cancel(&self, run_id: &str) -> Result<RunRecord, LaunchError> {
        let record = {
            let vault = self.vault.lock().expect("vault lock");
            cancel(vault.store(), run_id)?
        };
        if let Some(cancel) = self.cancels.lock().expect("cancels lock").get(run_id) {
            cancel.cancel();
        }
        if record.state == "cancelled" {
            self.events.send(
                run_id,
                &record.source,
                EventKind::State {
                    state: record.state.clone(),
                    failure: None,
                },
            );
        }
        Ok(record)
    }

    /// Ends run `run_id`, still in flight, failed `interrupted` with
    /// `why`: its task is gone (it panicked), so nothing else will.
    pub fn fail_in_flight(&self, run_id: &str, why: &str) -> Result<(), StoreError> {
        // A task that panicked holding the lock poisoned it; the scheduler
        // still records the run's end.
        let vault = self
            .vault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        vault.store().conn().execute(
            &format!(
                "UPDATE runs SET state = 'failed', failure = 'interrupted', detail = ?2,
                 finished_at = ?3 WHERE id = ?1 AND state IN {IN_FLIGHT}"
            ),
            params![run_id, why, now_ms()],
        )?;
        self.cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(run_id);
        Ok(())
    }

    /// Marks this process's runs still in flight interrupted (after they
    /// were stopped at shutdown).
    pub fn interrupt_own(&self) -> Result<Vec<String>, StoreError> {
        let vault = self.vault.lock().expect("vault lock");
        let store = vault.store();
        let ids: Vec<String> = store
            .conn()
            .prepare(&format!(
                "SELECT id FROM runs WHERE runner = ?1 AND state IN {IN_FLIGHT}"
            ))?
            .query_map([&self.runner.token], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in &ids {
            store.conn().execute(
                "UPDATE runs SET state = 'interrupted', failure = 'interrupted',
                 detail = 'the host shut down before this run finished', finished_at = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            store.conn().execute(
                "UPDATE interactions SET state = 'expired' WHERE run_id = ?1 AND state IN ('pending', 'answered')",
                [id],
            )?;
        }
        Ok(ids)
    }

    /// A compiled connector, from this process's cache by component digest.
    async fn loaded(
        &self,
        installed: &catalog::Installed,
    ) -> Result<Arc<LoadedConnector>, RunFailure> {
        if let Some(loaded) = self
            .loaded
            .lock()
            .expect("loaded lock")
            .get(&installed.digest)
        {
            return Ok(Arc::clone(loaded));
        }
        let failed = |e: &dyn std::fmt::Display| RunFailure::Instantiation(e.to_string());
        // What was compiled for the approved digest runs that digest's
        // code; the stored component is read, and checked against the
        // digest, only when it is compiled.
        let compiled = self
            .runtime
            .load_compiled(
                &installed.digest,
                &installed.api_version,
                Arc::clone(&installed.manifest),
            )
            .map_err(|e| failed(&e))?;
        let loaded = Arc::new(match compiled {
            Some(loaded) => loaded,
            None => {
                let component = {
                    let vault = self.vault.lock().expect("vault lock");
                    catalog::component(vault.store(), installed).map_err(|e| failed(&e))?
                };
                self.runtime
                    .load_wasm(&component)
                    .await
                    .map_err(|e| failed(&e))?
            }
        });
        self.loaded
            .lock()
            .expect("loaded lock")
            .insert(installed.digest.clone(), Arc::clone(&loaded));
        Ok(loaded)
    }

    /// The one body of every run, from the moment it is marked running.
    async fn run(
        &self,
        record: RunRecord,
        resolved: Option<Resolved>,
    ) -> Result<RunRecord, LaunchError> {
        let run_id = record.id.as_str();
        let trigger = Trigger::parse(&record.trigger).unwrap_or(Trigger::Manual);
        let source = record.source.clone();
        self.events.send(
            run_id,
            &source,
            EventKind::State {
                state: "running".into(),
                failure: None,
            },
        );
        let cancel = CancellationToken::new();
        self.cancels
            .lock()
            .expect("cancels lock")
            .insert(run_id.to_owned(), cancel.clone());
        let watcher = tokio::spawn(watch_cancel(
            Arc::clone(&self.vault),
            run_id.to_owned(),
            cancel.clone(),
            self.config.poll.min(CANCEL_POLL),
        ));
        let mut connector = resolved.as_ref().map(|(setup, ..)| connector_name(setup));
        let ending = self
            .call(run_id, &source, trigger, cancel, resolved, &mut connector)
            .await;
        watcher.abort();
        self.cancels.lock().expect("cancels lock").remove(run_id);
        let connector = connector.as_deref();
        let ending = match ending {
            Ok(ending) => ending,
            Err(e) => {
                let vault = self.vault.lock().expect("vault lock");
                record_end(
                    vault.store(),
                    run_id,
                    (connector, "failed", None, Some(&e.to_string()), 0),
                    now_ms(),
                )?;
                return Err(e);
            }
        };
        let vault = self.vault.lock().expect("vault lock");
        let store = vault.store();
        // The run's end, the source's re-auth state and any retry: one
        // transaction.
        let record = immediate(store, || {
            let source_id = store.source(&source)?.source_id;
            self.end(store, &record, source_id, trigger, connector, &ending)?;
            Ok(find(store, run_id)?)
        })?;
        self.events.send(
            run_id,
            &source,
            EventKind::State {
                state: record.state.clone(),
                failure: record.failure.clone(),
            },
        );
        Ok(record)
    }

    /// Records how a run ended (inside the caller's transaction).
    fn end(
        &self,
        store: &Store,
        record: &RunRecord,
        source_id: i64,
        trigger: Trigger,
        connector: Option<&str>,
        ending: &Ending,
    ) -> Result<(), LaunchError> {
        let run_id = record.id.as_str();
        let source = record.source.as_str();
        let ended_at = now_ms();
        let (state, kind, detail, records) = match &ending {
            Ending::Done(Outcome::Collected(summary)) => ("succeeded", None, None, summary.records),
            Ending::Done(_) => ("succeeded", None, None, 0),
            Ending::Refused(kind, detail) => ("failed", Some(*kind), Some(detail.clone()), 0),
            Ending::Failed(failure) => match FailureKind::of(failure) {
                Some(kind) => ("failed", Some(kind), Some(failure.to_string()), 0),
                None => ("cancelled", None, Some(failure.to_string()), 0),
            },
        };
        let mut detail = detail;
        if trigger == Trigger::SetupVerification {
            match (ending, kind) {
                (Ending::Done(Outcome::Verified(identity)), _) => {
                    let identity = setup::Identity {
                        id: identity.id.clone(),
                        display: identity.display.clone(),
                    };
                    setup::record_verification(store, source_id, Ok(&identity))?;
                    note_account(store, run_id, &identity)?;
                }
                (_, Some(kind)) => setup::record_verification(
                    store,
                    source_id,
                    Err((kind.as_str(), detail.as_deref().unwrap_or(""))),
                )?,
                _ => {}
            }
        } else if state == "succeeded" {
            setup::record_proof(store, source_id, run_id)?;
        }
        match kind {
            None if state == "succeeded" => {
                store
                    .conn()
                    .prepare_cached(
                        "UPDATE sources SET needs_reauth = NULL WHERE id = ?1 AND needs_reauth IS NOT NULL",
                    )?
                    .execute([source_id])?;
            }
            // A verification's refusal is setup's business, not a re-auth.
            Some(FailureKind::AuthRejected) if trigger != Trigger::SetupVerification => {
                store.conn().execute(
                    "UPDATE sources SET needs_reauth = ?2 WHERE id = ?1",
                    params![source_id, detail],
                )?;
            }
            Some(FailureKind::UpstreamTransient | FailureKind::RateLimited)
                if trigger != Trigger::SetupVerification
                    && record.attempt < self.config.retry.max_attempts =>
            {
                let retry_after = match ending {
                    Ending::Failed(RunFailure::Connector(ConnectorError::RateLimited(Some(s)))) => {
                        Some(Duration::from_secs(u64::from(*s)))
                    }
                    _ => None,
                };
                let delay = self.config.retry.delay(record.attempt, retry_after);
                // Counted from the run's recorded end.
                let not_before = crate::store::ms_after(ended_at, delay);
                let root = record.retry_of.clone().unwrap_or_else(|| run_id.to_owned());
                let retry = enqueue(
                    store,
                    source,
                    Trigger::Retry,
                    Some(not_before),
                    Some(&root),
                    record.attempt + 1,
                )?;
                detail = Some(format!(
                    "{}; retry {retry} (attempt {}) queued in {} ms",
                    detail.unwrap_or_default(),
                    record.attempt + 1,
                    delay.as_millis()
                ));
            }
            _ => {}
        }
        record_end(
            store,
            run_id,
            (connector, state, kind, detail.as_deref(), records),
            ended_at,
        )?;
        Ok(())
    }

    /// Resolves the source at execution time and calls its connector.
    async fn call(
        &self,
        run_id: &str,
        source: &str,
        trigger: Trigger,
        cancel: CancellationToken,
        resolved: Option<Resolved>,
        connector: &mut Option<String>,
    ) -> Result<Ending, LaunchError> {
        let (setup, limits, refused) = match resolved {
            Some(resolved) => resolved,
            None => {
                let vault = self.vault.lock().expect("vault lock");
                let setup = catalog::source_setup(vault.store(), source)?;
                *connector = Some(connector_name(&setup));
                resolve(&vault, setup, trigger)?
            }
        };
        if let Some(refused) = refused {
            return Ok(refused);
        }
        // A source that keeps no session past a run: what a run that never
        // ended left goes now, and this run's goes however it ends.
        let _erase = setup.ephemeral_session.then(|| {
            let erase = EraseSession {
                vault: Arc::clone(&self.vault),
                run_id: run_id.to_owned(),
                setup: setup.clone(),
            };
            erase.now();
            erase
        });
        // An OAuth grant about to expire is refreshed now, at execution time.
        let actor = Actor {
            name: "oauth",
            run_id: Some(run_id),
        };
        let refreshed =
            match oauth::refresh_expiring(&self.vault, actor, &setup, &self.config.egress_allow)
                .await
            {
                Ok(refreshed) => refreshed,
                Err(e) => return Ok(refresh_failed(e)),
            };
        let loaded = match self.loaded(&setup.connector).await {
            Ok(loaded) => loaded,
            Err(failure) => return Ok(Ending::Failed(failure)),
        };
        let binding = Binding {
            vault: Arc::clone(&self.vault),
            source: setup.source.clone(),
            setup: setup.setup.clone(),
            run_id: run_id.to_owned(),
            limits: limits.apply(&self.config.limits),
            egress_allow: self.config.egress_allow.clone(),
            control: RunControl {
                cancel,
                clock: crate::runtime::RunClock::start(),
                events: self.events.clone(),
                interactive: true,
                interaction_wait: self.config.interaction_wait,
                poll: self.config.poll,
                logins: self.logins.clone(),
            },
        };
        let call = match trigger {
            Trigger::SetupVerification => Call::Verify,
            _ => Call::Collect(Vec::new()),
        };
        // One run, one clock: every call of it counts against the same
        // limits, as the binding's control carries the run's clock.
        // A connector that logs in with a stored password or OTP seed does
        // so first when the source holds no session.
        let login = {
            let vault = self.vault.lock().expect("vault lock");
            PasswordLogin::of(&vault, &setup)?
        };
        if login.needed
            && let Err(failure) = self
                .runtime
                .run(&loaded, binding.clone(), Call::Authenticate)
                .await
        {
            return Ok(Ending::Failed(failure));
        }
        let ended = self
            .attempt(&loaded, &binding, &setup, &call, login.session_held)
            .await;
        // The provider rejected an access token the host did not just
        // refresh (it ended before the expiry the host knew of, or the
        // provider gave none): refresh the grant once and call again.
        let ended = match ended {
            Err(Stop::Failed(RunFailure::Connector(ConnectorError::AuthRejected(_))))
                if !refreshed =>
            {
                match oauth::refresh_rejected(&self.vault, actor, &setup, &self.config.egress_allow)
                    .await
                {
                    Ok(true) => {
                        tracing::info!(
                            source = setup.source.source,
                            run = run_id,
                            "access token rejected; grant refreshed, calling again"
                        );
                        self.attempt(&loaded, &binding, &setup, &call, login.session_held)
                            .await
                    }
                    Ok(false) => ended,
                    Err(e) => return Ok(refresh_failed(e)),
                }
            }
            ended => ended,
        };
        // The site refused a session this run did not just get: log in
        // again with the stored password, and call once more.
        let ended = match ended {
            Err(Stop::Failed(RunFailure::Connector(ConnectorError::AuthRejected(_))))
                if login.possible && !login.needed =>
            {
                tracing::info!(
                    source = setup.source.source,
                    run = run_id,
                    "session refused; logging in again with the stored credentials"
                );
                match self
                    .runtime
                    .run(&loaded, binding.clone(), Call::Authenticate)
                    .await
                {
                    Ok(_) => {
                        self.attempt(&loaded, &binding, &setup, &call, login.session_held)
                            .await
                    }
                    Err(failure) => Err(Stop::Failed(failure)),
                }
            }
            ended => ended,
        };
        Ok(match ended {
            Ok(outcome) => Ending::Done(outcome),
            Err(Stop::Failed(failure)) => Ending::Failed(failure),
            Err(Stop::Refused(kind, detail)) => Ending::Refused(kind, detail),
            Err(Stop::Launch(e)) => return Err(e),
        })
    }
}

/// Whether a source's connector logs in with stored credentials (a
/// password or OTP seed, which resolve only in `authenticate()`) to get
/// its session, and whether it must now: it holds no session. Metadata
/// only; nothing is decrypted.
struct PasswordLogin {
    possible: bool,
    needed: bool,
    /// The source holds a session (of a connector that declares one).
    session_held: bool,
}

impl PasswordLogin {
    fn of(vault: &Vault, setup: &catalog::SourceSetup) -> Result<Self, LaunchError> {
        use crate::vault::CredentialClass as Class;
        let declares = |class: Class| {
            setup
                .connector
                .manifest
                .credentials
                .iter()
                .any(|f| Class::from(f.class) == class)
        };
        if !declares(Class::Session) {
            return Ok(Self {
                possible: false,
                needed: false,
                session_held: false,
            });
        }
        let stored = crate::vault::metadata(vault.store(), Some(&setup.source))?;
        let holds = |classes: &[Class]| {
            stored
                .iter()
                .any(|m| m.revoked_at.is_none() && classes.contains(&m.class))
        };
        let session_held = holds(&[Class::Session]);
        let possible = (declares(Class::Password) || declares(Class::OtpSeed))
            && holds(&[Class::Password, Class::OtpSeed]);
        Ok(Self {
            possible,
            needed: possible && !session_held,
            session_held,
        })
    }
}

/// Erases the session of a source that keeps none past a run, now and
/// when dropped.
struct EraseSession {
    vault: Arc<Mutex<Vault>>,
    run_id: String,
    setup: catalog::SourceSetup,
}

impl Drop for EraseSession {
    fn drop(&mut self) {
        self.now();
    }
}

impl EraseSession {
    fn now(&self) {
        let (run_id, setup) = (&self.run_id, &self.setup);
        let actor = Actor {
            name: "browser-login",
            run_id: Some(run_id),
        };
        let vault = self.vault.lock().expect("vault lock");
        for field in &setup.connector.manifest.credentials {
            if crate::vault::CredentialClass::from(field.class)
                != crate::vault::CredentialClass::Session
            {
                continue;
            }
            match vault.remove(actor, &setup.source, &field.name) {
                Ok(()) | Err(VaultError::Missing { .. }) => {}
                Err(e) => tracing::error!(
                    source = setup.source.source,
                    run = run_id,
                    error = %e,
                    "an ephemeral session could not be erased"
                ),
            }
        }
    }
}

/// How a run ends when its OAuth grant could not be refreshed.
fn refresh_failed(e: OauthError) -> Ending {
    let kind = match &e {
        OauthError::Refused(_) | OauthError::NoClient(_) => FailureKind::AuthRejected,
        OauthError::Transient(_) => FailureKind::UpstreamTransient,
        _ => FailureKind::CredentialUnrecoverable,
    };
    Ending::Refused(kind, format!("refreshing the OAuth grant: {e}"))
}

fn connector_name(setup: &catalog::SourceSetup) -> String {
    format!("{} {}", setup.connector.id, setup.connector.version)
}

/// Runs `f` inside `BEGIN IMMEDIATE`, committing on success.
fn immediate<T>(
    store: &Store,
    f: impl FnOnce() -> Result<T, LaunchError>,
) -> Result<T, LaunchError> {
    let conn = store.conn();
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    match f() {
        Ok(value) => {
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(value)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn busy(store: &Store, source_id: i64, source: &str) -> Result<LaunchError, StoreError> {
    let run: String = store
        .conn()
        .query_row(
            &format!("SELECT id FROM runs WHERE source_id = ?1 AND state IN {IN_FLIGHT}"),
            [source_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_default();
    Ok(LaunchError::Busy {
        source_name: source.to_owned(),
        run,
    })
}

/// How often a run looks for a cancellation asked by another process (the
/// CLI): a cancelled run ends within this and the time to unwind it.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// Cancels `cancel` once the run's row asks for it (from any process).
async fn watch_cancel(
    vault: Arc<Mutex<Vault>>,
    run_id: String,
    cancel: CancellationToken,
    poll: Duration,
) {
    loop {
        tokio::time::sleep(poll).await;
        let requested = {
            let vault = vault.lock().expect("vault lock");
            vault
                .store()
                .conn()
                .query_row(
                    "SELECT cancel_requested FROM runs WHERE id = ?1",
                    [&run_id],
                    |r| r.get::<_, bool>(0),
                )
                .unwrap_or(false)
        };
        if requested {
            cancel.cancel();
            return;
        }
    }
}

/// Queues a manual run of `source`, unless a run of it is queued already:
/// then that run is returned, and no other is queued. One statement, so
/// two requests at once queue one run.
pub fn request(store: &Store, source: &str) -> Result<RunRecord, StoreError> {
    let src = store.source(source)?;
    let id = new_id();
    store
        .conn()
        .prepare_cached(
            "INSERT INTO runs (id, source_id, trigger, state, started_at, attempt)
             SELECT ?1, ?2, 'manual', 'queued', ?3, 1
             WHERE NOT EXISTS (SELECT 1 FROM runs WHERE source_id = ?2 AND state = 'queued')",
        )?
        .execute(params![id, src.source_id, now_ms()])?;
    let queued: String = store
        .conn()
        .prepare_cached(
            "SELECT id FROM runs WHERE source_id = ?1 AND state = 'queued'
             ORDER BY started_at, rowid LIMIT 1",
        )?
        .query_row([src.source_id], |r| r.get(0))?;
    find(store, &queued)
}

/// Queues a run of `source`; the scheduler starts it at `not_before` or
/// after. Returns its id.
pub fn enqueue(
    store: &Store,
    source: &str,
    trigger: Trigger,
    not_before: Option<i64>,
    retry_of: Option<&str>,
    attempt: u32,
) -> Result<String, StoreError> {
    let src = store.source(source)?;
    let id = new_id();
    store.conn().execute(
        "INSERT INTO runs (id, source_id, trigger, state, started_at, not_before, retry_of, attempt)
         VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7)",
        params![
            id,
            src.source_id,
            trigger.as_str(),
            now_ms(),
            not_before,
            retry_of,
            attempt
        ],
    )?;
    Ok(id)
}

/// Cancels a run: a queued one at once, one in flight at its next check
/// (it ends `cancelled`). A finished run is left as it is.
pub fn cancel(store: &Store, run_id: &str) -> Result<RunRecord, StoreError> {
    let record = find(store, run_id)?;
    match record.state.as_str() {
        "queued" => {
            store.conn().execute(
                "UPDATE runs SET state = 'cancelled', detail = 'cancelled by the owner before it started',
                 finished_at = ?2 WHERE id = ?1 AND state = 'queued'",
                params![run_id, now_ms()],
            )?;
        }
        "running" | "waiting_for_owner" => {
            store.conn().execute(
                "UPDATE runs SET cancel_requested = 1 WHERE id = ?1",
                [run_id],
            )?;
        }
        state => {
            return Err(StoreError::Conflict(format!(
                "run {run_id} already ended ({state}); nothing to cancel"
            )));
        }
    }
    find(store, run_id)
}

/// Marks runs whose process is gone interrupted, expires their pending
/// interactions (and drops any sealed answer), and brings their sources'
/// schedules due again. Returns the interrupted runs.
pub fn recover(store: &Store) -> Result<Vec<String>, StoreError> {
    let dir = store.dir();
    let in_flight: Vec<(String, Option<String>, i64)> = store
        .conn()
        .prepare(&format!(
            "SELECT id, runner, source_id FROM runs WHERE state IN {IN_FLIGHT}"
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut interrupted = Vec::new();
    for (id, runner, source_id) in in_flight {
        if runner.as_deref().is_some_and(|t| runner_alive(dir, t)) {
            continue;
        }
        store.write(|conn| {
            conn.execute(
                &format!(
                    "UPDATE runs SET state = 'interrupted', failure = 'interrupted',
                     detail = 'the host stopped while this run was in flight', finished_at = ?2
                     WHERE id = ?1 AND state IN {IN_FLIGHT}"
                ),
                params![id, now_ms()],
            )?;
            conn.execute(
                "DELETE FROM interaction_answers WHERE interaction_id IN
                     (SELECT id FROM interactions WHERE run_id = ?1)",
                [&id],
            )?;
            conn.execute(
                "UPDATE interactions SET state = 'expired' WHERE run_id = ?1 AND state IN ('pending', 'answered')",
                [&id],
            )?;
            conn.execute(
                "UPDATE schedules SET next_at = MIN(next_at, ?2) WHERE source_id = ?1",
                params![source_id, now_ms()],
            )?;
            Ok(())
        })?;
        tracing::warn!(run = id, "run interrupted: its process is gone");
        interrupted.push(id);
    }
    // Lock files of runners that are gone.
    if let Ok(entries) = std::fs::read_dir(dir.join("runners")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some(token) = path.file_stem().and_then(|s| s.to_str())
                && !runner_alive(dir, token)
            {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(interrupted)
}

/// (connector, state, failure, detail, records) of an ended run.
type End<'a> = (
    Option<&'a str>,
    &'a str,
    Option<FailureKind>,
    Option<&'a str>,
    u64,
);

fn record_end(store: &Store, id: &str, end: End<'_>, at: i64) -> Result<(), StoreError> {
    let (connector, state, failure, detail, records) = end;
    store
        .conn()
        .prepare_cached(
            "UPDATE runs SET state = ?2, failure = ?3, detail = ?4, records = ?5, finished_at = ?6,
             connector = COALESCE(?7, connector) WHERE id = ?1",
        )?
        .execute(params![
            id,
            state,
            failure.map(FailureKind::as_str),
            detail,
            records as i64,
            at,
            connector
        ])?;
    Ok(())
}

const SELECT: &str =
    "SELECT r.id, s.name, r.trigger, r.state, r.failure, r.detail, r.records, r.connector,
     r.attempt, r.retry_of, r.not_before, r.started_at, r.finished_at, r.account
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
        attempt: r.get(8)?,
        retry_of: r.get(9)?,
        not_before: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        account: r.get(13)?,
    })
}

/// One run by id.
pub fn find(store: &Store, id: &str) -> Result<RunRecord, StoreError> {
    store
        .conn()
        .prepare_cached(&format!("{SELECT} WHERE r.id = ?1"))?
        .query_row([id], run_row)
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("no run '{id}'; see `sourcebox runs`")))
}

/// The most runs one page holds.
pub const MAX_PAGE: u32 = 500;

/// One page of runs, newest first, and where the next page starts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunsPage {
    /// The runs.
    pub runs: Vec<RunRecord>,
    /// Pass as `cursor` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Up to `limit` runs of one source, or of all, newest first, after
/// `cursor` (from the page before). A limit out of 1..=[`MAX_PAGE`] or a
/// cursor this did not give is refused.
pub fn page(
    store: &Store,
    source: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
) -> Result<RunsPage, StoreError> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(StoreError::Conflict(format!(
            "limit must be between 1 and {MAX_PAGE} (it was {limit})"
        )));
    }
    let after = match cursor {
        None => None,
        Some(cursor) => Some(
            cursor
                .split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "cursor '{cursor}' is not one a page of runs gave; start without it"
                    ))
                })?,
        ),
    };
    let source_id = source
        .map(|s| store.source(s))
        .transpose()?
        .map(|s| s.source_id);
    let (at, id) = after.unzip();
    let mut stmt = store.conn().prepare_cached(&format!(
        "{SELECT} WHERE (?1 IS NULL OR r.source_id = ?1)
           AND (?2 IS NULL OR (r.started_at, r.id) < (?2, ?3))
         ORDER BY r.started_at DESC, r.id DESC LIMIT ?4"
    ))?;
    let mut runs: Vec<RunRecord> = stmt
        .query_map(params![source_id, at, id, i64::from(limit) + 1], run_row)?
        .collect::<Result<_, _>>()?;
    let next_cursor = if runs.len() > limit as usize {
        runs.truncate(limit as usize);
        runs.last().map(|r| format!("{}.{}", r.started_at, r.id))
    } else {
        None
    };
    Ok(RunsPage { runs, next_cursor })
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
