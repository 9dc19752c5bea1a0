//! A headless Chromium for one streamed browser login.
//!
//! Each [`LoginBrowser`] is its own Chromium process with a fresh profile
//! directory, erased when the session ends. The host drives it over the
//! DevTools protocol on a pair of pipes (`--remote-debugging-pipe`, file
//! descriptors 3 and 4), so there is no debugging port another local
//! process could connect to. The browser reaches only the hosts it is
//! given: every other request goes to a proxy address that cannot be
//! connected to, and loopback is not exempt. It resolves no name itself:
//! each allowed name is pinned to the address the host vetted, and every
//! other name is unresolvable. What it hands back at the end is the
//! session: the cookies of those hosts, as a [`Secret`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::vault::Secret;

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the browser may take to start and open its first page.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Where requests to any host not allowed go: the limited broadcast
/// address, which no TCP connection can reach, so they fail at once.
const NOWHERE: &str = "http://255.255.255.255:1";

/// Why a browser session failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrowserError {
    /// Chromium could not be started.
    #[error(
        "could not start the browser '{binary}': {error}; install Chromium (Debian: apt-get install chromium) or pass its path"
    )]
    Start {
        /// The binary tried.
        binary: String,
        /// What went wrong.
        error: String,
    },
    /// The browser ended or broke the protocol.
    #[error("browser: {0}")]
    Protocol(String),
    /// The browser did not answer in time.
    #[error("browser: no answer to {0} in time")]
    Timeout(String),
    /// The page asked for is not on a host the session may reach.
    #[error("{0} is not one of the hosts this login may reach")]
    NotAllowed(String),
}

/// A key the owner can press in the streamed browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
pub enum Key {
    /// Submit a form.
    Enter,
    /// Next field.
    Tab,
    /// Delete the character before the caret.
    Backspace,
}

impl Key {
    fn event(self) -> (&'static str, i64, Option<&'static str>) {
        match self {
            Self::Enter => ("Enter", 13, Some("\r")),
            Self::Tab => ("Tab", 9, None),
            Self::Backspace => ("Backspace", 8, None),
        }
    }
}

/// A host a login may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// A host name or an IP literal, as in URLs.
    pub host: String,
    /// Only this port, or any.
    pub port: Option<u16>,
    /// For a name: the address the host resolved and vetted for it. The
    /// browser connects there and never resolves the name itself; a name
    /// without one cannot be resolved at all.
    pub address: Option<IpAddr>,
}

impl Reach {
    /// The proxy bypass entry: `host` or `host:port`.
    fn entry(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }
}

/// One Chromium, one page, for one login.
pub struct LoginBrowser {
    cdp: Cdp,
    /// The page's DevTools session.
    page: String,
    /// The hosts it may reach.
    reach: Vec<Reach>,
    child: Child,
    profile: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for LoginBrowser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginBrowser")
            .field("reach", &self.reach)
            .finish_non_exhaustive()
    }
}

impl LoginBrowser {
    /// Starts `binary` (for example `chromium`) with a fresh profile,
    /// allowed to reach only `reach`, and opens `url`, which must be on one
    /// of them.
    pub async fn open(
        binary: &std::path::Path,
        url: &str,
        reach: &[Reach],
    ) -> Result<Self, BrowserError> {
        Self::open_in(&std::env::temp_dir(), binary, url, reach).await
    }

