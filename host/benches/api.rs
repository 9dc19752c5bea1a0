//! HTTP API load test: requests per second, p50 and p99 latency of the
//! real router (`api::router`) beside a bare axum route returning
//! `{"ok":true}`, in the same run. Both are served over loopback TCP by
//! `api::serve`, the product's server path, so only the router differs.
//!
//! The data directory is fresh: an echo source, verified (so its setup
//! view is the common one), holding 1,000 records of 256 bytes of JSON in
//! its `items` stream; the owner token; a client token granting `items`.
//! Scenarios, each with the same number of keep-alive connections sending
//! requests back to back:
//!
//! - the bare axum route (the baseline);
//! - a small JSON route of the API: `GET /v1/sources`, client token;
//! - a 100-record page:
//!   `GET /v1/sources/bench/streams/items/records?limit=100`, client token;
//! - page 9 of those 10, by its cursor: a page deep into the stream;
//! - the setup view: `GET /v1/owner/sources/bench`, owner token;
//! - before the page and the view, the bare route answering with their
//!   bytes (taken from the real route once, before the load): what moving
//!   those responses costs with no handler behind them.
//!
//! The server runs on a multi-thread tokio runtime (a worker per core);
//! the load generator on a two-thread runtime of its own. Client and
//! server share the machine's cores, as `wrk` on the same host would, so
//! what the generator spends per request the server does not get. The
//! generator therefore works as `wrk` does: each connection writes the
//! request's prepared bytes and reads the response into one buffer,
//! parsing only its head (httparse) and taking the body by its
//! `content-length`. `SOURCEBOX_BENCH_CLIENT=hyper` drives the same
//! connections with hyper's HTTP/1 client instead (the generator of the
//! figures before 2026-12-04), which costs the client about twice as much
//! per request. Every response must be a 200 with the body the first
//! probe returned: anything else is counted, shown, and fails the run.
//!
//! ```sh
//! cargo bench --bench api
//! SOURCEBOX_BENCH_SECS=1 cargo bench --bench api   # a quick smoke run
//! ```
//!
//! `SOURCEBOX_BENCH_SECS` is the measured time per scenario (default 5 s,
//! after a warm-up of a fifth of it); `SOURCEBOX_BENCH_CONNECTIONS` the
//! number of connections (default 32); `SOURCEBOX_BENCH_ONLY=page` runs
//! the baseline and the scenarios whose name contains `page` (for a
//! profiler); `SOURCEBOX_BENCH_SERVE=SECS` prints the servers' addresses,
//! the paths and the tokens, and serves them for that long without
//! loading them (for `wrk` from another shell). Without `--bench` (as
//! `cargo test --benches` runs it) each scenario runs for 200 ms.
//! `BENCHMARKS.md` has the figures.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sourcebox::api::{self, Api};
use sourcebox::catalog;
use sourcebox::runs::{LaunchConfig, Launcher, Trigger};
use sourcebox::runtime::Runtime;
use sourcebox::store::Store;
use sourcebox::tokens;
use sourcebox::vault::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ECHO: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");
/// Records in the stream.
const RECORDS: usize = 1_000;
/// Bytes of each record's JSON.
const RECORD_BYTES: usize = 256;
/// Records per page.
const PAGE: usize = 100;
/// A request slower than this fails the run (the server never answers it).
const STALLED: Duration = Duration::from_secs(5);

/// The baseline: a bare axum route returning `{"ok":true}`.
const BARE: &str = "bare axum route, GET /bare";
/// The bare route answering with the page's bytes.
const BARE_PAGE: &str = "bare route, the page's bytes";
/// The bare route answering with the setup view's bytes.
const BARE_VIEW: &str = "bare route, the view's bytes";

/// One thing to load, and what it must reach.
#[derive(Debug)]
struct Scenario {
    name: &'static str,
    addr: SocketAddr,
    path: String,
    token: Option<HeaderValue>,
    /// At least this many requests per second.
    target_rps: Option<f64>,
    /// At least this fraction of the bare route's requests per second.
    target_ratio: Option<f64>,
    /// The scenario its ratio is taken against: the bare route, or the
    /// bare route answering with this scenario's own bytes.
    baseline: &'static str,
}

