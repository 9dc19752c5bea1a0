//! Each run sees its own source only; credential classes hold at every exit; hostile components are stopped with typed failures.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_sees_only_its_own_sources_credentials() {
    let w = world().await;
    for source in ["a", "b"] {
        let outcome = w
            .collect(&w.echo, source, &[("count", "4")], Limits::default())
            .await
            .expect("collect");
        assert_eq!(
            outcome,
            Outcome::Collected(sourcebox::contract::RunSummary { records: 4 })
        );
    }
    for (source, token) in [("a", "token-of-a"), ("b", "token-of-b")] {
        let records = w.records(source);
        assert_eq!(records.len(), 4);
        assert!(
            records
                .iter()
                .all(|r| r["token_fingerprint"] == fingerprint(token)),
            "{source} got another source's token: {records:?}"
        );
    }
    // A source with nothing stored gets nothing, not a neighbour's token.
    match w
        .runtime
        .run(
            &w.echo,
            w.binding("empty", &[], Limits::default()),
            Call::Verify,
        )
        .await
    {
        Err(RunFailure::Connector(ConnectorError::Fatal(msg))) => {
            assert_eq!(msg, "credential unavailable: missing")
        }
        other => panic!("expected a missing credential, got {other:?}"),
    }
    // verify() echoes an identity derived from the source's own token.
    match w
        .runtime
        .run(
            &w.echo,
            w.binding("b", &[], Limits::default()),
            Call::Verify,
        )
        .await
    {
        Ok(Outcome::Verified(identity)) => assert_eq!(identity.id, fingerprint("token-of-b")),
        other => panic!("{other:?}"),
    }
    // Reads were audited against the run.
    let vault = w.vault.lock().expect("lock");
    let reads: i64 = vault
        .store()
        .conn()
        .query_row("SELECT count(*) FROM audit WHERE actor = 'connector' AND run_id = 'run-a' AND source = 'a' AND action = 'credential.read'", [], |r| r.get(0))
        .expect("count");
    assert!(reads >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_credentials_resolve_only_while_authenticating() {
    let w = world().await;
    let a = w.source("a");
    w.vault
        .lock()
        .expect("lock")
        .set(
            Actor::OWNER_CLI,
            &a,
            NewCredential {
                name: "password",
                class: CredentialClass::Password,
                provenance: Provenance::Owner,
                value: Secret::from_slice(b"hunter2-password"),
                expires_at: None,
            },
        )
        .expect("set password");
    w.collect(&w.echo, "a", &[("count", "1")], Limits::default())
        .await
        .expect("collect");
    assert_eq!(w.records("a")[0]["password_during_collect"], "not-now");

    let outcome = w
        .runtime
        .run(
            &w.echo,
            w.binding("a", &[], Limits::default()),
            Call::Authenticate,
        )
        .await;
    assert_eq!(outcome, Ok(Outcome::Authenticated));
    let vault = w.vault.lock().expect("lock");
    let session = vault
        .get(Actor::OWNER_CLI, &a, "session")
        .expect("session stored by the connector");
    assert_eq!(
        session.expose_secret(),
        format!("session-{}", fingerprint("hunter2-password")).as_bytes()
    );
    let meta = vault.list(Some(&a)).expect("list");
    assert_eq!(
        meta.iter()
            .find(|m| m.name == "session")
            .map(|m| m.provenance),
        Some(Provenance::ConnectorRefresh)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_components_are_stopped_with_typed_failures() {
    let w = world().await;
    let tight = Limits {
        time: Duration::from_millis(500),
        memory: 32 << 20,
        records: 1_000,
        record_bytes: 1 << 20,
        log_lines: 100,
        ..Limits::default()
    };
    let stopped = |attack: &str, limit: Exhausted| {
        (attack.to_owned(), Err(RunFailure::ResourceExhausted(limit)))
    };
    let observed = |attack: &str, expected: &str| {
        (
            attack.to_owned(),
            Err(RunFailure::Connector(ConnectorError::Fatal(
                expected.to_owned(),
            ))),
        )
    };
    let cases: Vec<(String, Result<Outcome, RunFailure>)> = vec![
        observed("env", "env=[] args=[]"),
        observed(
            "files",
            r#"files=["/etc/passwd:denied", "/:denied", ".:denied", "..:denied", "../../../../etc/passwd:denied", "sourcebox.db:denied"]"#,
        ),
        observed(
            "undeclared-credential",
            r#"credentials=["password:undeclared", "github_token:undeclared", "GITHUB_TOKEN:undeclared", "AMAZON_PASSWORD:undeclared", "../token:undeclared", "token@other:undeclared"]"#,
        ),
        stopped("spin", Exhausted::Time),
        stopped("memory", Exhausted::Memory),
        observed(
            "bad-records",
            r#"records=["invalid-record", "invalid-record", "invalid-record", "invalid-record", "unknown-stream", "stored"] batches=["stored", "invalid-record@1", "invalid-record@2"]"#,
        ),
        observed(
            "long-request-strings",
            "method refused, authority refused, PROPFIND kept",
        ),
        stopped("record-flood", Exhausted::Records),
        // Prebuilt JSON text, emitted as fast as the boundary allows.
        stopped("raw-flood", Exhausted::Records),
        // A hundred to a call, going on after the host said stop.
        stopped("raw-batch-flood", Exhausted::Records),
        stopped("log-flood", Exhausted::LogLines),
        stopped("checkpoint-huge", Exhausted::CheckpointBytes),
        stopped("record-huge", Exhausted::RecordSize),
    ];
    for (attack, expected) in cases {
        // A well-behaved run of another source goes on alongside each one.
        let setup = [("attack", attack.as_str())];
        let (hostile, neighbour) = tokio::join!(
            w.collect(&w.hostile, "a", &setup, tight.clone()),
            w.collect(&w.echo, "b", &[("count", "2")], Limits::default()),
        );
        assert_eq!(hostile, expected, "attack {attack}");
        assert!(
            neighbour.is_ok(),
            "the neighbour of {attack} failed: {neighbour:?}"
        );
    }
    match w
        .collect(&w.hostile, "a", &[("attack", "trap")], tight.clone())
        .await
    {
        Err(RunFailure::ConnectorTrap(msg)) => assert!(msg.contains("unreachable"), "{msg}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    // Of the bad records only the valid one was kept, and of the batches
    // the records before the refused one; each flood stopped at the limit,
    // and nothing beyond it was stored.
    let stored = w.records("a");
    assert!(stored.iter().any(|r| r["id"] == "kept"));
    for (id, kept) in [
        ("b1", true),
        ("b2", false),
        ("b3", true),
        ("b4", true),
        ("b5", false),
    ] {
        assert_eq!(stored.iter().any(|r| r["id"] == id), kept, "{id}");
    }
    assert!(!stored.iter().any(|r| r["pad"] == "no id"));
    assert!(stored.len() <= 4 + 2_000, "{}", stored.len());
}

/// The class rules hold at every exit a credential has: a password is not
/// injected while collecting, a connector cannot overwrite what the owner
/// entered nor keep an oversized session, and reading one credential
/// again and again writes one audit row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_classes_hold_at_every_exit() {
    let mut w = world().await;
    let (addr, seen) = common::fixture_server().await;
    w.egress_allow = vec![addr];
    let a = w.source("a");
    set(
        &w.vault.lock().expect("lock"),
        &a,
        "login_password",
        b"hunter2-of-a",
    );
    let target = format!("http://{addr}/echo");
    match w
        .collect(
            &w.hostile,
            "a",
            &[("attack", "inject-password"), ("target", &target)],
            Limits::default(),
        )
        .await
    {
        Err(RunFailure::EgressDenied(why)) => assert!(
            why.contains("'login_password' is sent only while the connector authenticates"),
            "{why}"
        ),
        other => panic!("expected egress_denied, got {other:?}"),
    }
    assert!(seen.lock().expect("seen").is_empty(), "nothing was sent");

    assert_eq!(
        w.collect(
            &w.hostile,
            "a",
            &[("attack", "put-owned")],
            Limits::default()
        )
        .await,
        Err(RunFailure::Connector(ConnectorError::Fatal(
            r#"put=["token:not-now", "login_password:not-now", "session:stored"]"#.into()
        )))
    );
    {
        let vault = w.vault.lock().expect("lock");
        assert_eq!(common::get(&vault, &a, "token"), b"token-of-a");
        assert_eq!(common::get(&vault, &a, "login_password"), b"hunter2-of-a");
    }
    assert_eq!(
        w.collect(
            &w.hostile,
            "a",
            &[("attack", "put-huge")],
            Limits::default()
        )
        .await,
        Err(RunFailure::ResourceExhausted(Exhausted::CredentialBytes))
    );
    // The operator may allow a larger session.
    let roomy = Limits {
        session_bytes: 512 << 10,
        ..Limits::default()
    };
    assert_eq!(
        w.collect(&w.hostile, "a", &[("attack", "put-huge")], roomy)
            .await,
        Err(RunFailure::Connector(ConnectorError::Fatal(
            "a 300 KiB session was kept".into()
        )))
    );

    let binding = w.binding("b", &[("attack", "read-loop")], Limits::default());
    let run_id = binding.run_id.clone();
    let ended = w
        .runtime
        .run(&w.hostile, binding, Call::Collect(vec![]))
        .await;
    assert_eq!(
        ended,
        Err(RunFailure::Connector(ConnectorError::Fatal(
            "read 20000 times".into()
        )))
    );
    // The first read, then one row that counts the rest.
    let vault = w.vault.lock().expect("lock");
    let mut stmt = vault
        .store()
        .conn()
        .prepare("SELECT action, outcome FROM audit WHERE run_id = ?1 ORDER BY rowid")
        .expect("query");
    let audited: Vec<(String, String)> = stmt
        .query_map([&run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        audited,
        [
            ("credential.read".to_owned(), "ok".to_owned()),
            ("credential.read-again".to_owned(), "19999".to_owned())
        ]
    );
}

/// What one run makes the host hold for it is bounded: header maps by
/// size and by the run's resource table, at most eight exchanges in flight
/// however many it starts, and one response budget for all its responses
/// read side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_run_makes_the_host_hold_is_bounded() {
    let mut w = world().await;
    // One header map past its size; header maps kept until the run's
    // resource table is full.
    for attack in ["fields-big", "fields-hold"] {
        assert_eq!(
            w.collect(&w.hostile, "a", &[("attack", attack)], Limits::default())
                .await,
            Err(RunFailure::ResourceExhausted(Exhausted::HostResources)),
            "{attack}"
        );
    }
    let (hung, connections) = common::stalling_server(false).await;
    let (bulk, _) = common::bulk_server(64 * 1024).await;
    w.egress_allow = vec![hung, bulk];
    let brief = Limits {
        time: Duration::from_secs(1),
        ..Limits::default()
    };
    let target = format!("http://{hung}/");
    assert_eq!(
        w.collect(
            &w.hostile,
            "a",
            &[("attack", "http-parallel"), ("target", &target)],
            brief
        )
        .await,
        Err(RunFailure::ResourceExhausted(Exhausted::Time))
    );
    assert_eq!(
        connections.most(),
        sourcebox::runtime::egress::MAX_IN_FLIGHT
    );

    // Eight bodies of 64 KiB, read side by side, against 64 KiB for the run.
    let target = format!("http://{bulk}/");
    let (ended, lines) = w
        .collect_logged(
            &w.hostile,
            "a",
            &[("attack", "http-parallel-read"), ("target", &target)],
            Limits {
                http_response_bytes: 64 * 1024,
                ..Limits::default()
            },
        )
        .await;
    assert_eq!(
        ended,
        Err(RunFailure::ResourceExhausted(Exhausted::HttpResponseBytes))
    );
    let read = lines.iter().rev().find_map(|line| {
        line.strip_prefix("read ")
            .and_then(|l| l.strip_suffix(" bytes"))
            .and_then(|n| n.parse::<u64>().ok())
    });
    let read = read.expect("the connector said how much it read");
    assert!(read <= 64 * 1024, "read {read} bytes of a 64 KiB budget");
}

/// A component is refused at install, before anything is stored, when its
/// manifest breaks the rules (every problem named in one refusal), or when
/// describing itself waits past the describe time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_refuses_a_bad_manifest_and_a_describe_that_waits() {
    let runtime =
        Runtime::new(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"))
            .expect("runtime");
    let bad = std::fs::read(BAD_MANIFEST).expect("component");
    match runtime.load(&bad).await {
        Err(RuntimeError::Invalid(why)) => {
            for expected in [
                "id '../../x' is not",
                "version 'banana' is not",
                "the name holds control or reordering characters: 'Safe\\u{1b}[2K\\rgithub.com'",
                "egress host '*' is not",
                "egress host '' is not",
                "20000 streams; at most 64",
            ] {
                assert!(why.contains(expected), "{expected}: {why}");
            }
            assert!(!why.chars().any(char::is_control), "{why}");
        }
        other => panic!("expected the manifest refused, got {other:?}"),
    }
    let started = std::time::Instant::now();
    match runtime
        .load(&std::fs::read(SLOW_DESCRIBE).expect("component"))
        .await
    {
        Err(RuntimeError::Invalid(why)) => assert!(
            why.contains("describe() did not return within 10 s"),
            "{why}"
        ),
        other => panic!("expected describe() given up on, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took < sourcebox::runtime::DESCRIBE_TIME + Duration::from_millis(500),
        "{took:?}"
    );
}

/// What a connector says is inert: a newline cannot forge a log line, an
/// escape sequence reaches no terminal, and a secret across the cut of a
/// long line is redacted whole, never shown less its last characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_text_is_escaped_and_redacted_before_it_is_cut() {
    let w = world().await;
    let (ended, lines) = w
        .collect_logged(&w.hostile, "a", &[("attack", "forge")], Limits::default())
        .await;
    assert_eq!(
        ended,
        Err(RunFailure::Connector(ConnectorError::Fatal(
            "bad\\nnews\\u{1b}[31m red\\u{202e}txet [redacted]".into()
        )))
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        "done\\n2026-12-07T00:00:00Z  INFO sourcebox: collected 10 records\\u{1b}[2K"
    );
    assert!(lines.iter().all(|l| !l.chars().any(char::is_control)));
    // "token-of-a" starts at character 1,992 of the 2,000 kept: cut first,
    // its first nine characters would have been shown.
    assert_eq!(lines[1], format!("{}[redacted…", "x".repeat(1991)));
    for line in &lines {
        assert!(
            !line.contains("token-of") && !line.contains("oken-of-a"),
            "{line}"
        );
    }
}
