//! The owner surface: interactions, schedules, revocation, audit, the OpenAPI document, connectors reviewed and installed.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactions_schedules_revocation_and_audit_over_http() {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    for args in [
        vec!["init"],
        vec![
            "connector",
            "install",
            env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO"),
            "--yes",
        ],
    ] {
        let mut cmd = common::sourcebox();
        cmd.arg("--data-dir").arg(&dir).args(&args);
        let out = common::run(cmd, b"");
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let server = Server::start(&dir, fx.addr);
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let mut seen = String::new();
    let add = json!({"name": "bank", "connector": "echo", "allow_unproven": true, "setup": {"ask": "otp"}});
    let (status, raw, _) = server
        .call("POST", "/v1/owner/sources", owner, Some(&add.to_string()))
        .await;
    assert_eq!(status, 201, "{raw}");
    let (status, raw, _) = server
        .call(
            "PUT",
            "/v1/owner/sources/bank/credentials/token",
            owner,
            Some(r#"{"value":"bank-token"}"#),
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    let (_, _, run) = server
        .call("POST", "/v1/owner/sources/bank/runs", owner, None)
        .await;
    let mut pending = Value::Null;
    for _ in 0..1200 {
        let (_, raw, list) = server
            .call("GET", "/v1/owner/interactions", owner, None)
            .await;
        seen += &raw;
        if list.as_array().is_some_and(|l| !l.is_empty()) {
            pending = list[0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending["kind"], "otp", "{pending}");
    assert_eq!(pending["run"], run["id"]);
    // Follow the run's events while it waits, until it ends.
    let events = {
        let addr = server.addr;
        let path = format!("/v1/owner/runs/{}/events", run["id"].as_str().expect("id"));
        let token = server.owner.clone();
        tokio::spawn(async move {
            let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let request = format!(
                "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
            );
            socket.write_all(request.as_bytes()).await.expect("write");
            let mut raw = Vec::new();
            tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut raw))
                .await
                .expect("the event stream ended with the run")
                .expect("read");
            String::from_utf8_lossy(&raw).into_owned()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer_path = format!(
        "/v1/owner/interactions/{}/answer",
        pending["id"].as_str().expect("id")
    );
    let code = "otp-canary-991";
    let (status, raw, body) = server
        .call(
            "POST",
            &answer_path,
            owner,
            Some(&json!({"value": code, "keep_as": "nope"}).to_string()),
        )
        .await;
    seen += &raw;
    assert_eq!(status, 422, "{raw}");
    assert!(is_error(&body, "not_now"));
    // An answer kept as a credential passes the same schema checks as one
    // typed: a value the declared pattern refuses answers nothing and
    // stores nothing, and the error does not repeat it.
    let (status, raw, body) = server
        .call(
            "POST",
            &answer_path,
            owner,
            Some(&json!({"value": "otp canary 991", "keep_as": "password"}).to_string()),
        )
        .await;
    seen += &raw;
    assert_eq!(status, 422, "{raw}");
    assert!(is_error(&body, "not_now"), "{raw}");
    assert!(
        raw.contains("does not look like") && !raw.contains("otp canary 991"),
        "{raw}"
    );
    let (_, raw, view) = server
        .call("GET", "/v1/owner/sources/bank", owner, None)
        .await;
    let stored = |name: &str| {
        view["credentials"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .map(|c| c["stored"].clone())
    };
    assert_eq!(stored("password"), Some(json!(false)), "{raw}");
    let (status, raw, answered) = server
        .call(
            "POST",
            &answer_path,
            owner,
            Some(&json!({"value": code, "keep_as": "session"}).to_string()),
        )
        .await;
    seen += &raw;
    assert_eq!(
        (status, answered["state"].as_str()),
        (200, Some("answered")),
        "{raw}"
    );
    let run_path = format!("/v1/owner/runs/{}", run["id"].as_str().expect("id"));
    let mut state = Value::Null;
    for _ in 0..1200 {
        let (_, raw, record) = server.call("GET", &run_path, owner, None).await;
        seen += &raw;
        state = record["state"].clone();
        if state == "succeeded" || state == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "succeeded");
    let stream = events.await.expect("join");
    seen += &stream;
    assert!(
        stream.contains("content-type: text/event-stream"),
        "{stream}"
    );
    let states: Vec<&str> = stream
        .lines()
        .filter(|l| l.starts_with("data:") && l.contains("\"event\":\"state\""))
        .filter_map(|l| l.split("\"state\":\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(states.first(), Some(&"waiting_for_owner"), "{stream}");
    assert_eq!(states.last(), Some(&"succeeded"), "{stream}");
    assert!(
        stream.contains("event: progress") && stream.contains("event: log"),
        "{stream}"
    );
    let (_, _, view) = server
        .call("GET", "/v1/owner/sources/bank", owner, None)
        .await;
    let session = view["credentials"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "session").cloned())
        .expect("session field");
    assert_eq!(session["stored"], true, "the answer was not kept");

    // Schedules: intervals between a minute and a year, at the edges; one
    // out of range leaves the stored schedule as it was.
    let (status, _, row) = server
        .call(
            "PUT",
            "/v1/owner/sources/bank/schedule",
            owner,
            Some(r#"{"every_secs": 3600}"#),
        )
        .await;
    assert_eq!((status, row["every_secs"].as_u64()), (200, Some(3600)));
    for (secs, ok) in [
        (json!(0), false),
        (json!(59), false),
        (json!(60), true),
        (json!(31_536_000), true),
        (json!(31_536_001), false),
        (json!(u64::MAX), false),
    ] {
        let body = json!({ "every_secs": secs }).to_string();
        let (status, raw, row) = server
            .call("PUT", "/v1/owner/sources/bank/schedule", owner, Some(&body))
            .await;
        if ok {
            assert_eq!((status, &row["every_secs"]), (200, &secs), "{raw}");
        } else {
            assert_eq!(status, 400, "{secs}: {raw}");
            assert!(is_error(&row, "bad_request"), "{raw}");
        }
    }
    let (_, _, sources) = server.call("GET", "/v1/owner/sources", owner, None).await;
    let bank = sources
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "bank").cloned())
        .expect("bank");
    assert_eq!(bank["schedule"]["every_secs"], 31_536_000, "{bank}");
    assert!(
        bank["schedule"]["next_at"]
            .as_i64()
            .is_some_and(|at| at > 0),
        "{bank}"
    );
    for cron in ["0 0 30 2 *", "* * * * * *", "0 0 0 1 1 * 2020"] {
        let body = json!({ "cron": cron }).to_string();
        let (status, raw, row) = server
            .call("PUT", "/v1/owner/sources/bank/schedule", owner, Some(&body))
            .await;
        assert_eq!(status, 400, "{cron}: {raw}");
        assert!(is_error(&row, "bad_request"), "{raw}");
    }
    let (status, _, body) = server
        .call(
            "PUT",
            "/v1/owner/sources/bank/schedule",
            owner,
            Some(r#"{"cron": "not cron"}"#),
        )
        .await;
    assert_eq!(status, 400);
    assert!(is_error(&body, "bad_request"));
    let (status, _, row) = server
        .call("PUT", "/v1/owner/sources/bank/schedule", owner, Some("{}"))
        .await;
    assert_eq!((status, row), (200, Value::Null));

    // Revocation, the audit log, and deletion.
    let (status, _, meta) = server
        .call(
            "POST",
            "/v1/owner/sources/bank/credentials/token/revoke",
            owner,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(meta["revoked_at"].is_i64(), "{meta}");
    let (_, _, view) = server
        .call("GET", "/v1/owner/sources/bank", owner, None)
        .await;
    assert_eq!(view["state"], "needs_credentials");
    let (_, raw, rows) = server
        .call("GET", "/v1/owner/audit?limit=50", owner, None)
        .await;
    seen += &raw;
    let actions: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    for action in [
        "credential.revoke",
        "interaction.answer",
        "interaction.read",
        "credential.write",
    ] {
        assert!(actions.contains(&action), "{action} missing: {actions:?}");
    }
    let (_, _, check) = server
        .call("GET", "/v1/owner/audit/verify", owner, None)
        .await;
    assert_eq!(check["intact"], true);
    let (status, _, deleted) = server
        .call("DELETE", "/v1/owner/sources/bank", owner, None)
        .await;
    assert_eq!((status, deleted["deleted"].as_str()), (200, Some("bank")));
    let (status, _, _) = server
        .call("GET", "/v1/owner/sources/bank", owner, None)
        .await;
    assert_eq!(status, 404);

    let log = server.stop();
    common::assert_no_leak(code.as_bytes(), seen.as_bytes(), "API responses");
    common::assert_no_leak(code.as_bytes(), log.as_bytes(), "server output and log");
}

/// The OpenAPI document: served at /v1/openapi.json, identical to the
/// committed `openapi.json`, and covering every route. Every described
/// owner route refuses a client token and every client route the owner
/// token (the extractor runs, so the route exists); no route is served
/// except through a description (the router is built only from
/// `routes!`, never `.route(`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_served_committed_and_covers_every_route() {
    let generated = sourcebox::api::openapi_document();
    let committed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.json");
    if std::env::var_os("SOURCEBOX_UPDATE_GOLDEN").is_some() {
        std::fs::write(&committed_path, &generated).expect("write openapi.json");
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is not the document the code generates; review, then rerun with SOURCEBOX_UPDATE_GOLDEN=1"
    );

    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api.rs"))
        .expect("api.rs");
    for bypass in [
        ".route(",
        ".route_service(",
        ".nest(",
        ".nest_service(",
        ".merge(",
    ] {
        assert!(
            !source.contains(bypass),
            "api.rs registers a route with `{bypass}`, which leaves it out of the OpenAPI document; register it with routes!()"
        );
    }

    let (fx, _tmp, server) = fresh().await;
    let owner = server.owner.clone();
    let (status, raw, served) = server.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(
        served,
        serde_json::from_str::<Value>(&generated).expect("json")
    );
    assert_eq!(served["openapi"], "3.1.0");

    add_second_source(&server, Some(&owner), fx.addr).await;
    let client = home_client(&server, &owner).await;

    let mut operations = 0;
    for (path, item) in served["paths"].as_object().expect("paths") {
        let concrete = path.replace('{', "x").replace('}', "");
        for (method, op) in item.as_object().expect("path item") {
            operations += 1;
            // Every `{param}` of the path is described as a path parameter.
            let described: Vec<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            for param in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
                assert!(
                    described.contains(&param),
                    "{method} {path}: path parameter '{param}' is not described ({described:?})"
                );
            }
            let method = method.to_uppercase();
            let body = matches!(method.as_str(), "POST" | "PUT").then_some("{}");
            let security = op["security"][0]
                .as_object()
                .map(|s| s.keys().next().cloned());
            let (token, expected) = match security.flatten().as_deref() {
                Some("owner") => (Some(client.as_str()), 403),
                Some("client") => (Some(owner.as_str()), 403),
                // Authenticated by the authorization's state alone.
                _ if path == "/v1/oauth/callback" => (None, 400),
                _ => (None, 200),
            };
            let (status, raw, body) = server.call(&method, &concrete, token, body).await;
            assert_eq!(status, expected, "{method} {path}: {raw}");
            if expected == 403 {
                assert!(
                    is_error(&body, "wrong_token_type"),
                    "{method} {path}: {raw}"
                );
            }
        }
    }
    assert!(operations >= 23, "only {operations} operations described");
    // A route that is not described is not served.
    let (status, _, body) = server
        .call("GET", "/v1/owner/secrets", Some(&owner), None)
        .await;
    assert_eq!(status, 404);
    assert!(is_error(&body, "not_found"));
    let (status, _, body) = server
        .call("PATCH", "/v1/owner/sources", Some(&owner), None)
        .await;
    assert_eq!(status, 405);
    assert!(is_error(&body, "method_not_allowed"));
    server.stop();
}

/// Connectors over HTTP: an upload is reviewed first (nothing stored),
/// installed only with the digest of the bytes the owner reviewed, and an
/// upgrade that asks for more waits for the owner's approval per source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_are_reviewed_installed_and_approved_over_http() {
    use sha2::Digest;
    let (_fx, _tmp, server) = fresh().await;
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let echo = std::fs::read(env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO")).expect("echo");
    let next = std::fs::read(env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO_NEXT")).expect("echo-next");
    let digest = hex::encode(sha2::Sha256::digest(&echo));
    assert!(
        echo.len() > 64 * 1024,
        "the component is larger than a JSON body may be"
    );
    let installed = |list: &Value| -> Vec<String> {
        list.as_array()
            .expect("list")
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["id"].as_str().unwrap_or(""),
                    c["version"].as_str().unwrap_or("")
                )
            })
            .collect()
    };

    // Bad uploads: the wrong media type, bytes that are no component.
    let (status, raw, body) = server
        .send(
            "POST",
            "/v1/owner/connectors",
            owner,
            "application/json",
            b"{}",
        )
        .await;
    assert_eq!(status, 415, "{raw}");
    assert!(is_error(&body, "unsupported_media_type"));
    let (status, raw, body) = server
        .send(
            "POST",
            "/v1/owner/connectors",
            owner,
            "application/wasm",
            b"\0asm-not-really",
        )
        .await;
    assert_eq!(status, 422, "{raw}");
    assert!(is_error(&body, "invalid_component"));

    // Review: what it asks for, its digest; nothing installed.
    let (status, raw, review) = server
        .send(
            "POST",
            "/v1/owner/connectors",
            owner,
            "application/wasm",
            &echo,
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(review["installed"], false);
    assert_eq!(review["digest"], digest.as_str());
    assert_eq!(review["connector"]["id"], "echo");
    assert_eq!(review["connector"]["credentials"][0]["name"], "token");
    let (_, _, list) = server
        .call("GET", "/v1/owner/connectors", owner, None)
        .await;
    assert_eq!(installed(&list), ["github 0.1.0"]);

    // Approving other bytes than were sent installs nothing.
    let (status, raw, body) = server
        .send(
            "POST",
            &format!(
                "/v1/owner/connectors?approve={}",
                hex::encode(sha2::Sha256::digest(&next))
            ),
            owner,
            "application/wasm",
            &echo,
        )
        .await;
    assert_eq!(status, 409, "{raw}");
    assert!(is_error(&body, "digest_mismatch"));
    let (_, _, list) = server
        .call("GET", "/v1/owner/connectors", owner, None)
        .await;
    assert_eq!(installed(&list), ["github 0.1.0"]);

    // The reviewed digest installs it, once.
    let approve = format!("/v1/owner/connectors?approve={digest}");
    let (status, raw, done) = server
        .send("POST", &approve, owner, "application/wasm", &echo)
        .await;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(done["installed"], true);
    assert_eq!(done["connector"]["version"], "0.1.0");
    let (_, _, list) = server
        .call("GET", "/v1/owner/connectors", owner, None)
        .await;
    assert_eq!(installed(&list), ["echo 0.1.0", "github 0.1.0"]);
    let (status, raw, body) = server
        .send("POST", &approve, owner, "application/wasm", &echo)
        .await;
    assert_eq!(status, 409, "{raw}");
    assert!(is_error(&body, "conflict"));

    // A source on 0.1.0; 0.2.0 asks for a new host, so it waits.
    let add = json!({"name": "x", "connector": "echo", "allow_unproven": true});
    let (status, raw, _) = server
        .call("POST", "/v1/owner/sources", owner, Some(&add.to_string()))
        .await;
    assert_eq!(status, 201, "{raw}");
    let next_digest = hex::encode(sha2::Sha256::digest(&next));
    let (status, raw, done) = server
        .send(
            "POST",
            &format!("/v1/owner/connectors?approve={next_digest}&meanwhile=pause"),
            owner,
            "application/wasm",
            &next,
        )
        .await;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(done["upgrades"][0]["source"], "x");
    assert_eq!(done["upgrades"][0]["meanwhile"], "pause", "{raw}");
    assert!(
        done["upgrades"][0]["changes"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.contains("localhost")))),
        "{raw}"
    );
    let (_, raw, view) = server.call("GET", "/v1/owner/sources/x", owner, None).await;
    assert_eq!(view["state"], "needs_approval", "{raw}");
    assert_eq!(view["connector"], "echo 0.1.0", "{raw}");
    assert_eq!(view["next_step"]["meanwhile"], "pause", "{raw}");
    // Paused until approved: a run is refused, and the error says how on.
    let (status, raw, body) = server
        .call("POST", "/v1/owner/sources/x/runs", owner, None)
        .await;
    assert_eq!(status, 409, "{raw}");
    assert!(is_error(&body, "paused"), "{raw}");
    assert_eq!(
        body["error"]["next_step"], "POST /v1/owner/connectors/echo/approve",
        "{raw}"
    );

    // Approving a source that waits for nothing says so; approving x moves it.
    let (status, raw, body) = server
        .call(
            "POST",
            "/v1/owner/connectors/echo/approve",
            owner,
            Some(r#"{"source":"nope"}"#),
        )
        .await;
    assert_eq!(status, 422, "{raw}");
    assert!(is_error(&body, "invalid_setup"));
    let (status, raw, body) = server
        .call(
            "POST",
            "/v1/owner/connectors/nope/approve",
            owner,
            Some("{}"),
        )
        .await;
    assert_eq!(status, 404, "{raw}");
    assert!(is_error(&body, "not_found"));
    let (status, raw, moved) = server
        .call(
            "POST",
            "/v1/owner/connectors/echo/approve",
            owner,
            Some(r#"{"source":"x"}"#),
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(
        (moved[0]["source"].as_str(), moved[0]["to"].as_str()),
        (Some("x"), Some("0.2.0"))
    );
    let (_, raw, view) = server.call("GET", "/v1/owner/sources/x", owner, None).await;
    assert_eq!(view["connector"], "echo 0.2.0", "{raw}");
    assert_ne!(view["state"], "needs_approval", "{raw}");
    server.stop();
}
