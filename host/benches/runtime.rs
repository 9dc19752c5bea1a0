//! Runtime benchmarks: per-run instantiation, compile vs on-disk cache, and
//! records across the boundary into SQLite, each beside a baseline in the
//! same run. `BENCHMARKS.md` has the figures and the command.

mod common;

use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rusqlite::params;
use sourcebox::runtime::{Binding, Call, Limits, LoadedConnector, Runtime};
use sourcebox::store::{Store, now_ms};
use sourcebox::vault::{Keyring, Vault, WrapperKind};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

const ECHO: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");
const HOSTILE: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_HOSTILE");

fn vault(dir: &Path) -> Arc<Mutex<Vault>> {
    let settings = Keyring::init_settings(WrapperKind::Local, false).expect("settings");
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = Store::init(dir, &pairs).expect("init");
    store.add_source("a").expect("source");
    let keyring = Keyring::create_first(&store, None).expect("keyring");
    Arc::new(Mutex::new(Vault::new(store, keyring)))
}

fn binding(vault: &Arc<Mutex<Vault>>, setup: &[(&str, &str)], limits: Limits) -> Binding {
    Binding {
        vault: Arc::clone(vault),
        source: vault
            .lock()
            .expect("lock")
            .store()
            .source("a")
            .expect("source"),
        setup: setup
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        run_id: "bench".into(),
        limits,
        egress_allow: Vec::new(),
        control: Default::default(),
    }
}

/// A vault with source `a`, a runtime, and the hostile fixture loaded.
struct Fixture {
    _tmp: tempfile::TempDir,
    vault: Arc<Mutex<Vault>>,
    runtime: Runtime,
    rt: tokio::runtime::Runtime,
    hostile: LoadedConnector,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = vault(&tmp.path().join("data"));
    let runtime = Runtime::new(&tmp.path().join("cache")).expect("runtime");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let hostile = rt
        .block_on(runtime.load(&std::fs::read(HOSTILE).expect("component")))
        .expect("load");
    Fixture {
        _tmp: tmp,
        vault,
        runtime,
        rt,
        hostile,
    }
}

/// A whole run of a cached connector whose call does nothing (the hostile
/// fixture's `verify`): fresh store, empty WASI context, instantiation from
/// the `InstancePre`, one call. Beside it, the same with the pooling
/// allocator is not offered: see BENCHMARKS.md.
fn instantiate(c: &mut Criterion) {
    let Fixture {
        _tmp,
        vault,
        runtime,
        rt,
        hostile,
    } = fixture();
    // Built once: the loop measures the run, not the source lookup.
    let noop = binding(&vault, &[], Limits::default());
    let mut group = c.benchmark_group("run_cached_connector");
    group.bench_function("instantiate_and_call_noop_verify", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(runtime.run(&hostile, noop.clone(), Call::Verify))
                    .expect("run"),
            )
        })
    });
    group.finish();
    let ns = (0..5_000)
        .map(|_| {
            let t = Instant::now();
            black_box(
                rt.block_on(runtime.run(&hostile, noop.clone(), Call::Verify))
                    .expect("run"),
            );
            t.elapsed().as_nanos() as u64
        })
        .collect();
    common::percentiles(
        "run_cached_connector_percentiles/instantiate_and_call_noop_verify",
        ns,
    );

    // Per-run instantiation alone: from the `run` call to the host's
    // `instance ready` trace event, with only that event enabled. It
    // covers the fresh store and its empty WASI context, the egress
    // policy, the limits and `instantiate_async` from the `InstancePre`.
    let ready = tracing::subscriber::with_default(
        tracing_subscriber::registry().with(ReadyAt.with_filter(
            tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_event() && meta.module_path() == Some("sourcebox::runtime")
            }),
        )),
        || {
            (0..5_000)
                .map(|_| {
                    *READY.lock().expect("ready") = None;
                    let t = Instant::now();
                    black_box(
                        rt.block_on(runtime.run(&hostile, noop.clone(), Call::Verify))
                            .expect("run"),
                    );
                    let at = READY.lock().expect("ready").expect("instance ready event");
                    at.duration_since(t).as_nanos() as u64
                })
                .collect()
        },
    );
    common::percentiles(
        "run_cached_connector_percentiles/instantiate (run() to instance ready)",
        ready,
    );
}

/// When the host last reported an instance ready (its trace event).
static READY: Mutex<Option<Instant>> = Mutex::new(None);

/// A tracing layer that notes the instant of each event it is given.
struct ReadyAt;

impl<S: tracing::Subscriber> Layer<S> for ReadyAt {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        *READY.lock().expect("ready") = Some(Instant::now());
    }
}

