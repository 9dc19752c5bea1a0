//! The scheduler inside `serve`: per-source schedules (an interval or a
//! cron expression), eligibility checked without decrypting anything,
//! never two runs of one source at once, a missed schedule run once after
//! downtime, and global and per-connector concurrency limits.
//!
//! Queued runs, scheduled and retries alike, are started in the order they
//! came due, connectors taking fair shares of the slots: a run whose
//! connector has fewer runs in flight goes before one whose connector has
//! more, and a run whose connector is at its limit waits without holding
//! up the runs of other connectors behind it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use tokio::task::JoinSet;

use super::error::LaunchError;
use super::heartbeat::Running;
use super::launcher::Launcher;
use super::record::{RunRecord, Trigger, enqueue};
use crate::readiness::{self, Blocked, Purpose};
use crate::store::{Store, StoreError, now_ms};
use crate::vault::Vault;

/// The source's unfinished run, if any, off the index of unfinished runs.
pub(crate) const UNFINISHED_RUN: &str = "SELECT id FROM runs INDEXED BY runs_active
     WHERE source_id = ?1 AND state IN ('queued', 'running', 'waiting_for_owner') LIMIT 1";

/// When a source runs on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every so often, counted from when it was set or last came due.
    Every(Duration),
    /// On a five-field cron expression, in UTC.
    Cron(String),
}

/// The shortest interval a schedule may have.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// The longest interval a schedule may have.
pub const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);
/// [`MIN_INTERVAL`] and [`MAX_INTERVAL`] as a person reads them.
const BOUNDS: &str = "1m (60 seconds) and 365d (31,536,000 seconds)";

impl Schedule {
    /// Checks the schedule: an interval between [`MIN_INTERVAL`] and
    /// [`MAX_INTERVAL`], or a cron expression that parses and fires again
    /// after now.
    pub fn check(&self) -> Result<(), StoreError> {
        match self {
            Self::Every(every) if !(MIN_INTERVAL..=MAX_INTERVAL).contains(every) => {
                Err(StoreError::Conflict(format!(
                    "a schedule interval must be between {BOUNDS} (it was {} seconds)",
                    every.as_secs()
                )))
            }
            Self::Every(_) => Ok(()),
            Self::Cron(_) => self.next_after(now_ms()).map(|_| ()),
        }
    }

    /// The first due time strictly after `after` (ms since the Unix epoch).
    /// Refused, never wrapped, when there is none: a cron expression that
    /// never fires again, or a time past what can be counted.
    pub fn next_after(&self, after: i64) -> Result<i64, StoreError> {
        let out_of_range = || {
            StoreError::Conflict(format!(
                "the schedule's next time is out of range; give an interval between {BOUNDS}"
            ))
        };
        match self {
            Self::Every(every) => i64::try_from(every.as_millis().max(1))
                .ok()
                .and_then(|every| after.checked_add(every))
                .ok_or_else(out_of_range),
            Self::Cron(expr) => {
                let cron = parse_cron(expr)?;
                let start =
                    chrono::DateTime::from_timestamp_millis(after).ok_or_else(out_of_range)?;
                cron.find_next_occurrence(&start, false)
                    .map(|t| t.timestamp_millis())
                    .map_err(|e| {
                        StoreError::Conflict(format!(
                            "cron expression '{expr}' never fires again ({e})"
                        ))
                    })
            }
        }
    }
}

/// Five fields only: no seconds (a schedule fires at most once a minute)
/// and no year (an expression would run out of years).
fn parse_cron(expr: &str) -> Result<croner::Cron, StoreError> {
    use croner::parser::{CronParser, Seconds, Year};
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    parser.parse(expr).map_err(|e| {
        StoreError::Conflict(format!(
            "invalid cron expression '{expr}': {e}; use five fields, e.g. '0 3 * * *' for 03:00 UTC daily"
        ))
    })
}

