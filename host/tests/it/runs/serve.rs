//! `serve` as a process: scheduled runs that see what manual runs see, kill -9, graceful shutdown.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_receive_what_manual_runs_receive_whatever_the_environment_holds() {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let allow = Some(fx.addr);
    let api = format!("api_base_url=http://{}", fx.addr);
    cli_ok(&dir, None, &["init"], b"").await;
    cli_ok(
        &dir,
        allow,
        &[
            "source",
            "add",
            "work",
            "--connector",
            "github",
            "--set",
            &api,
        ],
        b"",
    )
    .await;
    cli_ok(
        &dir,
        None,
        &["credential", "set", "work", "token", "--class", "token"],
        ALICE.as_bytes(),
    )
    .await;
    cli_ok(&dir, allow, &["run", "work"], b"").await;
    let manual_records = {
        let store = Store::open(&dir).expect("open");
        let mut stmt = store
            .conn()
            .prepare("SELECT key, data FROM records ORDER BY stream, key")
            .expect("q");
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .expect("rows")
            .collect::<Result<Vec<_>, _>>()
            .expect("records")
    };
    assert!(!manual_records.is_empty());
    cli_ok(
        &dir,
        None,
        &["source", "schedule", "work", "--every", "1m"],
        b"",
    )
    .await;

    let provider_vars = ["GITHUB_TOKEN", "GH_TOKEN", "GITHUB_PERSONAL_ACCESS_TOKEN"];
    for empty in [false, true] {
        let env: Vec<(&str, Option<&str>)> = provider_vars
            .iter()
            .map(|k| (*k, empty.then_some("")))
            .collect();
        let before = runs_of(&dir, "work").len();
        // The schedule is due (as after a minute, or downtime).
        Store::open(&dir)
            .expect("open")
            .conn()
            .execute("UPDATE schedules SET next_at = 0", [])
            .expect("due");
        let serve = Serve::start(&dir, allow, &env);
        until(60, "a scheduled run", || {
            runs_of(&dir, "work")[before..]
                .iter()
                .any(|r| r.trigger == "scheduled" && r.state == "succeeded")
                .then_some(())
        })
        .await;
        let out = serve.stop();
        common::assert_no_leak(ALICE.as_bytes(), out.as_bytes(), "serve output");
    }

    let runs = runs_of(&dir, "work");
    assert_eq!(runs[0].trigger, "manual");
    let scheduled: Vec<&RunRecord> = runs.iter().filter(|r| r.trigger == "scheduled").collect();
    assert!(scheduled.len() >= 2);
    assert!(
        runs.iter()
            .all(|r| r.state == "succeeded" && r.connector == runs[0].connector),
        "{runs:#?}"
    );
    // The provider saw only the stored token, from every run.
    let tokens = fx.tokens();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t == ALICE),
        "{tokens:?}"
    );
    // The same seam: every run resolved the stored credential itself,
    // audited under its own run id.
    let store = Store::open(&dir).expect("open");
    for run in &runs {
        let reads: i64 = store
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE action = 'credential.read' AND actor = 'egress'
                 AND source = 'work' AND credential = 'token' AND outcome = 'ok' AND run_id = ?1",
                [&run.id],
                |r| r.get(0),
            )
            .expect("count");
        assert!(
            reads >= 1,
            "run {} ({}) did not resolve from the vault",
            run.id,
            run.trigger
        );
    }
    // And collected exactly the same data.
    let mut stmt = store
        .conn()
        .prepare("SELECT key, data FROM records ORDER BY stream, key")
        .expect("q");
    let now: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("records");
    assert_eq!(now, manual_records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_mid_run_interrupts_the_run_and_the_source_runs_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    echo_source_due_now(&dir, "slow", "spin_ms=3000").await;

    let mut serve = Serve::start(&dir, None, &[]);
    let cut = until(90, "a run in flight", || {
        runs_of(&dir, "slow")
            .into_iter()
            .find(|r| r.state == "running")
    })
    .await;
    // Its records are committed before it spins; then the host dies.
    until(60, "committed records", || {
        let store = Store::open(&dir).expect("open");
        let n: i64 = store
            .conn()
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
            .expect("count");
        (n == 3).then_some(())
    })
    .await;
    let child = serve.0.as_mut().expect("running");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert_eq!(
        runs::find(&Store::open(&dir).expect("open"), &cut.id)
            .expect("run")
            .state,
        "running",
        "nothing marked it yet"
    );

    let serve = Serve::start(&dir, None, &[]);
    let again = until(90, "the source to run again", || {
        runs_of(&dir, "slow")
            .into_iter()
            .find(|r| r.id != cut.id && r.state == "succeeded")
    })
    .await;
    serve.stop();
    let store = Store::open(&dir).expect("open");
    let cut = runs::find(&store, &cut.id).expect("run");
    assert_eq!(cut.state, "interrupted");
    assert_eq!(cut.failure.as_deref(), Some("interrupted"));
    assert_eq!(again.trigger, "scheduled");
    let ok: String = store
        .conn()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(ok, "ok");
    let items: i64 = store
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM records WHERE stream = 'items'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(items, 3, "records committed before the kill are intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shuts_down_gracefully_and_marks_what_it_stopped_interrupted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    echo_source_due_now(&dir, "slow", "spin_ms=120000").await;
    let serve = Serve::start(&dir, None, &[]);
    let running = until(90, "a run in flight", || {
        runs_of(&dir, "slow")
            .into_iter()
            .find(|r| r.state == "running")
    })
    .await;
    let stopping = std::time::Instant::now();
    let out = serve.stop(); // SIGTERM; the grace period is 5 s
    assert!(stopping.elapsed() < Duration::from_secs(30), "{out}");
    assert!(out.contains("sourcebox stopped"), "{out}");
    let run = runs::find(&Store::open(&dir).expect("open"), &running.id).expect("run");
    assert_eq!(run.state, "interrupted");
    assert!(
        run.detail.as_deref().unwrap_or("").contains("shut down"),
        "{run:?}"
    );
}
