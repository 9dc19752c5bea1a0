//! A run's wall clock, cancellation, HTTP timeouts, questions and host memory, bounded whatever the connector does.

use super::*;

/// Each hostile run that waits inside the host — a sleep, a request never
/// answered, a body trickled a byte at a time — ends at its time limit
/// with `resource_exhausted`, within 100 ms of it, while a run of another
/// source goes on beside it; the hung connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_wait_inside_the_host_end_at_their_time_limit() {
    let (hung, hung_open) = common::stalling_server(false).await;
    let (trickling, trickling_open) = common::stalling_server(true).await;
    let host = host(config(&[hung, trickling])).await;
    host.hostile_time(1);
    host.add("neighbour", "echo", &[("count", "2")], Some("t"));
    host.add_hostile("sleeper", "sleep", "");
    host.add_hostile("hung", "http-wait", &format!("http://{hung}/"));
    host.add_hostile("trickled", "http-wait", &format!("http://{trickling}/"));
    for source in ["sleeper", "hung", "trickled"] {
        let started = std::time::Instant::now();
        let (hostile, neighbour) = tokio::join!(
            host.launcher.launch(source, Trigger::Manual),
            host.launcher.launch("neighbour", Trigger::Manual),
        );
        let took = started.elapsed();
        let hostile = hostile.expect("launch");
        assert_eq!(hostile.state, "failed", "{source}: {hostile:?}");
        assert_eq!(
            hostile.failure.as_deref(),
            Some("resource_exhausted"),
            "{source}: {hostile:?}"
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(1) + STOP_WITHIN,
            "{source} ended after {took:?}"
        );
        let neighbour = neighbour.expect("launch");
        assert_eq!(neighbour.state, "succeeded", "{neighbour:?}");
    }
    for (what, open) in [("hung", hung_open), ("trickled", trickling_open)] {
        until(5, "the abandoned connection to close", || {
            (open.now() == 0).then_some(())
        })
        .await;
        let _ = what;
    }
}

