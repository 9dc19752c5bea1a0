//! Why a catalog operation failed.

use crate::store::StoreError;

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such connector.
    #[error("no connector '{0}' is installed; `sourcebox connector list` shows what is")]
    Unknown(String),
    /// Already installed.
    #[error("connector {0} {1} is already installed")]
    Exists(String, String),
    /// The stored component does not match its recorded digest.
    #[error("the stored component of {0} does not match its digest; reinstall it")]
    Tampered(String),
    /// A setup value that the manifest does not allow.
    #[error("{0}")]
    Setup(String),
    /// The source runs no connector.
    #[error(
        "source '{0}' has no connector; add it with `sourcebox source add NAME --connector ID`"
    )]
    NoConnector(String),
    /// The component could not be loaded.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// Component file I/O.
    #[error("component file: {0}")]
    Io(#[from] std::io::Error),
    /// SQLite.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}
