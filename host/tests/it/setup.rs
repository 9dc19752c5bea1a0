//! The setup engine, through the real `sourcebox` binary: the GitHub
//! connector against a loopback fixture from add to ready, identity echo,
//! per-source credentials in both directions, modality proofs, and golden
//! views of each lifecycle state that the CLI's text only renders.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{ALICE, BOB, REJECTED, fixture};
use sourcebox::catalog;
use sourcebox::readiness::Blocked;
use sourcebox::setup::{AccountChoice, ConnectorView, Lifecycle, NextStep, SourceView};

const ECHO: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");
const ECHO_NEXT: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO_NEXT");

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    allow: Option<SocketAddr>,
}

impl Dir {
    async fn new(allow: Option<SocketAddr>) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("data");
        let dir = Self {
            _tmp: tmp,
            path,
            allow,
        };
        dir.ok(&["init"], b"").await;
        dir
    }

    /// `sourcebox --data-dir DIR [--egress-allow A] ARGS` with `stdin`.
    async fn cli(&self, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
        let mut cmd = common::sourcebox();
        // A host without a login browser, whatever this machine has, so
        // the golden views do not depend on it.
        cmd.env("SOURCEBOX_CHROMIUM", "/nonexistent/chromium");
        cmd.arg("--data-dir").arg(&self.path);
        if let Some(addr) = self.allow {
            cmd.arg("--egress-allow").arg(addr.to_string());
        }
        cmd.args(args);
        let stdin = stdin.to_vec();
        let out = tokio::task::spawn_blocking(move || common::run(cmd, &stdin))
            .await
            .expect("join");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str], stdin: &[u8]) -> String {
        let (ok, stdout, stderr) = self.cli(args, stdin).await;
        assert!(ok, "{args:?}: {stdout}{stderr}");
        stdout
    }

    /// Adds a GitHub source whose API is the fixture at `self.allow`;
    /// returns what `source add` printed.
    async fn add_github(&self, name: &str) -> String {
        let api = format!("api_base_url=http://{}", self.allow.expect("fixture"));
        self.ok(
            &[
                "source",
                "add",
                name,
                "--connector",
                "github",
                "--set",
                &api,
            ],
            b"",
        )
        .await
    }

    /// Adds an echo source fetching `url` with a stored token, set up.
    async fn add_echo(&self, name: &str, url: &str) {
        let set = format!("url={url}");
        let add = [
            "source",
            "add",
            name,
            "--connector",
            "echo",
            "--allow-unproven",
            "--set",
            &set,
        ];
        self.ok(&add, b"").await;
        self.ok(&["source", "setup", name], b"t0k3n\n").await;
    }

    async fn view(&self, source: &str) -> SourceView {
        let json = self.ok(&["source", "show", source, "--json"], b"").await;
        serde_json::from_str(&json).expect("view json")
    }

    /// The view as JSON, checked against `golden/setup/NAME.json`, and
    /// the text `source show` prints checked to be its rendering.
    async fn golden(&self, source: &str, name: &str) -> SourceView {
        let json = self.ok(&["source", "show", source, "--json"], b"").await;
        let view: SourceView = serde_json::from_str(&json).expect("view json");
        let text = self.ok(&["source", "show", source], b"").await;
        assert_eq!(
            text,
            sourcebox::cli::render_source(&view),
            "the CLI printed something the engine did not decide"
        );
        let mut doc: serde_json::Value = serde_json::from_str(&json).expect("json");
        normalize(&mut doc, self.allow);
        let pretty = serde_json::to_string_pretty(&doc).expect("pretty") + "\n";
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/setup")
            .join(format!("{name}.json"));
        if std::env::var_os("SOURCEBOX_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &pretty).expect("write golden");
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            pretty,
            expected,
            "{} differs; review, then rerun with SOURCEBOX_UPDATE_GOLDEN=1",
            path.display()
        );
        view
    }
}

