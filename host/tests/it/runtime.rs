//! Real components built from source, run by the real runtime against a
//! real vault: source scoping, empty ambient authority, credential classes,
//! limits, traps and the API version gate.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{local_vault, set};
use sourcebox::contract::ConnectorError;
use sourcebox::runtime::{
    Binding, Call, Exhausted, Limits, LoadedConnector, Outcome, RunFailure, Runtime, RuntimeError,
};
use sourcebox::store::SourceRef;
use sourcebox::vault::{Actor, CredentialClass, NewCredential, Provenance, Secret, Vault};

const ECHO: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");
const HOSTILE: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_HOSTILE");
const LEGACY: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_LEGACY");
const BAD_MANIFEST: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_BAD_MANIFEST");
const SLOW_DESCRIBE: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_SLOW_DESCRIBE");

struct World {
    _tmp: tempfile::TempDir,
    vault: Arc<Mutex<Vault>>,
    runtime: Runtime,
    echo: LoadedConnector,
    hostile: LoadedConnector,
    egress_allow: Vec<std::net::SocketAddr>,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(&tmp.path().join("data"));
    for (source, token) in [("a", "token-of-a"), ("b", "token-of-b")] {
        let s = vault.store().add_source(source).expect("source");
        set(&vault, &s, "token", token.as_bytes());
    }
    vault.store().add_source("empty").expect("source");
    // One compile cache for every test in this run: each component is
    // compiled once, as the host does in production.
    let runtime =
        Runtime::new(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"))
            .expect("runtime");
    let echo = runtime
        .load(&std::fs::read(ECHO).expect("echo component"))
        .await
        .expect("load echo");
    let hostile = runtime
        .load(&std::fs::read(HOSTILE).expect("hostile component"))
        .await
        .expect("load hostile");
    World {
        _tmp: tmp,
        vault: Arc::new(Mutex::new(vault)),
        runtime,
        echo,
        hostile,
        egress_allow: Vec::new(),
    }
}

impl World {
    fn source(&self, name: &str) -> SourceRef {
        self.vault
            .lock()
            .expect("lock")
            .store()
            .source(name)
            .expect("source")
    }

    fn binding(&self, source: &str, setup: &[(&str, &str)], limits: Limits) -> Binding {
        Binding {
            vault: Arc::clone(&self.vault),
            source: self.source(source),
            setup: setup
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            run_id: format!("run-{source}"),
            limits,
            egress_allow: self.egress_allow.clone(),
            control: Default::default(),
        }
    }

    async fn collect(
        &self,
        connector: &LoadedConnector,
        source: &str,
        setup: &[(&str, &str)],
        limits: Limits,
    ) -> Result<Outcome, RunFailure> {
        self.runtime
            .run(
                connector,
                self.binding(source, setup, limits),
                Call::Collect(vec![]),
            )
            .await
    }

    /// [`World::collect`], with the lines the run logged.
    async fn collect_logged(
        &self,
        connector: &LoadedConnector,
        source: &str,
        setup: &[(&str, &str)],
        limits: Limits,
    ) -> (Result<Outcome, RunFailure>, Vec<String>) {
        let binding = self.binding(source, setup, limits);
        let mut events = binding.control.events.subscribe();
        let ended = self
            .runtime
            .run(connector, binding, Call::Collect(vec![]))
            .await;
        let mut lines = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let sourcebox::events::EventKind::Log { line, .. } = event.kind {
                lines.push(line);
            }
        }
        (ended, lines)
    }

    fn records(&self, source: &str) -> Vec<serde_json::Value> {
        let vault = self.vault.lock().expect("lock");
        let mut stmt = vault
            .store()
            .conn()
            .prepare("SELECT r.data FROM records r JOIN sources s ON s.id = r.source_id WHERE s.name = ?1 ORDER BY r.key")
            .expect("query");
        stmt.query_map([source], |r| r.get::<_, String>(0))
            .expect("rows")
            .map(|d| serde_json::from_str(&d.expect("row")).expect("json"))
            .collect()
    }
}

