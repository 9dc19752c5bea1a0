//! Serving: TLS with the operator's certificate, slow and late requests, the owner token rotated, setup views that follow the CLI.

use super::*;

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
