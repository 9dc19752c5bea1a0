//! The HTTP API over loopback with the real binary: the README walkthrough
//! (add a GitHub source, capture its token, verify, run, read records with
//! a client token), token separation between the surfaces, client scopes,
//! the one error shape, and a canary token that never comes back.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{ALICE, BOB, fixture};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `sourcebox serve` on a fresh data directory.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    owner: String,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(dir: &Path, allow: SocketAddr) -> Self {
        Self::start_with(dir, allow, &[])
    }

    /// `serve` with more arguments, e.g. a TLS certificate.
    fn start_with(dir: &Path, allow: SocketAddr, extra: &[&std::ffi::OsStr]) -> Self {
        let mut cmd = common::sourcebox();
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("--egress-allow")
            .arg(allow.to_string())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--tick",
                "50ms",
                "--grace",
                "5s",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn serve");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (mut owner, mut addr) = (None, None);
        while addr.is_none() {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).expect("read") > 0,
                "serve exited"
            );
            if let Some(token) = line
                .trim()
                .strip_prefix("owner token (shown once, keep it safe): ")
            {
                owner = Some(token.to_owned());
            }
            if let Some(rest) = line.split("://").nth(1) {
                addr = rest
                    .split(':')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(":")
                    .parse()
                    .ok();
            }
            output.lock().expect("output").push_str(&line);
        }
        for (stream, sink) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                std::sync::Arc::clone(&output),
            ),
            (
                Box::new(child.stderr.take().expect("stderr")),
                std::sync::Arc::clone(&output),
            ),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    sink.lock().expect("output").push_str(&(line + "\n"));
                }
            });
        }
        Self {
            child: Some(child),
            addr: addr.expect("address"),
            owner: owner.expect("a fresh data directory prints the owner token"),
            output,
        }
    }

    /// SIGTERM; then everything the server printed and logged.
    fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(child.wait().expect("wait").success());
        std::thread::sleep(Duration::from_millis(100));
        self.output.lock().expect("output").clone()
    }

    /// One HTTP/1.1 request with a JSON body; (status, head, JSON body).
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, Value) {
        let body = body.map(|b| ("application/json", b.as_bytes()));
        let socket = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        exchange(socket, self.addr, method, path, token, body).await
    }

    /// One HTTP/1.1 request with a body of any type.
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, String, Value) {
        let socket = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        exchange(
            socket,
            self.addr,
            method,
            path,
            token,
            Some((content_type, body)),
        )
        .await
    }
}

/// Writes one request on `socket` (plain or TLS) and reads the response to
/// its end; (status, head and body as text, JSON body).
async fn exchange(
    mut socket: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &[u8])>,
) -> (u16, String, Value) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(token) = token {
        request += &format!("authorization: Bearer {token}\r\n");
    }
    if let Some((content_type, body)) = body {
        request += &format!(
            "content-type: {content_type}\r\ncontent-length: {}\r\n",
            body.len()
        );
    }
    request += "\r\n";
    socket.write_all(request.as_bytes()).await.expect("write");
    if let Some((_, body)) = body {
        socket.write_all(body).await.expect("write body");
    }
    socket.flush().await.expect("flush");
    let mut raw = Vec::new();
    // A TLS peer that closes without close_notify is still a complete
    // response here: `connection: close` delimits it.
    let _ = socket.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, raw.clone(), json)
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A fixture provider, and `serve` on a fresh data directory that lasts as
/// long as the returned directory.
async fn fresh() -> (common::Fixture, tempfile::TempDir, Server) {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&tmp.path().join("data"), fx.addr);
    (fx, tmp, server)
}

fn is_error(body: &Value, code: &str) -> bool {
    body["error"]["code"] == code
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
}

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

async fn add_second_source(server: &Server, owner: Option<&str>, fx: SocketAddr) {
    let add = json!({"name": "home", "connector": "github", "setup": {"api_base_url": format!("http://{fx}")}});
    let (status, raw, _) = server
        .call("POST", "/v1/owner/sources", owner, Some(&add.to_string()))
        .await;
    assert_eq!(status, 201, "{raw}");
}

/// A client token for the repositories of the source `add_second_source`
/// adds.
async fn home_client(server: &Server, owner: &str) -> String {
    let grant = json!({"source": "home", "streams": ["repositories"]}).to_string();
    let (status, raw, created) = server
        .call("POST", "/v1/owner/clients", Some(owner), Some(&grant))
        .await;
    assert_eq!(status, 201, "{raw}");
    created["token"].as_str().expect("client token").to_owned()
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

/// Writes a self-signed certificate for localhost and 127.0.0.1 and its
/// key as PEM files in `dir`; returns the certificate's DER.
fn self_signed(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, made.cert.pem()).expect("write cert");
    std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
    (cert, key, made.cert.der().to_vec())
}

/// TLS with the operator's certificate: HTTPS works with a client that
/// trusts it, clear text on the same port gets no HTTP answer, and a
/// missing or mismatched certificate or key is refused at start with a
/// message that says what to pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_the_operators_certificate() {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (cert, key, der) = self_signed(tmp.path(), "server");
    let (_, other_key, _) = self_signed(tmp.path(), "other");
    let data = tmp.path().join("data");

    for (cert_arg, key_arg, says) in [
        (tmp.path().join("missing.crt"), key.clone(), "missing.crt"),
        (cert.clone(), tmp.path().join("missing.key"), "missing.key"),
        (key.clone(), key.clone(), "no certificate"),
        (cert.clone(), other_key.clone(), "cannot be used together"),
    ] {
        let mut cmd = common::sourcebox();
        cmd.arg("--data-dir")
            .arg(&data)
            .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert_arg)
            .arg("--tls-key")
            .arg(&key_arg);
        let out = common::run(cmd, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{out:?}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }

    let server = Server::start_with(
        &data,
        fx.addr,
        &[
            "--tls-cert".as_ref(),
            cert.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
    );
    assert!(
        server
            .output
            .lock()
            .expect("output")
            .contains(&format!("https://{}", server.addr))
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).expect("trust the certificate");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let tls = connector
        .connect("localhost".try_into().expect("name"), tcp)
        .await
        .expect("TLS handshake with the operator's certificate");
    let (status, raw, sources) = exchange(
        tls,
        server.addr,
        "GET",
        "/v1/owner/sources",
        Some(&server.owner),
        None,
    )
    .await;
    assert_eq!(status, 200, "{raw}");
    assert!(sources.is_array(), "{raw}");

    // Clear text on the TLS port: no HTTP response, no token accepted.
    let (status, raw, _) = server
        .call("GET", "/v1/owner/sources", Some(&server.owner), None)
        .await;
    assert_eq!(status, 0, "{raw}");
    server.stop();
}

/// A client that sends its request head too slowly is cut off instead of
/// holding a connection open forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_head_is_cut_off() {
    let (_fx, _tmp, server) = fresh().await;
    let mut socket = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    socket
        .write_all(b"GET /v1/owner/sources HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was still open after 30 s");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(9), "cut off after {waited:?}");
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("200 OK"), "{text}");
    server.stop();
}

/// A request past the operator's deadline gets the error shape, and the
/// server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_the_error_shape() {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(
        &tmp.path().join("data"),
        fx.addr,
        &["--request-timeout".as_ref(), "5ms".as_ref()],
    );
    // Compiling a component takes far longer than 5 ms.
    let echo = std::fs::read(env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO")).expect("echo");
    let (status, raw, body) = server
        .send(
            "POST",
            "/v1/owner/connectors",
            Some(&server.owner),
            "application/wasm",
            &echo,
        )
        .await;
    assert_eq!(status, 503, "{raw}");
    assert!(is_error(&body, "timeout"), "{raw}");
    // Still serving: a light request fits in 5 ms (on a loaded machine
    // perhaps not every time, hence a few tries).
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (status, _, _) = server.call("GET", "/v1/openapi.json", None, None).await;
        statuses.push(status);
        if status == 200 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
    server.stop();
}