/// Loading a component: compiled from scratch (empty cache) beside loaded
/// from the warm on-disk cache.
fn load(c: &mut Criterion) {
    let bytes = std::fs::read(ECHO).expect("component");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let warm_dir = tempfile::tempdir().expect("tempdir");
    let warm = Runtime::new(warm_dir.path()).expect("runtime");
    rt.block_on(warm.load(&bytes)).expect("prime the cache");
    let mut group = c.benchmark_group("load_component");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("compile_cold_cache", |b| {
        b.iter(|| {
            let cold = tempfile::tempdir().expect("tempdir");
            let runtime = Runtime::new(cold.path()).expect("runtime");
            black_box(rt.block_on(runtime.load(&bytes)).expect("load"))
        })
    });
    group.bench_function("load_warm_cache", |b| {
        b.iter(|| {
            let runtime = Runtime::new(warm_dir.path()).expect("runtime");
            black_box(rt.block_on(runtime.load(&bytes)).expect("load"))
        })
    });
    group.finish();
}

/// Records emitted by a component into SQLite (256-byte records, batched
/// transactions) beside native Rust inserting the same rows the same way.
/// Each sample starts from an empty stream, so every record is written (a
/// record emitted again unchanged is left as it was, which is cheaper);
/// the `_unchanged` pair measures that case, on both sides.
fn records(c: &mut Criterion) {
    const N: u64 = 20_000;
    let Fixture {
        _tmp,
        vault,
        runtime,
        rt,
        hostile,
    } = fixture();
    let limits = Limits {
        records: N,
        ..Limits::default()
    };
    let source = vault
        .lock()
        .expect("lock")
        .store()
        .source("a")
        .expect("source");
    let empty = || {
        vault
            .lock()
            .expect("lock")
            .store()
            .conn()
            .execute(
                "DELETE FROM records WHERE source_id = ?1 AND stream = 'loot'",
                [source.source_id],
            )
            .expect("empty the stream");
    };
    // Runs `attack` to its record limit: exactly N records.
    let flood = |attack: &str| {
        let binding = binding(&vault, &[("attack", attack)], limits.clone());
        let (runtime, rt, hostile) = (&runtime, &rt, &hostile);
        move || {
            let r = rt.block_on(runtime.run(hostile, binding.clone(), Call::Collect(vec![])));
            assert!(r.is_err());
        }
    };
    // The same rows the host writes, with the host's statement: a fresh
    // timestamp per batch, as there.
    let native = || {
        let v = vault.lock().expect("lock");
        let conn = v.store().conn();
        for chunk in 0..N / 500 {
            conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
            let mut stmt = conn
                .prepare_cached(sourcebox::runtime::UPSERT_RECORD)
                .expect("prepare");
            let now = now_ms();
            for i in chunk * 500..(chunk + 1) * 500 {
                let record = serde_json::json!({"id": i, "pad": "x".repeat(200)}).to_string();
                stmt.execute(params![
                    source.source_id,
                    "loot",
                    format!("[{i}]"),
                    record,
                    "native",
                    now
                ])
                .expect("insert");
            }
            conn.execute_batch("COMMIT").expect("commit");
        }
    };
    let mut group = c.benchmark_group("records_into_sqlite_20k");
    group
        .sample_size(10)
        .throughput(criterion::Throughput::Elements(N));
    let fresh = criterion::BatchSize::PerIteration;
    let typed = flood("record-flood");
    group.bench_function("component_emit", |b| {
        b.iter_batched(empty, |()| typed(), fresh)
    });
    // The same 256-byte records, prebuilt and emitted as JSON text: the
    // guest's serialization taken out.
    let text = flood("raw-flood");
    group.bench_function("component_emit_json_text", |b| {
        b.iter_batched(empty, |()| text(), fresh)
    });
    // And a hundred to a call.
    let batched = flood("raw-batch-flood");
    group.bench_function("component_emit_batch_json_text", |b| {
        b.iter_batched(empty, |()| batched(), fresh)
    });
    group.bench_function("baseline_native_inserts", |b| {
        b.iter_batched(empty, |()| native(), fresh)
    });
    // Emitted again, unchanged: the first (warm-up) run writes them.
    group.bench_function("component_emit_batch_json_text_unchanged", |b| {
        b.iter(&batched)
    });
    group.bench_function("baseline_native_unchanged", |b| b.iter(native));
    group.finish();
}

