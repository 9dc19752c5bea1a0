//! Vault benchmarks. Each group measures sourcebox beside a baseline in the
//! same run; `BENCHMARKS.md` has the figures and the command.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rusqlite::params;
use sourcebox_vault::store::Store;
use sourcebox_vault::vault::audit::{self, AuditEntry};
use sourcebox_vault::vault::keyring::{ARGON2_M_KIB, ARGON2_P, ARGON2_T, derive_passphrase_kek};
use sourcebox_vault::vault::{
    Actor, CredentialClass, Keyring, NewCredential, Provenance, Secret, Vault, WrapperKind,
    envelope,
};

const TOKEN: &[u8] = b"ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";

fn local_vault(dir: &std::path::Path) -> Vault {
    let settings = Keyring::init_settings(WrapperKind::Local, false).expect("settings");
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = Store::init(dir, &pairs).expect("init");
    let keyring = Keyring::create_first(&store, None).expect("keyring");
    Vault::new(store, keyring)
}

fn store_token(vault: &Vault, source: &sourcebox_vault::store::SourceRef, name: &str) {
    vault
        .set(
            Actor::OWNER_CLI,
            source,
            NewCredential {
                name,
                class: CredentialClass::Token,
                provenance: Provenance::Owner,
                value: Secret::from_slice(TOKEN),
                expires_at: None,
            },
        )
        .expect("set");
}

/// The baseline: a plaintext read of a row of the same size, with the
/// same audit append in the same kind of transaction.
fn plaintext_read_with_audit(
    conn: &rusqlite::Connection,
    source: &sourcebox_vault::store::SourceRef,
) -> Vec<u8> {
    conn.prepare_cached("BEGIN IMMEDIATE")
        .and_then(|mut s| s.execute([]))
        .expect("begin");
    let value: Vec<u8> = conn
        .prepare_cached("SELECT value FROM bench_plain WHERE source_id = ?1 AND name = ?2")
        .expect("prepare")
        .query_row(params![source.source_id, "token"], |r| r.get(0))
        .expect("row");
    audit::append(
        conn,
        &AuditEntry {
            actor: "owner:cli",
            action: "credential.read",
            owner: Some(&source.owner),
            source: Some(&source.source),
            credential: Some("token"),
            run_id: None,
            outcome: "ok",
        },
    )
    .expect("audit");
    conn.prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .expect("commit");
    value
}

/// A vault holding one token, and the same bytes in a plaintext table.
fn resolve_fixture(dir: &std::path::Path) -> (Vault, sourcebox_vault::store::SourceRef) {
    let vault = local_vault(dir);
    let source = vault.store().add_source("work").expect("source");
    store_token(&vault, &source, "token");
    let conn = vault.store().conn();
    conn.execute_batch("CREATE TABLE bench_plain (source_id INTEGER, name TEXT, value BLOB, UNIQUE (source_id, name))")
        .expect("plain table");
    conn.execute(
        "INSERT INTO bench_plain VALUES (?1, 'token', ?2)",
        params![source.source_id, TOKEN],
    )
    .expect("plain row");
    (vault, source)
}

/// Resolve one credential (read + unwrap + decrypt + audit append) beside a
/// plaintext read of a row of the same size with the same audit append.
fn resolve(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (vault, source) = resolve_fixture(tmp.path());
    let conn = vault.store().conn();

    let mut group = c.benchmark_group("resolve_credential");
    group.bench_function("vault_get_local_wrapper", |b| {
        b.iter(|| black_box(vault.get(Actor::OWNER_CLI, &source, "token").expect("get")))
    });
    group.bench_function("baseline_plaintext_read_with_audit", |b| {
        b.iter(|| black_box(plaintext_read_with_audit(conn, &source)))
    });
    group.finish();
}

/// Per-operation latency percentiles of the two resolve paths, interleaved
/// so both see the same checkpoints and cache state. Criterion reports
/// means of batches; the targets are per-operation p50 and p99.
fn resolve_percentiles(_c: &mut Criterion) {
    const OPS: usize = 50_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (vault, source) = resolve_fixture(tmp.path());
    let conn = vault.store().conn();
    let (mut vault_ns, mut plain_ns) = (Vec::with_capacity(OPS), Vec::with_capacity(OPS));
    for _ in 0..OPS {
        let t = Instant::now();
        black_box(vault.get(Actor::OWNER_CLI, &source, "token").expect("get"));
        vault_ns.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        black_box(plaintext_read_with_audit(conn, &source));
        plain_ns.push(t.elapsed().as_nanos() as u64);
    }
    for (name, mut ns) in [
        ("vault_get_local_wrapper", vault_ns),
        ("baseline_plaintext_read_with_audit", plain_ns),
    ] {
        ns.sort_unstable();
        let pct = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
        let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
        println!(
            "resolve_credential_percentiles/{name}: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, mean {mean:.1} µs ({OPS} ops)",
            pct(0.50),
            pct(0.90),
            pct(0.99)
        );
    }
}

/// The AEAD alone on a credential-sized value (seal + open), to show what
/// the cipher costs of the resolve path.
fn aead(c: &mut Criterion) {
    let key = sourcebox_vault::vault::Key256::generate();
    let sealed = envelope::seal(&key, TOKEN, b"aad");
    let mut group = c.benchmark_group("xchacha20poly1305_42_bytes");
    group.bench_function("open", |b| {
        b.iter(|| black_box(envelope::open(&key, &sealed, b"aad").expect("open")))
    });
    group.bench_function("seal", |b| {
        b.iter(|| black_box(envelope::seal(&key, TOKEN, b"aad")))
    });
    group.finish();
}

/// KEK rotation of 10,000 credentials: each iteration re-wraps all of them
/// under a new version (500 per transaction).
fn rotation(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    let source = vault.store().add_source("work").expect("source");
    for i in 0..10_000 {
        store_token(&vault, &source, &format!("token{i}"));
    }
    let mut group = c.benchmark_group("kek_rotation_10k");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.bench_function("rotate_kek_batch_500", |b| {
        b.iter(|| {
            let r = vault.rotate_kek(Actor::OWNER_CLI, 500).expect("rotate");
            assert_eq!(r.rewrapped, 10_000);
        })
    });
    group.finish();
}

/// Passphrase unlock at RFC 9106's second recommendation, beside the same
/// derivation on one lane at a time (what a build without threads does).
fn unlock(c: &mut Criterion) {
    let salt = [7u8; 16];
    let mut group = c.benchmark_group("passphrase_unlock_argon2id_64MiB_t3_p4");
    group.sample_size(10);
    group.bench_function("derive_parallel_lanes", |b| {
        b.iter(|| {
            black_box(
                derive_passphrase_kek(
                    b"correct horse battery staple",
                    &salt,
                    ARGON2_M_KIB,
                    ARGON2_T,
                    ARGON2_P,
                )
                .expect("kdf"),
            )
        })
    });
    group.bench_function("baseline_one_thread", |b| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool");
        b.iter(|| {
            pool.install(|| {
                black_box(
                    derive_passphrase_kek(
                        b"correct horse battery staple",
                        &salt,
                        ARGON2_M_KIB,
                        ARGON2_T,
                        ARGON2_P,
                    )
                    .expect("kdf"),
                )
            })
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    resolve,
    resolve_percentiles,
    aead,
    rotation,
    unlock
);
criterion_main!(benches);
