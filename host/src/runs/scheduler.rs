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
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use tokio::task::JoinSet;

use super::{LaunchError, Launcher, RunRecord, Trigger, enqueue};
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
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

impl Schedule {
    /// Checks the schedule: a positive interval, or a cron expression that
    /// parses.
    pub fn check(&self) -> Result<(), StoreError> {
        match self {
            Self::Every(every) if *every < MIN_INTERVAL => Err(StoreError::Conflict(format!(
                "a schedule interval must be at least {}",
                humantime::format_duration(MIN_INTERVAL)
            ))),
            Self::Every(_) => Ok(()),
            Self::Cron(expr) => parse_cron(expr).map(|_| ()),
        }
    }

    /// The first due time strictly after `after` (ms since the Unix epoch).
    pub fn next_after(&self, after: i64) -> Result<i64, StoreError> {
        match self {
            Self::Every(every) => Ok(after + every.as_millis().max(1) as i64),
            Self::Cron(expr) => {
                let cron = parse_cron(expr)?;
                let start = chrono::DateTime::from_timestamp_millis(after)
                    .ok_or_else(|| StoreError::Conflict("time out of range".into()))?;
                cron.find_next_occurrence(&start, false)
                    .map(|t| t.timestamp_millis())
                    .map_err(|e| StoreError::Conflict(format!("cron expression '{expr}': {e}")))
            }
        }
    }
}

fn parse_cron(expr: &str) -> Result<croner::Cron, StoreError> {
    croner::Cron::from_str(expr).map_err(|e| {
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
    schedule.check()?;
    let next_at = schedule.next_after(now_ms())?;
    let (every, cron) = match &schedule {
        Schedule::Every(d) => (Some(d.as_secs().max(1) as i64), None),
        Schedule::Cron(expr) => (None, Some(expr.clone())),
    };
    store.conn().execute(
        "INSERT INTO schedules (source_id, interval_secs, cron, next_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (source_id) DO UPDATE SET interval_secs = excluded.interval_secs,
             cron = excluded.cron, next_at = excluded.next_at",
        params![src.source_id, every, cron, next_at],
    )?;
    Ok(schedules(store)?.into_iter().find(|s| s.source == source))
}

/// Every schedule, by source name.
pub fn schedules(store: &Store) -> Result<Vec<ScheduleRow>, StoreError> {
    let mut stmt = store.conn().prepare(
        "SELECT s.name, c.interval_secs, c.cron, c.next_at FROM schedules c
         JOIN sources s ON s.id = c.source_id ORDER BY s.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ScheduleRow {
            source: r.get(0)?,
            every_secs: r.get::<_, Option<i64>>(1)?.map(|s| s as u64),
            cron: r.get(2)?,
            next_at: r.get(3)?,
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
}

/// Every source of the default owner with its connector, re-auth state and
/// schedule, by name.
pub fn statuses(store: &Store) -> Result<Vec<SourceStatus>, StoreError> {
    let schedules = schedules(store)?;
    let mut stmt = store.conn().prepare(
        "SELECT s.name, s.connector_id || ' ' || s.connector_version, s.needs_reauth
         FROM sources s JOIN owners o ON o.id = s.owner_id WHERE o.name = ?1 ORDER BY s.name",
    )?;
    let rows = stmt.query_map([crate::store::DEFAULT_OWNER], |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?;
    rows.map(|row| {
        let (name, connector, needs_reauth) = row?;
        let schedule = schedules.iter().find(|s| s.source == name).cloned();
        Ok(SourceStatus {
            name,
            connector,
            needs_reauth,
            schedule,
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
             JOIN sources s ON s.id = c.source_id WHERE c.next_at <= ?1 ORDER BY c.next_at",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut queued = Vec::new();
    for (source_id, name, every, cron) in due {
        let schedule = match (every, cron) {
            (Some(secs), _) => Schedule::Every(Duration::from_secs(secs as u64)),
            (None, Some(expr)) => Schedule::Cron(expr),
            (None, None) => continue,
        };
        let next = schedule.next_after(now)?;
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

/// Runs the scheduler until `shutdown` completes, then lets runs in flight
/// finish for up to `config.grace` and marks the rest interrupted.
pub async fn run(
    launcher: Arc<Launcher>,
    config: SchedulerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LaunchError> {
    tokio::pin!(shutdown);
    let mut tasks: JoinSet<(String, Result<RunRecord, LaunchError>)> = JoinSet::new();
    // run id -> (source, connector) of runs this scheduler started.
    let mut in_flight: HashMap<String, (String, String)> = HashMap::new();
    loop {
        {
            let vault = launcher.vault().lock().expect("vault lock");
            enqueue_due(&vault)?;
            let candidates = startable(vault.store())?;
            drop(vault);
            let mut busy: HashSet<String> = in_flight.values().map(|(s, _)| s.clone()).collect();
            let mut candidates = candidates;
            while in_flight.len() < config.max_concurrent {
                // Fair shares: the oldest due run of a connector with the
                // fewest runs in flight goes first, so one connector's slow
                // runs cannot hold every slot while others' come due.
                let running =
                    |connector: &str| in_flight.values().filter(|(_, c)| c == connector).count();
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
                in_flight.insert(run.clone(), (source, connector));
                let launcher = Arc::clone(&launcher);
                tasks.spawn(async move {
                    let result = launcher.execute(&run).await;
                    (run, result)
                });
            }
        }
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(config.tick) => {}
            Some(done) = tasks.join_next() => finished(&mut in_flight, done),
        }
    }
    tracing::info!(in_flight = in_flight.len(), "scheduler stopping");
    let drain = async {
        while let Some(done) = tasks.join_next().await {
            finished(&mut in_flight, done);
        }
    };
    if tokio::time::timeout(config.grace, drain).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        launcher.interrupt_own()?;
    }
    Ok(())
}

fn finished(
    in_flight: &mut HashMap<String, (String, String)>,
    done: Result<(String, Result<RunRecord, LaunchError>), tokio::task::JoinError>,
) {
    match done {
        Ok((run, Ok(record))) => {
            in_flight.remove(&run);
            tracing::info!(
                run,
                source = record.source,
                state = record.state,
                failure = record.failure,
                "run ended"
            );
        }
        // Another process started a run of the source first; it stays queued.
        Ok((run, Err(LaunchError::Busy { .. }))) => {
            in_flight.remove(&run);
        }
        // Queued before the owner paused the source: cancelled, with why.
        Ok((run, Err(e @ LaunchError::Paused { .. }))) => {
            in_flight.remove(&run);
            tracing::info!(run, "run not started: {e}");
        }
        Ok((run, Err(e))) => {
            in_flight.remove(&run);
            tracing::error!(run, "run could not be recorded: {e}");
        }
        Err(e) => tracing::error!("run task failed: {e}"),
    }
}
