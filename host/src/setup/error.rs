//! Why a view could not be built or a setup step taken.

use crate::catalog::CatalogError;
use crate::store::StoreError;
use crate::vault::VaultError;

/// Why a view could not be built or a setup step taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// A step that does not apply in the source's state.
    #[error("{0}")]
    NotNow(String),
}

impl From<rusqlite::Error> for SetupError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(e.into())
    }
}
