//! The owner's walkthrough over loopback: tokens kept apart, the error shape, an account swapped, failed authentications limited.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_token_separation_and_error_shape_over_loopback() {
    let (fx, tmp, server) = fresh().await;
    let dir = tmp.path().join("data");
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let mut seen = String::new();

    // Add a GitHub source, capture its token (write-only), verify, run.
    let add = json!({"name": "work", "connector": "github", "setup": {"api_base_url": format!("http://{}", fx.addr)}});
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources", owner, Some(&add.to_string()))
        .await;
    seen += &raw;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(view["state"], "needs_credentials");
    assert_eq!(view["next_step"]["fields"][0]["name"], "token");
    let capture = json!({"value": ALICE}).to_string();
    let (status, raw, meta) = server
        .call(
            "PUT",
            "/v1/owner/sources/work/credentials/token",
            owner,
            Some(&capture),
        )
        .await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(
        (meta["name"].as_str(), meta["class"].as_str()),
        (Some("token"), Some("token"))
    );
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources/work/verify", owner, None)
        .await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(view["state"], "ready");
    assert_eq!(view["identity"]["display"], "alice");
    let (status, raw, run) = server
        .call("POST", "/v1/owner/sources/work/runs", owner, None)
        .await;
    seen += &raw;
    assert_eq!(
        (status, run["state"].as_str()),
        (202, Some("queued")),
        "{raw}"
    );
    let run_path = format!("/v1/owner/runs/{}", run["id"].as_str().expect("id"));
    let mut finished = Value::Null;
    for _ in 0..1200 {
        let (_, raw, record) = server.call("GET", &run_path, owner, None).await;
        seen += &raw;
        if record["state"] == "succeeded" || record["state"] == "failed" {
            finished = record;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(finished["state"], "succeeded", "{finished}");

    // A client token for one stream of work; records in pages.
    let grant =
        json!({"source": "work", "streams": ["repositories"], "label": "dashboard"}).to_string();
    let (status, raw, created) = server
        .call("POST", "/v1/owner/clients", owner, Some(&grant))
        .await;
    seen += &raw;
    assert_eq!(status, 201, "{raw}");
    let client = created["token"].as_str().expect("token").to_owned();
    let client = Some(client.as_str());
    let (status, raw, page) = server
        .call(
            "GET",
            "/v1/sources/work/streams/repositories/records?limit=1",
            client,
            None,
        )
        .await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(page["records"].as_array().map(Vec::len), Some(1));
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, raw, next) = server
        .call(
            "GET",
            &format!("/v1/sources/work/streams/repositories/records?limit=1&cursor={cursor}"),
            client,
            None,
        )
        .await;
    seen += &raw;
    assert_eq!(next["records"].as_array().map(Vec::len), Some(1));
    assert!(next["next_cursor"].is_null());
    assert_ne!(page["records"][0]["key"], next["records"][0]["key"]);
    let (_, _, later) = server
        .call(
            "GET",
            "/v1/sources/work/streams/repositories/records?updated_since=99999999999999",
            client,
            None,
        )
        .await;
    assert_eq!(later["records"].as_array().map(Vec::len), Some(0));

    // The next run fetches the same repositories. Nothing changed, so a
    // client that read up to the newest record is sent nothing more, and
    // the stream reads as before.
    let newest = next["records"][0]["updated_at"]
        .as_i64()
        .expect("updated_at");
    let (raw, again) = run_to_end(&server, owner, "work").await;
    seen += &raw;
    assert_eq!(again["state"], "succeeded", "{again}");
    let (_, raw, since) = server
        .call(
            "GET",
            &format!(
                "/v1/sources/work/streams/repositories/records?updated_since={}",
                newest + 1
            ),
            client,
            None,
        )
        .await;
    seen += &raw;
    assert_eq!(since["records"], json!([]), "{raw}");
    let (_, raw, whole) = server
        .call(
            "GET",
            "/v1/sources/work/streams/repositories/records",
            client,
            None,
        )
        .await;
    seen += &raw;
    assert_eq!(
        whole["records"],
        json!([page["records"][0], next["records"][0]]),
        "{raw}"
    );

    // Each token works on its own surface only.
    for (path, token, status, code) in [
        ("/v1/sources", owner, 403, "wrong_token_type"),
        ("/v1/owner/sources", client, 403, "wrong_token_type"),
        ("/v1/owner/sources", None, 401, "unauthorized"),
        ("/v1/sources", None, 401, "unauthorized"),
        ("/v1/owner/sources", Some("sbo_forged"), 401, "unauthorized"),
        ("/v1/sources", Some("sbc_forged"), 401, "unauthorized"),
    ] {
        let (got, raw, body) = server.call("GET", path, token, None).await;
        assert_eq!(got, status, "{path}: {raw}");
        assert!(is_error(&body, code), "{path}: {body}");
    }
    let (_, _, granted) = server.call("GET", "/v1/sources", client, None).await;
    assert_eq!(
        granted,
        json!([{"source": "work", "streams": ["repositories"]}])
    );
    // Not another source, not an ungranted stream.
    add_second_source(&server, owner, fx.addr).await;
    for path in [
        "/v1/sources/home/streams/repositories/records",
        "/v1/sources/work/streams/issues/records",
    ] {
        let (status, _, body) = server.call("GET", path, client, None).await;
        assert_eq!(status, 404, "{path}");
        assert!(is_error(&body, "not_found"));
    }

    // Bad input gets the error shape and a 4xx.
    let big = format!("{{\"value\": \"{}\"}}", "x".repeat(100_000));
    for (method, path, token, body, status, code) in [
        (
            "POST",
            "/v1/owner/sources",
            owner,
            Some("{not json"),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/owner/sources",
            owner,
            Some(r#"{"name":"x","connector":"github","colour":"red"}"#),
            400,
            "bad_request",
        ),
        (
            "PUT",
            "/v1/owner/sources/work/credentials/token",
            owner,
            Some(big.as_str()),
            413,
            "too_large",
        ),
        (
            "PUT",
            "/v1/owner/sources/work/credentials/token",
            owner,
            Some(r#"{"value":"not-a-token"}"#),
            422,
            "not_now",
        ),
        (
            "GET",
            "/v1/sources/work/streams/repositories/records?cursor=%21%21",
            client,
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            "/v1/sources/work/streams/repositories/records?limit=0",
            client,
            None,
            400,
            "bad_request",
        ),
        ("GET", "/v1/owner/runs/nope", owner, None, 404, "not_found"),
        (
            "GET",
            "/v1/owner/sources/nope",
            owner,
            None,
            404,
            "not_found",
        ),
        ("GET", "/v1/nowhere", owner, None, 404, "not_found"),
    ] {
        let (got, raw, body) = server.call(method, path, token, body).await;
        assert_eq!(got, status, "{method} {path}: {raw}");
        assert!(is_error(&body, code), "{method} {path}: {body}");
    }

    // Revoked and expired client tokens are refused.
    let id = created["id"].as_str().expect("id");
    let (status, _, _) = server
        .call("DELETE", &format!("/v1/owner/clients/{id}"), owner, None)
        .await;
    assert_eq!(status, 200);
    let (status, _, _) = server.call("GET", "/v1/sources", client, None).await;
    assert_eq!(status, 401, "a revoked token still works");
    // Lifetimes between a minute and a year, at the edges; one out of
    // range stores nothing.
    let clients_before = server
        .call("GET", "/v1/owner/clients", owner, None)
        .await
        .2
        .as_array()
        .map_or(0, Vec::len);
    for (secs, ok) in [
        (json!(0), false),
        (json!(59), false),
        (json!(60), true),
        (json!(31_536_000), true),
        (json!(31_536_001), false),
        (json!(9_223_372_036_854_775u64), false),
        (json!(u64::MAX), false),
    ] {
        let grant = json!({"source": "work", "streams": ["repositories"], "expires_in_secs": secs})
            .to_string();
        let (status, raw, body) = server
            .call("POST", "/v1/owner/clients", owner, Some(&grant))
            .await;
        if ok {
            assert_eq!(status, 201, "{secs}: {raw}");
            assert!(
                body["expires_at"].as_i64().is_some_and(|at| at > 0),
                "{raw}"
            );
        } else {
            assert_eq!(status, 400, "{secs}: {raw}");
            assert!(is_error(&body, "bad_request"), "{raw}");
        }
    }
    let clients_after = server
        .call("GET", "/v1/owner/clients", owner, None)
        .await
        .2
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(
        clients_after,
        clients_before + 2,
        "a refused lifetime stored a token"
    );
    let grant =
        json!({"source": "work", "streams": ["repositories"], "expires_in_secs": 60}).to_string();
    let (_, _, expired) = server
        .call("POST", "/v1/owner/clients", owner, Some(&grant))
        .await;
    // A minute later, as far as the token is concerned.
    sourcebox::store::Store::open(&dir)
        .expect("open")
        .conn()
        .execute(
            "UPDATE api_tokens SET expires_at = 1 WHERE id = ?1",
            [expired["id"].as_str().expect("id")],
        )
        .expect("expire");
    let (status, _, _) = server
        .call("GET", "/v1/sources", expired["token"].as_str(), None)
        .await;
    assert_eq!(status, 401, "an expired token still works");

    // Runs page by page, newest first, each once.
    let (status, raw, all) = server
        .call("GET", "/v1/owner/runs?limit=500", owner, None)
        .await;
    assert_eq!(status, 200, "{raw}");
    let all: Vec<Value> = all["runs"].as_array().cloned().expect("runs");
    assert!(all.len() >= 3, "{raw}");
    assert!(
        all.windows(2)
            .all(|w| w[0]["started_at"].as_i64() >= w[1]["started_at"].as_i64()),
        "{raw}"
    );
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/owner/runs?limit=2&cursor={c}"),
            None => "/v1/owner/runs?limit=2".to_owned(),
        };
        let (status, raw, page) = server.call("GET", &path, owner, None).await;
        assert_eq!(status, 200, "{raw}");
        let runs = page["runs"].as_array().cloned().expect("runs");
        assert!(runs.len() <= 2, "{raw}");
        paged.extend(runs);
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let ids = |runs: &[Value]| runs.iter().map(|r| r["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&paged), ids(&all));
    for query in ["limit=0", "limit=501", "cursor=nonsense", "limit=-1"] {
        let (status, raw, body) = server
            .call("GET", &format!("/v1/owner/runs?{query}"), owner, None)
            .await;
        assert_eq!(status, 400, "{query}: {raw}");
        assert!(is_error(&body, "bad_request"), "{raw}");
    }

    // A path segment that is not UTF-8 gets the error shape too.
    for path in [
        "/v1/owner/sources/%FF",
        "/v1/owner/sources/%C3%28/runs",
        "/v1/owner/runs/%FF%FE",
    ] {
        let method = if path.ends_with("/runs") {
            "POST"
        } else {
            "GET"
        };
        let (status, raw, body) = server.call(method, path, owner, None).await;
        assert_eq!(status, 400, "{path}: {raw}");
        assert!(is_error(&body, "bad_request"), "{path}: {raw}");
    }

    // Health: liveness for anyone, the report for the owner only.
    let (status, raw, live) = server.call("GET", "/v1/health", None, None).await;
    assert_eq!((status, &live), (200, &json!({"status": "ok"})), "{raw}");
    for token in [None, client] {
        let (status, raw, body) = server.call("GET", "/v1/owner/health", token, None).await;
        assert_eq!(status, 401, "{raw}");
        assert!(is_error(&body, "unauthorized"), "{raw}");
    }
    let (status, raw, health) = server.call("GET", "/v1/owner/health", owner, None).await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(health["vault"]["key_wrapper"], "local", "{raw}");
    assert_eq!(health["vault"]["key_wrapper_reachable"], true, "{raw}");
    assert_eq!(health["vault"]["audit_head_verified"], true, "{raw}");
    assert!(
        health["vault"]["audit_rows"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{raw}"
    );
    assert_eq!(health["scheduler"]["running"], true, "{raw}");
    assert!(
        health["scheduler"]["last_tick"]
            .as_i64()
            .is_some_and(|t| t > 0),
        "{raw}"
    );
    assert_eq!(health["scheduler"]["failures"], 0, "{raw}");
    assert!(health["queue"]["queued"].is_u64(), "{raw}");
    assert!(
        health["disk"]["free_bytes"].as_u64().is_some_and(|b| b > 0),
        "{raw}"
    );
    // A broken audit head is reported.
    sourcebox::store::Store::open(&dir)
        .expect("open")
        .conn()
        .execute(
            "UPDATE audit SET outcome = 'forged' WHERE seq = (SELECT MAX(seq) FROM audit)",
            [],
        )
        .expect("forge");
    let (_, raw, health) = server.call("GET", "/v1/owner/health", owner, None).await;
    assert_eq!(health["vault"]["audit_head_verified"], false, "{raw}");
    assert_eq!(health["status"], "degraded", "{raw}");

    let log = server.stop();
    common::assert_no_leak(ALICE.as_bytes(), seen.as_bytes(), "API responses");
    common::assert_no_leak(ALICE.as_bytes(), log.as_bytes(), "server output and log");
}

/// The account swap over HTTP: another account's token for a verified
/// source that holds data. The next run verifies it first and collects
/// nothing; the view offers the owner's three choices; each does what it
/// says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_token_collects_nothing_until_the_owner_chooses() {
    let (fx, _tmp, server) = fresh().await;
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let add = json!({"name": "work", "connector": "github", "setup": {"api_base_url": format!("http://{}", fx.addr)}});
    let (status, raw, _) = server
        .call("POST", "/v1/owner/sources", owner, Some(&add.to_string()))
        .await;
    assert_eq!(status, 201, "{raw}");
    let serving = &server;
    let store_token = |token: &str| {
        let body = json!({ "value": token }).to_string();
        async move {
            let (status, raw, _) = serving
                .call(
                    "PUT",
                    "/v1/owner/sources/work/credentials/token",
                    owner,
                    Some(&body),
                )
                .await;
            assert_eq!(status, 200, "{raw}");
        }
    };
    store_token(ALICE).await;
    let (_, record) = run_to_end(&server, owner, "work").await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(record["account"], "alice (provider id 1)", "{record}");
    let grant = json!({"source": "work", "streams": ["repositories"]}).to_string();
    let (_, _, created) = server
        .call("POST", "/v1/owner/clients", owner, Some(&grant))
        .await;
    let client = created["token"].as_str().expect("token").to_owned();
    let bob_records = || async {
        let (status, raw, page) = server
            .call(
                "GET",
                "/v1/sources/work/streams/repositories/records",
                Some(&client),
                None,
            )
            .await;
        assert_eq!(status, 200, "{raw}");
        page.to_string().matches("bob/").count()
    };

    for choice in [
        json!({"choice": "discard"}),
        json!({"choice": "new_source", "name": "bob-work"}),
        json!({"choice": "accept"}),
    ] {
        store_token(BOB).await;
        let seen = fx.seen.lock().expect("seen").len();
        let (_, record) = run_to_end(&server, owner, "work").await;
        assert_eq!(record["failure"], "account_changed", "{record}");
        assert_eq!(record["account"], "bob (provider id 2)", "{record}");
        assert!(
            fx.seen.lock().expect("seen")[seen..]
                .iter()
                .all(|(path, _)| path == "/user"),
            "the run went on past verifying"
        );
        assert_eq!(bob_records().await, 0);
        let (_, raw, view) = server
            .call("GET", "/v1/owner/sources/work", owner, None)
            .await;
        assert_eq!(view["state"], "waiting_for_owner", "{raw}");
        assert_eq!(
            view["blocked"],
            json!({"reason": "account_changed", "previous": "alice (provider id 1)"}),
            "{raw}"
        );
        assert_eq!(view["next_step"]["step"], "confirm_account_change", "{raw}");
        assert_eq!(
            view["next_step"]["choices"],
            json!([{"choice": "accept"}, {"choice": "new_source"}, {"choice": "discard"}]),
            "{raw}"
        );
        // A choice the view does not offer is refused with the error shape.
        let (status, raw, body) = server
            .call(
                "POST",
                "/v1/owner/sources/work/account",
                owner,
                Some(r#"{"choice": "keep both"}"#),
            )
            .await;
        assert_eq!(status, 400, "{raw}");
        assert!(is_error(&body, "bad_request"), "{raw}");

        let (status, raw, view) = server
            .call(
                "POST",
                "/v1/owner/sources/work/account",
                owner,
                Some(&choice.to_string()),
            )
            .await;
        assert_eq!(status, 200, "{choice}: {raw}");
        match choice["choice"].as_str() {
            Some("accept") => {
                assert_eq!(view["state"], "ready", "{raw}");
                assert_eq!(view["identity"]["display"], "bob", "{raw}");
                let (_, record) = run_to_end(&server, owner, "work").await;
                assert_eq!(record["state"], "succeeded", "{record}");
                assert_eq!(bob_records().await, 1);
            }
            Some(_) => {
                // The source asks for its credential again, alice's.
                assert_eq!(view["state"], "needs_credentials", "{raw}");
                assert_eq!(view["credentials"][0]["stored"], false, "{raw}");
                store_token(ALICE).await;
                let (_, record) = run_to_end(&server, owner, "work").await;
                assert_eq!(record["state"], "succeeded", "{record}");
                assert_eq!(record["account"], "alice (provider id 1)", "{record}");
            }
            None => unreachable!(),
        }
        if choice["choice"] == "new_source" {
            let (_, raw, bob) = server
                .call("GET", "/v1/owner/sources/bob-work", owner, None)
                .await;
            assert_eq!(bob["state"], "ready", "{raw}");
            assert_eq!(bob["identity"]["display"], "bob", "{raw}");
            let (_, record) = run_to_end(&server, owner, "bob-work").await;
            assert_eq!(record["records"], 1, "{record}");
        }
    }
    // Nothing left to choose.
    let (status, raw, body) = server
        .call(
            "POST",
            "/v1/owner/sources/work/account",
            owner,
            Some(r#"{"choice": "accept"}"#),
        )
        .await;
    assert_eq!(status, 422, "{raw}");
    assert!(is_error(&body, "not_now"), "{raw}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no account change")),
        "{raw}"
    );
    let log = server.stop();
    for token in [ALICE, BOB] {
        common::assert_no_leak(token.as_bytes(), log.as_bytes(), "server output and log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited_per_peer() {
    let (_fx, _tmp, server) = fresh().await;
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let (status, _, _) = server
            .call("GET", "/v1/owner/sources", Some("sbo_wrong"), None)
            .await;
        statuses.push(status);
    }
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // Even the right token waits out the window from this address.
    let (status, _, body) = server
        .call("GET", "/v1/owner/sources", Some(&server.owner), None)
        .await;
    assert_eq!(status, 429);
    assert!(is_error(&body, "too_many_failures"));
    server.stop();
}
