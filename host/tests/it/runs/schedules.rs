//! The scheduler: surviving a foreign lock, bounded schedules, no secret read to decide, fair limits.

use super::*;

/// A tick that fails does not end the scheduler: a write lock another
/// process holds on the database for 10 s fails its ticks (each logged
/// and tried again, with backoff), a stored cron schedule that can never
/// fire again is disabled with its reason, and the next due source runs
/// once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_survives_a_foreign_lock_and_an_exhausted_schedule() {
    let host = host(config(&[])).await;
    host.add("next", "echo", &[("count", "1")], Some("t-next"));
    host.add("past", "echo", &[("count", "1")], Some("t-past"));
    // Stored by an earlier version, which took a year field: its last
    // year has passed.
    let exhausted = "0 0 0 1 1 * 2020";
    for (expr, why) in [
        (exhausted, "five fields"),
        ("0 0 30 2 *", "never fires again"),
        ("* * * * * *", "five fields"),
    ] {
        assert!(
            Schedule::Cron(expr.into())
                .check()
                .is_err_and(|e| e.to_string().contains(why)),
            "{expr} is refused when set"
        );
    }
    {
        let vault = host.vault();
        let store = vault.store();
        scheduler::set_schedule(
            store,
            "next",
            Some(Schedule::Every(Duration::from_secs(3600))),
        )
        .expect("schedule");
        // Due now: it runs once the lock is gone.
        store
            .conn()
            .execute("UPDATE schedules SET next_at = 0", [])
            .expect("due");
        let past = store.source("past").expect("past").source_id;
        store
            .conn()
            .execute(
                "INSERT INTO schedules (source_id, cron, next_at) VALUES (?1, ?2, 0)",
                rusqlite::params![past, exhausted],
            )
            .expect("stored cron");
    }
    // Another process takes the write lock for 10 s.
    let db = host.vault().store().dir().join(sourcebox::store::DB_FILE);
    let (locked, lock_taken) = std::sync::mpsc::channel();
    let foreign = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).expect("open");
        conn.execute_batch("BEGIN IMMEDIATE").expect("lock");
        locked.send(()).expect("send");
        std::thread::sleep(Duration::from_secs(10));
        conn.execute_batch("COMMIT").expect("unlock");
    });
    lock_taken.recv().expect("locked");
    let heartbeat = Arc::clone(host.launcher.heartbeat());
    let watch = async {
        let failed = until(20, "a failed tick", || {
            let health = heartbeat.health();
            (health.failures > 0).then_some(health)
        })
        .await;
        assert!(failed.running, "{failed:?}");
        assert!(
            failed
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("locked") || e.contains("busy")),
            "{failed:?}"
        );
        until(40, "the due source's run", || {
            host.runs("next")
                .iter()
                .any(|r| r.trigger == "scheduled" && r.state == "succeeded")
                .then_some(())
        })
        .await;
    };
    scheduler::run(
        Arc::clone(&host.launcher),
        SchedulerConfig {
            tick: Duration::from_millis(50),
            ..SchedulerConfig::default()
        },
        watch,
    )
    .await
    .expect("scheduler");
    foreign.join().expect("foreign lock");
    let health = heartbeat.health();
    assert!(
        !health.running && health.failures == 0 && health.last_tick.is_some(),
        "{health:?}"
    );
    let rows = scheduler::schedules(host.vault().store()).expect("schedules");
    let past = rows.iter().find(|r| r.source == "past").expect("past");
    assert!(
        past.disabled
            .as_deref()
            .is_some_and(|why| why.contains(exhausted) && why.contains("five fields")),
        "{past:?}"
    );
    assert!(host.runs("past").is_empty(), "a disabled schedule ran");
    // Setting it again is refused, and leaves it as it was.
    assert!(
        scheduler::set_schedule(
            host.vault().store(),
            "past",
            Some(Schedule::Cron(exhausted.into()))
        )
        .is_err()
    );
}

