//! Why a launch could not even be recorded.

use crate::catalog::{self, CatalogError};
use crate::runtime::RuntimeError;
use crate::store::{Store, StoreError};
use crate::vault::VaultError;

/// Why a launch could not even be recorded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The source or its connector.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The component could not be loaded.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another run of the source is in flight; a source never runs twice at
    /// once.
    #[error(
        "source '{source_name}' is already running (run {run}); wait for it, or `sourcebox cancel {run}`"
    )]
    Busy {
        /// The source.
        source_name: String,
        /// The run in flight.
        run: String,
    },
    /// The owner chose to pause the source until they approve what a new
    /// version of its connector asks for.
    #[error(
        "source '{source_name}' is paused until the owner approves {connector} {to}; see `sourcebox source show {source_name}`, then `sourcebox connector approve {connector} --source {source_name}`"
    )]
    Paused {
        /// The source.
        source_name: String,
        /// Its connector.
        connector: String,
        /// The version waiting for approval.
        to: String,
    },
    /// The runner lock file.
    #[error("runner lock: {0}")]
    Runner(std::io::Error),
}

/// Refused with [`LaunchError::Paused`] when the owner paused `source` until
/// they approve an upgrade, so that a run is not queued only to be
/// cancelled. Any other problem with the source is left to the launch,
/// which reports it.
pub fn refuse_paused(store: &Store, source: &str) -> Result<(), LaunchError> {
    match catalog::source_setup(store, source) {
        Ok(setup) => paused(&setup),
        Err(_) => Ok(()),
    }
}

/// [`LaunchError::Paused`] for `setup`, when it is paused.
pub(super) fn paused(setup: &catalog::SourceSetup) -> Result<(), LaunchError> {
    match &setup.paused_for {
        Some(to) => Err(LaunchError::Paused {
            source_name: setup.source.source.clone(),
            connector: setup.connector.id.clone(),
            to: to.clone(),
        }),
        None => Ok(()),
    }
}

impl From<rusqlite::Error> for LaunchError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}
