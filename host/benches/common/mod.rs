//! Helpers shared by the benchmarks.
#![allow(dead_code)] // each bench uses a different subset

use sourcebox::catalog;
use sourcebox::runtime::{LoadedConnector, Runtime};
use sourcebox::store::{SourceRef, Store};
use sourcebox::vault::{
    Actor, CredentialClass, Keyring, NewCredential, Provenance, Secret, Vault, WrapperKind,
};

/// A fresh local-wrapper vault in `dir`.
pub fn local_vault(dir: &std::path::Path) -> Vault {
    let settings = Keyring::init_settings(WrapperKind::Local, false).expect("settings");
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = Store::init(dir, &pairs).expect("init");
    let keyring = Keyring::create_first(&store, None).expect("keyring");
    Vault::new(store, keyring)
}

/// Loads the component at `path` and installs it in `vault`'s catalog.
pub fn install(
    rt: &tokio::runtime::Runtime,
    runtime: &Runtime,
    vault: &Vault,
    path: &str,
) -> LoadedConnector {
    let component = std::fs::read(path).expect("component");
    let loaded = rt.block_on(runtime.load(&component)).expect("load");
    catalog::install(
        vault.store(),
        &component,
        loaded.api_version(),
        loaded.manifest(),
    )
    .expect("install");
    loaded
}

/// Stores `value` as `source`'s token, entered by the owner.
pub fn store_token(vault: &Vault, source: &SourceRef, value: &[u8]) {
    vault
        .set(
            Actor::OWNER_CLI,
            source,
            NewCredential {
                name: "token",
                class: CredentialClass::Token,
                provenance: Provenance::Owner,
                value: Secret::from_slice(value),
                expires_at: None,
            },
        )
        .expect("token");
}

/// Prints the p50 and p99 of `ns` (nanoseconds) in microseconds.
pub fn percentiles(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let pct = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    println!(
        "{name}: p50 {:.1} µs, p99 {:.1} µs ({} runs)",
        pct(0.5),
        pct(0.99),
        ns.len()
    );
}
