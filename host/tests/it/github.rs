//! The GitHub connector, built from source, against a loopback fixture that
//! follows GitHub's documented REST behaviour: `Link` pagination, 401 for a
//! bad token, 403 secondary rate limits with `retry-after`, `since` on
//! issues. The fixture records which token every request carried.

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::{local_vault, set};
use sha2::Digest;
use sourcebox::catalog::{self, CatalogEntry};
use sourcebox::contract::ConnectorError;
use sourcebox::runtime::{Binding, Call, Limits, LoadedConnector, Outcome, RunFailure, Runtime};
use sourcebox::vault::Vault;
use tokio::io::AsyncWriteExt;

const GITHUB: &str = env!("SOURCEBOX_COMPONENT_CONNECTOR_GITHUB");
const ALICE: &str = "ghp_aliceAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const BOB: &str = "ghp_bobBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
const LIMITED: &str = "ghp_limitedLLLLLLLLLLLLLLLLLLLLLLLLL";

/// (path with query, token) of every request the fixture answered.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

struct Account {
    id: u64,
    login: &'static str,
    repos: u64,
}

fn account(token: &str) -> Option<Account> {
    match token {
        ALICE => Some(Account {
            id: 1,
            login: "alice",
            repos: 150,
        }),
        BOB => Some(Account {
            id: 2,
            login: "bob",
            repos: 2,
        }),
        _ => None,
    }
}

fn issues(account: &Account) -> Vec<serde_json::Value> {
    (1..=5)
        .map(|i| {
            serde_json::json!({
                "id": account.id * 1000 + i,
                "title": format!("{} issue {i}", account.login),
                "updated_at": format!("2026-11-0{i}T00:00:00Z"),
                "user": {"login": account.login},
            })
        })
        .collect()
}