/// A source's schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ScheduleRow {
    /// Source name.
    pub source: String,
    /// Interval in seconds, for an interval schedule.
    pub every_secs: Option<u64>,
    /// Cron expression, for a cron schedule.
    pub cron: Option<String>,
    /// Next due time, ms since the Unix epoch.
    pub next_at: i64,
    /// Why it no longer fires, when it was disabled: it could never fire
    /// again. Setting it again enables it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<String>,
}

/// Sets (or with `None`, removes) `source`'s schedule. Returns the stored
/// schedule.
pub fn set_schedule(
    store: &Store,
    source: &str,
    schedule: Option<Schedule>,
) -> Result<Option<ScheduleRow>, StoreError> {
    let src = store.source(source)?;
    let Some(schedule) = schedule else {
        store.conn().execute(
            "DELETE FROM schedules WHERE source_id = ?1",
            [src.source_id],
        )?;
        return Ok(None);
    };
    let refused = |e: StoreError| StoreError::Conflict(format!("{e}; nothing was stored"));
    schedule.check().map_err(refused)?;
    let next_at = schedule.next_after(now_ms()).map_err(refused)?;
    let (every, cron) = match &schedule {
        // Within MAX_INTERVAL, so it fits.
        Schedule::Every(d) => (Some(d.as_secs() as i64), None),
        Schedule::Cron(expr) => (None, Some(expr.clone())),
    };
    store.conn().execute(
        "INSERT INTO schedules (source_id, interval_secs, cron, next_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (source_id) DO UPDATE SET interval_secs = excluded.interval_secs,
             cron = excluded.cron, next_at = excluded.next_at, disabled = NULL",
        params![src.source_id, every, cron, next_at],
    )?;
    Ok(schedules(store)?.into_iter().find(|s| s.source == source))
}