/// Replaces what differs between runs: the fixture's address.
fn normalize(doc: &mut serde_json::Value, allow: Option<SocketAddr>) {
    match doc {
        serde_json::Value::String(s) => {
            if let Some(addr) = allow {
                *s = s.replace(&addr.to_string(), "FIXTURE");
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| normalize(v, allow)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| normalize(v, allow)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_goes_from_add_to_ready_with_the_account_echoed() {
    let fx = fixture(vec![]).await;
    let dir = Dir::new(Some(fx.addr)).await;

    dir.ok(&["source", "add", "bare"], b"").await;
    let draft = dir.golden("bare", "draft").await;
    assert_eq!(draft.next_step, NextStep::ChooseConnector);

    let added = dir.add_github("work").await;
    assert!(added.contains("source work: needs_credentials"), "{added}");
    let view = dir.golden("work", "needs_credentials").await;
    assert_eq!(view.state, Lifecycle::NeedsCredentials);
    assert_eq!(view.modality.as_deref(), Some("static-secret"));
    let NextStep::ProvideCredentials { fields, reason } = &view.next_step else {
        panic!("{view:?}");
    };
    assert!(reason.is_none());
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].name, "token");
    assert_eq!(fields[0].label, "Personal access token");
    assert!(fields[0].secret && fields[0].required);

    // The schema is enforced before anything is stored, and the errors
    // never repeat the value.
    for (args, value, expected) in [
        (
            vec!["token"],
            "not-a-github-token",
            "does not look like a Personal access token",
        ),
        (
            vec!["tokn"],
            ALICE,
            "declares no credential 'tokn'; it declares: token",
        ),
        (
            vec!["token", "--class", "password"],
            ALICE,
            "declares 'token' as class token, not password",
        ),
    ] {
        let mut cmd = vec!["credential", "set", "work"];
        cmd.extend(args);
        let (ok, out, err) = dir.cli(&cmd, value.as_bytes()).await;
        assert!(!ok && err.contains(expected), "{cmd:?}: {err}");
        assert!(err.contains("nothing was stored"), "{err}");
        common::assert_no_leak(value.as_bytes(), format!("{out}{err}").as_bytes(), "error");
    }
    assert_eq!(dir.view("work").await.state, Lifecycle::NeedsCredentials);

    // A token the provider refuses: captured, verified, refused with the
    // connector's reason, and the source asks for credentials again.
    dir.ok(
        &["credential", "set", "work", "token", "--class", "token"],
        REJECTED.as_bytes(),
    )
    .await;
    let view = dir.golden("work", "verifying").await;
    assert_eq!(
        (view.state, &view.next_step),
        (Lifecycle::Verifying, &NextStep::Verify)
    );
    // The view says what to do; the exit status says it failed.
    let (ok, out, err) = dir.cli(&["source", "verify", "work"], b"").await;
    assert!(
        !ok && out.contains("source work: needs_credentials"),
        "{out}"
    );
    assert!(
        err.contains("the verification failed: auth_rejected"),
        "{err}"
    );
    let view = dir.golden("work", "needs_credentials_refused").await;
    assert_eq!(view.state, Lifecycle::NeedsCredentials);
    assert!(
        matches!(&view.next_step, NextStep::ProvideCredentials { reason: Some(r), .. } if r.contains("401")),
        "{view:?}"
    );
    assert!(view.identity.is_none());

    // `source setup` asks for the token again (one line from the pipe),
    // stores it and verifies it.
    let out = dir
        .ok(
            &["source", "setup", "work"],
            format!("{ALICE}\n").as_bytes(),
        )
        .await;
    assert!(out.contains("source work: ready"), "{out}");
    assert!(out.contains("account: alice (provider id 1)"), "{out}");
    common::assert_no_leak(ALICE.as_bytes(), out.as_bytes(), "setup output");
    let view = dir.golden("work", "ready").await;
    assert_eq!(view.state, Lifecycle::Ready);
    assert_eq!(
        view.identity.as_ref().map(|i| i.display.as_str()),
        Some("alice")
    );
    let runs = dir.ok(&["runs", "work", "--json"], b"").await;
    let runs: Vec<serde_json::Value> = serde_json::from_str(&runs).expect("runs");
    assert!(runs.iter().all(|r| r["trigger"] == "setup_verification"));
    // And it collects: the end-to-end proof manifests/github.json cites.
    let out = dir.ok(&["run", "work"], b"").await;
    assert!(out.contains("collected 2 records"), "{out}");
    let repos = dir
        .ok(&["records", "work", "repositories", "--json"], b"")
        .await;
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&repos)
            .expect("records")
            .len(),
        2
    );
    assert_eq!(dir.view("work").await.state, Lifecycle::Ready);
    assert!(fx.tokens().iter().all(|t| t == ALICE || t == REJECTED));

    // Another account's token for the source that holds alice's data.
    // Each of the owner's three choices, in turn, from the same swap.
    swap_to_bob(&dir, &fx).await;
    let text = dir.ok(&["source", "show", "work"], b"").await;
    assert!(
        text.contains("sourcebox source account work --new-source NAME")
            && text.contains("sourcebox source account work --accept")
            && text.contains("sourcebox source account work --discard"),
        "{text}"
    );
    let (ok, _, err) = dir.cli(&["source", "account", "work"], b"").await;
    assert!(!ok && err.contains("choose one of --accept"), "{err}");

    // Discard: the token is deleted; the source is alice's again and asks
    // for its credential.
    let out = dir
        .ok(&["source", "account", "work", "--discard"], b"")
        .await;
    assert!(out.contains("source work: needs_credentials"), "{out}");
    let view = dir.view("work").await;
    assert!(!view.credentials[0].stored);
    assert!(matches!(
        view.blocked,
        Some(Blocked::CredentialsMissing { .. })
    ));
    let (ok, _, err) = dir
        .cli(&["source", "account", "work", "--accept"], b"")
        .await;
    assert!(!ok && err.contains("no account change"), "{err}");
    assert_eq!(bob_records(&dir, "work").await, 0);

    // A new source: bob's token moves into it, verified as bob, and it
    // collects bob's repositories only; this source asks for a token again
    // and stays alice's.
    swap_to_bob(&dir, &fx).await;
    let (ok, _, err) = dir
        .cli(&["source", "account", "work", "--new-source", "work"], b"")
        .await;
    assert!(!ok && err.contains("work"), "{err}");
    assert!(
        matches!(
            dir.view("work").await.next_step,
            NextStep::ConfirmAccountChange { .. }
        ),
        "a refused choice changed the source"
    );
    let out = dir
        .ok(
            &["source", "account", "work", "--new-source", "bob-work"],
            b"",
        )
        .await;
    assert!(out.contains("source work: needs_credentials"), "{out}");
    let bob = dir.view("bob-work").await;
    assert_eq!(bob.state, Lifecycle::Ready, "{bob:?}");
    assert_eq!(bob.identity.map(|i| i.display), Some("bob".to_owned()));
    assert!(bob.credentials[0].stored);
    let out = dir.ok(&["run", "bob-work"], b"").await;
    assert!(
        out.contains("collected 1 records") && out.contains("account bob (provider id 2)"),
        "{out}"
    );
    assert_eq!(bob_records(&dir, "bob-work").await, 1);
    assert_eq!(bob_records(&dir, "work").await, 0);
    dir.ok(
        &["source", "setup", "work"],
        format!("{ALICE}\n").as_bytes(),
    )
    .await;
    let view = dir.view("work").await;
    assert_eq!(view.state, Lifecycle::Ready, "{view:?}");
    assert_eq!(view.identity.map(|i| i.display), Some("alice".to_owned()));

    // Accept: the source is bob's from now on, with alice's records kept.
    swap_to_bob(&dir, &fx).await;
    let confirmed = dir
        .ok(&["source", "account", "work", "--accept"], b"")
        .await;
    assert!(confirmed.contains("source work: ready"), "{confirmed}");
    let out = dir.ok(&["run", "work"], b"").await;
    assert!(out.contains("account bob (provider id 2)"), "{out}");
    assert_eq!(bob_records(&dir, "work").await, 1);
}