/// The owner token can be replaced over HTTP and, when it is lost, from the
/// CLI on the data directory; each time the old one stops working at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_token_is_rotated_over_http_and_from_the_cli() {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, fx.addr);
    let first = server.owner.clone();
    let (status, raw, body) = server
        .call("POST", "/v1/owner/token/rotate", Some(&first), None)
        .await;
    assert_eq!(status, 201, "{raw}");
    let second = body["token"].as_str().expect("token").to_owned();
    assert!(second.starts_with("sbo_") && second != first);
    let (status, _, body) = server
        .call("GET", "/v1/owner/sources", Some(&first), None)
        .await;
    assert_eq!(status, 401);
    assert!(is_error(&body, "unauthorized"), "{body}");
    let (status, raw, _) = server
        .call("GET", "/v1/owner/sources", Some(&second), None)
        .await;
    assert_eq!(status, 200, "{raw}");

    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir")
        .arg(&dir)
        .args(["owner-token", "rotate"]);
    let out = common::run(cmd, b"");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let third = stdout
        .trim()
        .strip_prefix("owner token (shown once, keep it safe): ")
        .expect("the new token")
        .to_owned();
    for (token, expected) in [(&first, 401), (&second, 401), (&third, 200)] {
        let (status, raw, _) = server
            .call("GET", "/v1/owner/sources", Some(token), None)
            .await;
        assert_eq!(status, expected, "{raw}");
    }
    // serve printed the first token at start; the new ones never reach
    // its output or log.
    let log = server.stop();
    assert!(
        !log.contains(&second) && !log.contains(&third),
        "a new owner token is in the server output"
    );
}

/// The server keeps a setup view until the database changes; a change made
/// from the CLI while it runs shows in the next view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_view_follows_a_change_made_from_the_cli() {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, fx.addr);
    let owner = server.owner.clone();
    add_second_source(&server, Some(&owner), fx.addr).await;
    let stored = |view: &Value| {
        view["credentials"]
            .as_array()
            .expect("credentials")
            .iter()
            .find(|c| c["name"] == "token")
            .map(|c| c["stored"].clone())
    };
    for _ in 0..3 {
        let (status, raw, view) = server
            .call("GET", "/v1/owner/sources/home", Some(&owner), None)
            .await;
        assert_eq!(status, 200, "{raw}");
        assert_eq!(stored(&view), Some(json!(false)), "{raw}");
        assert_eq!(view["state"], "needs_credentials", "{raw}");
    }

    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir").arg(&dir).args([
        "credential",
        "set",
        "home",
        "token",
        "--class",
        "token",
    ]);
    let out = common::run(cmd, b"ghp_fromthecli0123456789abcdefgh");
    assert!(out.status.success(), "{out:?}");
    let (status, raw, view) = server
        .call("GET", "/v1/owner/sources/home", Some(&owner), None)
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(stored(&view), Some(json!(true)), "{raw}");
    assert_ne!(view["state"], "needs_credentials", "{raw}");
    // A client token is refused on the owner surface, also for a view the
    // server holds.
    let client = home_client(&server, &owner).await;
    let (status, _, body) = server
        .call("GET", "/v1/owner/sources/home", Some(&client), None)
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(is_error(&body, "wrong_token_type"), "{body}");
    server.stop();
}

/// Setup values change through the engine's checks only, and a change
/// means the source is verified again before it counts as ready (the new
/// values may send its credentials to another host or account).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_values_are_changed_checked_and_reverified() {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let server = Server::start(&dir, fx.addr);
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let base = format!("http://{}", fx.addr);
    let add = json!({"name": "work", "connector": "github", "setup": {"api_base_url": base}});
    let (status, raw, _) = server
        .call("POST", "/v1/owner/sources", owner, Some(&add.to_string()))
        .await;
    assert_eq!(status, 201, "{raw}");
    let capture = json!({"value": ALICE}).to_string();
    let (status, raw, _) = server
        .call(
            "PUT",
            "/v1/owner/sources/work/credentials/token",
            owner,
            Some(&capture),
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    let (_, raw, view) = server
        .call("POST", "/v1/owner/sources/work/verify", owner, None)
        .await;
    assert_eq!(view["state"], "ready", "{raw}");
    let value = |view: &Value| view["setup"][0]["value"].as_str().map(str::to_owned);

    // Refused, and nothing changes: plain http to an address the operator
    // did not allow, and a field the connector does not have.
    for (body, says) in [
        (json!({"api_base_url": "http://10.9.9.9:1"}), "https"),
        (json!({"nope": "x"}), "no setup field 'nope'"),
    ] {
        let (status, raw, err) = server
            .call(
                "PUT",
                "/v1/owner/sources/work/setup",
                owner,
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, 422, "{raw}");
        assert!(is_error(&err, "invalid_setup"), "{raw}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{raw}"
        );
    }
    let (_, raw, view) = server
        .call("GET", "/v1/owner/sources/work", owner, None)
        .await;
    assert_eq!(
        (view["state"].as_str(), value(&view)),
        (Some("ready"), Some(base.clone())),
        "{raw}"
    );

    // The same values again: nothing to verify.
    let same = json!({"api_base_url": base}).to_string();
    let (status, raw, view) = server
        .call("PUT", "/v1/owner/sources/work/setup", owner, Some(&same))
        .await;
    assert_eq!(
        (status, view["state"].as_str()),
        (200, Some("ready")),
        "{raw}"
    );

    // Another host: stored, and the source must be verified again.
    let moved = json!({"api_base_url": "https://ghe.example.com/api/v3"}).to_string();
    let (status, raw, view) = server
        .call("PUT", "/v1/owner/sources/work/setup", owner, Some(&moved))
        .await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(
        value(&view).as_deref(),
        Some("https://ghe.example.com/api/v3"),
        "{raw}"
    );
    assert_ne!(view["state"], "ready", "{raw}");
    assert_eq!(view["next_step"]["step"], "verify", "{raw}");

    // Back to the fixture from the CLI (one field; the others stay), then
    // verified again.
    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir")
        .arg(&dir)
        .arg("--egress-allow")
        .arg(fx.addr.to_string())
        .args([
            "source",
            "configure",
            "work",
            "--set",
            &format!("api_base_url={base}"),
            "--json",
        ]);
    let out = common::run(cmd, b"");
    assert!(out.status.success(), "{out:?}");
    let view: Value = serde_json::from_slice(&out.stdout).expect("view");
    assert_eq!(value(&view), Some(base.clone()));
    assert_eq!(view["next_step"]["step"], "verify", "{view}");
    let (_, raw, view) = server
        .call("POST", "/v1/owner/sources/work/verify", owner, None)
        .await;
    assert_eq!(view["state"], "ready", "{raw}");
    server.stop();
}

/// An OAuth provider on loopback that follows RFC 6749 and RFC 7636: the
/// authorization endpoint sends the browser back with a code; the token
/// endpoint takes the code only with the client's Basic credentials, the
/// same redirect URI and the PKCE verifier of the challenge, and refreshes
/// (rotating the refresh token, ending the old access token). `/me` and
/// `/notes` answer only a live access token.
#[derive(Clone, Default)]
struct Provider {
    inner: std::sync::Arc<std::sync::Mutex<ProviderState>>,
}

#[derive(Default)]
struct ProviderState {
    /// code → (challenge, redirect URI)
    codes: std::collections::HashMap<String, (String, String)>,
    live_access: Vec<String>,
    live_refresh: Vec<String>,
    /// Every token this provider issued, live or not.
    issued: Vec<String>,
    /// grant_type of each token request, in order.
    grants: Vec<String>,
    /// Bearer tokens /notes was called with.
    notes_tokens: Vec<String>,
    expires_in: i64,
    refuse_refresh: bool,
    counter: u32,
}

const CLIENT_ID: &str = "sourcebox-test-client";
const CLIENT_SECRET: &str = "client-secret-canary-7c1e0b55d2";

