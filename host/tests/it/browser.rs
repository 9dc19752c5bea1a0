//! The streamed-login browser: a real Chromium (Debian's `chromium`, or
//! `SOURCEBOX_CHROMIUM`) driven over its DevTools pipe, logging in to a
//! login site on loopback the way an owner would through the stream:
//! screenshots, clicks, typing, a key press.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use sourcebox::browser::{BrowserError, Key, LoginBrowser, Reach};
use sourcebox::vault::Secret;

const SESSION: &str = "sid-canary-51f0c2d7";
const PASSWORD: &str = "correct-horse-battery";
/// The login site's name: in no DNS, so only the pin makes it resolve.
const NAME: &str = "login.sourcebox.test";

fn chromium() -> PathBuf {
    std::env::var_os("SOURCEBOX_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "chromium".into())
}

/// Request paths each server saw.
type Seen = Arc<Mutex<Vec<String>>>;

/// The login site, and a server the browser may not reach; both record
/// what was asked of them.
async fn sites() -> (SocketAddr, Seen, SocketAddr, Seen) {
    async fn serve(router: axum::Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }
    let record = |seen: Seen| {
        axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().expect("seen").push(req.uri().path().to_owned());
                    next.run(req).await
                }
            },
        )
    };
    let off_seen: Seen = Arc::default();
    let off = serve(
        axum::Router::new()
            .fallback(|| async { "off limits" })
            .layer(record(Arc::clone(&off_seen))),
    )
    .await;

    #[derive(Clone)]
    struct Site {
        off: SocketAddr,
        port: u16,
    }
    async fn login_page(State(site): State<Site>) -> Html<String> {
        Html(format!(
            r#"<html><body style="margin:0">
<form method="post" action="/login">
<input name="user" style="position:absolute;left:10px;top:10px;width:300px;height:30px">
<input name="password" type="password" style="position:absolute;left:10px;top:60px;width:300px;height:30px">
<button style="position:absolute;left:10px;top:110px;width:100px;height:30px">Log in</button>
</form>
<img src="http://127.0.0.1:{off}/tracker.png">
<img src="http://localhost:{port}/by-other-name.png">
<img src="http://127.0.0.1:{port}/by-address.png">
</body></html>"#,
            off = site.off.port(),
            port = site.port,
        ))
    }
    async fn login(body: String) -> Response {
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(body.as_bytes())
                .into_owned()
                .collect();
        let user = form.get("user").map(String::as_str);
        let password = form.get("password").map(String::as_str);
        if (user, password) == (Some("carol"), Some(PASSWORD)) {
            let mut response = Redirect::to("/home").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                format!("sid={SESSION}; Path=/; HttpOnly")
                    .parse()
                    .expect("cookie"),
            );
            response
        } else {
            (StatusCode::UNAUTHORIZED, "wrong user or password").into_response()
        }
    }
    async fn home(headers: HeaderMap) -> Response {
        let cookie = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if cookie.contains(SESSION) {
            Html("<h1>welcome, carol</h1>").into_response()
        } else {
            StatusCode::UNAUTHORIZED.into_response()
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let login_seen: Seen = Arc::default();
    let router = axum::Router::new()
        .route("/login", get(login_page).post(login))
        .route("/home", get(home))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(Site {
            off,
            port: addr.port(),
        })
        .layer(record(Arc::clone(&login_seen)));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, login_seen, off, off_seen)
}