/// Stores bob's token for `work`, a source connected to alice, and runs it:
/// the run verifies bob before anything else, collects nothing, fails
/// `account_changed`, and the source waits for the owner, offering every
/// choice; the scheduler does not run it meanwhile.
async fn swap_to_bob(dir: &Dir, fx: &common::Fixture) {
    dir.ok(&["credential", "set", "work", "token"], BOB.as_bytes())
        .await;
    let seen = fx.seen.lock().expect("seen").len();
    let (ok, out, err) = dir.cli(&["run", "work"], b"").await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("failed: account_changed")
            && out.contains("account bob (provider id 2)")
            && err.contains("nothing was collected")
            && err.contains("sourcebox source account work"),
        "{out}{err}"
    );
    let asked: Vec<(String, String)> = fx.seen.lock().expect("seen")[seen..].to_vec();
    assert!(
        asked.iter().all(|(path, _)| path == "/user"),
        "the run went on past verifying: {asked:?}"
    );
    assert_eq!(bob_records(dir, "work").await, 0);
    let view = dir.golden("work", "waiting_for_owner_account_change").await;
    let NextStep::ConfirmAccountChange {
        previous,
        identity,
        records,
        choices,
    } = &view.next_step
    else {
        panic!("{view:?}");
    };
    assert_eq!(previous, "alice (provider id 1)");
    assert_eq!(identity.display, "bob");
    assert_eq!(*records, 2);
    assert_eq!(choices, &AccountChoice::all());
    let blocked = Some(Blocked::AccountChanged {
        previous: "alice (provider id 1)".into(),
    });
    assert_eq!(view.blocked, blocked);
    let store = sourcebox::store::Store::open(&dir.path).expect("open");
    let keyring = sourcebox::vault::Keyring::unlock(&store, None).expect("unlock");
    let vault = sourcebox::vault::Vault::new(store, keyring);
    let eligible = sourcebox::runs::scheduler::eligible(&vault, "work").expect("eligible");
    assert_eq!(eligible.err(), blocked);
    // A second run is refused before it reaches the provider.
    let seen = fx.seen.lock().expect("seen").len();
    let (ok, out, _) = dir.cli(&["run", "work"], b"").await;
    assert!(!ok && out.contains("failed: account_changed"), "{out}");
    assert_eq!(fx.seen.lock().expect("seen").len(), seen);
}

