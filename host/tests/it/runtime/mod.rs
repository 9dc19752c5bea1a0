//! Real components built from source, run by the real runtime against a
//! real vault: source scoping, empty ambient authority, credential classes,
//! limits, traps and the API version gate.

use crate::common;

use std::sync::{Arc, Mutex};

use std::time::Duration;

use common::{local_vault, set};

use sourcebox::contract::ConnectorError;

use sourcebox::runtime::{
    Binding, Call, Exhausted, Limits, LoadedConnector, Outcome, RunFailure, Runtime, RuntimeError,
};

use sourcebox::store::SourceRef;

use sourcebox::vault::{Actor, CredentialClass, NewCredential, Provenance, Secret, Vault};

const ECHO: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");

const HOSTILE: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_HOSTILE");

const LEGACY: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_LEGACY");

const BAD_MANIFEST: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_BAD_MANIFEST");

const SLOW_DESCRIBE: &str = env!("SOURCEBOX_COMPONENT_FIXTURE_SLOW_DESCRIBE");

struct World {
    _tmp: tempfile::TempDir,
    vault: Arc<Mutex<Vault>>,
    runtime: Runtime,
    echo: LoadedConnector,
    hostile: LoadedConnector,
    egress_allow: Vec<std::net::SocketAddr>,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(&tmp.path().join("data"));
    for (source, token) in [("a", "token-of-a"), ("b", "token-of-b")] {
        let s = vault.store().add_source(source).expect("source");
        set(&vault, &s, "token", token.as_bytes());
    }
    vault.store().add_source("empty").expect("source");
    // One compile cache for every test in this run: each component is
    // compiled once, as the host does in production.
    let runtime =
        Runtime::new(&std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"))
            .expect("runtime");
    let echo = runtime
        .load(&std::fs::read(ECHO).expect("echo component"))
        .await
        .expect("load echo");
    let hostile = runtime
        .load(&std::fs::read(HOSTILE).expect("hostile component"))
        .await
        .expect("load hostile");
    World {
        _tmp: tmp,
        vault: Arc::new(Mutex::new(vault)),
        runtime,
        echo,
        hostile,
        egress_allow: Vec::new(),
    }
}

impl World {
    fn source(&self, name: &str) -> SourceRef {
        self.vault
            .lock()
            .expect("lock")
            .store()
            .source(name)
            .expect("source")
    }

    fn binding(&self, source: &str, setup: &[(&str, &str)], limits: Limits) -> Binding {
        Binding {
            vault: Arc::clone(&self.vault),
            source: self.source(source),
            setup: setup
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            run_id: format!("run-{source}"),
            limits,
            egress_allow: self.egress_allow.clone(),
            control: Default::default(),
        }
    }

    async fn collect(
        &self,
        connector: &LoadedConnector,
        source: &str,
        setup: &[(&str, &str)],
        limits: Limits,
    ) -> Result<Outcome, RunFailure> {
        self.runtime
            .run(
                connector,
                self.binding(source, setup, limits),
                Call::Collect(vec![]),
            )
            .await
    }

    /// [`World::collect`], with the lines the run logged.
    async fn collect_logged(
        &self,
        connector: &LoadedConnector,
        source: &str,
        setup: &[(&str, &str)],
        limits: Limits,
    ) -> (Result<Outcome, RunFailure>, Vec<String>) {
        let binding = self.binding(source, setup, limits);
        let mut events = binding.control.events.subscribe();
        let ended = self
            .runtime
            .run(connector, binding, Call::Collect(vec![]))
            .await;
        let mut lines = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let sourcebox::events::EventKind::Log { line, .. } = event.kind {
                lines.push(line);
            }
        }
        (ended, lines)
    }

    fn records(&self, source: &str) -> Vec<serde_json::Value> {
        let vault = self.vault.lock().expect("lock");
        let mut stmt = vault
            .store()
            .conn()
            .prepare("SELECT r.data FROM records r JOIN sources s ON s.id = r.source_id WHERE s.name = ?1 ORDER BY r.key")
            .expect("query");
        stmt.query_map([source], |r| r.get::<_, String>(0))
            .expect("rows")
            .map(|d| serde_json::from_str(&d.expect("row")).expect("json"))
            .collect()
    }
}

fn fingerprint(value: &str) -> String {
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The compiled components in `dir`, by name.
fn compiled_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// `loaded`, in `runtime`, verifies as the world's own compiled echo does.
async fn runs_as_compiled(w: &World, runtime: &Runtime, loaded: &LoadedConnector) {
    let binding = || w.binding("a", &[], Limits::default());
    assert_eq!(
        runtime
            .run(loaded, binding(), Call::Verify)
            .await
            .expect("a component loaded from disk runs"),
        w.runtime
            .run(&w.echo, binding(), Call::Verify)
            .await
            .expect("a compiled component runs")
    );
}

mod compiled;
mod http;
mod isolation;
mod records;