fn fingerprint(value: &str) -> String {
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

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
    assert_eq!(connections.most(), sourcebox::egress::MAX_IN_FLIGHT);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_upsert_by_primary_key_and_checkpoints_carry_over() {
    let w = world().await;
    w.collect(&w.echo, "a", &[("count", "3")], Limits::default())
        .await
        .expect("first");
    assert_eq!(
        w.records("a")[0]["previous_checkpoint"],
        serde_json::Value::Null
    );
    w.collect(&w.echo, "a", &[("count", "3")], Limits::default())
        .await
        .expect("second");
    let records = w.records("a");
    assert_eq!(records.len(), 3, "same keys upsert, not duplicate");
    assert!(
        records
            .iter()
            .all(|r| r["previous_checkpoint"] == "emitted-3")
    );
}

/// A record emitted again with the same data is left as it was: its
/// update time and run stay those of the run that last changed it, so a
/// client reading with `updated_since` or paging on by cursor is not sent
/// it again. A record whose data changed moves to a new update time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_emitted_unchanged_keeps_its_update_time_and_run() {
    let w = world().await;
    let run = |run_id: &str, count: &str| {
        let mut binding = w.binding("a", &[("count", count)], Limits::default());
        binding.run_id = run_id.into();
        w.runtime.run(&w.echo, binding, Call::Collect(vec![]))
    };
    let versions = || -> Vec<(String, String, i64)> {
        let vault = w.vault.lock().expect("lock");
        let mut stmt = vault
            .store()
            .conn()
            .prepare(
                "SELECT key, run_id, updated_at FROM records WHERE stream = 'items' ORDER BY key",
            )
            .expect("query");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("versions")
    };
    // The echo's records carry the checkpoint the run began from: the
    // second run changes every record, the third changes none of the
    // three and adds a fourth.
    run("r1", "3").await.expect("first");
    let first = versions();
    run("r2", "3").await.expect("second");
    let second = versions();
    assert_eq!(second.len(), 3);
    for ((key, run_id, at), (_, _, before)) in second.iter().zip(&first) {
        assert_eq!(run_id, "r2", "{key} changed");
        assert!(
            at > before,
            "{key} changed, so it moved: {at} after {before}"
        );
    }
    run("r3", "4").await.expect("third");
    let third = versions();
    assert_eq!(third.len(), 4);
    assert_eq!(
        third[..3],
        second[..],
        "unchanged records are left as they were"
    );
    assert_eq!(third[3].1, "r3", "the new record is the third run's");
    assert!(third[3].2 > second[2].2);
}