fn respond(addr: SocketAddr, path: &str, token: &str) -> (u16, Vec<(String, String)>, String) {
    if token == LIMITED {
        let body = r#"{"message":"You have exceeded a secondary rate limit."}"#;
        return (403, vec![("retry-after".into(), "7".into())], body.into());
    }
    let Some(account) = account(token) else {
        return (401, vec![], r#"{"message":"Bad credentials"}"#.into());
    };
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
    };
    match route {
        "/user" => (200, vec![], serde_json::json!({"id": account.id, "login": account.login}).to_string()),
        "/user/repos" => {
            let page: u64 = param("page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let start = (page - 1) * 100;
            let items: Vec<_> = (start..account.repos.min(start + 100))
                .map(|i| serde_json::json!({"id": account.id * 100_000 + i, "full_name": format!("{}/repo{i}", account.login), "owner": {"login": account.login}}))
                .collect();
            let mut headers = vec![];
            if start + 100 < account.repos {
                headers.push((
                    "link".into(),
                    format!(r#"<http://{addr}/user/repos?per_page=100&sort=updated&page={}>; rel="next", <http://{addr}/user/repos?per_page=100&page=2>; rel="last""#, page + 1),
                ));
            }
            (200, headers, serde_json::Value::Array(items).to_string())
        }
        "/user/starred" => (200, vec![], serde_json::json!([{"id": 77, "full_name": "rust-lang/rust", "owner": {"login": "rust-lang"}}]).to_string()),
        "/issues" => {
            let since = param("since").unwrap_or("");
            let items: Vec<_> = issues(&account).into_iter().filter(|i| i["updated_at"].as_str().unwrap_or("") > since).collect();
            (200, vec![], serde_json::Value::Array(items).to_string())
        }
        _ => (404, vec![], r#"{"message":"Not Found"}"#.into()),
    }
}

async fn fixture() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let Some(head) = common::read_request_head(&mut socket).await else {
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
                let (status, headers, body) = respond(addr, &path, &token);
                let mut reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    reply.push_str(&format!("{k}: {v}\r\n"));
                }
                reply.push_str("\r\n");
                reply.push_str(&body);
                let _ = socket.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

struct World {
    _tmp: tempfile::TempDir,
    vault: Arc<Mutex<Vault>>,
    runtime: Runtime,
    github: LoadedConnector,
    addr: SocketAddr,
    seen: Seen,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(&tmp.path().join("data"));
    for (source, token) in [
        ("alice", ALICE),
        ("bob", BOB),
        ("limited", LIMITED),
        ("wrong", "ghp_revokedRRRRRRRRRRRRRRRRRRRRRRRRR"),
    ] {
        let s = vault.store().add_source(source).expect("source");
        set(&vault, &s, "token", token.as_bytes());
    }
    let runtime =
        Runtime::new(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"))
            .expect("runtime");
    let github = runtime
        .load(&std::fs::read(GITHUB).expect("github component"))
        .await
        .expect("load");
    let (addr, seen) = fixture().await;
    World {
        _tmp: tmp,
        vault: Arc::new(Mutex::new(vault)),
        runtime,
        github,
        addr,
        seen,
    }
}

impl World {
    async fn run(&self, source: &str, call: Call) -> Result<Outcome, RunFailure> {
        let binding = Binding {
            vault: Arc::clone(&self.vault),
            source: self
                .vault
                .lock()
                .expect("lock")
                .store()
                .source(source)
                .expect("source"),
            setup: vec![("api_base_url".into(), format!("http://{}", self.addr))],
            run_id: format!("run-{source}"),
            limits: Limits::default(),
            egress_allow: vec![self.addr],
            control: Default::default(),
        };
        self.runtime.run(&self.github, binding, call).await
    }

    fn records(&self, source: &str, stream: &str) -> Vec<serde_json::Value> {
        let vault = self.vault.lock().expect("lock");
        let mut stmt = vault
            .store()
            .conn()
            .prepare("SELECT r.data FROM records r JOIN sources s ON s.id = r.source_id WHERE s.name = ?1 AND r.stream = ?2")
            .expect("query");
        stmt.query_map([source, stream], |r| r.get::<_, String>(0))
            .expect("rows")
            .map(|d| serde_json::from_str(&d.expect("row")).expect("json"))
            .collect()
    }

    fn take_seen(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.seen.lock().expect("seen"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_each_collect_only_their_own_data() {
    let w = world().await;
    for (source, token, repos) in [("alice", ALICE, 150), ("bob", BOB, 2)] {
        let outcome = w.run(source, Call::Collect(vec![])).await.expect("collect");
        assert_eq!(
            outcome,
            Outcome::Collected(sourcebox::contract::RunSummary {
                records: repos + 1 + 5
            })
        );
        let seen = w.take_seen();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|(_, t)| t == token),
            "{source}'s run sent another token: {seen:?}"
        );
        let repositories = w.records(source, "repositories");
        assert_eq!(
            repositories.len() as u64,
            repos,
            "pagination followed to the end"
        );
        assert!(repositories.iter().all(|r| r["owner"]["login"] == source));
        assert!(
            w.records(source, "issues")
                .iter()
                .all(|r| r["user"]["login"] == source)
        );
    }
    assert!(w.take_seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_echoes_the_login_and_failures_are_typed() {
    let w = world().await;
    match w.run("bob", Call::Verify).await {
        Ok(Outcome::Verified(identity)) => assert_eq!(
            (identity.id.as_str(), identity.display.as_str()),
            ("2", "bob")
        ),
        other => panic!("{other:?}"),
    }
    match w.run("wrong", Call::Verify).await {
        Err(RunFailure::Connector(ConnectorError::AuthRejected(_))) => {}
        other => panic!("expected auth_rejected, got {other:?}"),
    }
    assert_eq!(
        w.run("limited", Call::Collect(vec![])).await,
        Err(RunFailure::Connector(ConnectorError::RateLimited(Some(7))))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_sync_incrementally_from_the_checkpoint() {
    let w = world().await;
    w.run("alice", Call::Collect(vec!["issues".into()]))
        .await
        .expect("first");
    assert!(
        w.take_seen()
            .iter()
            .all(|(path, _)| !path.contains("since="))
    );
    w.run("alice", Call::Collect(vec!["issues".into()]))
        .await
        .expect("second");
    let seen = w.take_seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].0.contains("since=2026-11-05T00:00:00Z"), "{seen:?}");
    assert_eq!(w.records("alice", "issues").len(), 5);
    assert!(
        w.records("alice", "repositories").is_empty(),
        "only the requested stream ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_with_the_stored_token_whatever_the_environment_holds() {
    let (addr, seen) = fixture().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let cli = |args: Vec<String>, stdin: &'static [u8]| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = common::sourcebox();
            cmd.arg("--data-dir")
                .arg(&dir)
                .arg("--egress-allow")
                .arg(addr.to_string())
                .args(&args);
            // Another account's token in every provider-looking variable.
            cmd.env("GITHUB_TOKEN", BOB)
                .env("GITHUB_PERSONAL_ACCESS_TOKEN", BOB)
                .env("GH_TOKEN", BOB)
                .env("AMAZON_PASSWORD", "");
            let out = common::run(cmd, stdin);
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let api = format!("api_base_url=http://{addr}");
    let steps: Vec<(Vec<String>, &'static [u8])> = vec![
        (vec!["init".into()], b""),
        (
            vec![
                "source".into(),
                "add".into(),
                "work".into(),
                "--connector".into(),
                "github".into(),
                "--set".into(),
                api.clone(),
            ],
            b"",
        ),
        (
            vec![
                "source".into(),
                "add".into(),
                "empty".into(),
                "--connector".into(),
                "github".into(),
                "--set".into(),
                api.clone(),
            ],
            b"",
        ),
        (
            vec![
                "credential".into(),
                "set".into(),
                "work".into(),
                "token".into(),
                "--class".into(),
                "token".into(),
            ],
            ALICE.as_bytes(),
        ),
        (vec!["run".into(), "work".into()], b""),
    ];
    for (args, stdin) in steps {
        let (ok, stdout, stderr) = cli(args.clone(), stdin).await.expect("join");
        assert!(ok, "{args:?}: {stdout}{stderr}");
        assert!(
            !stdout.contains(ALICE) && !stderr.contains(ALICE),
            "the token leaked into output"
        );
    }
    // First-party connectors come with the binary: init installed github.
    let (ok, stdout, _) = cli(vec!["connector".into(), "list".into()], b"")
        .await
        .expect("join");
    assert!(ok && stdout.contains("github 0.1.0 (GitHub)"), "{stdout}");
    // As JSON, each installed version is a catalog entry; the first-party
    // one is exactly the catalog's.
    let (ok, stdout, _) = cli(
        vec!["connector".into(), "list".into(), "--json".into()],
        b"",
    )
    .await
    .expect("join");
    assert!(ok, "{stdout}");
    let installed: Vec<CatalogEntry> = serde_json::from_str(&stdout).expect("catalog entries");
    let shipped: CatalogEntry =
        serde_json::from_str(include_str!("../../../manifests/github.json")).expect("parses");
    assert_eq!(installed, vec![shipped]);
    let requests = std::mem::take(&mut *seen.lock().expect("seen"));
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|(_, token)| token == ALICE),
        "{requests:?}"
    );

    let (ok, stdout, _) = cli(
        vec![
            "records".into(),
            "work".into(),
            "repositories".into(),
            "--json".into(),
        ],
        b"",
    )
    .await
    .expect("join");
    assert!(ok);
    let repos: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("json");
    assert_eq!(repos.len(), 150);
    assert!(repos.iter().all(|r| r["owner"]["login"] == "alice"));

    // No stored token: refused before any instance, no request made.
    let (ok, _, stderr) = cli(vec!["run".into(), "empty".into()], b"")
        .await
        .expect("join");
    assert!(!ok && stderr.contains("credentials_missing"), "{stderr}");
    assert!(
        seen.lock().expect("seen").is_empty(),
        "the refused run reached the network"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_entry_matches_the_component_built_from_source() {
    let w = world().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/github.json");
    let entry: CatalogEntry = serde_json::from_str(&std::fs::read_to_string(path).expect("read"))
        .expect("manifests/github.json parses");
    let component = std::fs::read(GITHUB).expect("github component");
    if entry.describes(&component, w.github.manifest()) {
        return;
    }
    let described = CatalogEntry {
        proven: entry.proven.clone(),
        ..CatalogEntry::of(&component, w.github.manifest())
    };
    let described = serde_json::to_string_pretty(&described).expect("json") + "\n";
    if std::env::var_os("SOURCEBOX_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, described).expect("write");
        return;
    }
    panic!(
        "manifests/github.json is not the component built from connectors/github (its digest \
         or what it describes changed); review the change, then rerun with \
         SOURCEBOX_UPDATE_GOLDEN=1 to make it read:\n{described}"
    );
}

/// The catalog's defaults are approved for a component's exact bytes: a
/// shipped component that is not its entry's is refused and nothing of it
/// is installed; the entry's own bytes install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_component_other_than_its_catalog_entry_is_not_installed() {
    let w = world().await;
    let component = std::fs::read(GITHUB).expect("github component");
    let entry = CatalogEntry::of(&component, w.github.manifest());
    let mut other = component.clone();
    // A custom section appended: the same code and manifest, other bytes.
    other.extend_from_slice(&[0, 6, 5, b'o', b't', b'h', b'e', b'r']);
    assert_eq!(
        w.runtime
            .load(&other)
            .await
            .expect("still loads")
            .manifest(),
        w.github.manifest()
    );
    let entry = serde_json::to_string(&entry).expect("json");
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(&tmp.path().join("data"));
    let store = vault.store();

    let refused = catalog::install_shipped(store, &w.runtime, &[(&other, &entry)])
        .await
        .expect_err("other bytes refused");
    assert!(
        refused
            .to_string()
            .contains("is not the component its catalog entry approves"),
        "{refused}"
    );
    assert!(catalog::list(store).expect("list").is_empty());

    let installed = catalog::install_shipped(store, &w.runtime, &[(&component, &entry)])
        .await
        .expect("the entry's own bytes install");
    assert_eq!(installed.len(), 1);
    assert_eq!(
        catalog::latest(store, "github").expect("installed").digest,
        hex::encode(sha2::Sha256::digest(&component))
    );
}
