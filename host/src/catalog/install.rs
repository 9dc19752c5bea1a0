//! The one way a connector is installed, from the API, the CLI and `init`
//! alike: the component is compiled and asked what it is ([`review`]),
//! nothing stored; the owner approves what it asks for; then it is stored
//! and its version offered to every source of an older one
//! ([`install_reviewed`]: the consent diff, source by source). A
//! first-party component is approved by its catalog entry instead
//! ([`install_shipped`]).

use rusqlite::params;

use super::error::CatalogError;
use super::installed::{CatalogEntry, FIRST_PARTY, Installed, install, latest};
use super::upgrade::{Meanwhile, Upgrade, offer_upgrade};
use crate::contract::Manifest;
use crate::runtime::{LoadedConnector, Runtime};
use crate::store::{Store, now_ms};

/// A component compiled and described, nothing of it stored: what the
/// owner reviews before approving it.
#[derive(Debug)]
pub struct Review {
    component: Vec<u8>,
    digest: String,
    loaded: LoadedConnector,
}

impl Review {
    /// The component's SHA-256, in lowercase hex: what the owner approves.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// What the component says it is and asks for.
    pub fn manifest(&self) -> &Manifest {
        self.loaded.manifest()
    }

    /// The contract version it was built against.
    pub fn api_version(&self) -> &str {
        self.loaded.api_version()
    }
}

/// Compiles `component` and asks it what it is (`describe()`); stores
/// nothing.
pub async fn review(runtime: &Runtime, component: Vec<u8>) -> Result<Review, CatalogError> {
    let loaded = runtime.load(&component).await?;
    Ok(Review {
        digest: crate::runtime::digest(&component),
        component,
        loaded,
    })
}

/// Stores a reviewed component the owner approved, and offers its version
/// to every source of an older one: a source that is asked for nothing
/// more moves at once; the others wait for approval, running their
/// version meanwhile or paused, as `meanwhile` says.
pub fn install_reviewed(
    store: &Store,
    review: &Review,
    meanwhile: Meanwhile,
) -> Result<(Installed, Vec<Upgrade>), CatalogError> {
    let installed = install(
        store,
        &review.component,
        review.api_version(),
        review.manifest(),
    )?;
    let upgrades = offer_upgrade(store, &installed, meanwhile)?;
    Ok((installed, upgrades))
}

/// Installs every first-party connector not installed yet.
pub async fn install_first_party(
    store: &Store,
    runtime: &Runtime,
) -> Result<Vec<Installed>, CatalogError> {
    install_shipped(store, runtime, FIRST_PARTY).await
}

/// Installs each `(component, catalog entry)` whose version is not
/// installed yet. A component that is not the entry's (another digest, or
/// other capabilities) is refused, with nothing of it installed: the
/// entry's defaults are approved for its exact bytes only.
pub async fn install_shipped(
    store: &Store,
    runtime: &Runtime,
    shipped: &[(&[u8], &str)],
) -> Result<Vec<Installed>, CatalogError> {
    let mut installed = Vec::new();
    for (component, entry) in shipped {
        let entry: CatalogEntry = serde_json::from_str(entry)
            .map_err(|e| CatalogError::Setup(format!("catalog entry: {e}")))?;
        if latest(store, &entry.id).is_ok_and(|i| i.version == entry.version) {
            continue;
        }
        let review = review(runtime, component.to_vec()).await?;
        if !entry.describes(component, review.manifest()) {
            return Err(CatalogError::Setup(format!(
                "first-party connector {} {} is not the component its catalog entry \
                 approves (digest {}): build sourcebox from a clean checkout with the \
                 toolchain rust-toolchain.toml names, or, if you changed the connector, \
                 review the change and update its entry in manifests/ (the catalog test \
                 prints the new one)",
                entry.id, entry.version, entry.digest
            )));
        }
        let done = install(store, component, review.api_version(), review.manifest())?;
        for proof in &entry.proven {
            store.conn().execute(
                "INSERT OR IGNORE INTO proofs (connector_id, version, modality, evidence, proven_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![done.id, done.version, proof.modality, proof.evidence, now_ms()],
            )?;
        }
        installed.push(done);
    }
    Ok(installed)
}
