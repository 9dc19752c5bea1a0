//! Helpers for tests over a real data directory, this crate's and the
//! host's: a vault in a fresh directory, opened again the way a new
//! process would, and every file under it, to scan for a leaked secret.

use std::path::{Path, PathBuf};

use super::{
    Actor, CredentialClass, Keyring, NewCredential, Provenance, Secret, Vault, WrapperKind,
};
use crate::store::{SourceRef, Store};

/// A fresh local-wrapper vault in `dir`.
pub fn local_vault(dir: &Path) -> Vault {
    let settings = Keyring::init_settings(WrapperKind::Local, false).expect("settings");
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = Store::init(dir, &pairs).expect("init");
    let keyring = Keyring::create_first(&store, None).expect("keyring");
    Vault::new(store, keyring)
}

/// Opens an existing data directory the way a new process would.
pub fn reopen(dir: &Path, unlock: Option<&[u8]>) -> Vault {
    let store = Store::open(dir).expect("open");
    let keyring = Keyring::unlock(&store, unlock.map(Secret::from_slice)).expect("unlock");
    Vault::new(store, keyring)
}

/// Stores `value` as a token named `name`.
pub fn set(vault: &Vault, source: &SourceRef, name: &str, value: &[u8]) {
    vault
        .set(
            Actor::OWNER_CLI,
            source,
            NewCredential {
                name,
                class: CredentialClass::Token,
                provenance: Provenance::Owner,
                value: Secret::from_slice(value),
                expires_at: None,
            },
        )
        .expect("set");
}

/// Resolves a credential's bytes.
pub fn get(vault: &Vault, source: &SourceRef, name: &str) -> Vec<u8> {
    vault
        .get(Actor::OWNER_CLI, source, name)
        .expect("get")
        .expose_secret()
        .to_vec()
}

/// Every byte of every file under `dir`, with its path.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}
