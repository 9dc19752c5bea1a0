//! The launch seam against real components: owner interactions, retries,
//! re-auth, cancellation, refusals and eligibility. Runs go through
//! `Launcher`, the scheduler's queue and the real `sourcebox` binary; the
//! GitHub connector talks to a scripted loopback fixture.

use crate::common;

use std::net::SocketAddr;

use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use std::time::Duration;

use common::{local_vault, set};

use sourcebox::catalog;

use sourcebox::events::EventKind;

use sourcebox::interactions;

use sourcebox::runs::scheduler::{self, Schedule, SchedulerConfig};

use sourcebox::runs::{self, LaunchConfig, Launcher, RetryPolicy, RunRecord, Trigger};

use sourcebox::runtime::Runtime;

use sourcebox::store::Store;

use sourcebox::vault::{Actor, Secret, Vault, VaultError};

const ECHO: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");

const ECHO_NEXT: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO_NEXT");

const HOSTILE: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_HOSTILE");

use common::{ALICE, BOB, REJECTED, fixture};

/// FNV-1a, as the echo fixture fingerprints values.
fn fingerprint(value: &str) -> String {
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Polls `f` every 50 ms until it returns `Some`, for up to `secs`.
async fn until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A data directory with github and the echo fixture installed, and a
/// launcher over it.
struct Host {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    launcher: Arc<Launcher>,
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

async fn host(config: LaunchConfig) -> Host {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let vault = local_vault(&dir);
    let runtime = Runtime::new(&cache_dir()).expect("runtime");
    catalog::install_first_party(vault.store(), &runtime)
        .await
        .expect("first party");
    let echo = std::fs::read(ECHO).expect("echo component");
    let loaded = runtime.load(&echo).await.expect("load echo");
    catalog::install(
        vault.store(),
        &echo,
        loaded.api_version(),
        loaded.manifest(),
    )
    .expect("install echo");
    let hostile = std::fs::read(HOSTILE).expect("hostile component");
    let loaded = runtime.load(&hostile).await.expect("load hostile");
    catalog::install(
        vault.store(),
        &hostile,
        loaded.api_version(),
        loaded.manifest(),
    )
    .expect("install hostile");
    let launcher = Launcher::new(runtime, Arc::new(Mutex::new(vault)), config).expect("launcher");
    Host {
        _tmp: tmp,
        dir,
        launcher: Arc::new(launcher),
    }
}

fn config(allow: &[SocketAddr]) -> LaunchConfig {
    LaunchConfig {
        egress_allow: allow.to_vec(),
        retry: RetryPolicy {
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_attempts: 4,
        },
        interaction_wait: Duration::from_secs(30),
        poll: Duration::from_millis(50),
        ..LaunchConfig::default()
    }
}

impl Host {
    fn vault(&self) -> std::sync::MutexGuard<'_, Vault> {
        self.launcher.vault().lock().expect("vault lock")
    }

    fn add(&self, name: &str, connector: &str, setup: &[(&str, &str)], token: Option<&str>) {
        let vault = self.vault();
        let values: Vec<(String, String)> = setup
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let allow: Vec<SocketAddr> = self.launcher.config().egress_allow.clone();
        let added = catalog::add_source(
            vault.store(),
            name,
            connector,
            &values,
            catalog::AddOptions {
                allow_unproven: true,
                egress_allow: &allow,
                ..Default::default()
            },
        )
        .expect("add");
        if let Some(token) = token {
            set(&vault, &added.source, "token", token.as_bytes());
        }
    }

    fn runs(&self, source: &str) -> Vec<RunRecord> {
        let mut runs = runs::list(self.vault().store(), Some(source)).expect("runs");
        runs.reverse();
        runs
    }

    fn records(&self, source: &str, stream: &str) -> Vec<serde_json::Value> {
        let vault = self.vault();
        let mut stmt = vault
            .store()
            .conn()
            .prepare("SELECT r.data FROM records r JOIN sources s ON s.id = r.source_id WHERE s.name = ?1 AND r.stream = ?2 ORDER BY r.key")
            .expect("query");
        stmt.query_map([source, stream], |r| r.get::<_, String>(0))
            .expect("rows")
            .map(|d| serde_json::from_str(&d.expect("row")).expect("json"))
            .collect()
    }

    /// (actor, action, source, run) of every audit row.
    fn audit(&self) -> Vec<(String, String, Option<String>, Option<String>)> {
        let vault = self.vault();
        let mut stmt = vault
            .store()
            .conn()
            .prepare("SELECT actor, action, source, run_id FROM audit ORDER BY seq")
            .expect("audit");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("audit rows")
    }

    /// `sourcebox --data-dir DIR ARGS` as another process would run it.
    async fn cli(&self, args: &[&str], stdin: &[u8]) -> (bool, String) {
        let mut cmd = common::sourcebox();
        cmd.arg("--data-dir").arg(&self.dir).args(args);
        let stdin = stdin.to_vec();
        let out = tokio::task::spawn_blocking(move || common::run(cmd, &stdin))
            .await
            .expect("join");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Host {
    /// Gives every run of the hostile fixture `secs` of time.
    fn hostile_time(&self, secs: u64) {
        catalog::set_connector_limits(
            self.vault().store(),
            "hostile",
            &catalog::LimitOverrides {
                time_secs: Some(secs),
                ..Default::default()
            },
        )
        .expect("limits");
    }

    /// A source of the hostile fixture that tries `attack` (on `target`),
    /// an account of its own (the fixture tells accounts apart by token;
    /// two sources of one account would wait for the owner to confirm the
    /// second).
    fn add_hostile(&self, name: &str, attack: &str, target: &str) {
        self.add(
            name,
            "hostile",
            &[("attack", attack), ("target", target)],
            Some(&format!("t-{name}")),
        );
    }

    /// The interactions of `source`'s runs, oldest first.
    fn interactions(&self, source: &str) -> Vec<interactions::Interaction> {
        interactions::list(self.vault().store(), true)
            .expect("interactions")
            .into_iter()
            .filter(|i| i.source == source)
            .collect()
    }
}

/// How late past its limit a stopped run may end.
const STOP_WITHIN: Duration = Duration::from_millis(100);

async fn host_with_wall(wall: Duration) -> Host {
    host(LaunchConfig {
        interaction_wait: Duration::from_secs(3600),
        limits: sourcebox::runtime::Limits {
            wall,
            ..Default::default()
        },
        ..config(&[])
    })
    .await
}

/// The resident memory of `pid` now, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `sourcebox run SOURCE` in its own process, for a run that waits out its
/// time limit of 2 s; the most resident memory it had in its second
/// second, when the run holds all it will hold and starting up is over.
async fn run_measured(host: &Host, source: &str) -> u64 {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sourcebox"));
    cmd.arg("--data-dir")
        .arg(&host.dir)
        .args(["run", source])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let mut most = 0;
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(1)
            && let Some(rss) = rss(child.id())
        {
            most = most.max(rss);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most > 0, "no reading of {source}'s run");
    most
}

/// The pending interaction of `source`, once its run asked.
async fn pending(host: &Host, source: &str) -> interactions::Interaction {
    until(60, "the interaction", || {
        let store = Store::open(&host.dir).expect("open");
        interactions::list(&store, false)
            .expect("list")
            .into_iter()
            .find(|i| i.source == source)
    })
    .await
}

/// Runs the scheduler until `done` holds for the source's runs.
async fn schedule_until(host: &Host, source: &str, done: impl Fn(&[RunRecord]) -> bool) {
    let shutdown = async {
        until(60, "the runs", || done(&host.runs(source)).then_some(())).await;
    };
    scheduler::run(
        Arc::clone(&host.launcher),
        SchedulerConfig {
            tick: Duration::from_millis(50),
            ..SchedulerConfig::default()
        },
        shutdown,
    )
    .await
    .expect("scheduler");
}

/// A `sourcebox serve` child process.
struct Serve(Option<std::process::Child>);

impl Serve {
    fn start(dir: &Path, allow: Option<SocketAddr>, env: &[(&str, Option<&str>)]) -> Self {
        let mut cmd = common::sourcebox();
        cmd.arg("--data-dir").arg(dir);
        if let Some(addr) = allow {
            cmd.arg("--egress-allow").arg(addr.to_string());
        }
        // Port 0: tests run side by side.
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tick",
            "100ms",
            "--grace",
            "5s",
        ]);
        for (key, value) in env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn serve");
        Self(Some(child))
    }

    /// SIGTERM, then the output.
    fn stop(mut self) -> String {
        let child = self.0.take().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "serve failed: {out:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn runs_of(dir: &Path, source: &str) -> Vec<RunRecord> {
    let store = Store::open(dir).expect("open");
    let mut runs = runs::list(&store, Some(source)).expect("runs");
    runs.reverse();
    runs
}

/// `sourcebox --data-dir DIR ARGS` with `stdin`; panics unless it succeeds.
async fn cli_ok(dir: &Path, allow: Option<SocketAddr>, args: &[&str], stdin: &[u8]) -> String {
    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir").arg(dir);
    if let Some(addr) = allow {
        cmd.arg("--egress-allow").arg(addr.to_string());
    }
    cmd.args(args).env("GITHUB_TOKEN", BOB).env("GH_TOKEN", BOB);
    let stdin = stdin.to_vec();
    let out = tokio::task::spawn_blocking(move || common::run(cmd, &stdin))
        .await
        .expect("join");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

/// A data directory with the echo fixture installed and source `name`
/// (setup `setting`, a token stored) scheduled hourly and due now.
async fn echo_source_due_now(dir: &Path, name: &str, setting: &str) {
    cli_ok(dir, None, &["init"], b"").await;
    cli_ok(dir, None, &["connector", "install", ECHO, "--yes"], b"").await;
    let add = [
        "source",
        "add",
        name,
        "--connector",
        "echo",
        "--allow-unproven",
        "--set",
        setting,
    ];
    cli_ok(dir, None, &add, b"").await;
    let set = ["credential", "set", name, "token", "--class", "token"];
    cli_ok(dir, None, &set, b"t0k3n").await;
    cli_ok(
        dir,
        None,
        &["source", "schedule", name, "--every", "1h"],
        b"",
    )
    .await;
    Store::open(dir)
        .expect("open")
        .conn()
        .execute("UPDATE schedules SET next_at = 0", [])
        .expect("due");
}

mod launch;
mod limits;
mod questions;
mod schedules;
mod serve;