    /// [`LoginBrowser::open`], with the profile directory made under
    /// `profiles`.
    pub async fn open_in(
        profiles: &std::path::Path,
        binary: &std::path::Path,
        url: &str,
        reach: &[Reach],
    ) -> Result<Self, BrowserError> {
        let target = url::Url::parse(url).map_err(|_| BrowserError::NotAllowed(url.to_owned()))?;
        if !matches!(target.scheme(), "http" | "https") || !allowed(&target, reach) {
            return Err(BrowserError::NotAllowed(url.to_owned()));
        }
        let start = |error: String| BrowserError::Start {
            binary: binary.display().to_string(),
            error,
        };
        std::fs::create_dir_all(profiles).map_err(|e| {
            start(format!(
                "profile directory under {}: {e}",
                profiles.display()
            ))
        })?;
        let profile = tempfile::Builder::new()
            .prefix("sourcebox-login-")
            .tempdir_in(profiles)
            .map_err(|e| start(format!("profile directory: {e}")))?;
        let (from_browser, browser_out) = std::io::pipe().map_err(|e| start(e.to_string()))?;
        let (browser_in, to_browser) = std::io::pipe().map_err(|e| start(e.to_string()))?;
        // Only the allowed hosts go direct; `<-loopback>` takes away
        // Chromium's own exemption of loopback from the proxy.
        let bypass = std::iter::once("<-loopback>".to_owned())
            .chain(reach.iter().map(Reach::entry))
            .collect::<Vec<_>>()
            .join(";");
        // Allowed names go to their vetted address; any other name does not
        // resolve. The first matching rule applies.
        let resolve = reach
            .iter()
            .filter_map(|r| match (r.address, r.host.parse::<IpAddr>()) {
                (Some(a), _) => Some(format!("MAP {} {a}", r.host)),
                // An address needs no resolving, but the catch-all below
                // would take it too.
                (None, Ok(_)) => Some(format!("EXCLUDE {}", r.host)),
                (None, Err(_)) => None,
            })
            .chain(std::iter::once("MAP * ~NOTFOUND".to_owned()))
            .collect::<Vec<_>>()
            .join(",");
        let mut command = Command::new(binary);
        command
            .arg("--headless")
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--proxy-server={NOWHERE}"))
            .arg(format!("--proxy-bypass-list={bypass}"))
            .arg(format!("--host-resolver-rules={resolve}"))
            .args([
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-gpu",
                // WebRTC's UDP would go around the proxy.
                "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
                "--window-size=1024,768",
                "about:blank",
            ])
            // Nothing of the host's environment: only what it needs to run.
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", profile.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that ending the session ends every
        // process it started.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        if running_as_root() {
            // Chromium's own sandbox cannot start as root; the browser still
            // reaches only the allowed hosts and holds only this login.
            command.arg("--no-sandbox");
        }
        command
            .fd_mappings(vec![
                FdMapping {
                    parent_fd: browser_in.into(),
                    child_fd: 3,
                },
                FdMapping {
                    parent_fd: browser_out.into(),
                    child_fd: 4,
                },
            ])
            .map_err(|e| start(e.to_string()))?;
        let child = command.spawn().map_err(|e| start(e.to_string()))?;
        // The child holds its ends now; ours were moved into the command.
        drop(command);
        let cdp = Cdp::start(to_browser, from_browser);
        let mut browser = Self {
            cdp,
            page: String::new(),
            reach: reach.to_vec(),
            child,
            profile: Some(profile),
        };
        browser
            .cdp
            .call_within(STARTUP_TIMEOUT, "Browser.getVersion", json!({}), None)
            .await?;
        let target = browser
            .cdp
            .call_within(
                STARTUP_TIMEOUT,
                "Target.createTarget",
                json!({ "url": url }),
                None,
            )
            .await?;
        let target = target["targetId"].as_str().unwrap_or_default().to_owned();
        let attached = browser
            .cdp
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
                None,
            )
            .await?;
        browser.page = attached["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Protocol("no page session".into()))?
            .to_owned();
        Ok(browser)
    }

    /// What the page shows now, as a PNG.
    pub async fn screenshot(&self) -> Result<Vec<u8>, BrowserError> {
        use base64::Engine;
        let shot = self
            .page_call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| BrowserError::Protocol(format!("screenshot: {e}")))
    }

    /// A left click at (`x`, `y`) in the page's CSS pixels.
    pub async fn click(&self, x: f64, y: f64) -> Result<(), BrowserError> {
        for kind in ["mousePressed", "mouseReleased"] {
            self.page_call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await?;
        }
        Ok(())
    }

    /// Types `text` into the focused field. It may be a password: it is
    /// never logged, and the message that carried it is dropped at once.
    pub async fn type_text(&self, text: &Secret) -> Result<(), BrowserError> {
        let text = String::from_utf8_lossy(text.expose_secret());
        self.page_call("Input.insertText", json!({ "text": text }))
            .await
            .map(drop)
    }

    /// Presses `key`.
    pub async fn press(&self, key: Key) -> Result<(), BrowserError> {
        let (name, code, text) = key.event();
        for kind in ["keyDown", "keyUp"] {
            let mut event = json!({
                "type": kind, "key": name, "code": name,
                "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code
            });
            if let (Some(text), "keyDown") = (text, kind) {
                event["text"] = json!(text);
            }
            self.page_call("Input.dispatchKeyEvent", event).await?;
        }
        Ok(())
    }

    /// Whether the page has finished loading.
    pub async fn loaded(&self) -> Result<bool, BrowserError> {
        let state = self
            .page_call(
                "Runtime.evaluate",
                json!({ "expression": "document.readyState", "returnByValue": true }),
            )
            .await?;
        Ok(state["result"]["value"] == "complete")
    }

    /// The address the page is at now.
    pub async fn location(&self) -> Result<String, BrowserError> {
        let history = self
            .page_call("Page.getNavigationHistory", json!({}))
            .await?;
        let at = history["currentIndex"].as_u64().unwrap_or_default() as usize;
        Ok(history["entries"][at]["url"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Ends the session: the cookies of the allowed hosts, as one JSON
    /// array (`name`, `value`, `domain`, `path`, `expires`, `secure`,
    /// `httpOnly`), then the browser is closed and its profile erased.
    pub async fn finish(mut self) -> Result<Secret, BrowserError> {
        let session = self.cookies().await?;
        let _ = self.cdp.call("Browser.close", json!({}), None).await;
        // Let it shut down its own processes before anything is killed.
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop(false);
        Ok(session)
    }

    /// The cookies of the allowed hosts, as [`LoginBrowser::finish`]
    /// returns them, leaving the browser open.
    pub async fn cookies(&self) -> Result<Secret, BrowserError> {
        let all = self.cdp.call("Storage.getCookies", json!({}), None).await?;
        let reach = &self.reach;
        let kept: Vec<Value> = all["cookies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                let domain = c["domain"].as_str().unwrap_or_default();
                let domain = domain.trim_start_matches('.');
                reach
                    .iter()
                    .any(|r| r.host == domain || r.host.ends_with(&format!(".{domain}")))
            })
            .map(|c| {
                json!({
                    "name": c["name"], "value": c["value"], "domain": c["domain"],
                    "path": c["path"], "expires": c["expires"], "secure": c["secure"],
                    "httpOnly": c["httpOnly"]
                })
            })
            .collect();
        Ok(Secret::new(
            serde_json::to_vec(&kept).expect("JSON values serialize"),
        ))
    }

    async fn page_call(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.cdp.call(method, params, Some(&self.page)).await
    }

    /// Kills the browser (if it is still running) and erases its profile.
    /// Its helper processes may still be writing there for a moment after
    /// the main process is gone, so a failed removal is retried: on a
    /// blocking thread when `retry_aside` and a runtime is there to run it
    /// (dropping a browser must not stall an async worker), else here.
    fn stop(&mut self, retry_aside: bool) {
        // The whole process group (renderers, GPU and network services
        // included), then the main process in case that failed.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let Some(profile) = self.profile.take() else {
            return;
        };
        let path = profile.keep();
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {}
            _ => return,
        }
        let erase = move || {
            for _ in 0..50 {
                match std::fs::remove_dir_all(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => return,
                }
            }
            tracing::warn!(profile = %path.display(), "a login browser's profile could not be erased");
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if retry_aside => drop(runtime.spawn_blocking(erase)),
            _ => erase(),
        }
    }

    /// The profile directory, while the session lasts.
    pub fn profile_dir(&self) -> Option<PathBuf> {
        self.profile.as_ref().map(|p| p.path().to_owned())
    }
}