/// The boundary alone: 100,000 prebuilt 256-byte records emitted into a
/// stream the connector did not declare, each lifted into the host (both
/// strings copied out of linear memory) and refused at the stream lookup.
fn boundary(c: &mut Criterion) {
    const REFUSALS: u64 = 100_000;
    let Fixture {
        _tmp,
        vault,
        runtime,
        rt,
        hostile,
    } = fixture();
    let refused = binding(
        &vault,
        &[("attack", "raw-flood"), ("target", "nowhere")],
        Limits::default(),
    );
    let mut group = c.benchmark_group("records_across_the_boundary");
    group
        .sample_size(10)
        .throughput(criterion::Throughput::Elements(REFUSALS));
    group.bench_function("emit_256b_refused_undeclared_stream", |b| {
        b.iter(|| {
            let r = rt.block_on(runtime.run(&hostile, refused.clone(), Call::Collect(vec![])));
            let failure = format!("{r:?}");
            assert!(failure.contains("refused 100000 records"), "{failure}");
        })
    });
    // The same records, a hundred to a call (`emit-batch`, contract 0.1.1):
    // every record is still lifted into the host, the stream looked up once
    // per call.
    let batched = binding(
        &vault,
        &[("attack", "raw-batch-flood"), ("target", "nowhere")],
        Limits::default(),
    );
    group.bench_function("emit_batch_100_256b_refused_undeclared_stream", |b| {
        b.iter(|| {
            let r = rt.block_on(runtime.run(&hostile, batched.clone(), Call::Collect(vec![])));
            let failure = format!("{r:?}");
            assert!(failure.contains("refused 100000 records"), "{failure}");
        })
    });
    group.finish();
}

/// Cold start to first record with a warm compile cache: a fresh engine
/// (what a new process starts with), the component loaded from the on-disk
/// cache, a fresh store, instantiation, and the call running until its
/// first record is upserted into SQLite (the hostile fixture's record
/// flood, stopped by a limit of one record). Beside it, when `singer-sdk`
/// is installed, a Python Singer-SDK tap (`benches/singer_tap.py`) from
/// process start to its first RECORD message.
fn cold_start(_: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = vault(&tmp.path().join("data"));
    let cache = tmp.path().join("cache");
    let bytes = std::fs::read(HOSTILE).expect("component");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    // Warm the on-disk compile cache once; what the catalog would keep.
    let primed = rt
        .block_on(Runtime::new(&cache).expect("runtime").load(&bytes))
        .expect("prime the cache");
    let manifest = Arc::new(primed.manifest().clone());
    let api_version = primed.api_version().to_owned();
    let digest = sourcebox::runtime::digest(&bytes);
    let one = Limits {
        records: 1,
        ..Limits::default()
    };
    let flood = binding(&vault, &[("attack", "record-flood")], one);
    let cold_start = |load: &dyn Fn(&Runtime) -> LoadedConnector| -> Vec<u64> {
        (0..200)
            .map(|_| {
                let t = Instant::now();
                let runtime = Runtime::new(&cache).expect("runtime");
                let loaded = load(&runtime);
                // Ends at the one-record limit, after the record is stored.
                let ended = rt.block_on(runtime.run(&loaded, flood.clone(), Call::Collect(vec![])));
                let elapsed = t.elapsed().as_nanos() as u64;
                assert!(ended.is_err());
                drop((loaded, runtime));
                elapsed
            })
            .collect()
    };
    // As the launcher starts an installed connector: by its approved
    // digest, contract version and manifest.
    let ns = cold_start(&|runtime| {
        runtime
            .load_compiled(&digest, &api_version, Arc::clone(&manifest))
            .expect("load")
            .expect("compiled before")
    });
    common::percentiles("cold start to first record (warm compile cache)", ns);
    // From the component's bytes: read the stamped version, hash, describe.
    let ns = cold_start(&|runtime| rt.block_on(runtime.load(&bytes)).expect("load"));
    common::percentiles(
        "cold start to first record, loading from the component's bytes",
        ns,
    );
    let stored: i64 = vault
        .lock()
        .expect("lock")
        .store()
        .conn()
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .expect("count");
    assert!(stored >= 1, "no record reached SQLite");

    let tap = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/singer_tap.py");
    let installed = std::process::Command::new("python3")
        .args(["-c", "import singer_sdk"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        println!("python Singer-SDK tap: not measured (pip install singer-sdk)");
        return;
    }
    let ns = (0..10)
        .map(|_| {
            use std::io::BufRead;
            let t = Instant::now();
            let mut child = std::process::Command::new("python3")
                .arg(&tap)
                .current_dir(tmp.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("python3");
            let stdout = child.stdout.take().expect("stdout");
            let first = std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .find(|line| line.contains(r#""type":"RECORD""#));
            let elapsed = t.elapsed().as_nanos() as u64;
            assert!(first.is_some(), "the tap emitted no record");
            let _ = child.wait();
            elapsed
        })
        .collect();
    common::percentiles("python Singer-SDK tap: process start to first RECORD", ns);
}

criterion_group!(benches, instantiate, load, boundary, records, cold_start);
criterion_main!(benches);
