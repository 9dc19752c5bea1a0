//! Compiled components on disk.
//!
//! A component is compiled once per engine configuration. Its native code
//! is kept as one file, named by the component's SHA-256 and the engine's
//! compatibility hash, in a directory only the host's user can open. Later
//! loads, in this process or another, read that file instead of compiling.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The directory of compiled components for one engine.
pub(super) struct Compiled {
    dir: PathBuf,
    /// The engine's compatibility hash, in every file name: an artifact
    /// of another wasmtime or another configuration is never opened.
    engine: String,
}

impl Compiled {
    pub(super) fn new(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // Also when it was there before, with looser permissions: what is
        // in it becomes code the host runs.
        if fs::metadata(dir)?.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            engine: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine))
    }

    /// The component whose digest is `sha256` (lowercase hex), from its
    /// file, if this engine compiled it before. A file wasmtime refuses
    /// (damaged, or written by another build) is `None`: compile again.
    pub(super) fn find(&self, engine: &Engine, sha256: &str) -> Option<Component> {
        let path = self.path(sha256);
        let bytes = fs::read(&path).ok()?;
        // SAFETY: the bytes are native code this host compiled for this
        // engine. Only `store` below writes into this directory, which
        // only the host's user can open (0700): it writes a whole
        // artifact `Component::serialize` produced to a new file and
        // renames it into place. This trusts the directory as wasmtime's
        // own on-disk cache trusts its own. The file is read, not
        // mapped, so no later change to it reaches the loaded code.
        // wasmtime checks the artifact's format, version and engine
        // settings, and refuses a mismatch, handled by compiling again.
        #[allow(unsafe_code)]
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    "a compiled component could not be loaded, compiling it again: {e:#}"
                );
                None
            }
        }
    }

    /// `wasm` compiled: read from its file, or compiled and then written.
    /// `sha256` is its digest, in lowercase hex.
    pub(super) fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<Component> {
        if let Some(component) = self.find(engine, sha256) {
            return Ok(component);
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&self.path(sha256), &component) {
            // The run goes on; the next load compiles again.
            tracing::warn!(
                dir = %self.dir.display(),
                "a compiled component could not be kept on disk: {e:#}"
            );
        }
        Ok(component)
    }

    fn store(&self, path: &Path, component: &Component) -> wasmtime::Result<()> {
        let bytes = component.serialize()?;
        // A new file of its own (0600, a random name) per writer, renamed
        // into place whole.
        let mut file = tempfile::Builder::new()
            .prefix(PARTIAL)
            .tempfile_in(&self.dir)?;
        file.write_all(&bytes)?;
        file.as_file().sync_all()?;
        file.persist(path)?;
        // A new file is where an engine upgrade shows: the artifacts of
        // the engine before are of no use from here on.
        sweep(&self.dir, &self.engine);
        Ok(())
    }
}

/// How the name of a file still being written begins.
const PARTIAL: &str = ".partial-";

/// A partial file this old was left by a writer that died: a live one
/// renames its file into place within moments.
const ABANDONED: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes what no engine of this build will open: artifacts of other
/// engines (an earlier sourcebox, another configuration), partial files
/// of writers that died, and what wasmtime's own on-disk cache, which
/// earlier versions used here, left.
fn sweep(dir: &Path, engine: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let current = format!("-{engine}.cwasm");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let removed = if name == "modules" {
            fs::remove_dir_all(&path)
        } else if (name.ends_with(".cwasm") && !name.ends_with(&current))
            || name.starts_with(".cleanup.wip-")
            || (name.starts_with(PARTIAL) && abandoned(&entry))
        {
            fs::remove_file(&path)
        } else {
            continue;
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed an unused compiled component")
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                "an unused compiled component could not be removed: {e}"
            ),
        }
    }
}

fn abandoned(entry: &fs::DirEntry) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > ABANDONED))
}