/// What one connection (or, merged, a scenario) saw.
#[derive(Debug, Default)]
struct Tally {
    /// Latency of each 200 completed in the measured window, µs.
    latencies: Vec<u32>,
    /// Non-200s, wrong bodies, transport errors and stalls, warm-up included.
    failures: u64,
    first_failure: Option<String>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.failures += 1;
        self.first_failure.get_or_insert(why);
    }

    /// Counts one exchange, sent at `sent`: a 200 with the expected body
    /// adds its latency when it completed in `window`; anything else is a
    /// failure. `false` when the connection cannot go on.
    fn count<B: AsRef<[u8]>, E: std::fmt::Display>(
        &mut self,
        outcome: Result<Result<(u16, B), E>, tokio::time::error::Elapsed>,
        expected: &[u8],
        sent: Instant,
        window: std::ops::RangeInclusive<Instant>,
    ) -> bool {
        let done = Instant::now();
        match outcome {
            Ok(Ok((status, body))) => {
                let body = body.as_ref();
                if status != 200 {
                    self.fail(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ));
                } else if body != expected {
                    self.fail(format!(
                        "200 with another body ({} bytes, not {})",
                        body.len(),
                        expected.len()
                    ));
                } else if window.contains(&done) {
                    let micros = (done - sent).as_micros();
                    self.latencies.push(micros.try_into().unwrap_or(u32::MAX));
                }
                true
            }
            Ok(Err(e)) => {
                self.fail(format!("transport: {e}"));
                false
            }
            Err(_) => {
                self.fail(format!("no response within {STALLED:?}"));
                false
            }
        }
    }

    fn merge(&mut self, other: Self) {
        self.latencies.extend(other.latencies);
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }
}

/// The fresh data directory, and the tokens to read it with.
struct Fixture {
    // Held so the directory outlives the server.
    _dir: tempfile::TempDir,
    launcher: Arc<Launcher>,
    owner: String,
    client: String,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let vault = common::local_vault(&data);
    let cache = data.join("cache");
    let runtime = Runtime::new(&cache).expect("runtime");
    common::install(rt, &runtime, &vault, ECHO);
    let added = catalog::add_source(
        vault.store(),
        "bench",
        "echo",
        &[],
        catalog::AddOptions {
            allow_unproven: true,
            ..Default::default()
        },
    )
    .expect("source");
    common::store_token(&vault, &added.source, b"bench-token");
    insert_records(vault.store(), added.source.source_id);
    let owner = tokens::ensure_owner_token(vault.store())
        .expect("owner token")
        .expect("a fresh data directory has no owner token yet");
    let (client, _) = tokens::create_client(
        vault.store(),
        "bench",
        &["items".to_owned()],
        Some("load test"),
        None,
    )
    .expect("client token");
    let launcher = Arc::new(
        Launcher::new(
            runtime,
            Arc::new(Mutex::new(vault)),
            LaunchConfig::default(),
        )
        .expect("launcher"),
    );
    let verified = rt
        .block_on(launcher.launch("bench", Trigger::SetupVerification))
        .expect("verify");
    assert_eq!(verified.state, "succeeded", "{verified:?}");
    let text = |s: Secret| String::from_utf8(s.expose_secret().to_vec()).expect("ASCII token");
    Fixture {
        _dir: dir,
        launcher,
        owner: text(owner),
        client: text(client),
    }
}

/// Writes the stream straight into the records table, as a run's flush
/// does (key: the JSON array of the primary key), one transaction.
fn insert_records(store: &Store, source_id: i64) {
    let now = 1_790_000_000_000_i64;
    store
        .write(|conn| {
            let mut insert = conn.prepare_cached(
                "INSERT INTO records (source_id, stream, key, data, run_id, created_at, updated_at)
                 VALUES (?1, 'items', ?2, ?3, 'load-test', ?4, ?4)",
            )?;
            for i in 0..RECORDS {
                let mut record = serde_json::json!({
                    "id": i,
                    "title": format!("item {i}"),
                    "state": "open",
                    "labels": ["bench", "load"],
                    "body": "",
                });
                let room = RECORD_BYTES.saturating_sub(record.to_string().len());
                record["body"] = "x".repeat(room).into();
                debug_assert_eq!(record.to_string().len(), RECORD_BYTES);
                insert.execute(rusqlite::params![
                    source_id,
                    format!("[{i}]"),
                    record.to_string(),
                    now + i as i64
                ])?;
            }
            Ok(())
        })
        .expect("records");
}

/// Serves `app` with the product's server on a fresh loopback port until
/// `stop` fires.
fn serve(
    rt: &tokio::runtime::Runtime,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> SocketAddr {
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = listener.local_addr().expect("address");
    rt.spawn(api::serve(
        listener,
        None,
        app,
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        },
        Duration::from_secs(1),
    ));
    addr
}

/// One request on a fresh connection: status and body.
async fn probe(addr: SocketAddr, path: &str, token: Option<&HeaderValue>) -> (StatusCode, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let driver = tokio::spawn(conn);
    let response = sender
        .send_request(request(path, token))
        .await
        .expect("response");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    drop(sender);
    let _ = driver.await;
    (status, body)
}

