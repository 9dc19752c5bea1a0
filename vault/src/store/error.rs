//! Why the data directory or its database could not be used.

use std::path::PathBuf;

/// Why the data directory or its database could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No directory at the path.
    #[error("no sourcebox data directory at {0}; create one with `sourcebox init --data-dir {0}`")]
    Missing(PathBuf),
    /// A directory or file that sourcebox did not create.
    #[error(
        "{0} is not a sourcebox data directory ({1}); point --data-dir at one made by `sourcebox init`"
    )]
    Foreign(PathBuf, &'static str),
    /// `init` on a directory that already holds something.
    #[error("{0} is not empty; `sourcebox init` needs a new or empty directory")]
    NotEmpty(PathBuf),
    /// The database was written by a newer sourcebox.
    #[error(
        "the database has schema version {found}, this sourcebox supports up to {supported}; upgrade sourcebox"
    )]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A source name that is not known.
    #[error("no source named '{0}'; `sourcebox source list` shows the sources")]
    UnknownSource(String),
    /// A source name that is taken.
    #[error("a source named '{0}' already exists")]
    SourceExists(String),
    /// A source name that cannot be used.
    #[error(
        "invalid source name '{0}': use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    InvalidSourceName(String),
    /// An id that names nothing.
    #[error("{0}")]
    NotFound(String),
    /// A request that conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// Filesystem failure.
    #[error("data directory I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// SQLite failure.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}