/// Interval schedules between one minute and one year, at the edges; a
/// refused one stores nothing.
#[test]
fn schedule_intervals_are_bounded() {
    let minute = Duration::from_secs(60);
    let year = Duration::from_secs(365 * 24 * 3600);
    for (every, ok) in [
        (Duration::ZERO, false),
        (minute - Duration::from_secs(1), false),
        (minute, true),
        (year, true),
        (year + Duration::from_secs(1), false),
        (Duration::from_secs(u64::MAX), false),
    ] {
        assert_eq!(Schedule::Every(every).check().is_ok(), ok, "{every:?}");
    }
    // Time arithmetic is checked, never wrapped.
    assert!(
        Schedule::Every(Duration::from_secs(u64::MAX))
            .next_after(0)
            .is_err()
    );
    assert!(Schedule::Every(minute).next_after(i64::MAX - 1).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_and_due_schedules_read_no_secret_and_a_missed_schedule_runs_once() {
    let host = host(config(&[])).await;
    host.add("stored", "echo", &[], Some("stored-token"));
    host.add("bare", "echo", &[], None);
    for source in ["stored", "bare"] {
        scheduler::set_schedule(
            host.vault().store(),
            source,
            Some(Schedule::Every(Duration::from_secs(60))),
        )
        .expect("schedule");
    }
    // Ten hours of downtime: hundreds of missed ticks.
    let ten_hours_ago = sourcebox::store::now_ms() - 10 * 3600 * 1000;
    host.vault()
        .store()
        .conn()
        .execute("UPDATE schedules SET next_at = ?1", [ten_hours_ago])
        .expect("backdate");
    let audit_before = host.audit();
    assert_eq!(
        scheduler::eligible(&host.vault(), "stored").expect("eligible"),
        Ok(())
    );
    assert!(
        scheduler::eligible(&host.vault(), "bare")
            .expect("eligible")
            .is_err()
    );
    let queued = scheduler::enqueue_due(&host.vault()).expect("due");
    assert_eq!(queued.len(), 1, "a missed schedule runs once");
    assert_eq!(host.runs("stored").len(), 1);
    assert!(
        host.runs("bare").is_empty(),
        "an ineligible source was queued"
    );
    assert_eq!(host.audit(), audit_before, "eligibility touched the vault");
    let now = sourcebox::store::now_ms();
    for row in scheduler::schedules(host.vault().store()).expect("schedules") {
        assert!(row.next_at > now, "{row:?}");
    }
    assert!(
        scheduler::enqueue_due(&host.vault())
            .expect("due")
            .is_empty()
    );

    // Cron: next occurrence is strictly later and on the minute.
    let cron = Schedule::Cron("*/5 * * * *".into());
    let next = cron.next_after(now).expect("next");
    assert!(next > now && next - now <= 5 * 60 * 1000 && next % 60_000 == 0);
    assert!(Schedule::Cron("not a cron".into()).check().is_err());
    assert!(Schedule::Every(Duration::ZERO).check().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_keeps_global_and_per_connector_limits_without_starving_a_connector() {
    let fx = fixture(vec![]).await;
    let host = host(config(&[fx.addr])).await;
    let api = format!("http://{}", fx.addr);
    let echoes = ["e1", "e2", "e3", "e4"];
    for name in echoes {
        // An account each: echo tells accounts apart by token.
        host.add(
            name,
            "echo",
            &[("spin_ms", "300")],
            Some(&format!("t-{name}")),
        );
    }
    host.add("gh", "github", &[("api_base_url", &api)], Some(ALICE));
    // The github run is queued last, behind every echo run.
    for name in echoes.iter().chain(&["gh"]) {
        runs::enqueue(
            host.vault().store(),
            name,
            Trigger::Scheduled,
            None,
            None,
            1,
        )
        .expect("enqueue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = || {
        let mut runs = runs::list(host.vault().store(), None).expect("runs");
        runs.sort_by_key(|r| r.started_at);
        runs
    };
    let shutdown = async {
        until(60, "every run", || {
            all().iter().all(|r| r.state == "succeeded").then_some(())
        })
        .await;
    };
    scheduler::run(
        Arc::clone(&host.launcher),
        SchedulerConfig {
            tick: Duration::from_millis(20),
            max_concurrent: 2,
            per_connector: 1,
            grace: Duration::from_secs(5),
        },
        shutdown,
    )
    .await
    .expect("scheduler");
    let runs = all();
    assert_eq!(runs.len(), 5);
    let span = |r: &RunRecord| (r.started_at, r.finished_at.expect("finished"));
    let overlap = |a: &RunRecord, b: &RunRecord| {
        let ((s1, e1), (s2, e2)) = (span(a), span(b));
        s1 < e2 && s2 < e1
    };
    let echo_runs: Vec<&RunRecord> = runs.iter().filter(|r| r.source != "gh").collect();
    for (i, a) in echo_runs.iter().enumerate() {
        for b in &echo_runs[i + 1..] {
            assert!(!overlap(a, b), "two echo runs at once: {a:?} {b:?}");
        }
    }
    for r in &runs {
        let at_once = runs.iter().filter(|o| overlap(r, o)).count();
        assert!(at_once <= 2, "more than two runs at once around {r:?}");
    }
    let gh = runs.iter().find(|r| r.source == "gh").expect("gh");
    let last_echo = echo_runs.last().expect("echo");
    assert!(
        gh.started_at < last_echo.started_at,
        "the github run waited behind the echo queue: {runs:#?}"
    );
}