/// Polls `check` every 100 ms for up to 15 s.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..150 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The login site under its name, pinned to its loopback address.
fn pinned(site: SocketAddr) -> Vec<Reach> {
    vec![Reach {
        host: NAME.into(),
        port: Some(site.port()),
        address: Some(site.ip()),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_logs_in_through_the_streamed_browser_and_the_session_is_captured() {
    let (site, login_seen, off, off_seen) = sites().await;
    let reach = pinned(site);
    let home = format!("http://{NAME}:{}", site.port());
    let browser = LoginBrowser::open(&chromium(), &format!("{home}/login"), &reach)
        .await
        .expect("the browser starts (install chromium, or set SOURCEBOX_CHROMIUM)");
    let profile = browser.profile_dir().expect("profile");
    assert!(profile.is_dir());
    until("the login page", async || {
        browser.loaded().await.unwrap_or(false)
    })
    .await;
    let screen = browser.screenshot().await.expect("screenshot");
    assert!(screen.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    // What the owner does through the stream.
    browser.click(100.0, 25.0).await.expect("click user");
    browser
        .type_text(&Secret::from_slice(b"carol"))
        .await
        .expect("type");
    browser.click(100.0, 75.0).await.expect("click password");
    browser
        .type_text(&Secret::from_slice(PASSWORD.as_bytes()))
        .await
        .expect("type");
    browser.press(Key::Enter).await.expect("enter");
    until("the logged-in page", async || {
        browser
            .location()
            .await
            .is_ok_and(|at| at == format!("{home}/home"))
    })
    .await;
    until("the page to load", async || {
        browser.loaded().await.unwrap_or(false)
    })
    .await;

    let session = browser.finish().await.expect("finish");
    let cookies: serde_json::Value =
        serde_json::from_slice(session.expose_secret()).expect("cookies JSON");
    assert_eq!(cookies[0]["name"], "sid", "{cookies}");
    assert_eq!(cookies[0]["value"], SESSION);
    assert_eq!(cookies[0]["httpOnly"], true);
    assert!(!profile.exists(), "the profile outlived the session");

    // It reached only the allowed name and port: not another port on
    // loopback, not the same server under another name or its address.
    let login_seen = login_seen.lock().expect("seen").clone();
    assert!(login_seen.contains(&"/home".to_owned()), "{login_seen:?}");
    for path in ["/by-other-name.png", "/by-address.png"] {
        assert!(!login_seen.contains(&path.to_owned()), "{login_seen:?}");
    }
    assert!(
        off_seen.lock().expect("seen").is_empty(),
        "a host not allowed was reached: {off}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_page_on_a_host_not_allowed_is_refused_before_any_browser_starts() {
    let (site, _, off, _) = sites().await;
    let reach = pinned(site);
    for url in [
        format!("http://{off}/login"),
        format!("http://{site}/login"),
        "http://169.254.169.254/".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let refused = LoginBrowser::open(&chromium(), &url, &reach).await;
        assert!(
            matches!(&refused, Err(BrowserError::NotAllowed(u)) if *u == url),
            "{url}: {refused:?}"
        );
    }
    let missing = LoginBrowser::open(
        std::path::Path::new("/nonexistent/chromium"),
        &format!("http://{NAME}:{}/login", site.port()),
        &reach,
    )
    .await;
    assert!(
        matches!(&missing, Err(e @ BrowserError::Start { .. }) if e.to_string().contains("install Chromium")),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_the_operator_allowed_is_reached_on_its_port_only() {
    let (site, login_seen, _, _) = sites().await;
    let reach = vec![Reach {
        host: site.ip().to_string(),
        port: Some(site.port()),
        address: None,
    }];
    let browser = LoginBrowser::open(&chromium(), &format!("http://{site}/login"), &reach)
        .await
        .expect("the browser starts");
    // Its image by address is on the allowed port, so it loads.
    until("the image by address", async || {
        login_seen
            .lock()
            .expect("seen")
            .contains(&"/by-address.png".to_owned())
    })
    .await;
    until("the page to load", async || {
        browser.loaded().await.unwrap_or(false)
    })
    .await;
    let seen = login_seen.lock().expect("seen").clone();
    assert!(seen.contains(&"/login".to_owned()), "{seen:?}");
    assert!(!seen.contains(&"/by-other-name.png".to_owned()), "{seen:?}");
    drop(browser.finish().await.expect("finish"));
}