/// Records of bob's repositories in `source`.
async fn bob_records(dir: &Dir, source: &str) -> usize {
    let json = dir
        .ok(&["records", source, "repositories", "--json"], b"")
        .await;
    serde_json::from_str::<Vec<serde_json::Value>>(&json)
        .expect("records")
        .iter()
        .filter(|r| r.to_string().contains("bob/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_source_of_the_same_account_needs_the_owner_to_confirm() {
    let fx = fixture(vec![]).await;
    let dir = Dir::new(Some(fx.addr)).await;
    for source in ["work", "again"] {
        dir.add_github(source).await;
        dir.ok(
            &["source", "setup", source],
            format!("{ALICE}\n").as_bytes(),
        )
        .await;
    }
    assert_eq!(dir.view("work").await.state, Lifecycle::Ready);
    let view = dir.golden("again", "waiting_for_owner_identity").await;
    assert_eq!(view.state, Lifecycle::WaitingForOwner);
    let NextStep::ConfirmIdentity { identity, existing } = &view.next_step else {
        panic!("{view:?}");
    };
    assert_eq!(
        (identity.display.as_str(), existing.as_str()),
        ("alice", "work")
    );
    let text = dir.ok(&["source", "show", "again"], b"").await;
    assert!(text.contains("already connected as 'work'"), "{text}");
    let confirmed = dir.ok(&["source", "confirm", "again"], b"").await;
    assert!(confirmed.contains("source again: ready"), "{confirmed}");
    // Nothing to confirm any more.
    let (ok, _, err) = dir.cli(&["source", "confirm", "again"], b"").await;
    assert!(!ok && err.contains("no identity to confirm"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_stored_for_one_source_never_sets_up_another() {
    let fx = fixture(vec![]).await;
    let dir = Dir::new(Some(fx.addr)).await;
    for source in ["a", "b"] {
        dir.add_github(source).await;
    }
    // A has a token; B does not, and cannot be verified with A's.
    dir.ok(&["source", "setup", "a"], format!("{ALICE}\n").as_bytes())
        .await;
    assert_eq!(dir.view("a").await.state, Lifecycle::Ready);
    let before = fx.tokens().len();
    let (ok, _, err) = dir.cli(&["source", "verify", "b"], b"").await;
    assert!(!ok && err.contains("credentials_missing"), "{err}");
    let b = dir.view("b").await;
    assert_eq!(b.state, Lifecycle::NeedsCredentials);
    assert!(b.identity.is_none() && !b.credentials[0].stored);
    assert_eq!(
        fx.tokens().len(),
        before,
        "B's verification reached the provider"
    );
    let runs = dir.ok(&["runs", "b", "--json"], b"").await;
    assert!(runs.contains("credentials_missing"), "{runs}");

    // The other direction: B's own token makes B bob; A stays alice, and
    // revoking A's leaves B ready.
    dir.ok(&["source", "setup", "b"], format!("{BOB}\n").as_bytes())
        .await;
    let b = dir.view("b").await;
    assert_eq!(b.state, Lifecycle::Ready, "{b:?}");
    assert_eq!(b.identity.as_ref().map(|i| i.display.as_str()), Some("bob"));
    assert_eq!(
        dir.view("a").await.identity.map(|i| i.display),
        Some("alice".to_owned())
    );
    dir.ok(&["credential", "revoke", "a", "token"], b"").await;
    assert_eq!(dir.view("a").await.state, Lifecycle::NeedsCredentials);
    assert_eq!(dir.view("b").await.state, Lifecycle::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproven_modality_is_offered_only_after_a_recorded_proof() {
    let dir = Dir::new(None).await;
    dir.ok(&["connector", "install", ECHO, "--yes"], b"").await;
    let show = dir.ok(&["connector", "show", "echo", "--json"], b"").await;
    let view: ConnectorView = serde_json::from_str(&show).expect("json");
    assert_eq!(view.modalities.len(), 1);
    assert_eq!(
        (
            view.modalities[0].modality.as_str(),
            view.modalities[0].support.as_str()
        ),
        ("static-secret", "unproven")
    );
    let text = dir.ok(&["connector", "show", "echo"], b"").await;
    assert_eq!(text, sourcebox::cli::render_connector(&view));

    let (ok, _, err) = dir
        .cli(&["source", "add", "x", "--connector", "echo"], b"")
        .await;
    assert!(!ok && err.contains("--allow-unproven"), "{err}");
    let (ok, _, _) = dir.cli(&["source", "show", "x"], b"").await;
    assert!(!ok, "a refused add left a source behind");

    dir.ok(
        &[
            "source",
            "add",
            "x",
            "--connector",
            "echo",
            "--allow-unproven",
        ],
        b"",
    )
    .await;
    dir.ok(&["source", "setup", "x"], b"echo-token\n").await;
    assert_eq!(dir.view("x").await.state, Lifecycle::Ready);
    // Verified is not yet proven: a first collection must succeed.
    let (ok, _, _) = dir
        .cli(&["source", "add", "y", "--connector", "echo"], b"")
        .await;
    assert!(!ok);
    dir.ok(&["run", "x"], b"").await;
    let show = dir.ok(&["connector", "show", "echo", "--json"], b"").await;
    let view: ConnectorView = serde_json::from_str(&show).expect("json");
    assert_eq!(view.modalities[0].support, "proven");
    assert!(
        view.modalities[0]
            .evidence
            .as_deref()
            .is_some_and(|e| e.contains("collected in run")),
        "{view:?}"
    );
    dir.ok(&["source", "add", "y", "--connector", "echo"], b"")
        .await;

    // GitHub ships with its static-secret proof.
    let show = dir
        .ok(&["connector", "show", "github", "--json"], b"")
        .await;
    let view: ConnectorView = serde_json::from_str(&show).expect("json");
    assert_eq!(view.modalities[0].support, "proven");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_run_and_a_sandbox_failure_show_as_their_own_states() {
    let fx = fixture(vec![]).await;
    let dir = Dir::new(Some(fx.addr)).await;
    let api = format!("api_base_url=http://{}", fx.addr);
    dir.add_github("work").await;
    dir.ok(
        &["source", "setup", "work"],
        format!("{ALICE}\n").as_bytes(),
    )
    .await;
    // The provider revokes the token on its side: the next run gets 401.
    fx.revoked.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, _, err) = dir.cli(&["run", "work"], b"").await;
    assert!(!ok && err.contains("auth_rejected"), "{err}");
    let view = dir.golden("work", "needs_reauth").await;
    assert_eq!(view.state, Lifecycle::NeedsReauth);

    // https is required for the API URL unless the address is allowed, and
    // a public-looking https URL that resolves to loopback is refused at
    // egress: a failure new credentials would not fix.
    let strict = Dir::new(None).await;
    let (ok, _, err) = strict
        .cli(
            &[
                "source",
                "add",
                "plain",
                "--connector",
                "github",
                "--set",
                &api,
            ],
            b"",
        )
        .await;
    assert!(!ok && err.contains("must be an https URL"), "{err}");
    strict
        .ok(
            &[
                "source",
                "add",
                "local",
                "--connector",
                "github",
                "--set",
                "api_base_url=https://127.0.0.1:9",
            ],
            b"",
        )
        .await;
    strict
        .ok(
            &["credential", "set", "local", "token", "--class", "token"],
            ALICE.as_bytes(),
        )
        .await;
    let (ok, _, err) = strict.cli(&["source", "verify", "local"], b"").await;
    assert!(!ok && err.contains("egress_denied"), "{err}");
    let view = strict.golden("local", "failed").await;
    assert!(
        matches!(&view.next_step, NextStep::Inspect { failure, .. } if failure == "egress_denied"),
        "{view:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_that_asks_for_a_new_host_waits_for_approval_and_the_old_version_keeps_running()
{
    let (addr, seen) = common::fixture_server().await;
    let dir = Dir::new(Some(addr)).await;
    let to_localhost = || {
        seen.lock()
            .expect("seen")
            .iter()
            .filter(|head| head.to_ascii_lowercase().contains("\nhost: localhost"))
            .count()
    };
    let last_connector = |runs: String| {
        let runs: Vec<serde_json::Value> = serde_json::from_str(&runs).expect("runs");
        runs[0]["connector"].as_str().unwrap_or("").to_owned()
    };
    dir.ok(&["connector", "install", ECHO, "--yes"], b"").await;
    dir.add_echo("x", &format!("http://{addr}/page")).await;
    dir.ok(&["run", "x"], b"").await;
    assert_eq!(dir.view("x").await.state, Lifecycle::Ready);

    let installed = dir
        .ok(&["connector", "install", ECHO_NEXT, "--yes"], b"")
        .await;
    assert!(
        installed.contains("source x needs approval to move from 0.1.0 to 0.2.0")
            && installed.contains("new credential 'api_key' (token)")
            && installed.contains("new network host localhost"),
        "{installed}"
    );
    let view = dir.golden("x", "needs_approval").await;
    assert_eq!(view.state, Lifecycle::NeedsApproval);
    assert!(matches!(
        &view.next_step,
        NextStep::ApproveUpgrade { from, to, meanwhile, .. }
            if from == "0.1.0" && to == "0.2.0" && *meanwhile == catalog::Meanwhile::KeepRunning
    ));

    // Until approved, runs go on with 0.1.0 and nothing reaches the new host.
    dir.ok(&["run", "x"], b"").await;
    assert_eq!(
        last_connector(dir.ok(&["runs", "x", "--json"], b"").await),
        "echo 0.1.0"
    );
    assert_eq!(to_localhost(), 0, "the unapproved host was reached");

    let approved = dir
        .ok(&["connector", "approve", "echo", "--source", "x"], b"")
        .await;
    assert!(
        approved.contains("source x now runs echo 0.2.0"),
        "{approved}"
    );
    assert_eq!(dir.view("x").await.state, Lifecycle::Ready);
    dir.ok(&["run", "x"], b"").await;
    assert_eq!(
        last_connector(dir.ok(&["runs", "x", "--json"], b"").await),
        "echo 0.2.0"
    );
    assert!(to_localhost() >= 1, "the approved host was not reached");
    let (ok, _, err) = dir.cli(&["connector", "approve", "echo"], b"").await;
    assert!(
        !ok && err.contains("no source has an upgrade of echo waiting"),
        "{err}"
    );

    // A source added after the install runs the new version at once.
    dir.ok(
        &[
            "source",
            "add",
            "y",
            "--connector",
            "echo",
            "--allow-unproven",
        ],
        b"",
    )
    .await;
    assert_eq!(dir.view("y").await.connector.as_deref(), Some("echo 0.2.0"));

    // 0.2.0 also offers OAuth and browser login, unproven; chosen anyway,
    // each names its own next step.
    for (source, modality, golden) in [
        ("viaoauth", "oauth", "needs_authorization"),
        ("viabrowser", "browser-login", "needs_browser_login"),
    ] {
        let (ok, _, err) = dir
            .cli(
                &[
                    "source",
                    "add",
                    source,
                    "--connector",
                    "echo",
                    "--modality",
                    modality,
                ],
                b"",
            )
            .await;
        assert!(!ok && err.contains("unproven"), "{err}");
        dir.ok(
            &[
                "source",
                "add",
                source,
                "--connector",
                "echo",
                "--modality",
                modality,
                "--allow-unproven",
            ],
            b"",
        )
        .await;
        let view = dir.golden(source, golden).await;
        assert_eq!(view.modality.as_deref(), Some(modality));
    }
    // A session that is not kept past a run is for browser login only.
    let ephemeral = |modality: &'static str| {
        [
            "source",
            "add",
            "once",
            "--connector",
            "echo",
            "--modality",
            modality,
            "--allow-unproven",
            "--ephemeral-session",
        ]
    };
    let (ok, _, err) = dir.cli(&ephemeral("static-secret"), b"").await;
    assert!(
        !ok && err.contains("an ephemeral session is for browser login"),
        "{err}"
    );
    dir.ok(&ephemeral("browser-login"), b"").await;
    let view = dir.view("once").await;
    assert_eq!(view.session.as_deref(), Some("ephemeral"));
    assert_eq!(view.state, Lifecycle::NeedsBrowserLogin);
    let (ok, _, err) = dir
        .cli(
            &[
                "source",
                "add",
                "z",
                "--connector",
                "echo",
                "--modality",
                "carrier-pigeon",
                "--allow-unproven",
            ],
            b"",
        )
        .await;
    assert!(
        !ok && err.contains("cannot be set up with 'carrier-pigeon'"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_can_pause_sources_until_an_upgrade_is_approved() {
    let (addr, _seen) = common::fixture_server().await;
    let dir = Dir::new(Some(addr)).await;
    dir.ok(&["connector", "install", ECHO, "--yes"], b"").await;
    for name in ["x", "y"] {
        dir.add_echo(name, &format!("http://{addr}/page")).await;
    }
    let runs_of = |name: &'static str| {
        let dir = &dir;
        async move {
            let runs = dir.ok(&["runs", name, "--json"], b"").await;
            serde_json::from_str::<Vec<serde_json::Value>>(&runs).expect("runs")
        }
    };
    let before = runs_of("x").await.len();

    let installed = dir
        .ok(
            &[
                "connector",
                "install",
                ECHO_NEXT,
                "--yes",
                "--pause-until-approved",
            ],
            b"",
        )
        .await;
    assert!(
        installed.contains(
            "source x needs approval to move from 0.1.0 to 0.2.0; it is paused until then"
        ),
        "{installed}"
    );
    let view = dir.view("x").await;
    assert_eq!(view.state, Lifecycle::NeedsApproval);
    assert!(
        matches!(&view.next_step, NextStep::ApproveUpgrade { meanwhile, .. } if *meanwhile == catalog::Meanwhile::Pause),
        "{view:?}"
    );
    let shown = dir.ok(&["source", "show", "x"], b"").await;
    assert!(
        shown.contains("until then the source is paused: no run starts"),
        "{shown}"
    );

    // No run starts: not manual, not scheduled, not a verification.
    let (ok, _, err) = dir.cli(&["run", "x"], b"").await;
    assert!(
        !ok && err.contains("source 'x' is paused until the owner approves echo 0.2.0")
            && err.contains("sourcebox connector approve echo --source x"),
        "{err}"
    );
    let (ok, _, err) = dir.cli(&["source", "verify", "x"], b"").await;
    assert!(!ok && err.contains("is paused"), "{err}");
    assert_eq!(runs_of("x").await.len(), before, "a paused source ran");
    {
        let store = sourcebox::store::Store::open(&dir.path).expect("open");
        let keyring = sourcebox::vault::Keyring::unlock(&store, None).expect("unlock");
        let vault = sourcebox::vault::Vault::new(store, keyring);
        let eligible = sourcebox::runs::scheduler::eligible(&vault, "x").expect("eligible");
        assert_eq!(
            eligible,
            Err(Blocked::Paused {
                version: "0.2.0".into()
            })
        );
    }

    // Approving one source resumes it on the new version; the other stays
    // paused.
    dir.ok(&["connector", "approve", "echo", "--source", "x"], b"")
        .await;
    dir.ok(&["run", "x"], b"").await;
    assert_eq!(runs_of("x").await[0]["connector"], "echo 0.2.0");
    let (ok, _, err) = dir.cli(&["run", "y"], b"").await;
    assert!(!ok && err.contains("source 'y' is paused"), "{err}");
    assert_eq!(dir.view("y").await.state, Lifecycle::NeedsApproval);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_waiting_for_an_answer_puts_the_source_in_waiting_for_owner() {
    let dir = Dir::new(None).await;
    dir.ok(&["connector", "install", ECHO, "--yes"], b"").await;
    dir.ok(
        &[
            "source",
            "add",
            "bank",
            "--connector",
            "echo",
            "--allow-unproven",
            "--set",
            "ask=otp",
        ],
        b"",
    )
    .await;
    dir.ok(&["source", "setup", "bank"], b"bank-token\n").await;
    dir.ok(
        &[
            "source",
            "add",
            "other",
            "--connector",
            "echo",
            "--allow-unproven",
        ],
        b"",
    )
    .await;
    dir.ok(&["source", "setup", "other"], b"other-token\n")
        .await;
    // `sourcebox run` waits for the answer in its own process.
    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir").arg(&dir.path).args(["run", "bank"]);
    let run = tokio::task::spawn_blocking(move || common::run(cmd, b""));
    let started = std::time::Instant::now();
    let view = loop {
        let view = dir.view("bank").await;
        if view.state == Lifecycle::WaitingForOwner {
            break view;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(90),
            "the run never asked: {view:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let NextStep::AnswerInteraction { id, kind, prompt } = &view.next_step else {
        panic!("{view:?}");
    };
    // Another source's view does not show bank's question (checked once
    // the run is answered, so a failure does not leave it waiting).
    let other = dir.view("other").await;
    assert_eq!(
        (kind.as_str(), prompt.as_str()),
        ("otp", "Enter the one-time code sent to you")
    );
    let text = dir.ok(&["source", "show", "bank"], b"").await;
    assert_eq!(text, sourcebox::cli::render_source(&view));
    assert!(
        text.contains(&format!("sourcebox interaction answer {id}")),
        "{text}"
    );
    dir.ok(&["interaction", "answer", id], b"424242").await;
    let out = run.await.expect("join");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(dir.view("bank").await.state, Lifecycle::Ready);
    assert_eq!(other.state, Lifecycle::Ready, "{other:?}");
    assert_eq!(other.next_step, NextStep::None, "{other:?}");
}
