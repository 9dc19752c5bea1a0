//! The launch seam of one process: the one way a connector runs. A run is
//! resolved at execution time from the store and the vault, checked by
//! the gate, called in the sandbox, and recorded as it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};

use super::error::{LaunchError, paused};
use super::gate::{self, Ending, Resolved, Stop, note_account, resolve};
use super::heartbeat::Heartbeat;
use super::record::{
    FailureKind, RunRecord, Trigger, cancel, enqueue, find, immediate, record_end, recover,
};
use super::runner::{IN_FLIGHT, Runner, login_profiles, sweep_login_profiles};
use crate::browser::Logins;
use crate::catalog::{self};
use crate::contract::ConnectorError;
use crate::events::{EventKind, Events};
use crate::oauth::{self, OauthError};
use crate::runtime::{
    Binding, Call, CancellationToken, Limits, LoadedConnector, Outcome, RunControl, RunFailure,
    Runtime,
};
use crate::setup;
use crate::store::{Store, StoreError, new_id, now_ms};
use crate::vault::{Actor, Vault, VaultError};

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
    heartbeat: Arc<Heartbeat>,
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("runner", &self.runner.token)
            .finish_non_exhaustive()
    }
}

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
    pub fn heartbeat(&self) -> &Arc<Heartbeat> {
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

    /// What a run of `setup`'s source is bound to: its source, setup
    /// values and limits, and how the launch steers it.
    fn binding(
        &self,
        run_id: &str,
        setup: &catalog::SourceSetup,
        limits: &catalog::LimitOverrides,
        cancel: CancellationToken,
    ) -> Binding {
        Binding {
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
        }
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
        let binding = self.binding(run_id, &setup, &limits, cancel);
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
        let attempt = || {
            gate::attempt(
                &self.runtime,
                &self.vault,
                &loaded,
                &binding,
                &setup,
                &call,
                login.session_held,
            )
        };
        let ended = attempt().await;
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
                        attempt().await
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
                    Ok(_) => attempt().await,
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