/// A guest asking for hour-long HTTP timeouts gets the host's: a request
/// never answered ends with a read timeout at the host's first-byte limit,
/// and the connector hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_cannot_raise_the_hosts_http_timeouts() {
    let (hung, _) = common::stalling_server(false).await;
    let host = host(LaunchConfig {
        limits: sourcebox::runtime::Limits {
            http_first_byte_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..config(&[hung])
    })
    .await;
    host.add_hostile("patient", "http-options", &format!("http://{hung}/"));
    let started = std::time::Instant::now();
    let record = host
        .launcher
        .launch("patient", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(
        record.failure.as_deref(),
        Some("connector_fatal"),
        "{record:?}"
    );
    let detail = record.detail.unwrap_or_default();
    assert!(
        detail.contains("ended: ErrorCode::ConnectionReadTimeout"),
        "{detail}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Cancelling a run that waits inside the host ends it at once: from this
/// process within 100 ms, from another (the CLI) within its poll and that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_sleeping_run_at_once() {
    let host = host(config(&[])).await;
    host.add_hostile("sleeper", "sleep", "");
    for from_cli in [false, true] {
        let launcher = Arc::clone(&host.launcher);
        let run = tokio::spawn(async move { launcher.launch("sleeper", Trigger::Manual).await });
        let id = until(60, "the run to start", || {
            host.runs("sleeper")
                .into_iter()
                .find(|r| r.state == "running")
                .map(|r| r.id)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = if from_cli {
            let (ok, out) = host.cli(&["cancel", &id], b"").await;
            assert!(ok, "{out}");
            std::time::Instant::now()
        } else {
            let asked = std::time::Instant::now();
            host.launcher.cancel(&id).expect("cancel");
            asked
        };
        let record = run.await.expect("join").expect("launch");
        let took = asked.elapsed();
        assert_eq!(record.state, "cancelled", "{record:?}");
        // The CLI's request is seen at the run's next look (every 50 ms).
        let within = STOP_WITHIN
            + if from_cli {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
        assert!(
            took < within,
            "cancelled from the CLI: {from_cli}; ended {took:?} after"
        );
    }
}

/// A run may ask the owner only so many questions; and its wall clock,
/// waits for the owner included, ends it however patient the question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_are_bounded_and_waiting_for_the_owner_counts_toward_the_wall_clock() {
    let host = host(LaunchConfig {
        interaction_wait: Duration::from_millis(100),
        ..config(&[])
    })
    .await;
    host.add_hostile("asker", "ask-loop", "");
    let record = host
        .launcher
        .launch("asker", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(
        record.failure.as_deref(),
        Some("resource_exhausted"),
        "{record:?}"
    );
    assert!(
        record
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("Questions"),
        "{record:?}"
    );
    let asked = host.interactions("asker");
    let limit = sourcebox::runtime::Limits::default().questions as usize;
    assert_eq!(asked.len(), limit, "{asked:#?}");
    assert!(asked.iter().all(|i| i.state == "expired"), "{asked:#?}");

    // An hour to answer, but 800 ms of wall clock for the run.
    let wall = Duration::from_millis(800);
    let host = host_with_wall(wall).await;
    host.add_hostile("asker", "ask-loop", "");
    let started = std::time::Instant::now();
    let record = host
        .launcher
        .launch("asker", Trigger::Manual)
        .await
        .expect("launch");
    let took = started.elapsed();
    assert_eq!(
        record.failure.as_deref(),
        Some("resource_exhausted"),
        "{record:?}"
    );
    assert!(took >= wall && took < wall + STOP_WITHIN, "{took:?}");
    // The question the run was waiting on is closed, not left pending.
    let asked = host.interactions("asker");
    assert_eq!(asked.len(), 1, "{asked:#?}");
    assert_eq!(asked[0].state, "expired");
}

/// With two slots and two hostile sources that sleep on every run, another
/// source's scheduled runs still complete on schedule: each sleeping run
/// ends at its time limit and frees its slot, and the other connector
/// takes its share of the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_runs_do_not_starve_the_scheduler() {
    let host = host(config(&[])).await;
    host.hostile_time(1);
    host.add_hostile("sleeper1", "sleep", "");
    host.add_hostile("sleeper2", "sleep", "");
    host.add("neighbour", "echo", &[("count", "1")], Some("t"));
    for source in ["sleeper1", "sleeper2", "neighbour"] {
        scheduler::set_schedule(
            host.vault().store(),
            source,
            Some(Schedule::Every(Duration::from_secs(60))),
        )
        .expect("schedule");
    }
    // Every schedule comes due at 0, 1, 2, 3, 4 and 5 s (a schedule is at
    // least a minute apart; the clock is moved, not waited for).
    let window = async {
        for _ in 0..6 {
            host.vault()
                .store()
                .conn()
                .execute("UPDATE schedules SET next_at = 0", [])
                .expect("due");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    scheduler::run(
        Arc::clone(&host.launcher),
        SchedulerConfig {
            tick: Duration::from_millis(50),
            max_concurrent: 2,
            per_connector: 2,
            grace: Duration::from_secs(5),
        },
        window,
    )
    .await
    .expect("scheduler");
    let succeeded = host
        .runs("neighbour")
        .iter()
        .filter(|r| r.state == "succeeded")
        .count();
    // Due at 1, 2, 3, 4 and 5 s: one may be late.
    assert!(succeeded >= 4, "{:#?}", host.runs("neighbour"));
    for source in ["sleeper1", "sleeper2"] {
        let runs = host.runs(source);
        assert!(!runs.is_empty());
        for run in runs.iter().filter(|r| r.finished()) {
            assert_eq!(
                run.failure.as_deref(),
                Some("resource_exhausted"),
                "{run:?}"
            );
            let took = run.finished_at.expect("finished") - run.started_at;
            assert!(took < 1_000 + STOP_WITHIN.as_millis() as i64, "{run:?}");
        }
    }
}

/// What a run can make the host keep is bounded: a run that keeps every
/// header map it can while it waits takes the host's memory up by less
/// than its guest memory limit and the host's allowance for it, measured
/// against a run that only waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pinning_host_memory_stays_within_its_allowance() {
    let host = host(config(&[])).await;
    let guest_memory = 64u64 << 20;
    catalog::set_connector_limits(
        host.vault().store(),
        "hostile",
        &catalog::LimitOverrides {
            time_secs: Some(2),
            memory_bytes: Some(guest_memory),
            ..Default::default()
        },
    )
    .expect("limits");
    host.add_hostile("calm", "sleep", "");
    // As many header maps as the run's resource table holds, less a few
    // for what else the run keeps there.
    let maps = sourcebox::runtime::MAX_RESOURCES - 16;
    host.add_hostile("hog", "fields-hold", &maps.to_string());
    // The first run in a process of its own compiles the connector into
    // the data directory; the measured ones load that compiled copy.
    run_measured(&host, "calm").await;
    let calm = run_measured(&host, "calm").await;
    let hog = run_measured(&host, "hog").await;
    let grown = hog.saturating_sub(calm);
    println!(
        "RSS: waiting {} MiB, keeping {maps} header maps {} MiB, grown {:.1} MiB; allowance {} MiB",
        calm >> 20,
        hog >> 20,
        grown as f64 / f64::from(1 << 20),
        sourcebox::runtime::HOST_ALLOWANCE >> 20
    );
    let hog_run = host.runs("hog").pop().expect("run");
    assert_eq!(
        hog_run.failure.as_deref(),
        Some("resource_exhausted"),
        "{hog_run:?}"
    );
    assert!(
        grown < guest_memory + sourcebox::runtime::HOST_ALLOWANCE as u64,
        "grown by {grown} bytes"
    );
}
