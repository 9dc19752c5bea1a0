//! The launch seam: the one way a connector runs.
//!
//! [`launch`] resolves everything at execution time from the store and the
//! vault: the source's connector version, its setup values, and whether
//! its required credentials are present (checked without decrypting). If
//! they are not, the launch is refused with a typed failure and no instance
//! is created. There is no fallback to anything else.

use std::sync::{Arc, Mutex};

use crate::catalog::{self, CatalogError};
use crate::runtime::{Binding, Call, Limits, Outcome, RunFailure, Runtime, RuntimeError};
use crate::vault::{Vault, VaultError};

/// Why a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The owner asked for it.
    Manual,
}

/// Why a launch was refused before any connector code ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// Required credentials are not stored (or revoked) for this source.
    #[error(
        "credentials_missing: source '{source_name}' needs {names:?} stored; use `sourcebox credential set {source_name} NAME --class CLASS`"
    )]
    CredentialsMissing {
        /// The source.
        source_name: String,
        /// What is missing.
        names: Vec<String>,
    },
    /// The source or its connector.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The component could not be loaded.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// What a launched run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Identifies the run in audit rows and records.
    pub run_id: String,
    /// The trigger.
    pub trigger: Trigger,
    /// `id version` of the connector that ran.
    pub connector: String,
    /// The connector's result or the typed failure.
    pub result: Result<Outcome, RunFailure>,
}

/// Runs `source`'s connector once (`collect` of every stream).
pub async fn launch(
    runtime: &Runtime,
    vault: &Arc<Mutex<Vault>>,
    source: &str,
    trigger: Trigger,
    egress_allow: &[std::net::SocketAddr],
) -> Result<RunReport, LaunchError> {
    let (setup, component) = {
        let vault = vault.lock().expect("vault lock");
        let setup = catalog::source_setup(vault.store(), source)?;
        let required: Vec<&str> = setup
            .connector
            .manifest
            .credentials
            .iter()
            .filter(|c| c.required)
            .map(|c| c.name.as_str())
            .collect();
        let names = vault.missing(&setup.source, &required)?;
        if !names.is_empty() {
            return Err(LaunchError::CredentialsMissing {
                source_name: source.to_owned(),
                names,
            });
        }
        let component = catalog::component(vault.store(), &setup.connector)?;
        (setup, component)
    };
    let loaded = runtime.load(&component).await?;
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the operating system's random source failed");
    let run_id = hex::encode(id);
    let binding = Binding {
        vault: Arc::clone(vault),
        source: setup.source,
        setup: setup.setup,
        run_id: run_id.clone(),
        limits: Limits::default(),
        egress_allow: egress_allow.to_vec(),
    };
    let result = runtime
        .run(&loaded, binding, Call::Collect(Vec::new()))
        .await;
    Ok(RunReport {
        run_id,
        trigger,
        connector: format!("{} {}", setup.connector.id, setup.connector.version),
        result,
    })
}