impl Drop for LoginBrowser {
    fn drop(&mut self) {
        self.stop(true);
    }
}

/// Whether `url` is on one of `reach`.
fn allowed(url: &url::Url, reach: &[Reach]) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let port = url.port_or_known_default();
    reach
        .iter()
        .any(|r| r.host == host && r.port.is_none_or(|p| Some(p) == port))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The DevTools protocol over the two pipes: NUL-terminated JSON messages,
/// answers matched to their command by id on a reader thread.
struct Cdp {
    writer: Mutex<std::io::PipeWriter>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    next: AtomicU64,
}

impl Cdp {
    fn start(writer: std::io::PipeWriter, mut reader: std::io::PipeReader) -> Self {
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let answers = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("sourcebox-browser".into())
            .spawn(move || {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 64 * 1024];
                while let Ok(n @ 1..) = reader.read(&mut chunk) {
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.iter().position(|b| *b == 0) {
                        let message: Vec<u8> = buffer.drain(..=end).collect();
                        let Ok(message) = serde_json::from_slice::<Value>(&message[..end]) else {
                            continue;
                        };
                        let Some(id) = message["id"].as_u64() else {
                            continue; // an event: not used
                        };
                        if let Some(sender) = answers.lock().expect("pending").remove(&id) {
                            let _ = sender.send(message);
                        }
                    }
                }
                // The browser is gone: every command still waiting fails.
                answers.lock().expect("pending").clear();
            })
            .expect("browser reader thread");
        Self {
            writer: Mutex::new(writer),
            pending,
            next: AtomicU64::new(1),
        }
    }

    async fn call(
        &self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, BrowserError> {
        self.call_within(COMMAND_TIMEOUT, method, params, session)
            .await
    }

    async fn call_within(
        &self,
        timeout: Duration,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, BrowserError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = oneshot::channel();
        self.pending.lock().expect("pending").insert(id, sender);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("JSON values serialize");
        drop(message);
        bytes.push(0);
        let written = self.writer.lock().expect("writer").write_all(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        written.map_err(|e| BrowserError::Protocol(format!("{method}: {e}")))?;
        let answer = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| BrowserError::Timeout(method.to_owned()))?
            .map_err(|_| BrowserError::Protocol(format!("{method}: the browser ended")))?;
        if let Some(error) = answer.get("error") {
            return Err(BrowserError::Protocol(format!(
                "{method}: {}",
                error["message"].as_str().unwrap_or("refused")
            )));
        }
        Ok(answer["result"].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_hosts_and_ports_are_allowed() {
        let reach = vec![
            Reach {
                host: "127.0.0.1".into(),
                port: Some(8080),
                address: None,
            },
            Reach {
                host: "login.example.com".into(),
                port: None,
                address: Some([93, 184, 215, 14].into()),
            },
        ];
        let ok = |u: &str| allowed(&url::Url::parse(u).expect("url"), &reach);
        assert!(ok("http://127.0.0.1:8080/login"));
        assert!(!ok("http://127.0.0.1:8081/login"));
        assert!(ok("https://login.example.com/a"));
        assert!(!ok("https://evil.example.com/"));
        assert!(!ok("http://169.254.169.254/"));
        assert_eq!(reach[0].entry(), "127.0.0.1:8080");
        assert_eq!(reach[1].entry(), "login.example.com");
    }
}

/// The login browsers open in this process, each under the interaction
/// that asked for it: what the owner's screen and input routes reach.
#[derive(Debug, Clone, Default)]
pub struct Logins {
    binary: Option<PathBuf>,
    /// Where their profiles are made.
    profiles: PathBuf,
    open: Arc<Mutex<HashMap<String, Arc<LoginBrowser>>>>,
}

impl Logins {
    /// Logins through `binary`, their profiles under `profiles`; none at
    /// all without a binary.
    pub fn new(binary: Option<PathBuf>, profiles: PathBuf) -> Self {
        Self {
            binary,
            profiles,
            open: Arc::default(),
        }
    }

    /// Whether this process can open login browsers.
    pub fn available(&self) -> bool {
        self.binary.is_some()
    }

    /// Opens a login browser at `url`, allowed to reach only `reach`.
    pub async fn open(&self, url: &str, reach: &[Reach]) -> Result<LoginBrowser, BrowserError> {
        let Some(binary) = &self.binary else {
            return Err(BrowserError::Start {
                binary: "chromium".into(),
                error: "this process has no browser for logins".into(),
            });
        };
        LoginBrowser::open_in(&self.profiles, binary, url, reach).await
    }

    /// The browser open for interaction `id`.
    pub fn get(&self, id: &str) -> Option<Arc<LoginBrowser>> {
        self.open.lock().expect("logins lock").get(id).cloned()
    }

    pub(crate) fn insert(&self, id: &str, browser: LoginBrowser) {
        self.open
            .lock()
            .expect("logins lock")
            .insert(id.to_owned(), Arc::new(browser));
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Arc<LoginBrowser>> {
        self.open.lock().expect("logins lock").remove(id)
    }
}

/// The Chromium this host uses for logins: `SOURCEBOX_CHROMIUM` if set,
/// else `chromium` (or `chromium-browser`) on the `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    // Looked for once per process: every browser-login setup view asks,
    // and the operator restarts the server after installing one.
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND.get_or_init(look_for_chromium).clone()
}

fn look_for_chromium() -> Option<PathBuf> {
    let on_path = |name: &std::ffi::OsStr| {
        let path = std::path::Path::new(name);
        if path.components().count() > 1 {
            return path.is_file().then(|| path.to_owned());
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    };
    match std::env::var_os("SOURCEBOX_CHROMIUM") {
        Some(binary) => on_path(&binary),
        None => ["chromium", "chromium-browser"]
            .into_iter()
            .find_map(|name| on_path(name.as_ref())),
    }
}
