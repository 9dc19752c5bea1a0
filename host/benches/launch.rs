//! Launch overhead: the whole seam (run record, source and connector
//! lookup, credential presence check, cached component, instantiation,
//! one call that resolves a credential, the run's end recorded) beside the
//! same call made straight on the runtime, in the same run; and the
//! launch overhead as the issue defines it (eligibility, credential
//! resolution, instantiation): the time from `launch` to the connector's
//! first credential resolved, taken from the host's `credential resolved`
//! trace event. `BENCHMARKS.md` has the figures and the command.

mod common;

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

use criterion::{Criterion, criterion_group, criterion_main};
use sourcebox::catalog;
use sourcebox::runs::{LaunchConfig, Launcher, Trigger};
use sourcebox::runtime::{Binding, Call, Limits, Runtime};

const ECHO: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");

/// When the host last resolved a credential for a run (its trace event).
static RESOLVED: Mutex<Option<Instant>> = Mutex::new(None);

/// A tracing layer that notes the instant of each `credential resolved`
/// event and nothing else.
struct ResolvedAt;

impl<S: tracing::Subscriber> Layer<S> for ResolvedAt {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        *RESOLVED.lock().expect("resolved") = Some(Instant::now());
    }
}

fn launch(c: &mut Criterion) {
    tracing::subscriber::set_global_default(
        // Only that event is enabled: every other callsite stays off.
        tracing_subscriber::registry().with(ResolvedAt.with_filter(
            tracing_subscriber::filter::filter_fn(|meta| {
                meta.is_event() && meta.fields().field("credential").is_some()
            }),
        )),
    )
    .expect("subscriber");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let vault = common::local_vault(&dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let cache = tmp.path().join("cache");
    let runtime = Runtime::new(&cache).expect("runtime");
    let loaded = common::install(&rt, &runtime, &vault, ECHO);
    let unproven = catalog::AddOptions {
        allow_unproven: true,
        ..Default::default()
    };
    let added = catalog::add_source(vault.store(), "a", "echo", &[], unproven).expect("source");
    common::store_token(&vault, &added.source, b"bench-token");
    // A source with no token: its launch is refused before any instance,
    // so it measures the seam's bookkeeping alone.
    catalog::add_source(vault.store(), "bare", "echo", &[], unproven).expect("source");
    let vault = Arc::new(Mutex::new(vault));
    let baseline = Binding {
        vault: Arc::clone(&vault),
        source: added.source.clone(),
        setup: added.setup.clone(),
        run_id: "baseline".into(),
        limits: Limits::default(),
        egress_allow: Vec::new(),
        control: Default::default(),
    };
    let launcher = Launcher::new(
        Runtime::new(&cache).expect("runtime"),
        Arc::clone(&vault),
        LaunchConfig::default(),
    )
    .expect("launcher");
    // Warm the launcher's component cache.
    let first = rt
        .block_on(launcher.launch("a", Trigger::SetupVerification))
        .expect("launch");
    assert_eq!(first.state, "succeeded", "{first:?}");

    let seam = || {
        let record = rt
            .block_on(launcher.launch("a", Trigger::SetupVerification))
            .expect("launch");
        debug_assert_eq!(record.state, "succeeded");
        black_box(record)
    };
    let direct = || {
        black_box(
            rt.block_on(runtime.run(&loaded, baseline.clone(), Call::Verify))
                .expect("run"),
        )
    };
    // A manual run: the whole seam, and what a collection costs on top of
    // the call it makes (before identity was part of every launch, one
    // instance; since, two: the account verified, then collected).
    let collect = || {
        let record = rt
            .block_on(launcher.launch("a", Trigger::Manual))
            .expect("launch");
        debug_assert_eq!(record.state, "succeeded");
        black_box(record)
    };
    let refused = || {
        let record = rt
            .block_on(launcher.launch("bare", Trigger::SetupVerification))
            .expect("launch");
        debug_assert_eq!(record.failure.as_deref(), Some("credentials_missing"));
        black_box(record)
    };
    let mut group = c.benchmark_group("launch");
    group.bench_function("launch_refused_bookkeeping_only", |b| b.iter(refused));
    group.bench_function("baseline_runtime_run_verify", |b| b.iter(direct));
    group.bench_function("launch_setup_verification", |b| b.iter(seam));
    group.bench_function("launch_manual_collect", |b| b.iter(collect));
    group.finish();
    let sample = |f: &dyn Fn()| {
        (0..3_000)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_nanos() as u64
            })
            .collect::<Vec<_>>()
    };
    common::percentiles(
        "baseline: runtime.run(verify)",
        sample(&|| {
            direct();
        }),
    );
    common::percentiles(
        "launch refused (bookkeeping only)",
        sample(&|| {
            refused();
        }),
    );
    common::percentiles(
        "launch(setup_verification)",
        sample(&|| {
            seam();
        }),
    );
    common::percentiles(
        "launch(manual): a collection",
        sample(&|| {
            collect();
        }),
    );
    // Launch overhead as defined: from `launch` to the first credential
    // the connector holds (eligibility, run record, cached component,
    // instantiation, entry, the audited resolution); the connector's own
    // work, the end record and the teardown come after.
    let to_credential = (0..3_000)
        .map(|_| {
            *RESOLVED.lock().expect("resolved") = None;
            let t = Instant::now();
            seam();
            let at = RESOLVED
                .lock()
                .expect("resolved")
                .expect("a credential was resolved");
            at.duration_since(t).as_nanos() as u64
        })
        .collect::<Vec<_>>();
    common::percentiles(
        "launch overhead: launch() to first credential resolved",
        to_credential,
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(std::time::Duration::from_secs(5));
    targets = launch
}
criterion_main!(benches);
