//! The launch: cancellation, retries, refusals, and one readiness decision for the launch, the scheduler and the view.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_run_and_a_queued_one() {
    let host = host(config(&[])).await;
    host.add("slow", "echo", &[("spin_ms", "60000")], Some("t"));
    let launcher = Arc::clone(&host.launcher);
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move { launcher.launch("slow", Trigger::Manual).await });
    let id = until(60, "the run to start", || {
        host.runs("slow")
            .into_iter()
            .find(|r| r.state == "running")
            .map(|r| r.id)
    })
    .await;
    // Another process asks; the run's own process notices.
    let (ok, out) = host.cli(&["cancel", &id], b"").await;
    assert!(ok && out.contains("asked to stop"), "{out}");
    let record = run.await.expect("join").expect("launch");
    assert_eq!(record.state, "cancelled", "{record:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        host.records("slow", "items").len(),
        3,
        "records before the cancel stay"
    );

    let queued = runs::enqueue(host.vault().store(), "slow", Trigger::Manual, None, None, 1)
        .expect("enqueue");
    let cancelled = host.launcher.cancel(&queued).expect("cancel");
    assert_eq!(cancelled.state, "cancelled");
    let record = host.launcher.execute(&queued).await.expect("execute");
    assert_eq!(record.state, "cancelled", "a cancelled run never starts");
    let (ok, out) = host.cli(&["cancel", &queued], b"").await;
    assert!(!ok && out.contains("already ended"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_with_backoff_and_then_succeed() {
    let fx = fixture(vec![(503, vec![]), (429, vec![("retry-after", "1")])]).await;
    let host = host(config(&[fx.addr])).await;
    let api = format!("http://{}", fx.addr);
    host.add("work", "github", &[("api_base_url", &api)], Some(ALICE));

    let first = host
        .launcher
        .launch("work", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(first.failure.as_deref(), Some("upstream_transient"));
    schedule_until(&host, "work", |runs| {
        runs.iter().any(|r| r.state == "succeeded")
    })
    .await;
    let runs = host.runs("work");
    let shape: Vec<_> = runs
        .iter()
        .map(|r| {
            (
                r.trigger.as_str(),
                r.attempt,
                r.state.as_str(),
                r.failure.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("manual", 1, "failed", Some("upstream_transient")),
            ("retry", 2, "failed", Some("rate_limited")),
            ("retry", 3, "succeeded", None),
        ]
    );
    assert!(
        runs[1..]
            .iter()
            .all(|r| r.retry_of.as_deref() == Some(first.id.as_str()))
    );
    // Backoff after the 503 (100 ms base, jitter in its upper half) ...
    let waited = runs[1].not_before.expect("not_before") - runs[0].finished_at.expect("end");
    assert!((50..=150).contains(&waited), "waited {waited} ms");
    // ... and the provider's retry-after after the 429.
    let waited = runs[2].not_before.expect("not_before") - runs[1].finished_at.expect("end");
    assert!(waited >= 1000, "retry-after ignored: waited {waited} ms");
    assert!(runs[2].started_at >= runs[2].not_before.expect("not_before"));
    assert_eq!(host.records("work", "repositories").len(), 2);
    assert!(fx.tokens().iter().all(|t| t == ALICE));
}

/// A provider whose name does not resolve is a transient failure,
/// retried, not a refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_transient_not_denied() {
    let host = host(config(&[])).await;
    // RFC 6761: `.invalid` never resolves.
    host.add(
        "work",
        "github",
        &[("api_base_url", "https://api.sourcebox-test.invalid")],
        Some(ALICE),
    );
    let record = host
        .launcher
        .launch("work", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(
        record.failure.as_deref(),
        Some("upstream_transient"),
        "{record:?}"
    );
    let detail = record.detail.as_deref().unwrap_or("");
    assert!(detail.contains("retry"), "{record:?}");
    assert!(!detail.contains("egress"), "{record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_not_retried_and_the_source_needs_reauth() {
    let fx = fixture(vec![]).await;
    let host = host(config(&[fx.addr])).await;
    let api = format!("http://{}", fx.addr);
    host.add("work", "github", &[("api_base_url", &api)], Some(REJECTED));
    let record = host
        .launcher
        .launch("work", Trigger::Scheduled)
        .await
        .expect("launch");
    assert_eq!(record.failure.as_deref(), Some("auth_rejected"));
    assert!(!record.detail.as_deref().unwrap_or("").contains("retry"));
    let queued: i64 = host
        .vault()
        .store()
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE state = 'queued'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(queued, 0, "an auth failure was queued for retry");
    let (ok, listed) = host.cli(&["source", "list", "--json"], b"").await;
    assert!(ok, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed[0]["name"], "work");
    assert!(
        listed[0]["needs_reauth"]
            .as_str()
            .is_some_and(|why| why.contains("401")),
        "{listed}"
    );
    let why = scheduler::eligible(&host.vault(), "work").expect("eligible");
    assert!(
        matches!(&why, Err(sourcebox::readiness::Blocked::NeedsReauth { detail, .. }) if detail.contains("401")),
        "{why:?}"
    );
    // A new token from the owner clears it.
    {
        let vault = host.vault();
        let source = vault.store().source("work").expect("work");
        set(&vault, &source, "token", ALICE.as_bytes());
    }
    assert_eq!(
        scheduler::eligible(&host.vault(), "work").expect("eligible"),
        Ok(())
    );
    let record = host
        .launcher
        .launch("work", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(record.state, "succeeded", "{record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_queued_before_the_owner_paused_the_source_does_not_start() {
    let host = host(config(&[])).await;
    host.add("work", "echo", &[], Some("t0k3n"));
    let queued = runs::enqueue(
        host.vault().store(),
        "work",
        Trigger::Scheduled,
        None,
        None,
        1,
    )
    .expect("enqueue");
    // 0.2.0 asks for a new host; the owner pauses the source until approval.
    let next = std::fs::read(ECHO_NEXT).expect("echo 0.2.0");
    let loaded = host.launcher.runtime().load(&next).await.expect("load");
    {
        let vault = host.vault();
        let installed = catalog::install(
            vault.store(),
            &next,
            loaded.api_version(),
            loaded.manifest(),
        )
        .expect("install");
        let upgrades = catalog::offer_upgrade(vault.store(), &installed, catalog::Meanwhile::Pause)
            .expect("offer");
        assert_eq!(upgrades[0].meanwhile, catalog::Meanwhile::Pause);
    }
    let refused = host.launcher.execute(&queued).await;
    assert!(
        matches!(&refused, Err(runs::LaunchError::Paused { to, .. }) if to == "0.2.0"),
        "{refused:?}"
    );
    let record = runs::find(host.vault().store(), &queued).expect("run");
    assert_eq!(record.state, "cancelled", "{record:?}");
    assert!(
        record
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("paused until the owner approves echo 0.2.0")),
        "{record:?}"
    );
    assert!(matches!(
        scheduler::eligible(&host.vault(), "work").expect("eligible"),
        Err(sourcebox::readiness::Blocked::Paused { .. })
    ));
    catalog::approve_upgrade(host.vault().store(), "echo", Some("work")).expect("approve");
    assert_eq!(
        scheduler::eligible(&host.vault(), "work").expect("eligible"),
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_deleted_credential_refuses_the_scheduled_launch() {
    let fx = fixture(vec![]).await;
    let host = host(config(&[fx.addr])).await;
    let api = format!("http://{}", fx.addr);
    host.add("work", "github", &[("api_base_url", &api)], Some(ALICE));
    host.add("other", "github", &[("api_base_url", &api)], Some(BOB));
    let reads_before = host.audit().len();

    for (how, expected) in [
        ("revoke", "credential_revoked"),
        ("remove", "credentials_missing"),
    ] {
        // Eligible when queued; the credential goes before it starts.
        let queued = runs::enqueue(
            host.vault().store(),
            "work",
            Trigger::Scheduled,
            None,
            None,
            1,
        )
        .expect("enqueue");
        {
            let vault = host.vault();
            let source = vault.store().source("work").expect("work");
            if how == "revoke" {
                vault
                    .revoke(Actor::OWNER_CLI, &source, "token")
                    .expect("revoke");
            } else {
                vault
                    .remove(Actor::OWNER_CLI, &source, "token")
                    .expect("remove");
            }
        }
        let record = host.launcher.execute(&queued).await.expect("execute");
        assert_eq!(record.trigger, "scheduled");
        assert_eq!(record.state, "failed");
        assert_eq!(record.failure.as_deref(), Some(expected), "{record:?}");
        assert!(fx.tokens().is_empty(), "a refused run reached the network");
        let audit = host.audit();
        assert!(
            !audit[reads_before..]
                .iter()
                .any(|(_, action, _, run)| action == "credential.read"
                    || run.as_deref() == Some(queued.as_str())),
            "a refused launch read a credential: {audit:?}"
        );
        if how == "revoke" {
            let vault = host.vault();
            let source = vault.store().source("work").expect("work");
            set(&vault, &source, "token", ALICE.as_bytes());
        }
    }
}

/// Launch, scheduler and setup view make one readiness decision: for a
/// source in each state of the readiness table, the view's `blocked`, the
/// scheduler's eligibility and the launch's refusal agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_scheduler_and_view_agree_on_every_readiness_row() {
    use sourcebox::readiness::Blocked;
    let host = host(config(&[])).await;
    host.add("ready", "echo", &[], Some("t-ready"));
    host.add("missing", "echo", &[], None);
    for name in ["revoked", "reauth", "changed", "paused"] {
        host.add(name, "echo", &[], Some(&format!("t-{name}")));
    }
    // Two sources of one account, each verified; the second waits for the
    // owner to confirm.
    for name in ["first", "second"] {
        host.add(name, "echo", &[], Some("t-same"));
        let verified = host
            .launcher
            .launch(name, Trigger::SetupVerification)
            .await
            .expect("verify");
        assert_eq!(verified.state, "succeeded", "{verified:?}");
    }
    {
        let vault = host.vault();
        let store = vault.store();
        store.add_source("bare").expect("bare");
        let revoked = store.source("revoked").expect("revoked");
        vault
            .revoke(Actor::OWNER_CLI, &revoked, "token")
            .expect("revoke");
        for sql in [
            "UPDATE sources SET needs_reauth = '401 from the provider' WHERE name = 'reauth'",
            "UPDATE sources SET previous_identity_id = '1', previous_identity_display = 'alice'
             WHERE name = 'changed'",
            "UPDATE sources SET pending_version = '9.9.9', pending_changes = '[]', pending_paused = 1
             WHERE name = 'paused'",
        ] {
            store.conn().execute(sql, []).expect("state");
        }
    }
    let rows: Vec<(&str, Option<Blocked>)> = vec![
        ("ready", None),
        ("first", None),
        ("bare", Some(Blocked::NoConnector)),
        (
            "missing",
            Some(Blocked::CredentialsMissing {
                credentials: vec!["token".into()],
            }),
        ),
        (
            "revoked",
            Some(Blocked::CredentialRevoked {
                credentials: vec!["token".into()],
            }),
        ),
        (
            "reauth",
            Some(Blocked::NeedsReauth {
                detail: "401 from the provider".into(),
                authorize: false,
            }),
        ),
        (
            "changed",
            Some(Blocked::AccountChanged {
                previous: "alice (provider id 1)".into(),
            }),
        ),
        (
            "paused",
            Some(Blocked::Paused {
                version: "9.9.9".into(),
            }),
        ),
        (
            "second",
            Some(Blocked::IdentityUnconfirmed {
                existing: "first".into(),
            }),
        ),
    ];
    for (name, expected) in rows {
        let view = sourcebox::setup::source_view(host.vault().store(), name).expect("view");
        assert_eq!(view.blocked, expected, "the view of {name}");
        let eligible = scheduler::eligible(&host.vault(), name).expect("eligible");
        assert_eq!(eligible.err(), expected, "the scheduler on {name}");
        let launched = match host.launcher.launch(name, Trigger::Manual).await {
            Ok(record) => record.failure,
            Err(runs::LaunchError::Paused { .. }) => Some("paused".to_owned()),
            Err(runs::LaunchError::Catalog(catalog::CatalogError::NoConnector(_))) => {
                Some("no_connector".to_owned())
            }
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!(
            launched.as_deref(),
            expected.as_ref().map(Blocked::kind),
            "the launch of {name}"
        );
    }
}

/// A value the owner gives makes the last verification stale, and a
/// refresh after it does not hide that: re-authorizing, then a refresh at
/// the next run's start, is still a new grant to verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_keeps_when_the_owner_last_gave_a_credential() {
    use sourcebox::setup::Lifecycle;
    use sourcebox::vault::{CredentialClass, NewCredential, Provenance};
    let host = host(config(&[])).await;
    host.add("work", "echo", &[], Some("t-work"));
    let verified = host
        .launcher
        .launch("work", Trigger::SetupVerification)
        .await
        .expect("verify");
    assert_eq!(verified.state, "succeeded");
    let state = || {
        sourcebox::setup::source_view(host.vault().store(), "work")
            .expect("view")
            .state
    };
    assert_eq!(state(), Lifecycle::Ready);
    let put = |provenance: Provenance, value: &[u8]| {
        let vault = host.vault();
        let source = vault.store().source("work").expect("work");
        vault
            .set(
                Actor::OWNER_CLI,
                &source,
                NewCredential {
                    name: "token",
                    class: CredentialClass::Token,
                    provenance,
                    value: Secret::from_slice(value),
                    expires_at: None,
                },
            )
            .expect("set")
    };
    // A refresh alone leaves the verification standing.
    std::thread::sleep(Duration::from_millis(5));
    let refreshed = put(Provenance::ConnectorRefresh, b"t-work-refreshed");
    assert_eq!(state(), Lifecycle::Ready);
    // The owner gives a new value; a refresh follows before any run
    // verified it.
    std::thread::sleep(Duration::from_millis(5));
    let given = put(Provenance::OauthGrant, b"t-work-regranted");
    assert!(given.given_at > refreshed.given_at);
    std::thread::sleep(Duration::from_millis(5));
    let after = put(Provenance::OauthRefresh, b"t-work-regranted-refreshed");
    assert_eq!(after.given_at, given.given_at);
    assert!(after.rotated_at > given.rotated_at);
    assert_eq!(state(), Lifecycle::Verifying);
}

/// A manual run asked for while one is queued returns that run instead of
/// queueing another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_asked_for_twice_is_queued_once() {
    let host = host(config(&[])).await;
    host.add("work", "echo", &[], Some("t-work"));
    let request = || runs::request(host.vault().store(), "work").expect("request");
    let first = request();
    let again = request();
    assert_eq!((first.state.as_str(), &again.id), ("queued", &first.id));
    assert_eq!(host.runs("work").len(), 1);
    host.launcher.execute(&first.id).await.expect("execute");
    let next = request();
    assert_ne!(next.id, first.id, "a finished run was returned");
}
