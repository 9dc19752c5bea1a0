//! Questions a run asks its owner: answered, unanswered, kept to their source, expired by a restart.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otp_question_waits_for_the_owner_and_the_run_resumes() {
    let host = host(config(&[])).await;
    host.add("bank", "echo", &[("ask", "otp")], Some("bank-token"));
    let mut events = host.launcher.events().subscribe();
    let launcher = Arc::clone(&host.launcher);
    let run = tokio::spawn(async move { launcher.launch("bank", Trigger::Manual).await });

    let asked = pending(&host, "bank").await;
    assert_eq!(asked.kind, "otp");
    assert_eq!(asked.prompt, "Enter the one-time code sent to you");
    let waiting = runs::find(&Store::open(&host.dir).expect("open"), &asked.run).expect("run");
    assert_eq!(waiting.state, "waiting_for_owner");

    // The owner answers from another process, on standard input.
    let code = "otp-824613-canary";
    let (ok, out) = host
        .cli(&["interaction", "answer", &asked.id], code.as_bytes())
        .await;
    assert!(ok, "{out}");
    assert!(!out.contains(code), "the answer was echoed: {out}");

    let record = run.await.expect("join").expect("launch");
    assert_eq!(record.state, "succeeded", "{record:?}");
    assert_eq!(
        host.records("bank", "answers"),
        vec![serde_json::json!({"kind": "otp", "fingerprint": fingerprint(code)})]
    );
    let store = Store::open(&host.dir).expect("open");
    assert_eq!(
        interactions::find(&store, &asked.id).expect("find").state,
        "answered"
    );
    let left: i64 = store
        .conn()
        .query_row("SELECT COUNT(*) FROM interaction_answers", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0, "the sealed answer outlived its use");
    let audit = host.audit();
    for action in ["interaction.answer", "interaction.read"] {
        assert!(
            audit
                .iter()
                .any(|(_, a, s, _)| a == action && s.as_deref() == Some("bank")),
            "no {action} audit row"
        );
    }

    // The events tell the story, and none carries the answer.
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        assert_eq!(event.source, "bank");
        let text = serde_json::to_string(&event).expect("json");
        assert!(!text.contains(code), "the answer reached an event: {text}");
        seen.push(event.kind);
    }
    let states: Vec<&str> = seen
        .iter()
        .filter_map(|k| match k {
            EventKind::State { state, .. } => Some(state.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        ["running", "waiting_for_owner", "running", "succeeded"]
    );
    assert!(seen.iter().any(
        |k| matches!(k, EventKind::Interaction { id, kind, .. } if *id == asked.id && kind == "otp")
    ));
    assert!(seen.iter().any(|k| matches!(k, EventKind::Progress { .. })));

    // Nothing on disk holds the answer in any form.
    for (path, bytes) in common::files_under(&host.dir) {
        common::assert_no_leak(code.as_bytes(), &bytes, &path.display().to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_question_fails_the_run_with_interaction_timeout() {
    let host = host(LaunchConfig {
        interaction_wait: Duration::from_secs(1),
        ..config(&[])
    })
    .await;
    host.add("bank", "echo", &[("ask", "otp")], Some("bank-token"));
    let record = host
        .launcher
        .launch("bank", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(record.state, "failed");
    assert_eq!(record.failure.as_deref(), Some("interaction_timeout"));
    let store = Store::open(&host.dir).expect("open");
    let all = interactions::list(&store, true).expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, "expired");
    // Too late: the answer is refused and nothing is stored.
    let (ok, out) = host
        .cli(&["interaction", "answer", &all[0].id], b"123456")
        .await;
    assert!(!ok && out.contains("not waiting for an answer"), "{out}");
    assert!(host.records("bank", "answers").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_for_one_source_never_reaches_another() {
    let host = host(config(&[])).await;
    host.add("a", "echo", &[("ask", "otp")], Some("token-a"));
    host.add("b", "echo", &[("ask", "otp")], Some("token-b"));
    let runs: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|source| {
            let launcher = Arc::clone(&host.launcher);
            tokio::spawn(async move { launcher.launch(source, Trigger::Manual).await })
        })
        .collect();
    let asked_a = pending(&host, "a").await;
    let asked_b = pending(&host, "b").await;

    // Answering A's interaction as source B is refused.
    {
        let vault = host.vault();
        let b = vault.store().source("b").expect("b");
        let refused = vault.answer_interaction(
            Actor::OWNER_CLI,
            &b,
            &asked_a.id,
            &Secret::from_slice(b"wrong-source"),
        );
        assert!(
            matches!(refused, Err(VaultError::Invalid(_))),
            "{refused:?}"
        );
    }
    // A's answer reaches A's run only; B keeps waiting for its own.
    let (ok, out) = host
        .cli(&["interaction", "answer", &asked_a.id], b"code-for-a")
        .await;
    assert!(ok, "{out}");
    let mut runs = runs.into_iter();
    let run_a = runs.next().expect("a").await.expect("join").expect("a");
    assert_eq!(run_a.state, "succeeded");
    let still =
        interactions::find(&Store::open(&host.dir).expect("open"), &asked_b.id).expect("find b");
    assert_eq!(still.state, "pending");
    let (ok, out) = host
        .cli(&["interaction", "answer", &asked_b.id], b"code-for-b")
        .await;
    assert!(ok, "{out}");
    let run_b = runs.next().expect("b").await.expect("join").expect("b");
    assert_eq!(run_b.state, "succeeded");
    assert_eq!(
        host.records("a", "answers")[0]["fingerprint"],
        fingerprint("code-for-a")
    );
    assert_eq!(
        host.records("b", "answers")[0]["fingerprint"],
        fingerprint("code-for-b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_answer_moved_to_another_source_does_not_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(&tmp.path().join("data"));
    let a = vault.store().add_source("a").expect("a");
    let b = vault.store().add_source("b").expect("b");
    let conn = vault.store().conn();
    conn.execute_batch(&format!(
        "INSERT INTO runs (id, source_id, trigger, state, started_at) VALUES ('r', {}, 'manual', 'waiting_for_owner', 0);
         INSERT INTO interactions (id, run_id, source_id, kind, prompt, state, created_at, deadline)
             VALUES ('i', 'r', {}, 'otp', 'code?', 'pending', 0, 9999999999999);",
        a.source_id, a.source_id
    ))
    .expect("rows");
    vault
        .answer_interaction(Actor::OWNER_CLI, &a, "i", &Secret::from_slice(b"000111"))
        .expect("answer");
    conn.execute(
        "UPDATE interaction_answers SET source_id = ?1",
        [b.source_id],
    )
    .expect("move");
    let moved = vault.take_answer(Actor::OWNER_CLI, &b, "i");
    assert!(
        matches!(moved, Err(VaultError::Unrecoverable { .. })),
        "{moved:?}"
    );
    assert!(
        vault
            .take_answer(Actor::OWNER_CLI, &a, "i")
            .expect("take")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_kept_as_a_credential_belongs_to_its_source_only() {
    let host = host(config(&[])).await;
    host.add("a", "echo", &[("ask", "otp")], Some("token-a"));
    host.add("b", "echo", &[], Some("token-b"));
    let launcher = Arc::clone(&host.launcher);
    let run = tokio::spawn(async move { launcher.launch("a", Trigger::Manual).await });
    let asked = pending(&host, "a").await;
    // A name the connector does not declare is refused before anything is
    // stored, and the question stays open.
    let (ok, out) = host
        .cli(
            &["interaction", "answer", &asked.id, "--keep", "nope"],
            b"s3ss10n",
        )
        .await;
    assert!(
        !ok && out.contains("declares no credential 'nope'"),
        "{out}"
    );
    let (ok, out) = host
        .cli(
            &["interaction", "answer", &asked.id, "--keep", "session"],
            b"s3ss10n-kept",
        )
        .await;
    assert!(ok && out.contains("kept it as a/session"), "{out}");
    assert_eq!(run.await.expect("join").expect("launch").state, "succeeded");
    let vault = host.vault();
    let metas = vault.list(None).expect("list");
    let kept: Vec<_> = metas.iter().filter(|m| m.name == "session").collect();
    assert_eq!(kept.len(), 1, "{metas:?}");
    assert_eq!(kept[0].source, "a");
    assert_eq!(kept[0].provenance.as_str(), "interaction");
    let a = vault.store().source("a").expect("a");
    assert_eq!(common::get(&vault, &a, "session"), b"s3ss10n-kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_expires_the_questions_of_runs_that_were_cut_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    echo_source_due_now(&dir, "bank", "ask=otp").await;
    let mut serve = Serve::start(&dir, None, &[]);
    let asked = until(90, "the question", || {
        let store = Store::open(&dir).expect("open");
        interactions::list(&store, false)
            .expect("list")
            .into_iter()
            .next()
    })
    .await;
    let child = serve.0.as_mut().expect("running");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // Nothing is waiting any more: listing shows no question, answering is
    // refused, and the run is interrupted.
    let listed = cli_ok(&dir, None, &["interaction", "list"], b"").await;
    assert!(listed.contains("no interaction is waiting"), "{listed}");
    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir")
        .arg(&dir)
        .args(["interaction", "answer", &asked.id]);
    let out = tokio::task::spawn_blocking(move || common::run(cmd, b"123456"))
        .await
        .expect("join");
    assert!(!out.status.success());
    let store = Store::open(&dir).expect("open");
    assert_eq!(
        interactions::find(&store, &asked.id).expect("find").state,
        "expired"
    );
    let run = runs::find(&store, &asked.run).expect("run");
    assert_eq!(
        (run.state.as_str(), run.failure.as_deref()),
        ("interrupted", Some("interrupted"))
    );
}