/// The bytes of the request [`request`] builds, as the lean generator
/// sends them.
fn raw_request(path: &str, token: Option<&HeaderValue>) -> Vec<u8> {
    let mut bytes = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n").into_bytes();
    if let Some(token) = token {
        bytes.extend_from_slice(b"authorization: ");
        bytes.extend_from_slice(token.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes
}

fn request(path: &str, token: Option<&HeaderValue>) -> http::Request<Empty<Bytes>> {
    let mut request = http::Request::get(path)
        .header(HOST, "127.0.0.1")
        .body(Empty::new())
        .expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(AUTHORIZATION, token.clone());
    }
    request
}

/// What sends the requests (see the top of this file).
#[derive(Debug, Clone, Copy)]
enum Generator {
    Lean,
    Hyper,
}

/// One keep-alive connection sending requests back to back until `until`,
/// as `wrk` does: the request's bytes written, the response read into one
/// buffer; latencies of the 200s completed from `from` on.
async fn lean_connection(
    addr: SocketAddr,
    request: Arc<[u8]>,
    expected: Bytes,
    from: Instant,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => {
            tally.fail(format!("connect: {e}"));
            return tally;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(expected.len() + 512);
    while Instant::now() < until {
        let sent = Instant::now();
        buf.clear();
        let io = |e: std::io::Error| e.to_string();
        let exchange = async {
            stream.write_all(&request).await.map_err(io)?;
            let (status, head, length) = loop {
                if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                    return Err("the server closed the connection".to_owned());
                }
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut response = httparse::Response::new(&mut headers);
                match response.parse(&buf) {
                    Ok(httparse::Status::Complete(head)) => {
                        let length = response
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                            .ok_or("a response without content-length")?;
                        break (response.code.unwrap_or(0), head, length);
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(format!("unparsable response head: {e}")),
                }
            };
            buf.reserve((head + length).saturating_sub(buf.len()));
            while buf.len() < head + length {
                if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                    return Err("the server closed the connection mid-body".to_owned());
                }
            }
            if buf.len() > head + length {
                return Err("bytes after the response, unasked for".to_owned());
            }
            Ok((status, head))
        };
        let outcome = tokio::time::timeout(STALLED, exchange).await;
        let outcome = outcome.map(|r| r.map(|(status, head)| (status, &buf[head..])));
        if !tally.count(outcome, &expected, sent, from..=until) {
            break;
        }
    }
    tally
}

/// One keep-alive connection driven by hyper's HTTP/1 client, sending
/// requests back to back until `until`; latencies of the 200s completed
/// from `from` on.
async fn hyper_connection(
    addr: SocketAddr,
    path: Arc<str>,
    token: Option<HeaderValue>,
    expected: Bytes,
    from: Instant,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(e) => {
            tally.fail(format!("connect: {e}"));
            return tally;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(handshake) => handshake,
        Err(e) => {
            tally.fail(format!("handshake: {e}"));
            return tally;
        }
    };
    let driver = tokio::spawn(conn);
    while Instant::now() < until {
        let sent = Instant::now();
        let exchange = async {
            let response = sender.send_request(request(&path, token.as_ref())).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let outcome = tokio::time::timeout(STALLED, exchange).await;
        let outcome = outcome.map(|r| r.map(|(status, body)| (status.as_u16(), body)));
        if !tally.count(outcome, &expected, sent, from..=until) {
            break;
        }
    }
    drop(sender);
    let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
    tally
}

/// Loads `scenario` from `connections` connections: `warmup`, then
/// `measured`.
async fn load(
    scenario: &Scenario,
    expected: Bytes,
    generator: Generator,
    connections: usize,
    warmup: Duration,
    measured: Duration,
) -> Tally {
    let from = Instant::now() + warmup;
    let until = from + measured;
    let path: Arc<str> = scenario.path.as_str().into();
    let request: Arc<[u8]> = raw_request(&scenario.path, scenario.token.as_ref()).into();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        match generator {
            Generator::Lean => tasks.spawn(lean_connection(
                scenario.addr,
                Arc::clone(&request),
                expected.clone(),
                from,
                until,
            )),
            Generator::Hyper => tasks.spawn(hyper_connection(
                scenario.addr,
                Arc::clone(&path),
                scenario.token.clone(),
                expected.clone(),
                from,
                until,
            )),
        };
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        tally.merge(joined.expect("connection task"));
    }
    tally
}

fn env_number(name: &str) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    let number: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("{name}={value} is not a number"));
    assert!(number > 0.0, "{name} must be positive");
    Some(number)
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let measured =
        Duration::from_secs_f64(env_number("SOURCEBOX_BENCH_SECS").unwrap_or(if benching {
            5.0
        } else {
            0.2
        }));
    let warmup = measured / 5;
    let connections = env_number("SOURCEBOX_BENCH_CONNECTIONS").map_or(32, |n| n as usize);
    let generator = match std::env::var("SOURCEBOX_BENCH_CLIENT").as_deref() {
        Err(_) | Ok("lean") => Generator::Lean,
        Ok("hyper") => Generator::Hyper,
        Ok(other) => panic!("SOURCEBOX_BENCH_CLIENT={other}: use lean (the default) or hyper"),
    };

    let server = tokio::runtime::Builder::new_multi_thread()
        .thread_name("api-server")
        .enable_all()
        .build()
        .expect("server runtime");
    // Two client threads: with one, the baseline measured 15-25 % lower
    // (the client, not the server, was the limit).
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load-client")
        .enable_all()
        .build()
        .expect("client runtime");
    let fixture = fixture(&server);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let real = serve(
        &server,
        api::router(Api::new(Arc::clone(&fixture.launcher))),
        stopped.clone(),
    );
    let bearer = |token: &str| {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        value.set_sensitive(true);
        Some(value)
    };
    let page_path = format!("/v1/sources/bench/streams/items/records?limit={PAGE}");
    let view_path = "/v1/owner/sources/bench";
    // The bare route also answers with the page's and the view's own
    // bytes, prepared once: what moving those responses costs with no
    // handler behind them.
    let answer = |path: &str, token: &Option<HeaderValue>| -> Bytes {
        let (status, body) = client.block_on(probe(real, path, token.as_ref()));
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    };
    let page_bytes = answer(&page_path, &bearer(&fixture.client));
    // Page 9 of 10, by following the cursors: a page deep into the stream.
    let mut deep_path = page_path.clone();
    for _ in 1..9 {
        let page: serde_json::Value =
            serde_json::from_slice(&answer(&deep_path, &bearer(&fixture.client))).expect("JSON");
        let cursor = page["next_cursor"].as_str().expect("a next page");
        deep_path = format!("{page_path}&cursor={cursor}");
    }
    let view_bytes = answer(view_path, &bearer(&fixture.owner));
    let json = |body: Bytes| {
        move || {
            let body = body.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], body) }
        }
    };
    let bare = Router::new()
        .route(
            "/bare",
            get(|| async { axum::Json(serde_json::json!({ "ok": true })) }),
        )
        .route("/bare/page", get(json(page_bytes)))
        .route("/bare/view", get(json(view_bytes)));
    let bare = serve(&server, bare, stopped);
    let scenarios = [
        Scenario {
            name: BARE,
            addr: bare,
            path: "/bare".into(),
            token: None,
            target_rps: None,
            target_ratio: None,
            baseline: BARE,
        },
        Scenario {
            name: "small JSON route, GET /v1/sources",
            addr: real,
            path: "/v1/sources".into(),
            token: bearer(&fixture.client),
            target_rps: None,
            target_ratio: Some(0.6),
            baseline: BARE,
        },
        Scenario {
            name: BARE_PAGE,
            addr: bare,
            path: "/bare/page".into(),
            token: None,
            target_rps: None,
            target_ratio: None,
            baseline: BARE,
        },
        Scenario {
            name: "100-record page (client)",
            addr: real,
            path: page_path,
            token: bearer(&fixture.client),
            target_rps: Some(20_000.0),
            target_ratio: None,
            baseline: BARE_PAGE,
        },
        Scenario {
            name: "100-record page 9 of 10 (cursor)",
            addr: real,
            path: deep_path,
            token: bearer(&fixture.client),
            target_rps: Some(20_000.0),
            target_ratio: None,
            baseline: BARE_PAGE,
        },
        Scenario {
            name: BARE_VIEW,
            addr: bare,
            path: "/bare/view".into(),
            token: None,
            target_rps: None,
            target_ratio: None,
            baseline: BARE,
        },
        Scenario {
            name: "setup view, GET /v1/owner/sources/bench",
            addr: real,
            path: view_path.into(),
            token: bearer(&fixture.owner),
            target_rps: Some(30_000.0),
            target_ratio: None,
            baseline: BARE_VIEW,
        },
    ];

    if let Some(secs) = env_number("SOURCEBOX_BENCH_SERVE") {
        for s in &scenarios {
            let token = s.token.as_ref().map_or(String::new(), |t| {
                format!(" -H 'Authorization: {}'", t.to_str().expect("ASCII token"))
            });
            println!(
                "{}:\n  wrk -t2 -c{connections} -d5s{token} 'http://{}{}'",
                s.name, s.addr, s.path
            );
        }
        println!("serving for {secs} s");
        std::thread::sleep(Duration::from_secs_f64(secs));
        return;
    }
    println!(
        "{connections} keep-alive connections per scenario ({generator:?} generator), {:.1} s warm-up + {:.1} s measured; {RECORDS} records of {RECORD_BYTES} B in the stream",
        warmup.as_secs_f64(),
        measured.as_secs_f64()
    );
    // For profiling one scenario: the baseline and those whose name
    // contains this.
    let only = std::env::var("SOURCEBOX_BENCH_ONLY").unwrap_or_default();
    let scenarios: Vec<&Scenario> = scenarios
        .iter()
        .enumerate()
        .filter(|(i, s)| *i == 0 || s.name.contains(&only))
        .map(|(_, s)| s)
        .collect();
    let mut results = Vec::new();
    for scenario in &scenarios {
        let (status, expected) = client.block_on(probe(
            scenario.addr,
            &scenario.path,
            scenario.token.as_ref(),
        ));
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: {}",
            scenario.name,
            String::from_utf8_lossy(&expected)
        );
        check(scenario, &expected);
        let tally = client.block_on(load(
            scenario,
            expected,
            generator,
            connections,
            warmup,
            measured,
        ));
        results.push(tally);
    }
    let _ = stop.send(true);

    let rps_of = |tally: &Tally| tally.latencies.len() as f64 / measured.as_secs_f64();
    let bare_rps = rps_of(&results[0]);
    let baseline_rps: Vec<Option<f64>> = scenarios
        .iter()
        .map(|s| {
            let at = scenarios.iter().position(|b| b.name == s.baseline)?;
            Some(rps_of(&results[at]))
        })
        .collect();
    println!(
        "\n{:<42} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9}  target",
        "scenario", "req/s", "p50 µs", "p99 µs", "failed", "vs bare", "vs bytes"
    );
    let mut failed = Vec::new();
    for ((scenario, tally), own_baseline) in scenarios.iter().zip(&mut results).zip(baseline_rps) {
        tally.latencies.sort_unstable();
        let rps = rps_of(tally);
        let ratio = rps / bare_rps;
        // Beside the bare route sending the same bytes, where it ran.
        let vs_bytes = match own_baseline {
            Some(base) if scenario.baseline != BARE => format!("{:.2}x", rps / base),
            _ => "-".to_owned(),
        };
        let pct = |p: f64| {
            let n = tally.latencies.len();
            if n == 0 {
                return 0;
            }
            tally.latencies[((n as f64 * p) as usize).min(n - 1)]
        };
        let target = match (scenario.target_rps, scenario.target_ratio) {
            (Some(t), _) => format!(
                "≥ {t:.0} req/s: {}",
                if rps >= t { "met" } else { "MISSED" }
            ),
            (_, Some(t)) => format!(
                "≥ {:.0} % of bare: {}",
                t * 100.0,
                if ratio >= t { "met" } else { "MISSED" }
            ),
            _ => "baseline".to_owned(),
        };
        println!(
            "{:<42} {:>9.0} {:>9} {:>9} {:>7} {:>7.2}x {:>9}  {target}",
            scenario.name,
            rps,
            pct(0.5),
            pct(0.99),
            tally.failures,
            ratio,
            vs_bytes
        );
        if let Some(why) = &tally.first_failure {
            failed.push(format!(
                "{}: {} failed requests, the first: {why}",
                scenario.name, tally.failures
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "requests failed; these figures do not count:\n{}",
        failed.join("\n")
    );
}

/// The first response is the page or view the scenario claims to measure.
fn check(scenario: &Scenario, body: &[u8]) {
    let doc: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
    if scenario.path.contains("/records") || scenario.path == "/bare/page" {
        let records = doc["records"].as_array().expect("records");
        assert_eq!(records.len(), PAGE, "a full page");
        assert!(doc["next_cursor"].is_string(), "more pages after it");
        assert_eq!(
            records[0]["data"].to_string().len(),
            RECORD_BYTES,
            "record size"
        );
    } else if scenario.path.starts_with("/v1/owner/sources/") || scenario.path == "/bare/view" {
        assert_eq!(doc["source"], "bench", "{doc}");
        println!("setup view: state {}, {} bytes", doc["state"], body.len());
    } else if scenario.path == "/v1/sources" {
        assert_eq!(doc[0]["streams"][0], "items", "{doc}");
    } else {
        assert_eq!(doc, serde_json::json!({ "ok": true }));
    }
}