impl Provider {
    async fn start() -> (SocketAddr, Self) {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::{IntoResponse, Redirect};
        use axum::routing::{get, post};
        use std::collections::HashMap;
        type Q = HashMap<String, String>;

        async fn authorize(
            State(p): State<Provider>,
            Query(q): Query<Q>,
        ) -> axum::response::Response {
            if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
                || q.get("response_type").map(String::as_str) != Some("code")
                || q.get("code_challenge_method").map(String::as_str) != Some("S256")
            {
                return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
            }
            let mut s = p.inner.lock().expect("provider");
            s.counter += 1;
            let code = format!("code-{}", s.counter);
            let redirect = q["redirect_uri"].clone();
            s.codes.insert(
                code.clone(),
                (q["code_challenge"].clone(), redirect.clone()),
            );
            let state: String =
                url::form_urlencoded::byte_serialize(q["state"].as_bytes()).collect();
            Redirect::to(&format!("{redirect}?code={code}&state={state}")).into_response()
        }

        async fn token(
            State(p): State<Provider>,
            headers: HeaderMap,
            body: String,
        ) -> axum::response::Response {
            let f: Q = url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
            use base64::Engine;
            use sha2::Digest;
            let basic = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
            );
            let refuse = |error: &str| {
                (
                    StatusCode::BAD_REQUEST,
                    axum::Json(
                        json!({"error": error, "error_description": "refused by the fixture"}),
                    ),
                )
                    .into_response()
            };
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "invalid_client"})),
                )
                    .into_response();
            }
            let mut s = p.inner.lock().expect("provider");
            let grant = f.get("grant_type").cloned().unwrap_or_default();
            s.grants.push(grant.clone());
            match grant.as_str() {
                "authorization_code" => {
                    let Some((challenge, redirect)) = f.get("code").and_then(|c| s.codes.remove(c))
                    else {
                        return refuse("invalid_grant");
                    };
                    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(sha2::Sha256::digest(verifier.as_bytes()));
                    if computed != challenge || f.get("redirect_uri") != Some(&redirect) {
                        return refuse("invalid_grant");
                    }
                }
                "refresh_token" => {
                    let given = f.get("refresh_token").cloned().unwrap_or_default();
                    if s.refuse_refresh || !s.live_refresh.contains(&given) {
                        return refuse("invalid_grant");
                    }
                    // Rotation: the old refresh token and access tokens end.
                    s.live_refresh.retain(|t| *t != given);
                    s.live_access.clear();
                }
                _ => return refuse("unsupported_grant_type"),
            }
            s.counter += 1;
            let access = format!("access-canary-{:04}-9f2d41", s.counter);
            let refresh = format!("refresh-canary-{:04}-6b0a93", s.counter);
            s.live_access.push(access.clone());
            s.live_refresh.push(refresh.clone());
            s.issued.extend([access.clone(), refresh.clone()]);
            axum::Json(json!({
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": s.expires_in,
                "refresh_token": refresh,
                "scope": "notes.read"
            }))
            .into_response()
        }

        fn bearer(p: &Provider, headers: &HeaderMap) -> Option<String> {
            let token = headers
                .get("authorization")?
                .to_str()
                .ok()?
                .strip_prefix("Bearer ")?
                .to_owned();
            p.inner
                .lock()
                .expect("provider")
                .live_access
                .contains(&token)
                .then_some(token)
        }

        async fn me(State(p): State<Provider>, headers: HeaderMap) -> axum::response::Response {
            match bearer(&p, &headers) {
                Some(_) => axum::Json(json!({"id": "u-42", "login": "carol"})).into_response(),
                None => StatusCode::UNAUTHORIZED.into_response(),
            }
        }

        /// Two pages, chained by a cursor.
        async fn notes(
            State(p): State<Provider>,
            Query(q): Query<Q>,
            headers: HeaderMap,
        ) -> axum::response::Response {
            match bearer(&p, &headers) {
                Some(token) => {
                    p.inner.lock().expect("provider").notes_tokens.push(token);
                    let page = match q.get("cursor").map(String::as_str) {
                        None => json!({"notes": [{"id": 1, "text": "first"}], "next_cursor": "c2"}),
                        Some("c2") => {
                            json!({"notes": [{"id": 2, "text": "second"}], "next_cursor": null})
                        }
                        Some(_) => return StatusCode::BAD_REQUEST.into_response(),
                    };
                    axum::Json(page).into_response()
                }
                None => StatusCode::UNAUTHORIZED.into_response(),
            }
        }

        let provider = Provider::default();
        provider.inner.lock().expect("provider").expires_in = 3600;
        let app = axum::Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/me", get(me))
            .route("/notes", get(notes))
            .with_state(provider.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, provider)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProviderState> {
        self.inner.lock().expect("provider")
    }
}

/// What the owner's browser does with an authorization URL at the
/// provider: follows it and returns where the provider sends it back.
async fn browser_visit(url: &str) -> String {
    let url = url::Url::parse(url).expect("authorization URL");
    let addr: SocketAddr = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().expect("port")
    )
    .parse()
    .expect("provider address");
    let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (status, raw, _) = exchange(socket, addr, "GET", &path, None, None).await;
    assert_eq!(status, 303, "{raw}");
    raw.lines()
        .find_map(|l| l.strip_prefix("location: "))
        .expect("a redirect")
        .trim()
        .to_owned()
}

