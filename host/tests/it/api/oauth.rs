//! OAuth sources against a provider fixture: authorized, refreshed, authorized again.

use super::*;

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
