//! Helpers shared by the integration tests: a vault in a temporary data
//! directory, the real `sourcebox` binary, and byte scans for leaked secrets.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
pub use sourcebox::vault::testing::{files_under, get, local_vault, reopen, set};

/// The `sourcebox` binary built for these tests.
pub fn sourcebox() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sourcebox"));
    cmd.env_remove("SOURCEBOX_DATA_DIR")
        .env("SOURCEBOX_LOG", "sourcebox=trace");
    cmd
}

/// Runs `cmd` with `stdin` as standard input and returns its output.
pub fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sourcebox");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// `sourcebox --data-dir DIR ARGS...` with the unlock secret on fd 3 (read
/// from `unlock_file`) and `stdin` on standard input.
pub fn run_unlocked(dir: &Path, unlock_file: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"bin=$1; dir=$2; shift 2; exec "$bin" --data-dir "$dir" --unlock-fd 3 "$@" 3<"$SB_UNLOCK""#)
        .arg("sourcebox")
        .arg(env!("CARGO_BIN_EXE_sourcebox"))
        .arg(dir)
        .args(args)
        .env("SB_UNLOCK", unlock_file)
        .env("SOURCEBOX_LOG", "sourcebox=trace")
        .env_remove("SOURCEBOX_DATA_DIR");
    run(cmd, stdin)
}

/// The forms a leaked secret could take: raw, hex (both cases) and base64
/// (standard and URL-safe, at each of the three alignments it can have
/// inside a longer encoded string, edges trimmed).
pub fn leak_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
    ];
    for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(secret);
            let encoded = engine.encode(&padded);
            // Drop characters that mix in neighbouring bytes.
            let start = (offset * 4).div_ceil(3) + 1;
            let end = encoded.trim_end_matches('=').len().saturating_sub(2);
            if end > start {
                forms.push(encoded.as_bytes()[start..end].to_vec());
            }
        }
    }
    forms
}

/// Panics naming `what` if any form of `secret` occurs in `haystack`.
pub fn assert_no_leak(secret: &[u8], haystack: &[u8], what: &str) {
    for form in leak_forms(secret) {
        assert!(
            !haystack.windows(form.len()).any(|w| w == form.as_slice()),
            "a form of the secret ({}) leaked into {what}",
            String::from_utf8_lossy(&form)
        );
    }
}

/// A loopback HTTP server that answers every request with `{"ok":true}`
/// and keeps each request's head (request line and headers) for the test.
pub async fn fixture_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::AsyncWriteExt;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    let (addr, _) = serve_each(move |mut socket| {
        let log = std::sync::Arc::clone(&log);
        async move {
            let Some(head) = read_request_head(&mut socket).await else {
                return;
            };
            log.lock().expect("log").push(head);
            let body = br#"{"ok":true}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
            let _ = socket.write_all(body).await;
        }
    })
    .await;
    (addr, seen)
}

/// Connections a test server has open now, and the most it had at once.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    peak: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[allow(dead_code)] // Each test binary uses some of these.
impl Connections {
    fn opened(&self) {
        use std::sync::atomic::Ordering;
        let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn closed(&self) {
        self.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections open now.
    pub fn now(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most open at once.
    pub fn most(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A server on loopback that hands each connection to `handle`, counting
/// the connections open.
async fn serve_each<F, Fut>(handle: F) -> (std::net::SocketAddr, Connections)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Connections::default();
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let open = counter.clone();
            open.opened();
            let handled = handle(socket);
            tokio::spawn(async move {
                handled.await;
                open.closed();
            });
        }
    });
    (addr, connections)
}

/// A server that answers every request with `size` bytes of body, then
/// closes the connection.
pub async fn bulk_server(size: usize) -> (std::net::SocketAddr, Connections) {
    use tokio::io::AsyncWriteExt;
    serve_each(move |mut socket| async move {
        if read_request_head(&mut socket).await.is_some() {
            let head =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n");
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&vec![b'b'; size]).await;
        }
    })
    .await
}