/// OAuth from end to end, over the API and the CLI: the operator registers
/// the client, the owner authorizes in a browser, the callback stores the
/// grant, verification and runs use it (injected by the host), an expiring
/// grant is refreshed at launch, and a refused refresh asks the owner to
/// authorize again. No token, code or client secret ever leaves the vault:
/// not in a response, the log or the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_sources_are_authorized_refreshed_and_reauthorized() {
    use sha2::Digest;
    let (provider_addr, provider) = Provider::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data, provider_addr);
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let mut seen = String::new();

    // Install the connector the owner reviewed.
    let component = std::fs::read(env!("SOURCEBOX_COMPONENT_FIXTURE_OAUTH")).expect("component");
    let digest = hex::encode(sha2::Sha256::digest(&component));
    let (status, raw, _) = server
        .send(
            "POST",
            &format!("/v1/owner/connectors?approve={digest}"),
            owner,
            "application/wasm",
            &component,
        )
        .await;
    assert_eq!(status, 201, "{raw}");
    let api = format!("http://{provider_addr}");
    let source = json!({"name": "notes", "connector": "oauth-fixture", "modality": "oauth",
        "allow_unproven": true, "setup": {"api_url": api}})
    .to_string();
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources", owner, Some(&source))
        .await;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(view["state"], "needs_authorization", "{raw}");
    assert_eq!(view["next_step"]["step"], "authorize");
    assert_eq!(view["next_step"]["supported"], false);
    assert!(
        view["next_step"]["operator"]
            .as_str()
            .is_some_and(|m| m.contains("oauth-client set oauth-fixture")),
        "{raw}"
    );
    let (status, raw, body) = server
        .call("POST", "/v1/owner/sources/notes/authorize", owner, None)
        .await;
    assert_eq!(status, 422, "{raw}");
    assert!(is_error(&body, "no_oauth_client"), "{raw}");

    // The operator registers the client; a plain-http token endpoint that
    // was not allowed is refused, and nothing is stored.
    let redirect = format!("http://{}/v1/oauth/callback", server.addr);
    let client = |token_url: &str| {
        json!({"authorize_url": format!("{api}/authorize"), "token_url": token_url,
            "client_id": CLIENT_ID, "scopes": ["notes.read"], "redirect_uri": redirect,
            "client_secret": CLIENT_SECRET})
        .to_string()
    };
    // A redirect URI that is not this server's callback is refused.
    for elsewhere in [
        "https://elsewhere.example/v1/oauth/callback".to_owned(),
        format!("http://{}/v1/oauth/callback/../steal", server.addr),
    ] {
        let body = json!({"authorize_url": format!("{api}/authorize"), "token_url": format!("{api}/token"),
            "client_id": CLIENT_ID, "scopes": ["notes.read"], "redirect_uri": elsewhere})
        .to_string();
        let (status, raw, body) = server
            .call(
                "PUT",
                "/v1/owner/oauth-clients/oauth-fixture",
                owner,
                Some(&body),
            )
            .await;
        assert_eq!(status, 400, "{raw}");
        assert!(is_error(&body, "bad_request"), "{raw}");
        assert!(raw.contains(&redirect), "{raw}");
    }
    let (status, raw, body) = server
        .call(
            "PUT",
            "/v1/owner/oauth-clients/oauth-fixture",
            owner,
            Some(&client("http://198.51.100.7/token")),
        )
        .await;
    assert_eq!(status, 422, "{raw}");
    assert!(is_error(&body, "invalid_oauth"), "{raw}");
    let (_, _, listed) = server
        .call("GET", "/v1/owner/oauth-clients", owner, None)
        .await;
    assert_eq!(listed, json!([]));
    let (status, raw, registered) = server
        .call(
            "PUT",
            "/v1/owner/oauth-clients/oauth-fixture",
            owner,
            Some(&client(&format!("{api}/token"))),
        )
        .await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(registered["confidential"], true);
    let (_, raw, view) = server
        .call("GET", "/v1/owner/sources/notes", owner, None)
        .await;
    assert_eq!(view["next_step"]["supported"], true, "{raw}");

    // The owner authorizes in the browser; the provider sends it back.
    let authorize = || async {
        let (status, raw, started) = server
            .call("POST", "/v1/owner/sources/notes/authorize", owner, None)
            .await;
        assert_eq!(status, 200, "{raw}");
        let url = started["authorize_url"].as_str().expect("url").to_owned();
        let query: std::collections::HashMap<String, String> = url::Url::parse(&url)
            .expect("url")
            .query_pairs()
            .into_owned()
            .collect();
        assert_eq!(query["client_id"], CLIENT_ID);
        assert_eq!(query["scope"], "notes.read");
        assert_eq!(query["redirect_uri"], redirect);
        assert_eq!(query["code_challenge_method"], "S256");
        assert_eq!(query["state"].len(), 43, "256 random bits");
        let back = browser_visit(&url).await;
        assert!(back.starts_with(&redirect), "{back}");
        (raw, back)
    };
    let (raw, back) = authorize().await;
    seen += &raw;
    let callback = back
        .trim_start_matches(&format!("http://{}", server.addr))
        .to_owned();
    let (status, raw, view) = server.call("GET", &callback, None, None).await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(view["state"], "verifying", "{raw}");
    assert_eq!(view["next_step"]["step"], "verify");
    // A state works once.
    let (status, raw, body) = server.call("GET", &callback, None, None).await;
    assert_eq!(status, 400, "{raw}");
    assert!(is_error(&body, "unknown_state"), "{raw}");
    let (status, _, body) = server
        .call("GET", "/v1/oauth/callback?state=forged&code=x", None, None)
        .await;
    assert_eq!(status, 400);
    assert!(is_error(&body, "unknown_state"));
    assert!(
        !body["error"]["next_step"]
            .as_str()
            .unwrap_or("")
            .contains('{'),
        "an unfilled placeholder: {body}"
    );
    let (_, raw, creds) = server
        .call("GET", "/v1/owner/sources/notes", owner, None)
        .await;
    assert_eq!(creds["credentials"][0]["stored"], true, "{raw}");

    // Verification and a run use the grant, which the host injects.
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources/notes/verify", owner, None)
        .await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(view["state"], "ready", "{raw}");
    assert_eq!(view["identity"]["display"], "carol");
    let run = |expect: &'static str| {
        let server = &server;
        async move {
            let (status, raw, run) = server
                .call("POST", "/v1/owner/sources/notes/runs", owner, None)
                .await;
            assert_eq!(status, 202, "{raw}");
            let path = format!("/v1/owner/runs/{}", run["id"].as_str().expect("id"));
            for _ in 0..1200 {
                let (_, raw, record) = server.call("GET", &path, owner, None).await;
                if record["state"] == "succeeded" || record["state"] == "failed" {
                    assert_eq!(record["state"], expect, "{raw}");
                    return (raw, record);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("run {path} did not finish");
        }
    };
    let (raw, record) = run("succeeded").await;
    seen += &raw;
    assert_eq!(record["records"], 2, "{raw}");
    assert_eq!(
        provider.state().grants,
        ["authorization_code"],
        "a grant an hour from expiry is not refreshed"
    );
    // Verified, then collected: OAuth is proven for this version.
    let (_, raw, connector) = server
        .call("GET", "/v1/owner/connectors/oauth-fixture", owner, None)
        .await;
    assert_eq!(
        connector["modalities"],
        json!([{"modality": "oauth", "support": "proven",
            "evidence": format!("verified, then collected in run {}", record["id"].as_str().expect("id"))}]),
        "{raw}"
    );

    // The provider ends the access token before the expiry it gave (as
    // one that gives no expiry may): the run's first call is rejected, the
    // host refreshes the grant once and calls again with the new token.
    provider.state().live_access.clear();
    let (raw, record) = run("succeeded").await;
    seen += &raw;
    assert_eq!(record["records"], 2, "{raw}");
    {
        let state = provider.state();
        assert_eq!(state.grants, ["authorization_code", "refresh_token"]);
        assert_eq!(state.notes_tokens.last(), state.live_access.last());
    }

    // A grant about to expire is refreshed before the run, with the
    // refresh token; the run uses the new access token.
    provider.state().expires_in = 20;
    let (raw, back) = authorize().await;
    seen += &raw;
    let callback = back
        .trim_start_matches(&format!("http://{}", server.addr))
        .to_owned();
    let (status, raw, _) = server.call("GET", &callback, None, None).await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    let (_, raw, view) = server
        .call("POST", "/v1/owner/sources/notes/verify", owner, None)
        .await;
    seen += &raw;
    assert_eq!(view["state"], "ready", "{raw}");
    let (raw, _) = run("succeeded").await;
    seen += &raw;
    {
        let state = provider.state();
        assert_eq!(
            state.grants,
            [
                "authorization_code",
                "refresh_token",
                "authorization_code",
                "refresh_token",
                "refresh_token"
            ],
            "refreshed at verification and again at the run (each grant lives 20 s)"
        );
        assert_eq!(state.notes_tokens.last(), state.live_access.last());
    }
    let cli = |args: &[&str], stdin: &[u8]| {
        let mut cmd = common::sourcebox();
        cmd.arg("--data-dir")
            .arg(&data)
            .arg("--egress-allow")
            .arg(provider_addr.to_string())
            .args(args);
        common::run(cmd, stdin)
    };
    let listed = cli(&["credential", "list", "notes", "--json"], b"");
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("credential list");
    assert_eq!(listed[0]["provenance"], "oauth-refresh", "{listed}");
    assert_eq!(listed[0]["class"], "oauth", "{listed}");

    // The provider refuses the refresh token: the run fails as
    // auth_rejected and the owner is asked to authorize again.
    provider.state().refuse_refresh = true;
    let (raw, record) = run("failed").await;
    seen += &raw;
    assert_eq!(record["failure"], "auth_rejected", "{raw}");
    let (_, raw, view) = server
        .call("GET", "/v1/owner/sources/notes", owner, None)
        .await;
    assert_eq!(view["state"], "needs_reauth", "{raw}");
    assert_eq!(view["next_step"]["step"], "authorize");
    assert!(
        view["next_step"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("invalid_grant")),
        "{raw}"
    );

    // The CLI completes an authorization from the address the browser
    // was sent back to, when no server received it.
    provider.state().refuse_refresh = false;
    provider.state().expires_in = 3600;
    // A KEK rotation while the owner is at the provider: the sealed PKCE
    // verifier of the pending authorization still opens, and so does the
    // sealed client secret (the provider accepts the client's Basic
    // credentials only with it).
    let started = cli(&["source", "authorize", "notes", "--json"], b"");
    assert!(started.status.success(), "{started:?}");
    let rotated = cli(&["vault", "rotate-kek"], b"");
    assert!(rotated.status.success(), "{rotated:?}");
    let started: Value = serde_json::from_slice(&started.stdout).expect("json");
    let back = browser_visit(started["authorize_url"].as_str().expect("url")).await;
    let finished = cli(
        &["source", "authorize", "notes", "--finish", "--json"],
        back.as_bytes(),
    );
    assert!(finished.status.success(), "{finished:?}");
    let view: Value = serde_json::from_slice(&finished.stdout).expect("json");
    assert_eq!(view["state"], "verifying", "{view}");
    let again = cli(
        &["source", "authorize", "notes", "--finish"],
        back.as_bytes(),
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("start it again"),
        "{again:?}"
    );
    seen += &String::from_utf8_lossy(&finished.stdout);

    // RFC 9207: a response that names another issuer is refused, and its
    // code is not exchanged; one naming this provider is taken.
    for (iss, ok) in [
        ("https://idp.attacker.example".to_owned(), false),
        (format!("http://{provider_addr}"), true),
    ] {
        let started = cli(&["source", "authorize", "notes", "--json"], b"");
        assert!(started.status.success(), "{started:?}");
        let started: Value = serde_json::from_slice(&started.stdout).expect("json");
        let back = browser_visit(started["authorize_url"].as_str().expect("url")).await;
        let query = back.split_once('?').expect("query").1.trim().to_owned();
        let exchanges = provider.state().grants.len();
        let path = format!(
            "/v1/oauth/callback?{query}&iss={}",
            url::form_urlencoded::byte_serialize(iss.as_bytes()).collect::<String>()
        );
        let (status, raw, body) = server.call("GET", &path, None, None).await;
        if ok {
            assert_eq!(status, 200, "{raw}");
            assert_eq!(provider.state().grants.len(), exchanges + 1);
        } else {
            assert_eq!(status, 400, "{raw}");
            assert!(is_error(&body, "provider_refused"), "{raw}");
            assert!(raw.contains("RFC 9207"), "{raw}");
            assert_eq!(
                provider.state().grants.len(),
                exchanges,
                "a mixed-up code was exchanged"
            );
        }
    }

    // One callback delivered twice at once, to `serve` and to the CLI (two
    // processes): the code is exchanged once, and one of them says the
    // authorization is used up.
    for _ in 0..3 {
        let started = cli(&["source", "authorize", "notes", "--json"], b"");
        assert!(started.status.success(), "{started:?}");
        let started: Value = serde_json::from_slice(&started.stdout).expect("json");
        let back = browser_visit(started["authorize_url"].as_str().expect("url")).await;
        let query = back.split_once('?').expect("query").1.trim().to_owned();
        let exchanges = provider.state().grants.len();
        let mut finish = common::sourcebox();
        finish
            .arg("--data-dir")
            .arg(&data)
            .arg("--egress-allow")
            .arg(provider_addr.to_string())
            .args(["source", "authorize", "notes", "--finish"]);
        let by_cli = tokio::task::spawn_blocking({
            let back = back.clone();
            move || common::run(finish, back.as_bytes()).status.success()
        });
        let path = format!("/v1/oauth/callback?{query}");
        let by_server = async { server.call("GET", &path, None, None).await.0 == 200 };
        let (cli_ok, server_ok) = tokio::join!(by_cli, by_server);
        let cli_ok = cli_ok.expect("join");
        assert!(cli_ok ^ server_ok, "cli {cli_ok}, server {server_ok}");
        assert_eq!(
            provider.state().grants.len(),
            exchanges + 1,
            "the code was exchanged twice"
        );
    }

    // Nothing secret anywhere: responses, the log, the data directory.
    let log = server.stop();
    let files = common::files_under(&data);
    let secrets: Vec<String> = provider
        .state()
        .issued
        .iter()
        .cloned()
        .chain([CLIENT_SECRET.to_owned()])
        .collect();
    assert!(secrets.len() >= 10, "{secrets:?}");
    for secret in &secrets {
        common::assert_no_leak(secret.as_bytes(), seen.as_bytes(), "API responses");
        common::assert_no_leak(secret.as_bytes(), log.as_bytes(), "the server log");
        for (path, bytes) in &files {
            common::assert_no_leak(secret.as_bytes(), bytes, &path.display().to_string());
        }
    }
}

