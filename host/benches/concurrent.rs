//! Many runs at once: 200 sources of a records-heavy connector (the echo
//! fixture, `SOURCEBOX_BENCH_RECORDS` records each, default 2,000, batched)
//! launched together through the launch seam on a two-worker runtime; the
//! aggregate records per second of each round, and its median. Each run
//! also verifies its account and resolves its token (audited), so record
//! writes meet the vault's own work. `BENCHMARKS.md` has the figures and
//! the command.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sourcebox::catalog;
use sourcebox::runs::{LaunchConfig, Launcher, Trigger};
use sourcebox::runtime::Runtime;

const ECHO: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");
const RUNS: usize = 200;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let records = setting("SOURCEBOX_BENCH_RECORDS", 2_000);
    let rounds = setting("SOURCEBOX_BENCH_ROUNDS", 5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = common::local_vault(&tmp.path().join("data"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let cache = tmp.path().join("cache");
    let runtime = Runtime::new(&cache).expect("runtime");
    common::install(&rt, &runtime, &vault, ECHO);
    let setup = [
        ("count".to_owned(), records.to_string()),
        ("batch".to_owned(), "yes".to_owned()),
    ];
    for i in 0..RUNS {
        let options = catalog::AddOptions {
            allow_unproven: true,
            ..Default::default()
        };
        let added = catalog::add_source(vault.store(), &format!("s{i}"), "echo", &setup, options)
            .expect("source");
        // A token of its own: each source is its own account.
        common::store_token(&vault, &added.source, format!("bench-token-{i}").as_bytes());
    }
    let launcher = Arc::new(
        Launcher::new(
            runtime,
            Arc::new(Mutex::new(vault)),
            LaunchConfig::default(),
        )
        .expect("launcher"),
    );
    let round = || {
        let started = Instant::now();
        let runs: Vec<_> = (0..RUNS)
            .map(|i| {
                let launcher = Arc::clone(&launcher);
                rt.spawn(async move { launcher.launch(&format!("s{i}"), Trigger::Manual).await })
            })
            .collect();
        for run in runs {
            let record = rt.block_on(run).expect("task").expect("launch");
            assert_eq!(record.state, "succeeded", "{record:?}");
        }
        started.elapsed()
    };
    // The first round records each source's account and warms the cache.
    round();
    let mut rates = Vec::new();
    for i in 0..rounds {
        let took = round();
        let rate = (RUNS as u64 * records) as f64 / took.as_secs_f64();
        println!(
            "round {i}: {RUNS} runs x {records} records in {:.2} s: {:.0} records/s",
            took.as_secs_f64(),
            rate
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median of {rounds} rounds: {:.0} records/s",
        rates[rates.len() / 2]
    );
}