/// A run's records are stamped after every record already in their
/// stream, even when the clock is behind the newest one (a clock set
/// back, or two batches in one millisecond): a client that paged to the
/// end of the stream by cursor sees them on its next page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writes_after_every_record_already_in_its_stream() {
    let w = world().await;
    w.collect(&w.echo, "a", &[("count", "3")], Limits::default())
        .await
        .expect("first");
    let source = w.source("a").source_id;
    let (stream, ahead): (String, i64) = {
        let vault = w.vault.lock().expect("lock");
        let conn = vault.store().conn();
        // As if the first run had written under a clock an hour ahead.
        conn.execute(
            "UPDATE records SET updated_at = updated_at + 3600000 WHERE source_id = ?1",
            [source],
        )
        .expect("move the clock");
        conn.query_row(
            "SELECT stream, MAX(updated_at) FROM records WHERE source_id = ?1 GROUP BY stream",
            [source],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("one stream")
    };
    w.collect(&w.echo, "a", &[("count", "4")], Limits::default())
        .await
        .expect("second");
    let vault = w.vault.lock().expect("lock");
    let stamps: Vec<i64> = vault
        .store()
        .conn()
        .prepare("SELECT updated_at FROM records WHERE source_id = ?1 AND stream = ?2")
        .expect("query")
        .query_map(rusqlite::params![source, stream], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("stamps");
    assert_eq!(stamps.len(), 4, "{stamps:?}");
    assert!(
        stamps.iter().all(|at| *at > ahead),
        "the second run's records come after {ahead}: {stamps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_upserts_in_order_and_stops_at_the_first_refused_record() {
    let w = world().await;
    // One batch stores what single emits store.
    w.collect(&w.echo, "a", &[("count", "5")], Limits::default())
        .await
        .expect("one by one");
    let single = w.records("a");
    w.collect(
        &w.echo,
        "a",
        &[("count", "5"), ("batch", "yes")],
        Limits::default(),
    )
    .await
    .expect("batched");
    let batched = w.records("a");
    assert_eq!(batched.len(), 5);
    for (one, batch) in single.iter().zip(&batched) {
        assert_eq!(one["id"], batch["id"]);
        assert_eq!(one["token_fingerprint"], batch["token_fingerprint"]);
    }
    // The third record lacks its key: the two before it are kept, it and
    // the ones after it are not, and the connector is told which it was.
    w.collect(
        &w.echo,
        "b",
        &[("count", "5"), ("batch", "broken")],
        Limits::default(),
    )
    .await
    .expect("run");
    let stored = w.records("b");
    let ids: Vec<_> = stored.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids, [0, 1], "{stored:?}");
    assert!(
        stored
            .iter()
            .any(|r| r["kind"] == "batch" && r["index"] == 2 && r["error"] == "invalid-record"),
        "{stored:?}"
    );
    // A batch counts against the record limit record by record.
    let two = Limits {
        records: 2,
        ..Limits::default()
    };
    assert_eq!(
        w.collect(&w.echo, "a", &[("count", "5"), ("batch", "yes")], two)
            .await
            .map(|_| ()),
        Err(RunFailure::ResourceExhausted(Exhausted::Records))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_against_contract_0_1_0_still_runs() {
    let w = world().await;
    let legacy = w
        .runtime
        .load(&std::fs::read(LEGACY).expect("legacy component"))
        .await
        .expect("a 0.1.0 component loads");
    assert_eq!(legacy.api_version(), "0.1.0");
    assert_eq!(legacy.manifest().id, "legacy");
    let outcome = w
        .collect(&legacy, "empty", &[("count", "4")], Limits::default())
        .await
        .expect("a 0.1.0 component runs");
    match outcome {
        Outcome::Collected(summary) => assert_eq!(summary.records, 4),
        other => panic!("expected a collection, got {other:?}"),
    }
    let stored = w.records("empty");
    assert_eq!(stored.len(), 4, "{stored:?}");
    assert!(stored.iter().all(|r| r["contract"] == "0.1.0"));
}

/// The compiled components in `dir`, by name.
fn compiled_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// `loaded`, in `runtime`, verifies as the world's own compiled echo does.
async fn runs_as_compiled(w: &World, runtime: &Runtime, loaded: &LoadedConnector) {
    let binding = || w.binding("a", &[], Limits::default());
    assert_eq!(
        runtime
            .run(loaded, binding(), Call::Verify)
            .await
            .expect("a component loaded from disk runs"),
        w.runtime
            .run(&w.echo, binding(), Call::Verify)
            .await
            .expect("a compiled component runs")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_component_is_kept_on_disk_and_a_damaged_one_is_compiled_again() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let w = world().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("compiled");
    let echo = std::fs::read(ECHO).expect("echo component");
    // What wasmtime's own cache left in this directory before, with its
    // permissions: removed, and the directory closed to other users.
    let stale = dir.join("modules/wasmtime-48.0.8");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("entry"), b"compressed artifact").unwrap();
    std::fs::write(dir.join(".cleanup.wip-1"), b"").unwrap();
    // And an artifact of another engine (an earlier build, say).
    std::fs::write(dir.join(format!("{:064x}-{:016x}.cwasm", 1, 2)), b"old").unwrap();
    // A writer that died two hours ago left its partial file; one that is
    // writing now has its own, which stays.
    let abandoned = std::fs::File::create(dir.join(".partial-dead")).unwrap();
    abandoned
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    std::fs::write(dir.join(".partial-live"), b"being written").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    Runtime::new(&dir)
        .expect("runtime")
        .load(&echo)
        .await
        .expect("compile and keep");
    assert!(
        dir.join(".partial-live").exists(),
        "a live writer's file stays"
    );
    std::fs::remove_file(dir.join(".partial-live")).unwrap();
    let files = compiled_files(&dir);
    assert_eq!(
        files.len(),
        1,
        "one artifact, no partial or stale files: {files:?}"
    );
    let artifact = &files[0];
    let digest = sourcebox::runtime::digest(&echo);
    let name = artifact.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("{digest}-")) && name.ends_with(".cwasm"),
        "{name}"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(artifact), 0o600);
    let kept = std::fs::metadata(artifact).unwrap().ino();

    // A fresh engine (another process, as far as the cache can tell) loads
    // the kept file: it is not written again.
    let runtime = Runtime::new(&dir).expect("runtime");
    let loaded = runtime.load(&echo).await.expect("load from disk");
    assert_eq!(loaded.manifest().id, w.echo.manifest().id);
    assert_eq!(std::fs::metadata(artifact).unwrap().ino(), kept);
    assert_eq!(compiled_files(&dir), files);
    runs_as_compiled(&w, &runtime, &loaded).await;

    // Damaged: compiled again, replaced whole, and the run still works.
    std::fs::write(artifact, b"not a compiled component").unwrap();
    let runtime = Runtime::new(&dir).expect("runtime");
    let loaded = runtime.load(&echo).await.expect("compiled again");
    let replaced = std::fs::metadata(artifact).unwrap().ino();
    assert_ne!(replaced, kept);
    assert_eq!(compiled_files(&dir), files);
    assert_eq!(mode(artifact), 0o600);
    runtime
        .run(
            &loaded,
            w.binding("a", &[], Limits::default()),
            Call::Verify,
        )
        .await
        .expect("the recompiled component runs");
    Runtime::new(&dir)
        .expect("runtime")
        .load(&echo)
        .await
        .expect("the replacement loads");
    assert_eq!(std::fs::metadata(artifact).unwrap().ino(), replaced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_connector_loads_from_its_compiled_copy_by_digest_alone() {
    let w = world().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("compiled");
    let echo = std::fs::read(ECHO).expect("echo component");
    let digest = sourcebox::runtime::digest(&echo);
    let manifest = Arc::new(w.echo.manifest().clone());
    let api = w.echo.api_version().to_owned();

    // Nothing compiled yet: the caller is told to load the component.
    let runtime = Runtime::new(&dir).expect("runtime");
    let none = runtime
        .load_compiled(&digest, &api, Arc::clone(&manifest))
        .expect("no compiled copy is not an error");
    assert!(none.is_none());
    runtime.load(&echo).await.expect("compile and keep");

    // A fresh engine runs the compiled copy with the manifest it is given.
    let runtime = Runtime::new(&dir).expect("runtime");
    let loaded = runtime
        .load_compiled(&digest, &api, Arc::clone(&manifest))
        .expect("load")
        .expect("the compiled copy is found by digest");
    assert_eq!(loaded.manifest(), &*manifest);
    assert_eq!(loaded.api_version(), api);
    runs_as_compiled(&w, &runtime, &loaded).await;

    // Another digest has no compiled copy; a damaged copy is none either.
    assert!(
        runtime
            .load_compiled(&"0".repeat(64), &api, Arc::clone(&manifest))
            .expect("unknown digest")
            .is_none()
    );
    for file in compiled_files(&dir) {
        std::fs::write(file, b"not a compiled component").unwrap();
    }
    assert!(
        Runtime::new(&dir)
            .expect("runtime")
            .load_compiled(&digest, &api, Arc::clone(&manifest))
            .expect("damaged")
            .is_none()
    );

    // A contract version this host no longer serves is refused, naming both.
    match runtime.load_compiled(&digest, "0.0.9", manifest) {
        Err(RuntimeError::IncompatibleApi { component, host }) => {
            assert_eq!(component, "0.0.9");
            assert!(host.contains("0.1.1"), "{host}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_compiled_components_path_that_is_not_a_directory_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("cache");
    std::fs::write(&path, b"a file").unwrap();
    match Runtime::new(&path) {
        Err(RuntimeError::Engine(message)) => {
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("must be a directory"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"a file", "left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_api_version_is_refused_with_both_versions_named() {
    let w = world().await;
    let mut bytes = std::fs::read(ECHO).expect("echo");
    let marker = b"sourcebox:api-version";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("section present")
        + marker.len();
    assert_eq!(&bytes[at..at + 5], b"0.1.1");
    bytes[at..at + 5].copy_from_slice(b"0.9.0");
    match w.runtime.load(&bytes).await {
        Err(e @ RuntimeError::IncompatibleApi { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("0.9.0") && message.contains("0.1.1"),
                "{message}"
            );
        }
        other => panic!("expected IncompatibleApi, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_goes_only_where_allowed_and_the_host_injects_the_token() {
    let mut w = world().await;
    let (addr, seen) = common::fixture_server().await;
    let url = format!("http://{addr}/data");
    let setup = [("count", "1"), ("url", url.as_str())];

    // Loopback is refused until the operator allows this exact address.
    match w.collect(&w.echo, "a", &setup, Limits::default()).await {
        Err(RunFailure::EgressDenied(why)) => assert!(why.contains("non-public"), "{why}"),
        other => panic!("expected egress_denied, got {other:?}"),
    }
    assert!(
        seen.lock().expect("seen").is_empty(),
        "nothing reached the fixture"
    );

    w.egress_allow = vec![addr];
    w.collect(&w.echo, "a", &setup, Limits::default())
        .await
        .expect("collect with http");
    let heads = seen.lock().expect("seen").clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer token-of-a"),
        "{}",
        heads[0]
    );
    assert!(
        !heads[0].to_ascii_lowercase().contains("x-sourcebox-bearer"),
        "the marker header is stripped"
    );
    let vault = w.vault.lock().expect("lock");
    let page: String = vault
        .store()
        .conn()
        .query_row("SELECT data FROM records WHERE stream = 'pages'", [], |r| {
            r.get(0)
        })
        .expect("page record");
    assert!(
        page.contains(r#"\"ok\":true"#) && page.contains("200"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_is_refused_before_anything_is_sent() {
    let mut w = world().await;
    let (addr, seen) = common::fixture_server().await;
    w.egress_allow = vec![addr];
    let target = format!("http://{addr}/steal");
    let cases: &[(&str, &str)] = &[
        (
            "http-undeclared",
            "example.com is not a host this connector declared",
        ),
        (
            "http-metadata",
            "169.254.169.254 resolves to 169.254.169.254, a non-public address",
        ),
        ("http-loopback", "localhost resolves to"),
        (
            "steal-credential",
            "credential 'token' may not be sent to 127.0.0.1",
        ),
        ("http-userinfo", "carries user information before its host"),
    ];
    for (attack, expected) in cases {
        let setup = [("attack", *attack), ("target", target.as_str())];
        match w.collect(&w.hostile, "a", &setup, Limits::default()).await {
            Err(RunFailure::EgressDenied(why)) => {
                assert!(why.contains(expected), "{attack}: {why}")
            }
            other => panic!("{attack}: expected egress_denied, got {other:?}"),
        }
    }
    assert!(
        seen.lock().expect("seen").is_empty(),
        "no hostile request reached the fixture"
    );
}

/// Compiling a component (on a cache miss: a new install, an upgraded
/// host) takes long enough to stall every task queued on the worker it
/// runs on. On a multi-threaded runtime, such as the server's, the other
/// tasks go on meanwhile. Here the runtime has one worker, so a task that
/// ticks every millisecond can tick during the compile only if the
/// compile is off that worker.
#[test]
fn compiling_a_component_does_not_hold_up_the_other_tasks_of_its_worker() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let tmp = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(&tmp.path().join("compiled")).expect("runtime");
    let echo = std::fs::read(ECHO).expect("echo component");
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticking = Arc::clone(&ticks);
    rt.block_on(async move {
        let ticker = tokio::spawn(async move {
            loop {
                ticking.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        // Both tasks are on the one worker (the test's own future is not).
        let (during, ms) = tokio::spawn(async move {
            let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
            let started = std::time::Instant::now();
            runtime.load(&echo).await.expect("compile");
            let ms = started.elapsed().as_millis();
            (
                ticks.load(std::sync::atomic::Ordering::Relaxed) - before,
                ms,
            )
        })
        .await
        .expect("load task");
        ticker.abort();
        assert!(
            during >= 5,
            "the other task ticked {during} times during a {ms} ms load"
        );
    });
}
