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

/// Each hostile run that waits inside the host — a sleep, a request never
/// answered, a body trickled a byte at a time — ends at its time limit
/// with `resource_exhausted`, within 100 ms of it, while a run of another
/// source goes on beside it; the hung connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_wait_inside_the_host_end_at_their_time_limit() {
    let (hung, hung_open) = common::stalling_server(false).await;
    let (trickling, trickling_open) = common::stalling_server(true).await;
    let host = host(config(&[hung, trickling])).await;
    host.hostile_time(1);
    host.add("neighbour", "echo", &[("count", "2")], Some("t"));
    host.add_hostile("sleeper", "sleep", "");
    host.add_hostile("hung", "http-wait", &format!("http://{hung}/"));
    host.add_hostile("trickled", "http-wait", &format!("http://{trickling}/"));
    for source in ["sleeper", "hung", "trickled"] {
        let started = std::time::Instant::now();
        let (hostile, neighbour) = tokio::join!(
            host.launcher.launch(source, Trigger::Manual),
            host.launcher.launch("neighbour", Trigger::Manual),
        );
        let took = started.elapsed();
        let hostile = hostile.expect("launch");
        assert_eq!(hostile.state, "failed", "{source}: {hostile:?}");
        assert_eq!(
            hostile.failure.as_deref(),
            Some("resource_exhausted"),
            "{source}: {hostile:?}"
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(1) + STOP_WITHIN,
            "{source} ended after {took:?}"
        );
        let neighbour = neighbour.expect("launch");
        assert_eq!(neighbour.state, "succeeded", "{neighbour:?}");
    }
    for (what, open) in [("hung", hung_open), ("trickled", trickling_open)] {
        until(5, "the abandoned connection to close", || {
            (open.now() == 0).then_some(())
        })
        .await;
        let _ = what;
    }
}