/// The password of the login site's one account.
const SITE_PASSWORD: &str = "site-password-canary-2b9e47";

/// A site that is logged in to through a form, and answers `/me` and
/// `/notes` only with a live session cookie.
#[derive(Clone, Default)]
struct LoginSite {
    state: std::sync::Arc<std::sync::Mutex<LoginSiteState>>,
}

#[derive(Default)]
struct LoginSiteState {
    /// Session cookies issued, and which still work.
    issued: Vec<String>,
    live: Vec<String>,
    /// Request paths, in order.
    seen: Vec<String>,
}

impl LoginSite {
    async fn start() -> (SocketAddr, Self) {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::{Html, IntoResponse, Redirect, Response};
        use axum::routing::get;

        fn session(site: &LoginSite, headers: &HeaderMap) -> bool {
            let cookie = headers
                .get(header::COOKIE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let state = site.state();
            state
                .live
                .iter()
                .any(|s| cookie.split("; ").any(|c| c == format!("sid={s}")))
        }
        async fn form() -> Html<&'static str> {
            Html(
                r#"<html><body style="margin:0"><form method="post" action="/login">
<input name="user" style="position:absolute;left:10px;top:10px;width:300px;height:30px">
<input name="password" type="password" style="position:absolute;left:10px;top:60px;width:300px;height:30px">
<button style="position:absolute;left:10px;top:110px;width:100px;height:30px">Log in</button>
</form></body></html>"#,
            )
        }
        async fn login(State(site): State<LoginSite>, body: String) -> Response {
            let form: std::collections::HashMap<String, String> =
                url::form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
            if form.get("user").map(String::as_str) != Some("carol")
                || form.get("password").map(String::as_str) != Some(SITE_PASSWORD)
            {
                return (StatusCode::UNAUTHORIZED, "wrong user or password").into_response();
            }
            let sid = site.issue();
            let mut response = Redirect::to("/home").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                format!("sid={sid}; Path=/; HttpOnly")
                    .parse()
                    .expect("cookie"),
            );
            response
        }
        async fn home() -> Html<&'static str> {
            Html("<h1>welcome, carol</h1>")
        }
        async fn me(State(site): State<LoginSite>, headers: HeaderMap) -> Response {
            if !session(&site, &headers) {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            axum::Json(json!({"id": "c-1", "login": "carol"})).into_response()
        }
        async fn notes(State(site): State<LoginSite>, headers: HeaderMap) -> Response {
            if !session(&site, &headers) {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            axum::Json(json!({"notes": [{"id": 1, "text": "a"}, {"id": 2, "text": "b"}]}))
                .into_response()
        }
        let site = Self::default();
        let seen = site.clone();
        let router = axum::Router::new()
            .route("/login", get(form).post(login))
            .route("/home", get(home))
            .route("/me", get(me))
            .route("/notes", get(notes))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let seen = seen.clone();
                    async move {
                        let line = format!("{} {}", req.method(), req.uri().path());
                        seen.state().seen.push(line);
                        next.run(req).await
                    }
                },
            ))
            .with_state(site.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        (addr, site)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LoginSiteState> {
        self.state.lock().expect("site state")
    }

    /// A new live session, as a browser that logged in holds it.
    fn issue(&self) -> String {
        let mut state = self.state();
        let sid = format!("sid-canary-{}-4f1d8a", state.issued.len());
        state.issued.push(sid.clone());
        state.live.push(sid.clone());
        sid
    }

    fn count(&self, line: &str) -> usize {
        self.state().seen.iter().filter(|l| *l == line).count()
    }

    /// None of the sessions the site issued, nor its password, is in what
    /// the API returned (`seen`), the server log, or any file of `data`.
    fn assert_kept(&self, seen: &str, log: &str, data: &Path) {
        let files = common::files_under(data);
        let mut secrets = self.state().issued.clone();
        assert!(!secrets.is_empty(), "no session was issued");
        secrets.push(SITE_PASSWORD.to_owned());
        for secret in &secrets {
            common::assert_no_leak(secret.as_bytes(), seen.as_bytes(), "API responses");
            common::assert_no_leak(secret.as_bytes(), log.as_bytes(), "the server log");
            for (path, bytes) in &files {
                common::assert_no_leak(secret.as_bytes(), bytes, &path.display().to_string());
            }
        }
    }
}