/// A server that reads each request and never answers it, or, when
/// `trickle`, answers a head promising a megabyte and then sends one byte
/// of it every 50 ms. Connections stay open until the client closes them.
pub async fn stalling_server(trickle: bool) -> (std::net::SocketAddr, Connections) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    serve_each(move |mut socket| async move {
        if read_request_head(&mut socket).await.is_none() {
            return;
        }
        if trickle {
            let head = "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n";
            if socket.write_all(head.as_bytes()).await.is_ok() {
                while socket.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        } else {
            // Until the client hangs up.
            let mut buf = [0u8; 64];
            while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    })
    .await
}

/// Reads an HTTP/1.1 request head (request line and headers) off `socket`.
pub async fn read_request_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A token the GitHub fixture answers as account alice (id 1).
pub const ALICE: &str = "ghp_aliceAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
/// A token the GitHub fixture answers as account bob (id 2).
pub const BOB: &str = "ghp_bobBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
/// A token the GitHub fixture always refuses with 401.
pub const REJECTED: &str = "ghp_rejectedRRRRRRRRRRRRRRRRRRRRRRRR";

/// A GitHub-like fixture: the first requests get the scripted statuses
/// (with headers), then every request is answered normally. A request with
/// the REJECTED token always gets 401. Records (path, token) of each.
pub struct Fixture {
    pub addr: std::net::SocketAddr,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// Set to refuse every token from now on, as a provider does once a
    /// token is revoked on its side.
    pub revoked: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

pub async fn fixture(script: Vec<(u16, Vec<(&'static str, &'static str)>)>) -> Fixture {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = std::sync::Arc::default();
    let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(
        script,
    )));
    let log = std::sync::Arc::clone(&seen);
    let revoked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refusing = std::sync::Arc::clone(&revoked);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = std::sync::Arc::clone(&log);
            let script = std::sync::Arc::clone(&script);
            let revoked = std::sync::Arc::clone(&refusing);
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut socket).await else {
                    return;
                };
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let token = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("authorization: bearer ")
                            .then(|| l[22..].trim().to_owned())
                    })
                    .unwrap_or_default();
                log.lock().expect("log").push((path.clone(), token.clone()));
                let scripted = script.lock().expect("script").pop_front();
                let revoked = revoked.load(std::sync::atomic::Ordering::Relaxed);
                let (status, headers, body) = match scripted {
                    _ if token == REJECTED || revoked => {
                        (401, vec![], r#"{"message":"Bad credentials"}"#.to_owned())
                    }
                    Some((status, headers)) => {
                        (status, headers, r#"{"message":"scripted"}"#.to_owned())
                    }
                    None if path == "/user" && token == BOB => {
                        (200, vec![], r#"{"id":2,"login":"bob"}"#.to_owned())
                    }
                    None if path == "/user" => {
                        (200, vec![], r#"{"id":1,"login":"alice"}"#.to_owned())
                    }
                    None if path.starts_with("/user/repos") && token == BOB => (
                        200,
                        vec![],
                        r#"[{"id":3,"full_name":"bob/three"}]"#.to_owned(),
                    ),
                    None if path.starts_with("/user/repos") => (
                        200,
                        vec![],
                        r#"[{"id":1,"full_name":"alice/one"},{"id":2,"full_name":"alice/two"}]"#
                            .to_owned(),
                    ),
                    None => (200, vec![], "[]".to_owned()),
                };
                let mut reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    reply.push_str(&format!("{k}: {v}\r\n"));
                }
                reply.push_str("\r\n");
                reply.push_str(&body);
                let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, reply.as_bytes()).await;
            });
        }
    });
    Fixture {
        addr,
        seen,
        revoked,
    }
}

impl Fixture {
    pub fn tokens(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .map(|(_, t)| t.clone())
            .collect()
    }
}
