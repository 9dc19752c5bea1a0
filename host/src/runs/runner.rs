//! The lock file under `runners/` each process that runs connectors holds
//! for as long as it lives: a run whose runner's lock is free was cut off
//! (kill -9, power loss), and [`super::recover`] marks it interrupted.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::store::new_id;

/// The states of a run in flight.
pub(super) const IN_FLIGHT: &str = "('running', 'waiting_for_owner')";

/// This process, as the owner of the runs it executes: it holds
/// `runners/<token>.lock` until it exits.
#[derive(Debug)]
pub(super) struct Runner {
    pub(super) token: String,
    pub(super) path: PathBuf,
    pub(super) _lock: File,
}

impl Runner {
    pub(super) fn start(dir: &Path) -> std::io::Result<Self> {
        let runners = dir.join("runners");
        std::fs::create_dir_all(&runners)?;
        let token = new_id();
        let path = runners.join(format!("{token}.lock"));
        let lock = File::create(&path)?;
        lock.lock()?;
        Ok(Self {
            token,
            path,
            _lock: lock,
        })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // The login profiles it made are gone with their browsers.
        if let Some(dir) = self.path.parent().and_then(Path::parent) {
            let _ = std::fs::remove_dir_all(login_profiles(dir).join(&self.token));
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where the login browsers of each process keep their profiles, under the
/// process's runner token: `<data>/logins/<runner>/`.
pub(super) fn login_profiles(dir: &Path) -> PathBuf {
    dir.join("logins")
}

/// Erases the login browser profiles (`logins/<runner>/`) of processes
/// that are gone: one killed during a login leaves its browser's cookies
/// there. (Its browser itself ends when its DevTools pipe closes.)
pub(super) fn sweep_login_profiles(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(login_profiles(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let token = entry.file_name().to_string_lossy().into_owned();
        if !runner_alive(dir, &token)
            && let Err(e) = std::fs::remove_dir_all(entry.path())
        {
            tracing::warn!(path = %entry.path().display(), error = %e, "a gone process's login profiles could not be erased");
        }
    }
}

/// Whether the process that owns `token` still runs.
pub(super) fn runner_alive(dir: &Path, token: &str) -> bool {
    match File::open(dir.join("runners").join(format!("{token}.lock"))) {
        Ok(file) => matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}