/// Polls the source's view every 100 ms for up to 30 s until `done`.
async fn view_until(
    server: &Server,
    owner: Option<&str>,
    source: &str,
    done: impl Fn(&Value) -> bool,
) -> (String, Value) {
    for _ in 0..300 {
        let (_, raw, view) = server
            .call("GET", &format!("/v1/owner/sources/{source}"), owner, None)
            .await;
        if done(&view) {
            return (raw, view);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the view of {source} did not get there");
}

/// A login site, and `serve` on a fresh data directory (in the returned
/// temporary directory) that may reach it, with the component at `path`
/// installed. Its request deadline is short: a verification waiting for a
/// login answers 202 after two seconds.
async fn login_world(
    path: &str,
) -> (
    SocketAddr,
    LoginSite,
    tempfile::TempDir,
    std::path::PathBuf,
    Server,
) {
    let (site_addr, site) = LoginSite::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start_with(
        &data,
        site_addr,
        &["--request-timeout".as_ref(), "3s".as_ref()],
    );
    install(&server, Some(server.owner.as_str()), path).await;
    (site_addr, site, tmp, data, server)
}

/// Uploads the component at `path` and approves what it asks for.
async fn install(server: &Server, owner: Option<&str>, path: &str) {
    use sha2::Digest;
    let component = std::fs::read(path).expect("component");
    let digest = hex::encode(sha2::Sha256::digest(&component));
    let (status, raw, _) = server
        .send(
            "POST",
            &format!("/v1/owner/connectors?approve={digest}"),
            owner,
            "application/wasm",
            &component,
        )
        .await;
    assert_eq!(status, 201, "{raw}");
}

/// Waits for run `id` to succeed or fail; what it last read, and the run.
async fn run_end(server: &Server, owner: Option<&str>, id: &Value) -> (String, Value) {
    let path = format!("/v1/owner/runs/{}", id.as_str().expect("id"));
    let mut last = String::new();
    for _ in 0..600 {
        let (_, raw, record) = server.call("GET", &path, owner, None).await;
        if record["state"] == "succeeded" || record["state"] == "failed" {
            return (raw, record);
        }
        last = raw;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.output.lock().expect("output").clone();
    panic!("run {path} did not finish: {last}\n{log}");
}

/// Starts a run of `source` and waits for its end.
async fn run_to_end(server: &Server, owner: Option<&str>, source: &str) -> (String, Value) {
    let (status, raw, run) = server
        .call(
            "POST",
            &format!("/v1/owner/sources/{source}/runs"),
            owner,
            None,
        )
        .await;
    assert_eq!(status, 202, "{raw}");
    run_end(server, owner, &run["id"]).await
}

/// The login browser profiles under `data`, of every runner.
fn login_profiles(data: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for runner in std::fs::read_dir(data.join("logins"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for profile in std::fs::read_dir(runner.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(profile.path());
        }
    }
    found
}

/// Whether a view is past its login and verification.
fn settled(view: &Value) -> bool {
    !matches!(
        view["state"].as_str(),
        Some("waiting_for_owner" | "verifying")
    )
}

/// What the owner does in the streamed browser of `source`'s pending
/// login: looks, clicks the fields, types, presses Enter, and once the
/// site has logged them in, answers "done". Returns the interaction id.
async fn stream_login(
    server: &Server,
    owner: Option<&str>,
    source: &str,
    site: &LoginSite,
) -> String {
    let (_, view) = view_until(server, owner, source, |v| {
        v["next_step"]["interaction"].is_string()
    })
    .await;
    let id = view["next_step"]["interaction"]
        .as_str()
        .expect("id")
        .to_owned();
    let interaction = format!("/v1/owner/interactions/{id}");
    let (status, raw, _) = server
        .call("GET", &format!("{interaction}/screen"), owner, None)
        .await;
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains("content-type: image/png"), "{raw}");
    assert!(raw.contains("PNG\r\n") && raw.contains("IHDR"), "not a PNG");
    let logins = site.count("GET /home");
    for input in [
        json!({"click": {"x": 100, "y": 25}}),
        json!({"text": "carol"}),
        json!({"click": {"x": 100, "y": 75}}),
        json!({"text": SITE_PASSWORD}),
        json!({"key": "Enter"}),
    ] {
        let (status, raw, _) = server
            .call(
                "POST",
                &format!("{interaction}/input"),
                owner,
                Some(&input.to_string()),
            )
            .await;
        assert_eq!(status, 204, "{raw}");
    }
    for _ in 0..150 {
        if site.count("GET /home") > logins {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        site.count("GET /home") > logins,
        "not logged in: {:?}",
        site.state().seen
    );
    let (status, raw, _) = server
        .call(
            "POST",
            &format!("{interaction}/answer"),
            owner,
            Some(r#"{"value": "done"}"#),
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_is_set_up_by_logging_in_through_the_streamed_browser() {
    let (site_addr, site, _tmp, data, server) =
        login_world(env!("SOURCEBOX_COMPONENT_FIXTURE_BROWSER")).await;
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let mut seen = String::new();
    let site_url = format!("http://{site_addr}");
    let source = json!({"name": "bank", "connector": "browser-fixture",
        "modality": "browser-login", "allow_unproven": true, "setup": {"site_url": site_url}})
    .to_string();
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources", owner, Some(&source))
        .await;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(view["state"], "needs_browser_login", "{raw}");
    assert_eq!(
        view["next_step"],
        json!({"step": "browser_login", "supported": true, "interaction": null,
            "url": null, "reason": null, "operator": null}),
        "{raw}"
    );

    // Verification: the connector has no session, so it asks for a login;
    // the host opens the login page in a browser the owner streams.
    let (status, raw, _) = server
        .call("POST", "/v1/owner/sources/bank/verify", owner, None)
        .await;
    assert_eq!(status, 202, "{raw}");
    let (raw, view) = view_until(&server, owner, "bank", |v| {
        v["next_step"]["interaction"].is_string()
    })
    .await;
    assert_eq!(view["state"], "waiting_for_owner", "{raw}");
    assert_eq!(
        view["next_step"]["url"],
        format!("{site_url}/login"),
        "{raw}"
    );
    let id = view["next_step"]["interaction"]
        .as_str()
        .expect("id")
        .to_owned();
    let interaction = format!("/v1/owner/interactions/{id}");
    let (status, raw, _) = server
        .call("GET", &format!("{interaction}/screen"), owner, None)
        .await;
    assert_eq!(status, 200, "{raw}");
    assert!(raw.contains("content-type: image/png"), "{raw}");
    assert!(raw.contains("PNG\r\n") && raw.contains("IHDR"), "not a PNG");
    // Only the owner streams it.
    let (status, _, _) = server
        .call("GET", &format!("{interaction}/screen"), None, None)
        .await;
    assert_eq!(status, 401);
    let (status, raw, body) = server
        .call("GET", "/v1/owner/interactions/nope/screen", owner, None)
        .await;
    assert_eq!(status, 404, "{raw}");
    assert!(is_error(&body, "not_found"), "{raw}");

    let (status, raw, body) = server
        .call(
            "POST",
            &format!("{interaction}/input"),
            owner,
            Some(r#"{"key": "F13"}"#),
        )
        .await;
    assert_eq!(status, 400, "{raw}");
    assert!(is_error(&body, "bad_request"), "{raw}");

    // The owner logs in through the stream and says done: the session is
    // kept as the source's credential, and the verification goes on with
    // it.
    // Its profile is in the data directory, under this server's runner.
    assert_eq!(login_profiles(&data).len(), 1);
    assert_eq!(stream_login(&server, owner, "bank", &site).await, id);
    let (raw, view) = view_until(&server, owner, "bank", settled).await;
    seen += &raw;
    assert_eq!(view["state"], "ready", "{raw}");
    assert_eq!(view["identity"]["display"], "carol", "{raw}");
    assert_eq!(view["credentials"][0]["class"], "session", "{raw}");
    assert_eq!(view["credentials"][0]["stored"], true, "{raw}");
    assert_eq!(login_profiles(&data), Vec::<std::path::PathBuf>::new());
    let (status, _, _) = server
        .call("GET", &format!("{interaction}/screen"), owner, None)
        .await;
    assert_eq!(status, 404, "the browser outlived the login");

    // Runs send the session as cookies; the component never holds it.
    let (raw, record) = run_to_end(&server, owner, "bank").await;
    seen += &raw;
    assert_eq!(record["state"], "succeeded", "{raw}");
    assert_eq!(record["records"], 2, "{raw}");
    let (_, raw, connector) = server
        .call("GET", "/v1/owner/connectors/browser-fixture", owner, None)
        .await;
    assert_eq!(
        connector["modalities"][0]["support"], "proven",
        "browser login was verified, then collected: {raw}"
    );

    // The site ends the session: the run is refused, and the owner is
    // asked to log in again, with the reason.
    site.state().live.clear();
    let (raw, record) = run_to_end(&server, owner, "bank").await;
    seen += &raw;
    assert_eq!(record["state"], "failed", "{raw}");
    let (_, raw, view) = server
        .call("GET", "/v1/owner/sources/bank", owner, None)
        .await;
    seen += &raw;
    assert_eq!(view["state"], "needs_reauth", "{raw}");
    assert_eq!(view["next_step"]["step"], "browser_login", "{raw}");
    assert!(
        view["next_step"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused the session")),
        "{raw}"
    );

    // Declining the next login ends that verification, and the browser.
    let (status, raw, _) = server
        .call("POST", "/v1/owner/sources/bank/verify", owner, None)
        .await;
    assert_eq!(status, 202, "{raw}");
    let (_, view) = view_until(&server, owner, "bank", |v| {
        v["next_step"]["interaction"].is_string()
    })
    .await;
    let id = view["next_step"]["interaction"].as_str().expect("id");
    let (status, raw, _) = server
        .call(
            "POST",
            &format!("/v1/owner/interactions/{id}/decline"),
            owner,
            None,
        )
        .await;
    assert_eq!(status, 200, "{raw}");
    let (raw, view) = view_until(&server, owner, "bank", |v| {
        !v["next_step"]["interaction"].is_string() && v["state"] != "verifying"
    })
    .await;
    assert_eq!(view["next_step"]["step"], "browser_login", "{raw}");
    let (status, _, _) = server
        .call(
            "GET",
            &format!("/v1/owner/interactions/{id}/screen"),
            owner,
            None,
        )
        .await;
    assert_eq!(status, 404, "the browser outlived a declined login");

    // Neither the session nor the password shows anywhere: responses, the
    // server log, the data directory.
    let log = server.stop();
    // The connector logged a cookie value; the log has it redacted.
    assert!(
        log.contains("resuming with cookie [redacted]"),
        "the connector's log line is missing"
    );
    site.assert_kept(&seen, &log, &data);

    // A process killed during a login leaves its browser's profile; the
    // next process to run connectors on this data directory erases it.
    let left = data
        .join("logins")
        .join("gone-runner")
        .join("sourcebox-login-x");
    std::fs::create_dir_all(&left).expect("mkdir");
    std::fs::write(left.join("Cookies"), "sid=left-behind").expect("write");
    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["source", "setup", "bank"]);
    let out = common::run(cmd, b"");
    assert!(out.status.success(), "{out:?}");
    assert!(!data.join("logins").join("gone-runner").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_session_is_erased_after_each_run() {
    let (site_addr, site, _tmp, data, server) =
        login_world(env!("SOURCEBOX_COMPONENT_FIXTURE_BROWSER")).await;
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let mut seen = String::new();

    // Only a browser-login source can keep no session.
    let (status, raw, body) = server
        .call(
            "POST",
            "/v1/owner/sources",
            owner,
            Some(r#"{"name": "gh", "connector": "github", "ephemeral_session": true}"#),
        )
        .await;
    assert!((400..500).contains(&status), "{raw}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("an ephemeral session is for browser login")),
        "{raw}"
    );
    let (status, _, _) = server
        .call("GET", "/v1/owner/sources/gh", owner, None)
        .await;
    assert_eq!(status, 404, "a refused source was added");

    let source = json!({"name": "once", "connector": "browser-fixture",
        "modality": "browser-login", "allow_unproven": true, "ephemeral_session": true,
        "setup": {"site_url": format!("http://{site_addr}")}})
    .to_string();
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources", owner, Some(&source))
        .await;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(view["session"], "ephemeral", "{raw}");
    assert_eq!(view["state"], "needs_browser_login", "{raw}");

    // Verified through a login, then the session is gone: still ready.
    let (status, raw, _) = server
        .call("POST", "/v1/owner/sources/once/verify", owner, None)
        .await;
    assert_eq!(status, 202, "{raw}");
    stream_login(&server, owner, "once", &site).await;
    let (raw, view) = view_until(&server, owner, "once", settled).await;
    seen += &raw;
    assert_eq!(view["state"], "ready", "{raw}");
    assert_eq!(view["identity"]["display"], "carol", "{raw}");
    assert_eq!(view["credentials"][0]["stored"], false, "{raw}");

    // Each run asks for a login of its own, and erases its session.
    for run in 1..=2 {
        let (status, raw, started) = server
            .call("POST", "/v1/owner/sources/once/runs", owner, None)
            .await;
        assert_eq!(status, 202, "{raw}");
        stream_login(&server, owner, "once", &site).await;
        let (raw, record) = run_end(&server, owner, &started["id"]).await;
        seen += &raw;
        assert_eq!(record["state"], "succeeded", "run {run}: {record}");
        assert_eq!(record["records"], 2, "{record}");
        let (_, raw, view) = server
            .call("GET", "/v1/owner/sources/once", owner, None)
            .await;
        seen += &raw;
        assert_eq!(view["state"], "ready", "{raw}");
        assert_eq!(view["credentials"][0]["stored"], false, "{raw}");
    }
    assert_eq!(site.state().issued.len(), 3, "one login per run");
    let (_, raw, audit) = server
        .call("GET", "/v1/owner/audit?limit=1000", owner, None)
        .await;
    let erased = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["action"] == "credential.delete" && row["actor"] == "browser-login")
        .count();
    assert_eq!(erased, 3, "{raw}");

    let log = server.stop();
    site.assert_kept(&seen, &log, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_logs_in_with_the_stored_password_for_a_session() {
    let (site_addr, site, _tmp, data, server) =
        login_world(env!("SOURCEBOX_COMPONENT_FIXTURE_LOGIN")).await;
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let mut seen = String::new();
    let source = json!({"name": "shop", "connector": "login-fixture", "allow_unproven": true,
        "setup": {"site_url": format!("http://{site_addr}"), "user": "carol"}})
    .to_string();
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources", owner, Some(&source))
        .await;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(view["state"], "needs_credentials", "{raw}");
    assert_eq!(view["next_step"]["fields"][0]["name"], "password", "{raw}");
    let capture = |password: &'static str| {
        let server = &server;
        async move {
            let (status, raw, _) = server
                .call(
                    "PUT",
                    "/v1/owner/sources/shop/credentials/password",
                    owner,
                    Some(&json!({ "value": password }).to_string()),
                )
                .await;
            assert_eq!(status, 200, "{raw}");
            raw
        }
    };

    // A wrong password: the login is refused, and the owner is asked for
    // the password again, with the site's reason.
    seen += &capture("not-the-password").await;
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources/shop/verify", owner, None)
        .await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(view["state"], "needs_credentials", "{raw}");
    assert!(
        view["next_step"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused the login")),
        "{raw}"
    );
    assert!(site.state().issued.is_empty());

    // The right one: the connector logs in before verifying, and keeps
    // the session, which the host sends as cookies from then on.
    seen += &capture(SITE_PASSWORD).await;
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources/shop/verify", owner, None)
        .await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(view["state"], "ready", "{raw}");
    assert_eq!(view["identity"]["display"], "carol", "{raw}");
    assert_eq!(view["credentials"][1]["name"], "session", "{raw}");
    assert_eq!(view["credentials"][1]["stored"], true, "{raw}");
    assert_eq!(site.state().issued.len(), 1);

    // The kept session serves the next run: no new login.
    let (raw, record) = run_to_end(&server, owner, "shop").await;
    seen += &raw;
    assert_eq!(record["state"], "succeeded", "{raw}");
    assert_eq!(record["records"], 2, "{raw}");
    assert_eq!(
        site.state().issued.len(),
        1,
        "a kept session was not reused"
    );

    // The site ends it: the run logs in again once and goes on.
    site.state().live.clear();
    let (raw, record) = run_to_end(&server, owner, "shop").await;
    seen += &raw;
    assert_eq!(record["state"], "succeeded", "{raw}");
    assert_eq!(record["records"], 2, "{raw}");
    assert_eq!(site.state().issued.len(), 2);

    let log = server.stop();
    site.assert_kept(&seen, &log, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_imported_from_the_owners_cookie_export() {
    let (site_addr, site, tmp, data, server) =
        login_world(env!("SOURCEBOX_COMPONENT_FIXTURE_BROWSER")).await;
    let owner = server.owner.clone();
    let owner = Some(owner.as_str());
    let mut seen = String::new();
    let source = json!({"name": "imported", "connector": "browser-fixture",
        "modality": "local-import", "allow_unproven": true,
        "setup": {"site_url": format!("http://{site_addr}")}})
    .to_string();
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources", owner, Some(&source))
        .await;
    assert_eq!(status, 201, "{raw}");
    assert_eq!(view["state"], "needs_credentials", "{raw}");
    assert_eq!(
        view["next_step"],
        json!({"step": "import_session", "credential": "session", "reason": null}),
        "{raw}"
    );
    let import = |export: String| {
        let server = &server;
        async move {
            server
                .send(
                    "POST",
                    "/v1/owner/sources/imported/import",
                    owner,
                    "text/plain",
                    export.as_bytes(),
                )
                .await
        }
    };

    // Exports that are not one, or hold nothing for the site, store nothing.
    const TRACKER: &str = "tracker-canary-93c1";
    const STALE: &str = "stale-canary-0b7e";
    let (status, raw, body) = import("sid=abc; path=/".into()).await;
    assert_eq!(status, 422, "{raw}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 1 is not a cookies.txt line")
                && m.contains("nothing was stored")),
        "{raw}"
    );
    let (status, raw, body) = import(format!(
        ".tracker.example\tTRUE\t/\tFALSE\t0\tid\t{TRACKER}\n"
    ))
    .await;
    seen += &raw;
    assert_eq!(status, 422, "{raw}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("holds no unexpired cookie for 127.0.0.1")),
        "{raw}"
    );
    let (_, raw, view) = server
        .call("GET", "/v1/owner/sources/imported", owner, None)
        .await;
    assert_eq!(view["credentials"][0]["stored"], false, "{raw}");

    // The owner's browser export: only the site's live cookie is kept.
    let export = |sid: &str| {
        format!(
            "# Netscape HTTP Cookie File\n\
             #HttpOnly_127.0.0.1\tFALSE\t/\tFALSE\t0\tsid\t{sid}\n\
             .tracker.example\tTRUE\t/\tFALSE\t4102444800\tid\t{TRACKER}\n\
             127.0.0.1\tFALSE\t/\tFALSE\t1\told\t{STALE}\n"
        )
    };
    let (status, raw, summary) = import(export(&site.issue())).await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(
        summary,
        json!({"credential": "session", "kept": 1, "other_hosts": 1, "expired": 1})
    );
    let (status, raw, view) = server
        .call("POST", "/v1/owner/sources/imported/verify", owner, None)
        .await;
    seen += &raw;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(view["state"], "ready", "{raw}");
    assert_eq!(view["identity"]["display"], "carol", "{raw}");
    let (raw, record) = run_to_end(&server, owner, "imported").await;
    seen += &raw;
    assert_eq!(record["state"], "succeeded", "{raw}");
    assert_eq!(record["records"], 2, "{raw}");
    let (_, raw, connector) = server
        .call("GET", "/v1/owner/connectors/browser-fixture", owner, None)
        .await;
    let proven: Vec<&Value> = connector["modalities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["support"] == "proven")
        .collect();
    assert_eq!(proven.len(), 1, "{raw}");
    assert_eq!(proven[0]["modality"], "local-import", "{raw}");

    // The site ends the session: the owner is asked for a new export,
    // which the command line imports as well.
    site.state().live.clear();
    let (raw, record) = run_to_end(&server, owner, "imported").await;
    seen += &raw;
    assert_eq!(record["state"], "failed", "{raw}");
    let (_, raw, view) = server
        .call("GET", "/v1/owner/sources/imported", owner, None)
        .await;
    seen += &raw;
    assert_eq!(view["next_step"]["step"], "import_session", "{raw}");
    assert!(
        view["next_step"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused the session")),
        "{raw}"
    );
    let file = tmp.path().join("cookies.txt");
    std::fs::write(&file, export(&site.issue())).expect("write export");
    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir")
        .arg(&data)
        .arg("--egress-allow")
        .arg(site_addr.to_string())
        .args(["source", "import", "imported"])
        .arg(&file);
    let out = common::run(cmd, b"");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        printed.contains("1 cookies kept; left out 1 for other hosts and 1 expired"),
        "{printed}"
    );
    std::fs::remove_file(&file).expect("remove export");
    seen += &printed;
    let (_, raw, view) = server
        .call("POST", "/v1/owner/sources/imported/verify", owner, None)
        .await;
    seen += &raw;
    assert_eq!(view["state"], "ready", "{raw}");

    // Once more, through the interactive walk: it asks for the export's
    // path (one line from a pipe), imports it and verifies.
    site.state().live.clear();
    let (raw, record) = run_to_end(&server, owner, "imported").await;
    seen += &raw;
    assert_eq!(record["state"], "failed", "{raw}");
    std::fs::write(&file, export(&site.issue())).expect("write export");
    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir")
        .arg(&data)
        .arg("--egress-allow")
        .arg(site_addr.to_string())
        .args(["source", "setup", "imported", "--json"]);
    let out = common::run(cmd, format!("{}\n", file.display()).as_bytes());
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file(&file).expect("remove export");
    seen += &printed;
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 3, "{printed}");
    assert!(
        lines[0].starts_with("refused: ") && lines[0].contains("refused the session"),
        "{printed}"
    );
    assert!(
        lines[1].contains("1 cookies kept; left out 1 for other hosts and 1 expired"),
        "{printed}"
    );
    let view: Value = serde_json::from_str(lines[2]).expect("the view");
    assert_eq!(view["state"], "ready", "{printed}");

    let log = server.stop();
    site.assert_kept(&seen, &log, &data);
    for (path, bytes) in common::files_under(&data) {
        for canary in [TRACKER, STALE] {
            common::assert_no_leak(canary.as_bytes(), &bytes, &path.display().to_string());
        }
    }
    for canary in [TRACKER, STALE] {
        common::assert_no_leak(canary.as_bytes(), seen.as_bytes(), "API responses");
        common::assert_no_leak(canary.as_bytes(), log.as_bytes(), "the server log");
    }
}