/// Every schedule, by source name.
pub fn schedules(store: &Store) -> Result<Vec<ScheduleRow>, StoreError> {
    let mut stmt = store.conn().prepare(
        "SELECT s.name, c.interval_secs, c.cron, c.next_at, c.disabled FROM schedules c
         JOIN sources s ON s.id = c.source_id ORDER BY s.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ScheduleRow {
            source: r.get(0)?,
            every_secs: r.get::<_, Option<i64>>(1)?.map(|s| s.max(0) as u64),
            cron: r.get(2)?,
            next_at: r.get(3)?,
            disabled: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A source as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SourceStatus {
    /// Source name.
    pub name: String,
    /// `id version` of its connector, if it has one.
    pub connector: Option<String>,
    /// Why it needs re-authentication, if it does (a run's auth_rejected);
    /// storing a new credential clears it.
    pub needs_reauth: Option<String>,
    /// Its schedule, if it has one.
    pub schedule: Option<ScheduleRow>,
    /// Why it may not collect now, if it may not ([`readiness::decide`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<Blocked>,
}

/// Every source of the default owner with its connector, re-auth state and
/// schedule, by name.
pub fn statuses(store: &Store) -> Result<Vec<SourceStatus>, crate::catalog::CatalogError> {
    let schedules = schedules(store)?;
    let mut stmt = store.conn().prepare(
        "SELECT s.name, s.connector_id || ' ' || s.connector_version, s.needs_reauth
         FROM sources s JOIN owners o ON o.id = s.owner_id WHERE o.name = ?1 ORDER BY s.name",
    )?;
    let rows = stmt.query_map([crate::store::DEFAULT_OWNER], |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?;
    let rows: Vec<(String, Option<String>, Option<String>)> = rows.collect::<Result<_, _>>()?;
    rows.into_iter()
        .map(|(name, connector, needs_reauth)| {
            let schedule = schedules.iter().find(|s| s.source == name).cloned();
            let blocked = readiness::of(store, &name, Purpose::Collect)?.err();
            Ok(SourceStatus {
                name,
                connector,
                needs_reauth,
                schedule,
                blocked,
            })
        })
        .collect()
}

/// Whether `source` may be launched unattended: the one readiness
/// decision ([`readiness::of`]) for a collection. Reads metadata only:
/// nothing is decrypted and no audit row is written. `Err` carries the
/// reason it is not eligible.
pub fn eligible(vault: &Vault, source: &str) -> Result<Result<(), Blocked>, LaunchError> {
    Ok(readiness::of(vault.store(), source, Purpose::Collect)?)
}

/// Queues a run of every eligible source whose schedule is due, once
/// however many due times were missed, and moves each due schedule to its
/// next time after now. Returns the queued run ids.
pub fn enqueue_due(vault: &Vault) -> Result<Vec<String>, LaunchError> {
    let store = vault.store();
    let now = now_ms();
    let due: Vec<(i64, String, Option<i64>, Option<String>)> = store
        .conn()
        .prepare(
            "SELECT c.source_id, s.name, c.interval_secs, c.cron FROM schedules c
             JOIN sources s ON s.id = c.source_id
             WHERE c.next_at <= ?1 AND c.disabled IS NULL ORDER BY c.next_at",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut queued = Vec::new();
    for (source_id, name, every, cron) in due {
        let schedule = match (every, cron) {
            (Some(secs), _) => Schedule::Every(Duration::from_secs(secs.max(0) as u64)),
            (None, Some(expr)) => Schedule::Cron(expr),
            (None, None) => continue,
        };
        // A stored schedule that can never fire again is disabled, with
        // why, rather than failing this tick and every one after it.
        let next = match schedule.check().and_then(|()| schedule.next_after(now)) {
            Ok(next) => next,
            Err(e) => {
                let why = e.to_string();
                tracing::error!(source = name, "schedule disabled: {why}");
                store.conn().execute(
                    "UPDATE schedules SET disabled = ?2 WHERE source_id = ?1",
                    params![source_id, why],
                )?;
                continue;
            }
        };
        store.conn().execute(
            "UPDATE schedules SET next_at = ?2 WHERE source_id = ?1",
            params![source_id, next],
        )?;
        let pending: Option<String> = store
            .conn()
            .query_row(UNFINISHED_RUN, [source_id], |r| r.get(0))
            .optional()?;
        if let Some(run) = pending {
            tracing::info!(
                source = name,
                run,
                "schedule due while a run is pending; skipped"
            );
            continue;
        }
        match eligible(vault, &name)? {
            Ok(()) => queued.push(enqueue(store, &name, Trigger::Scheduled, None, None, 1)?),
            Err(why) => tracing::info!(
                source = name,
                "schedule due but not eligible: {}",
                why.explain(&name)
            ),
        }
    }
    Ok(queued)
}

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How often schedules and the queue are looked at.
    pub tick: Duration,
    /// Runs in flight at once, all connectors together.
    pub max_concurrent: usize,
    /// Runs in flight at once per connector.
    pub per_connector: usize,
    /// On shutdown, how long runs in flight may take to finish before they
    /// are stopped and marked interrupted.
    pub grace: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            max_concurrent: 4,
            per_connector: 2,
            grace: Duration::from_secs(30),
        }
    }
}

/// Queued runs that may start now, oldest due first: (run, source,
/// connector).
fn startable(store: &Store) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut stmt = store.conn().prepare(
        "SELECT r.id, s.name, COALESCE(s.connector_id, '') FROM runs r JOIN sources s ON s.id = r.source_id
         WHERE r.state = 'queued' AND COALESCE(r.not_before, 0) <= ?1
         ORDER BY COALESCE(r.not_before, r.started_at), r.rowid",
    )?;
    let rows = stmt.query_map([now_ms()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The longest wait between two ticks after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before the next tick after `failures` failed in a row: the
/// tick, doubled for each failure, at most [`MAX_BACKOFF`] (or the tick,
/// if longer).
fn backoff(tick: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return tick;
    }
    let doubled = tick.saturating_mul(1u32 << failures.min(16));
    doubled.min(MAX_BACKOFF.max(tick))
}

/// Runs the scheduler until `shutdown` completes, then lets runs in flight
/// finish for up to `config.grace` and marks the rest interrupted.
///
/// It never stops on its own: a tick that fails (the database locked by
/// another process, say) or panics is logged at error level and tried
/// again, with backoff, while runs already started go on.
pub async fn run(
    launcher: Arc<Launcher>,
    config: SchedulerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LaunchError> {
    tokio::pin!(shutdown);
    let heartbeat = Arc::clone(launcher.heartbeat());
    // Not running from the moment this ends, however it ends (a panic
    // included): the health report says so.
    let running = Running::start(Arc::clone(&heartbeat));
    let mut tasks: JoinSet<Ended> = JoinSet::new();
    // Runs this scheduler started: run id -> (source, connector), and
    // task -> run id, so a run whose task panicked frees its slot too.
    let mut flight = InFlight::default();
    loop {
        let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tick(&launcher, &config, &flight.runs)
        }));
        let failures = match ticked {
            Ok(Ok(start)) => {
                heartbeat.ticked();
                for (run, source, connector) in start {
                    flight.runs.insert(run.clone(), (source, connector));
                    let launcher = Arc::clone(&launcher);
                    let id = run.clone();
                    let task = tasks.spawn(async move {
                        let result = launcher.execute(&id).await;
                        (id, result)
                    });
                    flight.tasks.insert(task.id(), run);
                }
                0
            }
            Ok(Err(e)) => {
                let failures = heartbeat.failed(e.to_string());
                tracing::error!(failures, "scheduler tick failed, trying again: {e}");
                failures
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic")
                    .to_owned();
                let failures = heartbeat.failed(format!("panicked: {why}"));
                tracing::error!(failures, "scheduler tick panicked, trying again: {why}");
                failures
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(backoff(config.tick, failures)) => {}
            Some(done) = tasks.join_next_with_id() => flight.finished(&launcher, done),
        }
    }
    drop(running);
    tracing::info!(in_flight = flight.runs.len(), "scheduler stopping");
    let drain = async {
        while let Some(done) = tasks.join_next_with_id().await {
            flight.finished(&launcher, done);
        }
    };
    if tokio::time::timeout(config.grace, drain).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        launcher.interrupt_own()?;
    }
    Ok(())
}

/// One tick: queues the due schedules' runs and picks the queued runs to
/// start now: (run, source, connector).
fn tick(
    launcher: &Launcher,
    config: &SchedulerConfig,
    in_flight: &HashMap<String, (String, String)>,
) -> Result<Vec<(String, String, String)>, LaunchError> {
    let mut candidates = {
        let vault = launcher.vault().lock().expect("vault lock");
        enqueue_due(&vault)?;
        startable(vault.store())?
    };
    let mut busy: HashSet<String> = in_flight.values().map(|(s, _)| s.clone()).collect();
    let mut connectors: Vec<String> = in_flight.values().map(|(_, c)| c.clone()).collect();
    let mut start = Vec::new();
    while in_flight.len() + start.len() < config.max_concurrent {
        // Fair shares: the oldest due run of a connector with the fewest
        // runs in flight goes first, so one connector's slow runs cannot
        // hold every slot while others' come due.
        let running = |connector: &str| connectors.iter().filter(|c| *c == connector).count();
        let Some(next) = candidates
            .iter()
            .enumerate()
            .filter(|(_, (_, source, connector))| {
                !busy.contains(source) && running(connector) < config.per_connector
            })
            .min_by_key(|(i, (_, _, connector))| (running(connector), *i))
            .map(|(i, _)| i)
        else {
            break;
        };
        let (run, source, connector) = candidates.remove(next);
        busy.insert(source.clone());
        connectors.push(connector.clone());
        start.push((run, source, connector));
    }
    Ok(start)
}

/// What a run's task ends with: the run, and how its launch ended.
type Ended = (String, Result<RunRecord, LaunchError>);

/// The runs this scheduler started and their tasks.
#[derive(Default)]
struct InFlight {
    /// run id -> (source, connector).
    runs: HashMap<String, (String, String)>,
    /// task -> run id.
    tasks: HashMap<tokio::task::Id, String>,
}

impl InFlight {
    /// A run's task ended: its slot is free, however it ended. A task that
    /// panicked leaves its run failed, with why, rather than running for
    /// ever with a slot held.
    fn finished(
        &mut self,
        launcher: &Launcher,
        done: Result<(tokio::task::Id, Ended), tokio::task::JoinError>,
    ) {
        let task = match &done {
            Ok((task, _)) => *task,
            Err(e) => e.id(),
        };
        let Some(run) = self.tasks.remove(&task) else {
            return;
        };
        self.runs.remove(&run);
        match done {
            Ok((_, (_, Ok(record)))) => tracing::info!(
                run,
                source = record.source,
                state = record.state,
                failure = record.failure,
                "run ended"
            ),
            // Another process started a run of the source first; it stays queued.
            Ok((_, (_, Err(LaunchError::Busy { .. })))) => {}
            // Queued before the owner paused the source: cancelled, with why.
            Ok((_, (_, Err(e @ LaunchError::Paused { .. })))) => {
                tracing::info!(run, "run not started: {e}");
            }
            Ok((_, (_, Err(e)))) => tracing::error!(run, "run could not be recorded: {e}"),
            Err(e) => {
                let why = if e.is_panic() {
                    "the host failed while running it (a panic); see the server log"
                } else {
                    "the host stopped its task"
                };
                tracing::error!(run, "run task failed: {e}");
                if let Err(e) = launcher.fail_in_flight(&run, why) {
                    tracing::error!(run, "the failed run could not be recorded: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let tick = Duration::from_millis(50);
        assert_eq!(backoff(tick, 0), tick);
        assert_eq!(backoff(tick, 1), Duration::from_millis(100));
        assert_eq!(backoff(tick, 3), Duration::from_millis(400));
        assert_eq!(backoff(tick, 40), MAX_BACKOFF);
        assert_eq!(backoff(Duration::from_secs(60), 5), Duration::from_secs(60));
    }

    /// A run whose task panicked frees its slot and ends failed, so the
    /// scheduler does not wait on it for ever.
    #[tokio::test]
    async fn a_panicked_run_task_frees_its_slot_and_fails_its_run() {
        use crate::vault::{Keyring, WrapperKind};
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let settings = Keyring::init_settings(WrapperKind::Local, false).expect("settings");
        let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let store = Store::init(&dir, &pairs).expect("init");
        let keyring = Keyring::create_first(&store, None).expect("keyring");
        store.add_source("work").expect("source");
        let run = enqueue(&store, "work", Trigger::Manual, None, None, 1).expect("enqueue");
        let launcher = Launcher::new(
            crate::runtime::Runtime::new(&tmp.path().join("cache")).expect("runtime"),
            Arc::new(Mutex::new(Vault::new(store, keyring))),
            crate::runs::LaunchConfig::default(),
        )
        .expect("launcher");
        // Started by this scheduler.
        launcher
            .vault()
            .lock()
            .expect("vault")
            .store()
            .conn()
            .execute("UPDATE runs SET state = 'running' WHERE id = ?1", [&run])
            .expect("running");
        let mut tasks: JoinSet<Ended> = JoinSet::new();
        let task = tasks.spawn(async { panic!("a bug") });
        let mut flight = InFlight::default();
        flight
            .runs
            .insert(run.clone(), ("work".into(), "echo".into()));
        flight.tasks.insert(task.id(), run.clone());
        let done = tasks.join_next_with_id().await.expect("a task");
        assert!(done.as_ref().is_err_and(|e| e.is_panic()));
        flight.finished(&launcher, done);
        assert!(flight.runs.is_empty() && flight.tasks.is_empty());
        let record =
            crate::runs::find(launcher.vault().lock().expect("vault").store(), &run).expect("run");
        assert_eq!(
            (record.state.as_str(), record.failure.as_deref()),
            ("failed", Some("interrupted")),
            "{record:?}"
        );
    }
}