/// A guest asking for hour-long HTTP timeouts gets the host's: a request
/// never answered ends with a read timeout at the host's first-byte limit,
/// and the connector hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_cannot_raise_the_hosts_http_timeouts() {
    let (hung, _) = common::stalling_server(false).await;
    let host = host(LaunchConfig {
        limits: sourcebox::runtime::Limits {
            http_first_byte_timeout: Duration::from_millis(300),
            ..Default::default()
        },
        ..config(&[hung])
    })
    .await;
    host.add_hostile("patient", "http-options", &format!("http://{hung}/"));
    let started = std::time::Instant::now();
    let record = host
        .launcher
        .launch("patient", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(
        record.failure.as_deref(),
        Some("connector_fatal"),
        "{record:?}"
    );
    let detail = record.detail.unwrap_or_default();
    assert!(
        detail.contains("ended: ErrorCode::ConnectionReadTimeout"),
        "{detail}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Cancelling a run that waits inside the host ends it at once: from this
/// process within 100 ms, from another (the CLI) within its poll and that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_sleeping_run_at_once() {
    let host = host(config(&[])).await;
    host.add_hostile("sleeper", "sleep", "");
    for from_cli in [false, true] {
        let launcher = Arc::clone(&host.launcher);
        let run = tokio::spawn(async move { launcher.launch("sleeper", Trigger::Manual).await });
        let id = until(60, "the run to start", || {
            host.runs("sleeper")
                .into_iter()
                .find(|r| r.state == "running")
                .map(|r| r.id)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = if from_cli {
            let (ok, out) = host.cli(&["cancel", &id], b"").await;
            assert!(ok, "{out}");
            std::time::Instant::now()
        } else {
            let asked = std::time::Instant::now();
            host.launcher.cancel(&id).expect("cancel");
            asked
        };
        let record = run.await.expect("join").expect("launch");
        let took = asked.elapsed();
        assert_eq!(record.state, "cancelled", "{record:?}");
        // The CLI's request is seen at the run's next look (every 50 ms).
        let within = STOP_WITHIN
            + if from_cli {
                Duration::from_millis(50)
            } else {
                Duration::ZERO
            };
        assert!(
            took < within,
            "cancelled from the CLI: {from_cli}; ended {took:?} after"
        );
    }
}

/// A run may ask the owner only so many questions; and its wall clock,
/// waits for the owner included, ends it however patient the question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_are_bounded_and_waiting_for_the_owner_counts_toward_the_wall_clock() {
    let host = host(LaunchConfig {
        interaction_wait: Duration::from_millis(100),
        ..config(&[])
    })
    .await;
    host.add_hostile("asker", "ask-loop", "");
    let record = host
        .launcher
        .launch("asker", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(
        record.failure.as_deref(),
        Some("resource_exhausted"),
        "{record:?}"
    );
    assert!(
        record
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("Questions"),
        "{record:?}"
    );
    let asked = host.interactions("asker");
    let limit = sourcebox::runtime::Limits::default().questions as usize;
    assert_eq!(asked.len(), limit, "{asked:#?}");
    assert!(asked.iter().all(|i| i.state == "expired"), "{asked:#?}");

    // An hour to answer, but 800 ms of wall clock for the run.
    let wall = Duration::from_millis(800);
    let host = host_with_wall(wall).await;
    host.add_hostile("asker", "ask-loop", "");
    let started = std::time::Instant::now();
    let record = host
        .launcher
        .launch("asker", Trigger::Manual)
        .await
        .expect("launch");
    let took = started.elapsed();
    assert_eq!(
        record.failure.as_deref(),
        Some("resource_exhausted"),
        "{record:?}"
    );
    assert!(took >= wall && took < wall + STOP_WITHIN, "{took:?}");
    // The question the run was waiting on is closed, not left pending.
    let asked = host.interactions("asker");
    assert_eq!(asked.len(), 1, "{asked:#?}");
    assert_eq!(asked[0].state, "expired");
}

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

/// With two slots and two hostile sources that sleep on every run, another
/// source's scheduled runs still complete on schedule: each sleeping run
/// ends at its time limit and frees its slot, and the other connector
/// takes its share of the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_runs_do_not_starve_the_scheduler() {
    let host = host(config(&[])).await;
    host.hostile_time(1);
    host.add_hostile("sleeper1", "sleep", "");
    host.add_hostile("sleeper2", "sleep", "");
    host.add("neighbour", "echo", &[("count", "1")], Some("t"));
    for source in ["sleeper1", "sleeper2", "neighbour"] {
        scheduler::set_schedule(
            host.vault().store(),
            source,
            Some(Schedule::Every(Duration::from_secs(60))),
        )
        .expect("schedule");
    }
    // Every schedule comes due at 0, 1, 2, 3, 4 and 5 s (a schedule is at
    // least a minute apart; the clock is moved, not waited for).
    let window = async {
        for _ in 0..6 {
            host.vault()
                .store()
                .conn()
                .execute("UPDATE schedules SET next_at = 0", [])
                .expect("due");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    scheduler::run(
        Arc::clone(&host.launcher),
        SchedulerConfig {
            tick: Duration::from_millis(50),
            max_concurrent: 2,
            per_connector: 2,
            grace: Duration::from_secs(5),
        },
        window,
    )
    .await
    .expect("scheduler");
    let succeeded = host
        .runs("neighbour")
        .iter()
        .filter(|r| r.state == "succeeded")
        .count();
    // Due at 1, 2, 3, 4 and 5 s: one may be late.
    assert!(succeeded >= 4, "{:#?}", host.runs("neighbour"));
    for source in ["sleeper1", "sleeper2"] {
        let runs = host.runs(source);
        assert!(!runs.is_empty());
        for run in runs.iter().filter(|r| r.finished()) {
            assert_eq!(
                run.failure.as_deref(),
                Some("resource_exhausted"),
                "{run:?}"
            );
            let took = run.finished_at.expect("finished") - run.started_at;
            assert!(took < 1_000 + STOP_WITHIN.as_millis() as i64, "{run:?}");
        }
    }
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

/// What a run can make the host keep is bounded: a run that keeps every
/// header map it can while it waits takes the host's memory up by less
/// than its guest memory limit and the host's allowance for it, measured
/// against a run that only waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pinning_host_memory_stays_within_its_allowance() {
    let host = host(config(&[])).await;
    let guest_memory = 64u64 << 20;
    catalog::set_connector_limits(
        host.vault().store(),
        "hostile",
        &catalog::LimitOverrides {
            time_secs: Some(2),
            memory_bytes: Some(guest_memory),
            ..Default::default()
        },
    )
    .expect("limits");
    host.add_hostile("calm", "sleep", "");
    // As many header maps as the run's resource table holds, less a few
    // for what else the run keeps there.
    let maps = sourcebox::runtime::MAX_RESOURCES - 16;
    host.add_hostile("hog", "fields-hold", &maps.to_string());
    // The first run in a process of its own compiles the connector into
    // the data directory; the measured ones load that compiled copy.
    run_measured(&host, "calm").await;
    let calm = run_measured(&host, "calm").await;
    let hog = run_measured(&host, "hog").await;
    let grown = hog.saturating_sub(calm);
    println!(
        "RSS: waiting {} MiB, keeping {maps} header maps {} MiB, grown {:.1} MiB; allowance {} MiB",
        calm >> 20,
        hog >> 20,
        grown as f64 / f64::from(1 << 20),
        sourcebox::runtime::HOST_ALLOWANCE >> 20
    );
    let hog_run = host.runs("hog").pop().expect("run");
    assert_eq!(
        hog_run.failure.as_deref(),
        Some("resource_exhausted"),
        "{hog_run:?}"
    );
    assert!(
        grown < guest_memory + sourcebox::runtime::HOST_ALLOWANCE as u64,
        "grown by {grown} bytes"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otp_question_waits_for_the_owner_and_the_run_resumes() {
    let host = host(config(&[])).await;
    host.add("bank", "echo", &[("ask", "otp")], Some("bank-token"));
    let mut events = host.launcher.events().subscribe();
    let launcher = Arc::clone(&host.launcher);
    let run = tokio::spawn(async move { launcher.launch("bank", Trigger::Manual).await });

    let asked = pending(&host, "bank").await;
    assert_eq!(asked.kind, "otp");
    assert_eq!(asked.prompt, "Enter the one-time code sent to you");
    let waiting = runs::find(&Store::open(&host.dir).expect("open"), &asked.run).expect("run");
    assert_eq!(waiting.state, "waiting_for_owner");

    // The owner answers from another process, on standard input.
    let code = "otp-824613-canary";
    let (ok, out) = host
        .cli(&["interaction", "answer", &asked.id], code.as_bytes())
        .await;
    assert!(ok, "{out}");
    assert!(!out.contains(code), "the answer was echoed: {out}");

    let record = run.await.expect("join").expect("launch");
    assert_eq!(record.state, "succeeded", "{record:?}");
    assert_eq!(
        host.records("bank", "answers"),
        vec![serde_json::json!({"kind": "otp", "fingerprint": fingerprint(code)})]
    );
    let store = Store::open(&host.dir).expect("open");
    assert_eq!(
        interactions::find(&store, &asked.id).expect("find").state,
        "answered"
    );
    let left: i64 = store
        .conn()
        .query_row("SELECT COUNT(*) FROM interaction_answers", [], |r| r.get(0))
        .expect("count");
    assert_eq!(left, 0, "the sealed answer outlived its use");
    let audit = host.audit();
    for action in ["interaction.answer", "interaction.read"] {
        assert!(
            audit
                .iter()
                .any(|(_, a, s, _)| a == action && s.as_deref() == Some("bank")),
            "no {action} audit row"
        );
    }

    // The events tell the story, and none carries the answer.
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        assert_eq!(event.source, "bank");
        let text = serde_json::to_string(&event).expect("json");
        assert!(!text.contains(code), "the answer reached an event: {text}");
        seen.push(event.kind);
    }
    let states: Vec<&str> = seen
        .iter()
        .filter_map(|k| match k {
            EventKind::State { state, .. } => Some(state.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        ["running", "waiting_for_owner", "running", "succeeded"]
    );
    assert!(seen.iter().any(
        |k| matches!(k, EventKind::Interaction { id, kind, .. } if *id == asked.id && kind == "otp")
    ));
    assert!(seen.iter().any(|k| matches!(k, EventKind::Progress { .. })));

    // Nothing on disk holds the answer in any form.
    for (path, bytes) in common::files_under(&host.dir) {
        common::assert_no_leak(code.as_bytes(), &bytes, &path.display().to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_question_fails_the_run_with_interaction_timeout() {
    let host = host(LaunchConfig {
        interaction_wait: Duration::from_secs(1),
        ..config(&[])
    })
    .await;
    host.add("bank", "echo", &[("ask", "otp")], Some("bank-token"));
    let record = host
        .launcher
        .launch("bank", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(record.state, "failed");
    assert_eq!(record.failure.as_deref(), Some("interaction_timeout"));
    let store = Store::open(&host.dir).expect("open");
    let all = interactions::list(&store, true).expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, "expired");
    // Too late: the answer is refused and nothing is stored.
    let (ok, out) = host
        .cli(&["interaction", "answer", &all[0].id], b"123456")
        .await;
    assert!(!ok && out.contains("not waiting for an answer"), "{out}");
    assert!(host.records("bank", "answers").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_for_one_source_never_reaches_another() {
    let host = host(config(&[])).await;
    host.add("a", "echo", &[("ask", "otp")], Some("token-a"));
    host.add("b", "echo", &[("ask", "otp")], Some("token-b"));
    let runs: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|source| {
            let launcher = Arc::clone(&host.launcher);
            tokio::spawn(async move { launcher.launch(source, Trigger::Manual).await })
        })
        .collect();
    let asked_a = pending(&host, "a").await;
    let asked_b = pending(&host, "b").await;

    // Answering A's interaction as source B is refused.
    {
        let vault = host.vault();
        let b = vault.store().source("b").expect("b");
        let refused = vault.answer_interaction(
            Actor::OWNER_CLI,
            &b,
            &asked_a.id,
            &Secret::from_slice(b"wrong-source"),
        );
        assert!(
            matches!(refused, Err(VaultError::Invalid(_))),
            "{refused:?}"
        );
    }
    // A's answer reaches A's run only; B keeps waiting for its own.
    let (ok, out) = host
        .cli(&["interaction", "answer", &asked_a.id], b"code-for-a")
        .await;
    assert!(ok, "{out}");
    let mut runs = runs.into_iter();
    let run_a = runs.next().expect("a").await.expect("join").expect("a");
    assert_eq!(run_a.state, "succeeded");
    let still =
        interactions::find(&Store::open(&host.dir).expect("open"), &asked_b.id).expect("find b");
    assert_eq!(still.state, "pending");
    let (ok, out) = host
        .cli(&["interaction", "answer", &asked_b.id], b"code-for-b")
        .await;
    assert!(ok, "{out}");
    let run_b = runs.next().expect("b").await.expect("join").expect("b");
    assert_eq!(run_b.state, "succeeded");
    assert_eq!(
        host.records("a", "answers")[0]["fingerprint"],
        fingerprint("code-for-a")
    );
    assert_eq!(
        host.records("b", "answers")[0]["fingerprint"],
        fingerprint("code-for-b")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_answer_moved_to_another_source_does_not_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(&tmp.path().join("data"));
    let a = vault.store().add_source("a").expect("a");
    let b = vault.store().add_source("b").expect("b");
    let conn = vault.store().conn();
    conn.execute_batch(&format!(
        "INSERT INTO runs (id, source_id, trigger, state, started_at) VALUES ('r', {}, 'manual', 'waiting_for_owner', 0);
         INSERT INTO interactions (id, run_id, source_id, kind, prompt, state, created_at, deadline)
             VALUES ('i', 'r', {}, 'otp', 'code?', 'pending', 0, 9999999999999);",
        a.source_id, a.source_id
    ))
    .expect("rows");
    vault
        .answer_interaction(Actor::OWNER_CLI, &a, "i", &Secret::from_slice(b"000111"))
        .expect("answer");
    conn.execute(
        "UPDATE interaction_answers SET source_id = ?1",
        [b.source_id],
    )
    .expect("move");
    let moved = vault.take_answer(Actor::OWNER_CLI, &b, "i");
    assert!(
        matches!(moved, Err(VaultError::Unrecoverable { .. })),
        "{moved:?}"
    );
    assert!(
        vault
            .take_answer(Actor::OWNER_CLI, &a, "i")
            .expect("take")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_run_and_a_queued_one() {
    let host = host(config(&[])).await;
    host.add("slow", "echo", &[("spin_ms", "60000")], Some("t"));
    let launcher = Arc::clone(&host.launcher);
    let started = std::time::Instant::now();
    let run = tokio::spawn(async move { launcher.launch("slow", Trigger::Manual).await });
    let id = until(60, "the run to start", || {
        host.runs("slow")
            .into_iter()
            .find(|r| r.state == "running")
            .map(|r| r.id)
    })
    .await;
    // Another process asks; the run's own process notices.
    let (ok, out) = host.cli(&["cancel", &id], b"").await;
    assert!(ok && out.contains("asked to stop"), "{out}");
    let record = run.await.expect("join").expect("launch");
    assert_eq!(record.state, "cancelled", "{record:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        host.records("slow", "items").len(),
        3,
        "records before the cancel stay"
    );

    let queued = runs::enqueue(host.vault().store(), "slow", Trigger::Manual, None, None, 1)
        .expect("enqueue");
    let cancelled = host.launcher.cancel(&queued).expect("cancel");
    assert_eq!(cancelled.state, "cancelled");
    let record = host.launcher.execute(&queued).await.expect("execute");
    assert_eq!(record.state, "cancelled", "a cancelled run never starts");
    let (ok, out) = host.cli(&["cancel", &queued], b"").await;
    assert!(!ok && out.contains("already ended"), "{out}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_with_backoff_and_then_succeed() {
    let fx = fixture(vec![(503, vec![]), (429, vec![("retry-after", "1")])]).await;
    let host = host(config(&[fx.addr])).await;
    let api = format!("http://{}", fx.addr);
    host.add("work", "github", &[("api_base_url", &api)], Some(ALICE));

    let first = host
        .launcher
        .launch("work", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(first.failure.as_deref(), Some("upstream_transient"));
    schedule_until(&host, "work", |runs| {
        runs.iter().any(|r| r.state == "succeeded")
    })
    .await;
    let runs = host.runs("work");
    let shape: Vec<_> = runs
        .iter()
        .map(|r| {
            (
                r.trigger.as_str(),
                r.attempt,
                r.state.as_str(),
                r.failure.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("manual", 1, "failed", Some("upstream_transient")),
            ("retry", 2, "failed", Some("rate_limited")),
            ("retry", 3, "succeeded", None),
        ]
    );
    assert!(
        runs[1..]
            .iter()
            .all(|r| r.retry_of.as_deref() == Some(first.id.as_str()))
    );
    // Backoff after the 503 (100 ms base, jitter in its upper half) ...
    let waited = runs[1].not_before.expect("not_before") - runs[0].finished_at.expect("end");
    assert!((50..=150).contains(&waited), "waited {waited} ms");
    // ... and the provider's retry-after after the 429.
    let waited = runs[2].not_before.expect("not_before") - runs[1].finished_at.expect("end");
    assert!(waited >= 1000, "retry-after ignored: waited {waited} ms");
    assert!(runs[2].started_at >= runs[2].not_before.expect("not_before"));
    assert_eq!(host.records("work", "repositories").len(), 2);
    assert!(fx.tokens().iter().all(|t| t == ALICE));
}

/// A provider whose name does not resolve is a transient failure,
/// retried, not a refused request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_transient_not_denied() {
    let host = host(config(&[])).await;
    // RFC 6761: `.invalid` never resolves.
    host.add(
        "work",
        "github",
        &[("api_base_url", "https://api.sourcebox-test.invalid")],
        Some(ALICE),
    );
    let record = host
        .launcher
        .launch("work", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(
        record.failure.as_deref(),
        Some("upstream_transient"),
        "{record:?}"
    );
    let detail = record.detail.as_deref().unwrap_or("");
    assert!(detail.contains("retry"), "{record:?}");
    assert!(!detail.contains("egress"), "{record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_not_retried_and_the_source_needs_reauth() {
    let fx = fixture(vec![]).await;
    let host = host(config(&[fx.addr])).await;
    let api = format!("http://{}", fx.addr);
    host.add("work", "github", &[("api_base_url", &api)], Some(REJECTED));
    let record = host
        .launcher
        .launch("work", Trigger::Scheduled)
        .await
        .expect("launch");
    assert_eq!(record.failure.as_deref(), Some("auth_rejected"));
    assert!(!record.detail.as_deref().unwrap_or("").contains("retry"));
    let queued: i64 = host
        .vault()
        .store()
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM runs WHERE state = 'queued'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(queued, 0, "an auth failure was queued for retry");
    let (ok, listed) = host.cli(&["source", "list", "--json"], b"").await;
    assert!(ok, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed[0]["name"], "work");
    assert!(
        listed[0]["needs_reauth"]
            .as_str()
            .is_some_and(|why| why.contains("401")),
        "{listed}"
    );
    let why = scheduler::eligible(&host.vault(), "work").expect("eligible");
    assert!(
        matches!(&why, Err(sourcebox::readiness::Blocked::NeedsReauth { detail, .. }) if detail.contains("401")),
        "{why:?}"
    );
    // A new token from the owner clears it.
    {
        let vault = host.vault();
        let source = vault.store().source("work").expect("work");
        set(&vault, &source, "token", ALICE.as_bytes());
    }
    assert_eq!(
        scheduler::eligible(&host.vault(), "work").expect("eligible"),
        Ok(())
    );
    let record = host
        .launcher
        .launch("work", Trigger::Manual)
        .await
        .expect("launch");
    assert_eq!(record.state, "succeeded", "{record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_queued_before_the_owner_paused_the_source_does_not_start() {
    let host = host(config(&[])).await;
    host.add("work", "echo", &[], Some("t0k3n"));
    let queued = runs::enqueue(
        host.vault().store(),
        "work",
        Trigger::Scheduled,
        None,
        None,
        1,
    )
    .expect("enqueue");
    // 0.2.0 asks for a new host; the owner pauses the source until approval.
    let next = std::fs::read(ECHO_NEXT).expect("echo 0.2.0");
    let loaded = host.launcher.runtime().load(&next).await.expect("load");
    {
        let vault = host.vault();
        let installed = catalog::install(
            vault.store(),
            &next,
            loaded.api_version(),
            loaded.manifest(),
        )
        .expect("install");
        let upgrades = catalog::offer_upgrade(vault.store(), &installed, catalog::Meanwhile::Pause)
            .expect("offer");
        assert_eq!(upgrades[0].meanwhile, catalog::Meanwhile::Pause);
    }
    let refused = host.launcher.execute(&queued).await;
    assert!(
        matches!(&refused, Err(runs::LaunchError::Paused { to, .. }) if to == "0.2.0"),
        "{refused:?}"
    );
    let record = runs::find(host.vault().store(), &queued).expect("run");
    assert_eq!(record.state, "cancelled", "{record:?}");
    assert!(
        record
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("paused until the owner approves echo 0.2.0")),
        "{record:?}"
    );
    assert!(matches!(
        scheduler::eligible(&host.vault(), "work").expect("eligible"),
        Err(sourcebox::readiness::Blocked::Paused { .. })
    ));
    catalog::approve_upgrade(host.vault().store(), "echo", Some("work")).expect("approve");
    assert_eq!(
        scheduler::eligible(&host.vault(), "work").expect("eligible"),
        Ok(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_deleted_credential_refuses_the_scheduled_launch() {
    let fx = fixture(vec![]).await;
    let host = host(config(&[fx.addr])).await;
    let api = format!("http://{}", fx.addr);
    host.add("work", "github", &[("api_base_url", &api)], Some(ALICE));
    host.add("other", "github", &[("api_base_url", &api)], Some(BOB));
    let reads_before = host.audit().len();

    for (how, expected) in [
        ("revoke", "credential_revoked"),
        ("remove", "credentials_missing"),
    ] {
        // Eligible when queued; the credential goes before it starts.
        let queued = runs::enqueue(
            host.vault().store(),
            "work",
            Trigger::Scheduled,
            None,
            None,
            1,
        )
        .expect("enqueue");
        {
            let vault = host.vault();
            let source = vault.store().source("work").expect("work");
            if how == "revoke" {
                vault
                    .revoke(Actor::OWNER_CLI, &source, "token")
                    .expect("revoke");
            } else {
                vault
                    .remove(Actor::OWNER_CLI, &source, "token")
                    .expect("remove");
            }
        }
        let record = host.launcher.execute(&queued).await.expect("execute");
        assert_eq!(record.trigger, "scheduled");
        assert_eq!(record.state, "failed");
        assert_eq!(record.failure.as_deref(), Some(expected), "{record:?}");
        assert!(fx.tokens().is_empty(), "a refused run reached the network");
        let audit = host.audit();
        assert!(
            !audit[reads_before..]
                .iter()
                .any(|(_, action, _, run)| action == "credential.read"
                    || run.as_deref() == Some(queued.as_str())),
            "a refused launch read a credential: {audit:?}"
        );
        if how == "revoke" {
            let vault = host.vault();
            let source = vault.store().source("work").expect("work");
            set(&vault, &source, "token", ALICE.as_bytes());
        }
    }
}

/// A tick that fails does not end the scheduler: a write lock another
/// process holds on the database for 10 s fails its ticks (each logged
/// and tried again, with backoff), a stored cron schedule that can never
/// fire again is disabled with its reason, and the next due source runs
/// once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_survives_a_foreign_lock_and_an_exhausted_schedule() {
    let host = host(config(&[])).await;
    host.add("next", "echo", &[("count", "1")], Some("t-next"));
    host.add("past", "echo", &[("count", "1")], Some("t-past"));
    // Stored by an earlier version, which took a year field: its last
    // year has passed.
    let exhausted = "0 0 0 1 1 * 2020";
    for (expr, why) in [
        (exhausted, "five fields"),
        ("0 0 30 2 *", "never fires again"),
        ("* * * * * *", "five fields"),
    ] {
        assert!(
            Schedule::Cron(expr.into())
                .check()
                .is_err_and(|e| e.to_string().contains(why)),
            "{expr} is refused when set"
        );
    }
    {
        let vault = host.vault();
        let store = vault.store();
        scheduler::set_schedule(
            store,
            "next",
            Some(Schedule::Every(Duration::from_secs(3600))),
        )
        .expect("schedule");
        // Due now: it runs once the lock is gone.
        store
            .conn()
            .execute("UPDATE schedules SET next_at = 0", [])
            .expect("due");
        let past = store.source("past").expect("past").source_id;
        store
            .conn()
            .execute(
                "INSERT INTO schedules (source_id, cron, next_at) VALUES (?1, ?2, 0)",
                rusqlite::params![past, exhausted],
            )
            .expect("stored cron");
    }
    // Another process takes the write lock for 10 s.
    let db = host.vault().store().dir().join(sourcebox::store::DB_FILE);
    let (locked, lock_taken) = std::sync::mpsc::channel();
    let foreign = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).expect("open");
        conn.execute_batch("BEGIN IMMEDIATE").expect("lock");
        locked.send(()).expect("send");
        std::thread::sleep(Duration::from_secs(10));
        conn.execute_batch("COMMIT").expect("unlock");
    });
    lock_taken.recv().expect("locked");
    let heartbeat = Arc::clone(host.launcher.heartbeat());
    let watch = async {
        let failed = until(20, "a failed tick", || {
            let health = heartbeat.health();
            (health.failures > 0).then_some(health)
        })
        .await;
        assert!(failed.running, "{failed:?}");
        assert!(
            failed
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("locked") || e.contains("busy")),
            "{failed:?}"
        );
        until(40, "the due source's run", || {
            host.runs("next")
                .iter()
                .any(|r| r.trigger == "scheduled" && r.state == "succeeded")
                .then_some(())
        })
        .await;
    };
    scheduler::run(
        Arc::clone(&host.launcher),
        SchedulerConfig {
            tick: Duration::from_millis(50),
            ..SchedulerConfig::default()
        },
        watch,
    )
    .await
    .expect("scheduler");
    foreign.join().expect("foreign lock");
    let health = heartbeat.health();
    assert!(
        !health.running && health.failures == 0 && health.last_tick.is_some(),
        "{health:?}"
    );
    let rows = scheduler::schedules(host.vault().store()).expect("schedules");
    let past = rows.iter().find(|r| r.source == "past").expect("past");
    assert!(
        past.disabled
            .as_deref()
            .is_some_and(|why| why.contains(exhausted) && why.contains("five fields")),
        "{past:?}"
    );
    assert!(host.runs("past").is_empty(), "a disabled schedule ran");
    // Setting it again is refused, and leaves it as it was.
    assert!(
        scheduler::set_schedule(
            host.vault().store(),
            "past",
            Some(Schedule::Cron(exhausted.into()))
        )
        .is_err()
    );
}

/// Launch, scheduler and setup view make one readiness decision: for a
/// source in each state of the readiness table, the view's `blocked`, the
/// scheduler's eligibility and the launch's refusal agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_scheduler_and_view_agree_on_every_readiness_row() {
    use sourcebox::readiness::Blocked;
    let host = host(config(&[])).await;
    host.add("ready", "echo", &[], Some("t-ready"));
    host.add("missing", "echo", &[], None);
    for name in ["revoked", "reauth", "changed", "paused"] {
        host.add(name, "echo", &[], Some(&format!("t-{name}")));
    }
    // Two sources of one account, each verified; the second waits for the
    // owner to confirm.
    for name in ["first", "second"] {
        host.add(name, "echo", &[], Some("t-same"));
        let verified = host
            .launcher
            .launch(name, Trigger::SetupVerification)
            .await
            .expect("verify");
        assert_eq!(verified.state, "succeeded", "{verified:?}");
    }
    {
        let vault = host.vault();
        let store = vault.store();
        store.add_source("bare").expect("bare");
        let revoked = store.source("revoked").expect("revoked");
        vault
            .revoke(Actor::OWNER_CLI, &revoked, "token")
            .expect("revoke");
        for sql in [
            "UPDATE sources SET needs_reauth = '401 from the provider' WHERE name = 'reauth'",
            "UPDATE sources SET previous_identity_id = '1', previous_identity_display = 'alice'
             WHERE name = 'changed'",
            "UPDATE sources SET pending_version = '9.9.9', pending_changes = '[]', pending_paused = 1
             WHERE name = 'paused'",
        ] {
            store.conn().execute(sql, []).expect("state");
        }
    }
    let rows: Vec<(&str, Option<Blocked>)> = vec![
        ("ready", None),
        ("first", None),
        ("bare", Some(Blocked::NoConnector)),
        (
            "missing",
            Some(Blocked::CredentialsMissing {
                credentials: vec!["token".into()],
            }),
        ),
        (
            "revoked",
            Some(Blocked::CredentialRevoked {
                credentials: vec!["token".into()],
            }),
        ),
        (
            "reauth",
            Some(Blocked::NeedsReauth {
                detail: "401 from the provider".into(),
                authorize: false,
            }),
        ),
        (
            "changed",
            Some(Blocked::AccountChanged {
                previous: "alice (provider id 1)".into(),
            }),
        ),
        (
            "paused",
            Some(Blocked::Paused {
                version: "9.9.9".into(),
            }),
        ),
        (
            "second",
            Some(Blocked::IdentityUnconfirmed {
                existing: "first".into(),
            }),
        ),
    ];
    for (name, expected) in rows {
        let view = sourcebox::setup::source_view(host.vault().store(), name).expect("view");
        assert_eq!(view.blocked, expected, "the view of {name}");
        let eligible = scheduler::eligible(&host.vault(), name).expect("eligible");
        assert_eq!(eligible.err(), expected, "the scheduler on {name}");
        let launched = match host.launcher.launch(name, Trigger::Manual).await {
            Ok(record) => record.failure,
            Err(runs::LaunchError::Paused { .. }) => Some("paused".to_owned()),
            Err(runs::LaunchError::Catalog(catalog::CatalogError::NoConnector(_))) => {
                Some("no_connector".to_owned())
            }
            Err(e) => panic!("{name}: {e}"),
        };
        assert_eq!(
            launched.as_deref(),
            expected.as_ref().map(Blocked::kind),
            "the launch of {name}"
        );
    }
}

/// A value the owner gives makes the last verification stale, and a
/// refresh after it does not hide that: re-authorizing, then a refresh at
/// the next run's start, is still a new grant to verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_keeps_when_the_owner_last_gave_a_credential() {
    use sourcebox::setup::Lifecycle;
    use sourcebox::vault::{CredentialClass, NewCredential, Provenance};
    let host = host(config(&[])).await;
    host.add("work", "echo", &[], Some("t-work"));
    let verified = host
        .launcher
        .launch("work", Trigger::SetupVerification)
        .await
        .expect("verify");
    assert_eq!(verified.state, "succeeded");
    let state = || {
        sourcebox::setup::source_view(host.vault().store(), "work")
            .expect("view")
            .state
    };
    assert_eq!(state(), Lifecycle::Ready);
    let put = |provenance: Provenance, value: &[u8]| {
        let vault = host.vault();
        let source = vault.store().source("work").expect("work");
        vault
            .set(
                Actor::OWNER_CLI,
                &source,
                NewCredential {
                    name: "token",
                    class: CredentialClass::Token,
                    provenance,
                    value: Secret::from_slice(value),
                    expires_at: None,
                },
            )
            .expect("set")
    };
    // A refresh alone leaves the verification standing.
    std::thread::sleep(Duration::from_millis(5));
    let refreshed = put(Provenance::ConnectorRefresh, b"t-work-refreshed");
    assert_eq!(state(), Lifecycle::Ready);
    // The owner gives a new value; a refresh follows before any run
    // verified it.
    std::thread::sleep(Duration::from_millis(5));
    let given = put(Provenance::OauthGrant, b"t-work-regranted");
    assert!(given.given_at > refreshed.given_at);
    std::thread::sleep(Duration::from_millis(5));
    let after = put(Provenance::OauthRefresh, b"t-work-regranted-refreshed");
    assert_eq!(after.given_at, given.given_at);
    assert!(after.rotated_at > given.rotated_at);
    assert_eq!(state(), Lifecycle::Verifying);
}

/// A manual run asked for while one is queued returns that run instead of
/// queueing another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_asked_for_twice_is_queued_once() {
    let host = host(config(&[])).await;
    host.add("work", "echo", &[], Some("t-work"));
    let request = || runs::request(host.vault().store(), "work").expect("request");
    let first = request();
    let again = request();
    assert_eq!((first.state.as_str(), &again.id), ("queued", &first.id));
    assert_eq!(host.runs("work").len(), 1);
    host.launcher.execute(&first.id).await.expect("execute");
    let next = request();
    assert_ne!(next.id, first.id, "a finished run was returned");
}

/// Interval schedules between one minute and one year, at the edges; a
/// refused one stores nothing.
#[test]
fn schedule_intervals_are_bounded() {
    let minute = Duration::from_secs(60);
    let year = Duration::from_secs(365 * 24 * 3600);
    for (every, ok) in [
        (Duration::ZERO, false),
        (minute - Duration::from_secs(1), false),
        (minute, true),
        (year, true),
        (year + Duration::from_secs(1), false),
        (Duration::from_secs(u64::MAX), false),
    ] {
        assert_eq!(Schedule::Every(every).check().is_ok(), ok, "{every:?}");
    }
    // Time arithmetic is checked, never wrapped.
    assert!(
        Schedule::Every(Duration::from_secs(u64::MAX))
            .next_after(0)
            .is_err()
    );
    assert!(Schedule::Every(minute).next_after(i64::MAX - 1).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eligibility_and_due_schedules_read_no_secret_and_a_missed_schedule_runs_once() {
    let host = host(config(&[])).await;
    host.add("stored", "echo", &[], Some("stored-token"));
    host.add("bare", "echo", &[], None);
    for source in ["stored", "bare"] {
        scheduler::set_schedule(
            host.vault().store(),
            source,
            Some(Schedule::Every(Duration::from_secs(60))),
        )
        .expect("schedule");
    }
    // Ten hours of downtime: hundreds of missed ticks.
    let ten_hours_ago = sourcebox::store::now_ms() - 10 * 3600 * 1000;
    host.vault()
        .store()
        .conn()
        .execute("UPDATE schedules SET next_at = ?1", [ten_hours_ago])
        .expect("backdate");
    let audit_before = host.audit();
    assert_eq!(
        scheduler::eligible(&host.vault(), "stored").expect("eligible"),
        Ok(())
    );
    assert!(
        scheduler::eligible(&host.vault(), "bare")
            .expect("eligible")
            .is_err()
    );
    let queued = scheduler::enqueue_due(&host.vault()).expect("due");
    assert_eq!(queued.len(), 1, "a missed schedule runs once");
    assert_eq!(host.runs("stored").len(), 1);
    assert!(
        host.runs("bare").is_empty(),
        "an ineligible source was queued"
    );
    assert_eq!(host.audit(), audit_before, "eligibility touched the vault");
    let now = sourcebox::store::now_ms();
    for row in scheduler::schedules(host.vault().store()).expect("schedules") {
        assert!(row.next_at > now, "{row:?}");
    }
    assert!(
        scheduler::enqueue_due(&host.vault())
            .expect("due")
            .is_empty()
    );

    // Cron: next occurrence is strictly later and on the minute.
    let cron = Schedule::Cron("*/5 * * * *".into());
    let next = cron.next_after(now).expect("next");
    assert!(next > now && next - now <= 5 * 60 * 1000 && next % 60_000 == 0);
    assert!(Schedule::Cron("not a cron".into()).check().is_err());
    assert!(Schedule::Every(Duration::ZERO).check().is_err());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_receive_what_manual_runs_receive_whatever_the_environment_holds() {
    let fx = fixture(vec![]).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let allow = Some(fx.addr);
    let api = format!("api_base_url=http://{}", fx.addr);
    cli_ok(&dir, None, &["init"], b"").await;
    cli_ok(
        &dir,
        allow,
        &[
            "source",
            "add",
            "work",
            "--connector",
            "github",
            "--set",
            &api,
        ],
        b"",
    )
    .await;
    cli_ok(
        &dir,
        None,
        &["credential", "set", "work", "token", "--class", "token"],
        ALICE.as_bytes(),
    )
    .await;
    cli_ok(&dir, allow, &["run", "work"], b"").await;
    let manual_records = {
        let store = Store::open(&dir).expect("open");
        let mut stmt = store
            .conn()
            .prepare("SELECT key, data FROM records ORDER BY stream, key")
            .expect("q");
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .expect("rows")
            .collect::<Result<Vec<_>, _>>()
            .expect("records")
    };
    assert!(!manual_records.is_empty());
    cli_ok(
        &dir,
        None,
        &["source", "schedule", "work", "--every", "1m"],
        b"",
    )
    .await;

    let provider_vars = ["GITHUB_TOKEN", "GH_TOKEN", "GITHUB_PERSONAL_ACCESS_TOKEN"];
    for empty in [false, true] {
        let env: Vec<(&str, Option<&str>)> = provider_vars
            .iter()
            .map(|k| (*k, empty.then_some("")))
            .collect();
        let before = runs_of(&dir, "work").len();
        // The schedule is due (as after a minute, or downtime).
        Store::open(&dir)
            .expect("open")
            .conn()
            .execute("UPDATE schedules SET next_at = 0", [])
            .expect("due");
        let serve = Serve::start(&dir, allow, &env);
        until(60, "a scheduled run", || {
            runs_of(&dir, "work")[before..]
                .iter()
                .any(|r| r.trigger == "scheduled" && r.state == "succeeded")
                .then_some(())
        })
        .await;
        let out = serve.stop();
        common::assert_no_leak(ALICE.as_bytes(), out.as_bytes(), "serve output");
    }

    let runs = runs_of(&dir, "work");
    assert_eq!(runs[0].trigger, "manual");
    let scheduled: Vec<&RunRecord> = runs.iter().filter(|r| r.trigger == "scheduled").collect();
    assert!(scheduled.len() >= 2);
    assert!(
        runs.iter()
            .all(|r| r.state == "succeeded" && r.connector == runs[0].connector),
        "{runs:#?}"
    );
    // The provider saw only the stored token, from every run.
    let tokens = fx.tokens();
    assert!(
        !tokens.is_empty() && tokens.iter().all(|t| t == ALICE),
        "{tokens:?}"
    );
    // The same seam: every run resolved the stored credential itself,
    // audited under its own run id.
    let store = Store::open(&dir).expect("open");
    for run in &runs {
        let reads: i64 = store
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM audit WHERE action = 'credential.read' AND actor = 'egress'
                 AND source = 'work' AND credential = 'token' AND outcome = 'ok' AND run_id = ?1",
                [&run.id],
                |r| r.get(0),
            )
            .expect("count");
        assert!(
            reads >= 1,
            "run {} ({}) did not resolve from the vault",
            run.id,
            run.trigger
        );
    }
    // And collected exactly the same data.
    let mut stmt = store
        .conn()
        .prepare("SELECT key, data FROM records ORDER BY stream, key")
        .expect("q");
    let now: Vec<(String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("records");
    assert_eq!(now, manual_records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_mid_run_interrupts_the_run_and_the_source_runs_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    echo_source_due_now(&dir, "slow", "spin_ms=3000").await;

    let mut serve = Serve::start(&dir, None, &[]);
    let cut = until(90, "a run in flight", || {
        runs_of(&dir, "slow")
            .into_iter()
            .find(|r| r.state == "running")
    })
    .await;
    // Its records are committed before it spins; then the host dies.
    until(60, "committed records", || {
        let store = Store::open(&dir).expect("open");
        let n: i64 = store
            .conn()
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
            .expect("count");
        (n == 3).then_some(())
    })
    .await;
    let child = serve.0.as_mut().expect("running");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    assert_eq!(
        runs::find(&Store::open(&dir).expect("open"), &cut.id)
            .expect("run")
            .state,
        "running",
        "nothing marked it yet"
    );

    let serve = Serve::start(&dir, None, &[]);
    let again = until(90, "the source to run again", || {
        runs_of(&dir, "slow")
            .into_iter()
            .find(|r| r.id != cut.id && r.state == "succeeded")
    })
    .await;
    serve.stop();
    let store = Store::open(&dir).expect("open");
    let cut = runs::find(&store, &cut.id).expect("run");
    assert_eq!(cut.state, "interrupted");
    assert_eq!(cut.failure.as_deref(), Some("interrupted"));
    assert_eq!(again.trigger, "scheduled");
    let ok: String = store
        .conn()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(ok, "ok");
    let items: i64 = store
        .conn()
        .query_row(
            "SELECT COUNT(*) FROM records WHERE stream = 'items'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(items, 3, "records committed before the kill are intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_keeps_global_and_per_connector_limits_without_starving_a_connector() {
    let fx = fixture(vec![]).await;
    let host = host(config(&[fx.addr])).await;
    let api = format!("http://{}", fx.addr);
    let echoes = ["e1", "e2", "e3", "e4"];
    for name in echoes {
        // An account each: echo tells accounts apart by token.
        host.add(
            name,
            "echo",
            &[("spin_ms", "300")],
            Some(&format!("t-{name}")),
        );
    }
    host.add("gh", "github", &[("api_base_url", &api)], Some(ALICE));
    // The github run is queued last, behind every echo run.
    for name in echoes.iter().chain(&["gh"]) {
        runs::enqueue(
            host.vault().store(),
            name,
            Trigger::Scheduled,
            None,
            None,
            1,
        )
        .expect("enqueue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = || {
        let mut runs = runs::list(host.vault().store(), None).expect("runs");
        runs.sort_by_key(|r| r.started_at);
        runs
    };
    let shutdown = async {
        until(60, "every run", || {
            all().iter().all(|r| r.state == "succeeded").then_some(())
        })
        .await;
    };
    scheduler::run(
        Arc::clone(&host.launcher),
        SchedulerConfig {
            tick: Duration::from_millis(20),
            max_concurrent: 2,
            per_connector: 1,
            grace: Duration::from_secs(5),
        },
        shutdown,
    )
    .await
    .expect("scheduler");
    let runs = all();
    assert_eq!(runs.len(), 5);
    let span = |r: &RunRecord| (r.started_at, r.finished_at.expect("finished"));
    let overlap = |a: &RunRecord, b: &RunRecord| {
        let ((s1, e1), (s2, e2)) = (span(a), span(b));
        s1 < e2 && s2 < e1
    };
    let echo_runs: Vec<&RunRecord> = runs.iter().filter(|r| r.source != "gh").collect();
    for (i, a) in echo_runs.iter().enumerate() {
        for b in &echo_runs[i + 1..] {
            assert!(!overlap(a, b), "two echo runs at once: {a:?} {b:?}");
        }
    }
    for r in &runs {
        let at_once = runs.iter().filter(|o| overlap(r, o)).count();
        assert!(at_once <= 2, "more than two runs at once around {r:?}");
    }
    let gh = runs.iter().find(|r| r.source == "gh").expect("gh");
    let last_echo = echo_runs.last().expect("echo");
    assert!(
        gh.started_at < last_echo.started_at,
        "the github run waited behind the echo queue: {runs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_kept_as_a_credential_belongs_to_its_source_only() {
    let host = host(config(&[])).await;
    host.add("a", "echo", &[("ask", "otp")], Some("token-a"));
    host.add("b", "echo", &[], Some("token-b"));
    let launcher = Arc::clone(&host.launcher);
    let run = tokio::spawn(async move { launcher.launch("a", Trigger::Manual).await });
    let asked = pending(&host, "a").await;
    // A name the connector does not declare is refused before anything is
    // stored, and the question stays open.
    let (ok, out) = host
        .cli(
            &["interaction", "answer", &asked.id, "--keep", "nope"],
            b"s3ss10n",
        )
        .await;
    assert!(
        !ok && out.contains("declares no credential 'nope'"),
        "{out}"
    );
    let (ok, out) = host
        .cli(
            &["interaction", "answer", &asked.id, "--keep", "session"],
            b"s3ss10n-kept",
        )
        .await;
    assert!(ok && out.contains("kept it as a/session"), "{out}");
    assert_eq!(run.await.expect("join").expect("launch").state, "succeeded");
    let vault = host.vault();
    let metas = vault.list(None).expect("list");
    let kept: Vec<_> = metas.iter().filter(|m| m.name == "session").collect();
    assert_eq!(kept.len(), 1, "{metas:?}");
    assert_eq!(kept[0].source, "a");
    assert_eq!(kept[0].provenance.as_str(), "interaction");
    let a = vault.store().source("a").expect("a");
    assert_eq!(common::get(&vault, &a, "session"), b"s3ss10n-kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_expires_the_questions_of_runs_that_were_cut_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    echo_source_due_now(&dir, "bank", "ask=otp").await;
    let mut serve = Serve::start(&dir, None, &[]);
    let asked = until(90, "the question", || {
        let store = Store::open(&dir).expect("open");
        interactions::list(&store, false)
            .expect("list")
            .into_iter()
            .next()
    })
    .await;
    let child = serve.0.as_mut().expect("running");
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    // Nothing is waiting any more: listing shows no question, answering is
    // refused, and the run is interrupted.
    let listed = cli_ok(&dir, None, &["interaction", "list"], b"").await;
    assert!(listed.contains("no interaction is waiting"), "{listed}");
    let mut cmd = common::sourcebox();
    cmd.arg("--data-dir")
        .arg(&dir)
        .args(["interaction", "answer", &asked.id]);
    let out = tokio::task::spawn_blocking(move || common::run(cmd, b"123456"))
        .await
        .expect("join");
    assert!(!out.status.success());
    let store = Store::open(&dir).expect("open");
    assert_eq!(
        interactions::find(&store, &asked.id).expect("find").state,
        "expired"
    );
    let run = runs::find(&store, &asked.run).expect("run");
    assert_eq!(
        (run.state.as_str(), run.failure.as_deref()),
        ("interrupted", Some("interrupted"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shuts_down_gracefully_and_marks_what_it_stopped_interrupted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    echo_source_due_now(&dir, "slow", "spin_ms=120000").await;
    let serve = Serve::start(&dir, None, &[]);
    let running = until(90, "a run in flight", || {
        runs_of(&dir, "slow")
            .into_iter()
            .find(|r| r.state == "running")
    })
    .await;
    let stopping = std::time::Instant::now();
    let out = serve.stop(); // SIGTERM; the grace period is 5 s
    assert!(stopping.elapsed() < Duration::from_secs(30), "{out}");
    assert!(out.contains("sourcebox stopped"), "{out}");
    let run = runs::find(&Store::open(&dir).expect("open"), &running.id).expect("run");
    assert_eq!(run.state, "interrupted");
    assert!(
        run.detail.as_deref().unwrap_or("").contains("shut down"),
        "{run:?}"
    );
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
