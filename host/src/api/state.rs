//! What the handlers share: the launcher, the API's limits, read connections of their own, and what authentication keeps.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::ApiError;
use super::kept;
use super::peers::Failures;
use crate::runs::Launcher;

/// Largest request body accepted.
pub(super) const BODY_LIMIT: usize = 64 * 1024;

/// Largest connector component accepted for upload.
pub(super) const COMPONENT_LIMIT: usize = 32 * 1024 * 1024;

/// A browser's cookie export, every site's cookies in it.
pub(super) const EXPORT_LIMIT: usize = 4 * 1024 * 1024;

/// The API's limits, as the operator sets them on `serve`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Failed authentications from one peer address within a minute,
    /// after which it is refused for the rest of that minute.
    pub auth_failures: u32,
    /// How long a request may take, from its head to its response head
    /// (reading its body included). `verify` answers 202 with the view as
    /// it stands after two thirds of it, and its run goes on.
    pub request_timeout: Duration,
    /// Reverse proxies in front of this server: for a request from one,
    /// the address failed authentications count against is the last one
    /// its `X-Forwarded-For` names that is not itself a trusted proxy.
    pub trusted_proxies: Vec<IpAddr>,
    /// This server's public base URL (`serve --public-url`, else the
    /// address it listens on): an OAuth client registered through the API
    /// must send the owner's browser back to its callback there.
    pub public_url: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            auth_failures: 20,
            request_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            public_url: None,
        }
    }
}

/// Records per page, by default and at most.
pub(super) const PAGE_DEFAULT: u32 = 100;

pub(super) const PAGE_MAX: u32 = 1000;

/// What the handlers share.
pub struct Api {
    pub(super) launcher: Arc<Launcher>,
    pub(super) failures: Mutex<Failures>,
    pub(super) limits: Limits,
    pub(super) readers: Arc<Readers>,
    pub(super) kept: kept::Kept,
}

/// Connections of their own for what only reads (authentication, setup
/// views, record pages, lists): in WAL mode readers run side by side and
/// never wait for the writer, so they need not queue on the vault's lock.
/// Nothing on them decrypts; the vault's keys stay behind its lock.
pub(super) struct Readers {
    pub(super) dir: std::path::PathBuf,
    pub(super) idle: Mutex<Vec<crate::store::Store>>,
}

/// Idle read connections kept for reuse.
pub(super) const IDLE_READERS: usize = 8;

impl Readers {
    pub(super) fn get(self: &Arc<Self>) -> Result<Reader, ApiError> {
        let idle = self.idle.lock().expect("readers lock").pop();
        let store = match idle {
            Some(store) => store,
            None => crate::store::Store::open(&self.dir)?,
        };
        Ok(Reader {
            store: Some(store),
            readers: Arc::clone(self),
        })
    }
}

/// A read connection, back to the idle ones when dropped.
pub(super) struct Reader {
    pub(super) store: Option<crate::store::Store>,
    pub(super) readers: Arc<Readers>,
}

impl std::ops::Deref for Reader {
    type Target = crate::store::Store;

    fn deref(&self) -> &Self::Target {
        self.store.as_ref().expect("held until dropped")
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // A connection left inside a transaction (a handler that panicked
        // mid-read) would hold back WAL checkpoints: it is closed instead.
        if let Some(store) = self.store.take().filter(|s| s.conn().is_autocommit()) {
            let mut idle = self.readers.idle.lock().expect("readers lock");
            if idle.len() < IDLE_READERS {
                idle.push(store);
            }
        }
    }
}

/// One read transaction for a whole request: the token is authenticated
/// in the snapshot the handler then reads, so a request takes and
/// releases the WAL read lock once, and what it reads is what its token
/// was checked against. Only for handlers that read and return at once:
/// a snapshot held open (an event stream) would hold back checkpoints.
pub(super) struct Snapshot(pub(super) Reader);

impl Snapshot {
    pub(super) fn begin(api: &Api) -> Result<Self, ApiError> {
        let reader = api.reader()?;
        reader.begin_read()?;
        Ok(Self(reader))
    }
}

impl std::ops::Deref for Snapshot {
    type Target = crate::store::Store;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // If the transaction will not end, the reader sees it still open
        // and closes the connection.
        let _ = self.0.end_read();
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Api")
    }
}

impl Api {
    /// The API over `launcher`'s vault and runs, with the default limits.
    pub fn new(launcher: Arc<Launcher>) -> Arc<Self> {
        Self::with_limits(launcher, Limits::default())
    }

    /// The API with the operator's limits.
    pub fn with_limits(launcher: Arc<Launcher>, limits: Limits) -> Arc<Self> {
        let dir = launcher
            .vault()
            .lock()
            .expect("vault lock")
            .store()
            .dir()
            .to_owned();
        Arc::new(Self {
            launcher,
            failures: Mutex::default(),
            limits,
            kept: kept::Kept::new(&dir),
            readers: Arc::new(Readers {
                dir,
                idle: Mutex::default(),
            }),
        })
    }

    /// A read connection (see [`Readers`]).
    pub(super) fn reader(&self) -> Result<Reader, ApiError> {
        self.readers.get()
    }

    pub(super) fn vault(&self) -> std::sync::MutexGuard<'_, crate::vault::Vault> {
        self.launcher.vault().lock().expect("vault lock")
    }
}
