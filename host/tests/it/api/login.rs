//! Sessions: a streamed browser login, an ephemeral session, a stored password, an imported cookie export.

use super::*;

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
