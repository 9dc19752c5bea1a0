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

mod login;
mod oauth;
mod owner;
mod serving;
mod walkthrough;
