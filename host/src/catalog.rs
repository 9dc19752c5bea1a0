//! Installed connectors: each version's component (stored by digest in the
//! data directory), the manifest it described at install, and what the
//! operator approved. Sources name the connector version they run.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::contract::{EgressHost, Manifest, Modality};
use crate::runtime::Limits;
use crate::store::{DEFAULT_OWNER, SourceRef, Store, StoreError, now_ms};

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

/// First-party connector components, built from `connectors/` by the build
/// script and embedded in the binary, with their catalog entries.
pub const FIRST_PARTY: &[(&[u8], &str)] = &[(
    include_bytes!(env!("SOURCEBOX_COMPONENT_CONNECTOR_GITHUB")),
    include_str!("../../manifests/github.json"),
)];

/// A connector version as the catalog (`manifests/`) records it: the
/// component it is, the capabilities it asks for and what is approved by
/// default. A test fails when a first-party connector's component or its
/// `describe()` drifts from its entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Connector id.
    pub id: String,
    /// Semantic version.
    pub version: String,
    /// SHA-256 of the component, hex: the defaults below are approved for
    /// exactly these bytes.
    pub digest: String,
    /// Display name.
    pub name: String,
    /// Stream names.
    pub streams: Vec<String>,
    /// Credential fields: name, class, required, hosts.
    pub credentials: Vec<EntryCredential>,
    /// Egress hosts, fixed or from a setup field.
    pub egress: Vec<EgressHost>,
    /// Approved by default at install.
    pub approved: Approved,
    /// Setup modalities proven for this version before it shipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proven: Vec<CatalogProof>,
}

/// A modality the catalog ships as proven, and by what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogProof {
    /// static-secret, oauth, browser-login or local-import.
    pub modality: String,
    /// The end-to-end check that proved it.
    pub evidence: String,
}

/// A credential field in a catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryCredential {
    /// Name.
    pub name: String,
    /// Class, as the vault names it.
    pub class: String,
    /// Whether runs need it.
    pub required: bool,
    /// Hosts it may be injected for (empty: any of the connector's).
    pub hosts: Vec<String>,
}

impl CatalogEntry {
    /// The entry for `component`, which described `manifest`.
    pub fn of(component: &[u8], manifest: &Manifest) -> Self {
        Self::described(crate::runtime::digest(component), manifest)
    }

    fn described(digest: String, manifest: &Manifest) -> Self {
        Self {
            id: manifest.id.clone(),
            version: manifest.version.clone(),
            digest,
            name: manifest.name.clone(),
            streams: manifest.streams.iter().map(|s| s.name.clone()).collect(),
            credentials: manifest
                .credentials
                .iter()
                .map(|c| EntryCredential {
                    name: c.name.clone(),
                    class: crate::vault::CredentialClass::from(c.class).as_str().into(),
                    required: c.required,
                    hosts: c.hosts.clone(),
                })
                .collect(),
            egress: manifest.setup.egress.clone(),
            approved: approval_for(manifest),
            proven: Vec::new(),
        }
    }

    /// Whether this entry is exactly `component`, which described
    /// `manifest` (the shipped proofs aside).
    pub fn describes(&self, component: &[u8], manifest: &Manifest) -> bool {
        Self {
            proven: Vec::new(),
            ..self.clone()
        } == Self::of(component, manifest)
    }
}

/// Installs every first-party connector not installed yet.
pub async fn install_first_party(
    store: &Store,
    runtime: &crate::runtime::Runtime,
) -> Result<Vec<Installed>, CatalogError> {
    install_shipped(store, runtime, FIRST_PARTY).await
}

/// Installs each `(component, catalog entry)` whose version is not
/// installed yet. A component that is not the entry's (another digest, or
/// other capabilities) is refused, with nothing of it installed: the
/// entry's defaults are approved for its exact bytes only.
pub async fn install_shipped(
    store: &Store,
    runtime: &crate::runtime::Runtime,
    shipped: &[(&[u8], &str)],
) -> Result<Vec<Installed>, CatalogError> {
    let mut installed = Vec::new();
    for (component, entry) in shipped {
        let entry: CatalogEntry = serde_json::from_str(entry)
            .map_err(|e| CatalogError::Setup(format!("catalog entry: {e}")))?;
        if latest(store, &entry.id).is_ok_and(|i| i.version == entry.version) {
            continue;
        }
        let loaded = runtime.load(component).await?;
        if !entry.describes(component, loaded.manifest()) {
            return Err(CatalogError::Setup(format!(
                "first-party connector {} {} is not the component its catalog entry \
                 approves (digest {}): build sourcebox from a clean checkout with the \
                 toolchain rust-toolchain.toml names, or, if you changed the connector, \
                 review the change and update its entry in manifests/ (the catalog test \
                 prints the new one)",
                entry.id, entry.version, entry.digest
            )));
        }
        let done = install(store, component, loaded.api_version(), loaded.manifest())?;
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

/// What the operator approved at install: the hosts the connector may
/// reach and the credentials it may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    /// Egress hosts (fixed ones; setup-field hosts are approved per source).
    pub hosts: Vec<String>,
    /// Declared credential names.
    pub credentials: Vec<String>,
}

/// One installed connector version.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    /// Connector id.
    pub id: String,
    /// Semantic version.
    pub version: String,
    /// SHA-256 of the component, hex.
    pub digest: String,
    /// Contract version it was built for.
    pub api_version: String,
    /// What describe() returned (parsed once per component digest and
    /// shared).
    pub manifest: Arc<Manifest>,
    /// What the operator approved.
    pub approved: Approved,
}

/// A source's connector and setup values.
#[derive(Debug, Clone)]
pub struct SourceSetup {
    /// The source.
    pub source: SourceRef,
    /// Its connector version.
    pub connector: Installed,
    /// Non-secret setup values, defaults filled in.
    pub setup: Vec<(String, String)>,
    /// The version whose approval the source waits for, when the owner
    /// chose to pause it meanwhile: no run of it starts until then.
    pub paused_for: Option<String>,
    /// A browser-login source whose session is erased when each run ends.
    pub ephemeral_session: bool,
}

/// Run limits the operator set for one connector; a limit left `None`
/// keeps the host's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    /// Seconds a run may take, its waits for the owner left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_secs: Option<u64>,
    /// Seconds a run may take in all, waits for the owner included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_secs: Option<u64>,
    /// Questions a run may ask the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub questions: Option<u32>,
    /// Linear memory, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Records emitted per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// Bytes of records emitted per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_bytes: Option<u64>,
    /// Outbound HTTP requests per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_requests: Option<u64>,
    /// Bytes of HTTP response bodies per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_response_bytes: Option<u64>,
    /// Log lines per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_lines: Option<u64>,
    /// Bytes of log lines per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
    /// Largest checkpoint, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_bytes: Option<u64>,
    /// Largest record, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_size: Option<u64>,
    /// Largest session a connector may store, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_bytes: Option<u64>,
    /// Largest OAuth grant a connector may store, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth_bytes: Option<u64>,
}

/// The most a connector may be given: a day of run time, 4 GiB of memory.
const MAX_TIME_SECS: u64 = 24 * 3600;
const MAX_MEMORY: u64 = 4 << 30;
const MIN_MEMORY: u64 = 1 << 20;

impl LimitOverrides {
    /// `base` with these limits in place of its own.
    pub fn apply(&self, base: &Limits) -> Limits {
        let time = self
            .time_secs
            .map_or(base.time, std::time::Duration::from_secs);
        Limits {
            time,
            // A longer time limit set for a connector takes the wall clock
            // with it.
            wall: match (self.wall_secs, self.time_secs) {
                (Some(wall), _) => std::time::Duration::from_secs(wall),
                (None, Some(_)) => base.wall.max(time),
                (None, None) => base.wall,
            },
            questions: self.questions.unwrap_or(base.questions),
            log_lines: self.log_lines.unwrap_or(base.log_lines),
            log_bytes: self.log_bytes.unwrap_or(base.log_bytes),
            checkpoint_bytes: self.checkpoint_bytes.unwrap_or(base.checkpoint_bytes),
            record_size: self.record_size.unwrap_or(base.record_size),
            session_bytes: self.session_bytes.unwrap_or(base.session_bytes),
            oauth_bytes: self.oauth_bytes.unwrap_or(base.oauth_bytes),
            memory: self
                .memory_bytes
                .map_or(base.memory, |m| usize::try_from(m).unwrap_or(usize::MAX)),
            records: self.records.unwrap_or(base.records),
            record_bytes: self.record_bytes.unwrap_or(base.record_bytes),
            http_requests: self.http_requests.unwrap_or(base.http_requests),
            http_response_bytes: self.http_response_bytes.unwrap_or(base.http_response_bytes),
            ..base.clone()
        }
    }

    /// These limits, with each one `newer` sets taking its place.
    pub fn updated(&self, newer: &Self) -> Self {
        Self {
            time_secs: newer.time_secs.or(self.time_secs),
            wall_secs: newer.wall_secs.or(self.wall_secs),
            questions: newer.questions.or(self.questions),
            log_lines: newer.log_lines.or(self.log_lines),
            log_bytes: newer.log_bytes.or(self.log_bytes),
            checkpoint_bytes: newer.checkpoint_bytes.or(self.checkpoint_bytes),
            record_size: newer.record_size.or(self.record_size),
            session_bytes: newer.session_bytes.or(self.session_bytes),
            oauth_bytes: newer.oauth_bytes.or(self.oauth_bytes),
            memory_bytes: newer.memory_bytes.or(self.memory_bytes),
            records: newer.records.or(self.records),
            record_bytes: newer.record_bytes.or(self.record_bytes),
            http_requests: newer.http_requests.or(self.http_requests),
            http_response_bytes: newer.http_response_bytes.or(self.http_response_bytes),
        }
    }

    /// Every limit of `limits`, as overrides (to show the effective ones).
    pub fn all(limits: &Limits) -> Self {
        Self {
            time_secs: Some(limits.time.as_secs()),
            wall_secs: Some(limits.wall.as_secs()),
            questions: Some(limits.questions),
            log_lines: Some(limits.log_lines),
            log_bytes: Some(limits.log_bytes),
            checkpoint_bytes: Some(limits.checkpoint_bytes),
            record_size: Some(limits.record_size),
            session_bytes: Some(limits.session_bytes),
            oauth_bytes: Some(limits.oauth_bytes),
            memory_bytes: Some(limits.memory as u64),
            records: Some(limits.records),
            record_bytes: Some(limits.record_bytes),
            http_requests: Some(limits.http_requests),
            http_response_bytes: Some(limits.http_response_bytes),
        }
    }

    fn check(&self) -> Result<(), CatalogError> {
        let refuse = |what: &str| Err(CatalogError::Setup(format!("{what}; nothing was changed")));
        if self.time_secs.is_some_and(|t| t == 0 || t > MAX_TIME_SECS) {
            return refuse("the time limit must be between 1 s and 24 h");
        }
        if self.wall_secs.is_some_and(|t| t == 0 || t > MAX_TIME_SECS) {
            return refuse("the wall-clock limit must be between 1 s and 24 h");
        }
        if self
            .memory_bytes
            .is_some_and(|m| !(MIN_MEMORY..=MAX_MEMORY).contains(&m))
        {
            return refuse("the memory limit must be between 1 MiB and 4 GiB");
        }
        for (name, value) in [
            ("records", self.records),
            ("record bytes", self.record_bytes),
            ("HTTP requests", self.http_requests),
            ("HTTP response bytes", self.http_response_bytes),
            ("log lines", self.log_lines),
            ("log bytes", self.log_bytes),
            ("checkpoint bytes", self.checkpoint_bytes),
            ("record size", self.record_size),
            ("session bytes", self.session_bytes),
            ("OAuth bytes", self.oauth_bytes),
        ] {
            if value == Some(0) {
                return refuse(&format!("the {name} limit must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The limits the operator set for connector `id` (every version).
pub fn connector_limits(store: &Store, id: &str) -> Result<LimitOverrides, CatalogError> {
    let text: Option<String> = store
        .conn()
        .prepare_cached("SELECT limits FROM connector_limits WHERE connector_id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    match text {
        None => Ok(LimitOverrides::default()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| CatalogError::Setup(format!("stored limits of {id}: {e}"))),
    }
}

/// Sets the run limits of connector `id` (an installed one); the default
/// (all `None`) removes them.
pub fn set_connector_limits(
    store: &Store,
    id: &str,
    limits: &LimitOverrides,
) -> Result<(), CatalogError> {
    latest(store, id)?;
    limits.check()?;
    if *limits == LimitOverrides::default() {
        store
            .conn()
            .execute("DELETE FROM connector_limits WHERE connector_id = ?1", [id])?;
    } else {
        store.conn().execute(
            "INSERT OR REPLACE INTO connector_limits (connector_id, limits) VALUES (?1, ?2)",
            params![id, serde_json::to_string(limits).expect("limits serialize")],
        )?;
    }
    Ok(())
}

impl SourceSetup {
    /// The credential names its connector requires.
    pub fn required(&self) -> Vec<&str> {
        self.connector
            .manifest
            .credentials
            .iter()
            .filter(|c| c.required)
            .map(|c| c.name.as_str())
            .collect()
    }
}

/// The capabilities a manifest asks for, as the operator reviews them.
pub fn approval_for(manifest: &Manifest) -> Approved {
    Approved {
        hosts: manifest
            .setup
            .egress
            .iter()
            .filter_map(|h| match h {
                EgressHost::Fixed(host) => Some(host.clone()),
                EgressHost::FromSetupField(_) => None,
            })
            .collect(),
        credentials: manifest
            .credentials
            .iter()
            .map(|c| c.name.clone())
            .collect(),
    }
}

fn components_dir(store: &Store) -> PathBuf {
    store.dir().join("components")
}

/// Records a described component as installed, storing its bytes.
pub fn install(
    store: &Store,
    component: &[u8],
    api_version: &str,
    manifest: &Manifest,
) -> Result<Installed, CatalogError> {
    let digest = crate::runtime::digest(component);
    let exists: bool = store.conn().query_row(
        "SELECT EXISTS (SELECT 1 FROM connectors WHERE id = ?1 AND version = ?2)",
        params![manifest.id, manifest.version],
        |r| r.get(0),
    )?;
    if exists {
        return Err(CatalogError::Exists(
            manifest.id.clone(),
            manifest.version.clone(),
        ));
    }
    let dir = components_dir(store);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let path = dir.join(format!("{digest}.wasm"));
    if !path.exists() {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(component)?;
        f.sync_all()?;
    }
    let installed = Installed {
        id: manifest.id.clone(),
        version: manifest.version.clone(),
        digest,
        api_version: api_version.to_owned(),
        manifest: Arc::new(manifest.clone()),
        approved: approval_for(manifest),
    };
    store.conn().execute(
        "INSERT INTO connectors (id, version, digest, api_version, manifest, approved, installed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            installed.id,
            installed.version,
            installed.digest,
            installed.api_version,
            serde_json::to_string(&installed.manifest).expect("manifest serializes"),
            serde_json::to_string(&installed.approved).expect("approval serializes"),
            now_ms()
        ],
    )?;
    Ok(installed)
}

const SELECT: &str = "SELECT id, version, digest, api_version, manifest, approved FROM connectors";

/// Manifests parsed so far, by component digest: a digest's manifest is
/// what that component described at install and never changes.
static MANIFESTS: LazyLock<Mutex<HashMap<String, Arc<Manifest>>>> = LazyLock::new(Mutex::default);

/// The manifest of the row (`digest` in column `at + 2`, manifest in
/// column `at + 4`), parsed once per digest.
fn parsed_manifest(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Arc<Manifest>> {
    let digest = r.get_ref(at + 2)?.as_str()?;
    if let Some(manifest) = MANIFESTS.lock().expect("manifests lock").get(digest) {
        return Ok(Arc::clone(manifest));
    }
    let manifest: Arc<Manifest> = Arc::new(
        serde_json::from_str(r.get_ref(at + 4)?.as_str()?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                at + 4,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })?,
    );
    MANIFESTS
        .lock()
        .expect("manifests lock")
        .insert(digest.to_owned(), Arc::clone(&manifest));
    Ok(manifest)
}

/// A row of [`SELECT`].
fn installed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Installed> {
    installed_at(r, 0)
}

/// The installed version in the columns of [`SELECT`], from column `at`
/// on.
fn installed_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Installed> {
    let approved = r.get_ref(at + 5)?.as_str()?;
    Ok(Installed {
        id: r.get(at)?,
        version: r.get(at + 1)?,
        digest: r.get(at + 2)?,
        api_version: r.get(at + 3)?,
        manifest: parsed_manifest(r, at)?,
        approved: serde_json::from_str(approved).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                at + 5,
                rusqlite::types::Type::Text,
                Box::new(e),
            )
        })?,
    })
}

/// Every installed connector version.
pub fn list(store: &Store) -> Result<Vec<Installed>, CatalogError> {
    let mut stmt = store
        .conn()
        .prepare(&format!("{SELECT} ORDER BY id, installed_at"))?;
    let rows = stmt.query_map([], installed_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The modalities proven for `installed`, oldest proof first.
pub fn proofs(store: &Store, installed: &Installed) -> Result<Vec<CatalogProof>, StoreError> {
    let mut stmt = store.conn().prepare_cached(
        "SELECT modality, evidence FROM proofs WHERE connector_id = ?1 AND version = ?2
         ORDER BY proven_at, modality",
    )?;
    let rows = stmt.query_map(params![installed.id, installed.version], |r| {
        Ok(CatalogProof {
            modality: r.get(0)?,
            evidence: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A setup modality's name, as stored and shown.
pub fn modality_name(modality: Modality) -> &'static str {
    match modality {
        Modality::StaticSecret => "static-secret",
        Modality::Oauth => "oauth",
        Modality::BrowserLogin => "browser-login",
        Modality::LocalImport => "local-import",
    }
}

/// Every installed connector version as a catalog entry (the shape of
/// `manifests/`), first-party or not: its digest, what it asks for, what
/// the operator approved, and the modalities proven for it.
pub fn entries(store: &Store) -> Result<Vec<CatalogEntry>, CatalogError> {
    list(store)?
        .into_iter()
        .map(|installed| {
            let proven = proofs(store, &installed)?;
            Ok(CatalogEntry {
                approved: installed.approved,
                proven,
                ..CatalogEntry::described(installed.digest, &installed.manifest)
            })
        })
        .collect()
}

/// The most recently installed version of `id`.
pub fn latest(store: &Store, id: &str) -> Result<Installed, CatalogError> {
    store
        .conn()
        .query_row(
            &format!("{SELECT} WHERE id = ?1 ORDER BY installed_at DESC LIMIT 1"),
            [id],
            installed_row,
        )
        .optional()?
        .ok_or_else(|| CatalogError::Unknown(id.to_owned()))
}

/// The component of an installed version, checked against its digest.
pub fn component(
    store: &Store,
    installed: &Installed,
) -> Result<crate::runtime::Wasm, CatalogError> {
    let wasm = crate::runtime::Wasm::new(fs::read(
        components_dir(store).join(format!("{}.wasm", installed.digest)),
    )?);
    if wasm.digest() != installed.digest {
        return Err(CatalogError::Tampered(format!(
            "{} {}",
            installed.id, installed.version
        )));
    }
    Ok(wasm)
}

/// Checks setup values against the manifest: unknown fields and missing
/// required ones are refused, defaults are filled in.
pub fn validate_setup(
    manifest: &Manifest,
    values: &[(String, String)],
) -> Result<Vec<(String, String)>, CatalogError> {
    let mut given: BTreeMap<&str, &str> = BTreeMap::new();
    for (k, v) in values {
        if !manifest.setup.fields.iter().any(|f| &f.name == k) {
            let known: Vec<&str> = manifest
                .setup
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .collect();
            return Err(CatalogError::Setup(format!(
                "{} has no setup field '{k}'; its fields are: {}",
                manifest.id,
                if known.is_empty() {
                    "(none)".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        given.insert(k, v);
    }
    let mut setup = Vec::new();
    for field in &manifest.setup.fields {
        match (given.get(field.name.as_str()), &field.default_value) {
            (Some(v), _) => setup.push((field.name.clone(), (*v).to_owned())),
            (None, Some(default)) => setup.push((field.name.clone(), default.clone())),
            (None, None) if field.required => {
                return Err(CatalogError::Setup(format!(
                    "{} needs setup field '{}' ({}); pass --set {}=VALUE",
                    manifest.id, field.name, field.label, field.name
                )));
            }
            (None, None) => {}
        }
    }
    Ok(setup)
}

/// What a newer manifest asks for that an older one did not: new
/// credential fields, changed credential classes or hosts, new egress
/// hosts and new setup modalities. Empty when it asks for nothing more.
pub fn manifest_changes(old: &Manifest, new: &Manifest) -> Vec<String> {
    let mut changes = Vec::new();
    for field in &new.credentials {
        let class = crate::vault::CredentialClass::from(field.class);
        match old.credentials.iter().find(|c| c.name == field.name) {
            None => changes.push(format!("new credential '{}' ({class})", field.name)),
            Some(before) => {
                let was = crate::vault::CredentialClass::from(before.class);
                if was != class {
                    changes.push(format!(
                        "credential '{}' changes class from {was} to {class}",
                        field.name
                    ));
                }
                let added: Vec<&str> = field
                    .hosts
                    .iter()
                    .filter(|h| !before.hosts.contains(h))
                    .map(String::as_str)
                    .collect();
                if !added.is_empty() || (!before.hosts.is_empty() && field.hosts.is_empty()) {
                    changes.push(format!(
                        "credential '{}' may be sent to more hosts ({})",
                        field.name,
                        if field.hosts.is_empty() {
                            "any of the connector's".to_owned()
                        } else {
                            added.join(", ")
                        }
                    ));
                }
            }
        }
    }
    for host in &new.setup.egress {
        if !old.setup.egress.contains(host) {
            changes.push(match host {
                EgressHost::Fixed(h) => format!("new network host {h}"),
                EgressHost::FromSetupField(f) => {
                    format!("new network host from setup field '{f}'")
                }
            });
        }
    }
    for modality in &new.setup.modalities {
        if !old.setup.modalities.contains(modality) {
            changes.push(format!("new setup modality {}", modality_name(*modality)));
        }
    }
    changes
}

/// A source's move to a newly installed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Upgrade {
    /// Source name.
    pub source: String,
    /// The version it ran.
    pub from: String,
    /// The new version.
    pub to: String,
    /// What the new version asks for beyond the old; empty when it was
    /// upgraded at once.
    pub changes: Vec<String>,
    /// What the source does until the owner approves: keeps running `from`,
    /// or is paused.
    pub meanwhile: Meanwhile,
}

/// What a source does while an upgrade of its connector waits for the
/// owner's approval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Meanwhile {
    /// Runs go on with the version it runs now.
    #[default]
    KeepRunning,
    /// No run starts, scheduled or manual, until the owner approves.
    Pause,
}

impl Meanwhile {
    /// [`Meanwhile::Pause`] when `paused`, else [`Meanwhile::KeepRunning`].
    pub fn paused_if(paused: bool) -> Self {
        if paused {
            Self::Pause
        } else {
            Self::KeepRunning
        }
    }
}

/// Offers a newly installed version to every source running an older
/// version of its connector: a source whose version asked for everything
/// the new one does moves to it now; any other waits for the owner's
/// approval (`connector approve`), and `meanwhile` says whether it keeps
/// running its version or is paused until then.
pub fn offer_upgrade(
    store: &Store,
    installed: &Installed,
    meanwhile: Meanwhile,
) -> Result<Vec<Upgrade>, CatalogError> {
    let newer = semver::Version::parse(&installed.version).ok();
    let on_connector: Vec<(i64, String, String)> = store
        .conn()
        .prepare(
            "SELECT id, name, connector_version FROM sources WHERE connector_id = ?1
             AND connector_version != ?2 ORDER BY name",
        )?
        .query_map(params![installed.id, installed.version], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut upgrades = Vec::new();
    for (source_id, source, from) in on_connector {
        let older = match (semver::Version::parse(&from).ok(), &newer) {
            (Some(from), Some(to)) => from < *to,
            _ => false,
        };
        if !older {
            continue;
        }
        let current = store
            .conn()
            .query_row(
                &format!("{SELECT} WHERE id = ?1 AND version = ?2"),
                params![installed.id, from],
                installed_row,
            )
            .optional()?
            .ok_or_else(|| CatalogError::Unknown(format!("{} {from}", installed.id)))?;
        let changes = manifest_changes(&current.manifest, &installed.manifest);
        if changes.is_empty() {
            store.conn().execute(
                "UPDATE sources SET connector_version = ?2, pending_version = NULL, pending_changes = NULL,
                    pending_paused = 0
                 WHERE id = ?1",
                params![source_id, installed.version],
            )?;
        } else {
            store.conn().execute(
                "UPDATE sources SET pending_version = ?2, pending_changes = ?3, pending_paused = ?4
                 WHERE id = ?1",
                params![
                    source_id,
                    installed.version,
                    serde_json::to_string(&changes).expect("json"),
                    meanwhile == Meanwhile::Pause
                ],
            )?;
        }
        upgrades.push(Upgrade {
            source,
            from,
            to: installed.version.clone(),
            meanwhile: if changes.is_empty() {
                Meanwhile::KeepRunning
            } else {
                meanwhile
            },
            changes,
        });
    }
    Ok(upgrades)
}

/// The owner approves the pending upgrade of connector `id` for `source`
/// (or for every source waiting on one): each moves to its pending
/// version. Returns the sources moved.
pub fn approve_upgrade(
    store: &Store,
    id: &str,
    source: Option<&str>,
) -> Result<Vec<Upgrade>, CatalogError> {
    let pending: Vec<(i64, String, String, String, String, bool)> = store
        .conn()
        .prepare(
            "SELECT id, name, connector_version, pending_version, pending_changes, pending_paused
             FROM sources
             WHERE connector_id = ?1 AND pending_version IS NOT NULL AND (?2 IS NULL OR name = ?2)
             ORDER BY name",
        )?
        .query_map(params![id, source], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    if pending.is_empty() {
        return Err(CatalogError::Setup(match source {
            Some(name) => format!("source '{name}' has no upgrade of {id} waiting for approval"),
            None => format!("no source has an upgrade of {id} waiting for approval"),
        }));
    }
    let mut approved = Vec::new();
    for (source_id, name, from, to, changes, paused) in pending {
        store.conn().execute(
            "UPDATE sources SET connector_version = ?2, pending_version = NULL, pending_changes = NULL,
                pending_paused = 0
             WHERE id = ?1 AND pending_version = ?2",
            params![source_id, to],
        )?;
        approved.push(Upgrade {
            source: name,
            from,
            to,
            changes: serde_json::from_str(&changes).unwrap_or_default(),
            meanwhile: Meanwhile::paused_if(paused),
        });
    }
    Ok(approved)
}

/// How a source is added.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddOptions<'a> {
    /// The setup modality; by default the first proven one the connector
    /// declares.
    pub modality: Option<&'a str>,
    /// Allow a modality not proven for this connector version.
    pub allow_unproven: bool,
    /// Non-public addresses the operator allowed (`--egress-allow`): a
    /// URL setup field may use plain http only to one of these.
    pub egress_allow: &'a [SocketAddr],
    /// Browser login only: erase the session when each run ends, so
    /// every run asks the owner to log in, instead of keeping it.
    pub ephemeral_session: bool,
}

/// Adds a source that runs the latest installed version of `connector`.
pub fn add_source(
    store: &Store,
    name: &str,
    connector: &str,
    values: &[(String, String)],
    options: AddOptions<'_>,
) -> Result<SourceSetup, CatalogError> {
    let installed = latest(store, connector)?;
    let setup = validate_setup(&installed.manifest, values)?;
    check_urls(&installed.manifest, &setup, options.egress_allow)?;
    let modality = choose_modality(store, &installed, options)?;
    if options.ephemeral_session && modality != "browser-login" {
        return Err(CatalogError::Setup(format!(
            "an ephemeral session is for browser login; this source would be set up with '{modality}'; drop the ephemeral option or choose --modality browser-login"
        )));
    }
    let source = store.add_source(name)?;
    store.conn().execute(
        "UPDATE sources SET connector_id = ?2, connector_version = ?3, setup = ?4, modality = ?5,
            ephemeral_session = ?6 WHERE id = ?1",
        params![
            source.source_id,
            installed.id,
            installed.version,
            setup_json(&setup),
            modality,
            options.ephemeral_session
        ],
    )?;
    Ok(SourceSetup {
        source,
        connector: installed,
        setup,
        paused_for: None,
        ephemeral_session: options.ephemeral_session,
    })
}

/// Setup values as stored: one JSON object, by field name.
fn setup_json(setup: &[(String, String)]) -> String {
    let object: BTreeMap<&str, &str> = setup
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    serde_json::to_string(&object).expect("a map of strings serializes")
}

/// Replaces a source's setup values, checked as when it was added. A
/// change makes its last verification stale: the values may point its
/// credentials at another host or account, so it is verified again before
/// it counts as ready.
pub fn set_setup(
    store: &Store,
    name: &str,
    values: &[(String, String)],
    egress_allow: &[SocketAddr],
) -> Result<SourceSetup, CatalogError> {
    let current = source_setup(store, name)?;
    let setup = validate_setup(&current.connector.manifest, values)?;
    check_urls(&current.connector.manifest, &setup, egress_allow)?;
    if setup != current.setup {
        store.conn().execute(
            "UPDATE sources SET setup = ?2, verified_at = NULL WHERE id = ?1",
            params![current.source.source_id, setup_json(&setup)],
        )?;
    }
    Ok(SourceSetup { setup, ..current })
}

/// The modality a new source uses: the one asked for, or the first proven
/// one; an unproven one only when the operator allows it.
fn choose_modality(
    store: &Store,
    installed: &Installed,
    options: AddOptions<'_>,
) -> Result<String, CatalogError> {
    let declared: Vec<&str> = installed
        .manifest
        .setup
        .modalities
        .iter()
        .map(|m| modality_name(*m))
        .collect();
    let proven: Vec<String> = proofs(store, installed)?
        .into_iter()
        .map(|p| p.modality)
        .collect();
    let states = declared
        .iter()
        .map(|m| {
            let state = if proven.iter().any(|p| p == m) {
                "proven"
            } else {
                "unproven"
            };
            format!("{m} ({state})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let chosen = match options.modality {
        Some(wanted) if !declared.contains(&wanted) => {
            return Err(CatalogError::Setup(format!(
                "{} {} cannot be set up with '{wanted}'; it offers: {states}",
                installed.id, installed.version
            )));
        }
        Some(wanted) => wanted,
        None => match declared
            .iter()
            .find(|m| proven.iter().any(|p| p == *m))
            .or(declared.first().filter(|_| options.allow_unproven))
        {
            Some(m) => m,
            None => {
                return Err(CatalogError::Setup(format!(
                    "{} {} has no proven setup modality yet ({states}); pass --allow-unproven to set a source up anyway (its first verification and successful run prove the modality)",
                    installed.id, installed.version
                )));
            }
        },
    };
    if !options.allow_unproven && !proven.iter().any(|p| p == chosen) {
        return Err(CatalogError::Setup(format!(
            "setting up {} {} with '{chosen}' is unproven ({states}); pass --allow-unproven to use it anyway",
            installed.id, installed.version
        )));
    }
    Ok(chosen.to_owned())
}

/// A setup field the connector takes an egress host from must be an https
/// URL, or plain http to an address the operator allowed.
fn check_urls(
    manifest: &Manifest,
    setup: &[(String, String)],
    egress_allow: &[SocketAddr],
) -> Result<(), CatalogError> {
    for host in &manifest.setup.egress {
        let EgressHost::FromSetupField(field) = host else {
            continue;
        };
        let Some((_, value)) = setup.iter().find(|(k, _)| k == field) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let uri: http::Uri = value.parse().map_err(|_| {
            CatalogError::Setup(format!(
                "setup field '{field}' must be a URL such as https://api.example.com, not '{value}'"
            ))
        })?;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        match uri.scheme_str() {
            Some("https") if !authority.is_empty() => {}
            Some("http")
                if authority
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| egress_allow.contains(&a)) => {}
            _ => {
                return Err(CatalogError::Setup(format!(
                    "setup field '{field}' must be an https URL ('{value}' is not); plain http is accepted only for an address allowed with --egress-allow ADDR:PORT"
                )));
            }
        }
    }
    Ok(())
}

/// A source's connector version and setup values, read in one statement.
pub fn source_setup(store: &Store, name: &str) -> Result<SourceSetup, CatalogError> {
    type Row = (
        SourceRef,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
        bool,
        Option<Installed>,
    );
    let row: Option<Row> = store
        .conn()
        .prepare_cached(
            "SELECT o.id, o.name, s.id, s.name,
                s.connector_id, s.connector_version, s.setup,
                CASE WHEN s.pending_paused = 1 THEN s.pending_version END, s.ephemeral_session,
                c.id, c.version, c.digest, c.api_version, c.manifest, c.approved
             FROM sources s JOIN owners o ON o.id = s.owner_id
             LEFT JOIN connectors c ON c.id = s.connector_id AND c.version = s.connector_version
             WHERE o.name = ?1 AND s.name = ?2",
        )?
        .query_row(params![DEFAULT_OWNER, name], |r| {
            let installed = match r.get_ref(9)? {
                rusqlite::types::ValueRef::Null => None,
                _ => Some(installed_at(r, 9)?),
            };
            Ok((
                crate::store::source_ref(r)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                installed,
            ))
        })
        .optional()?;
    let Some((source, id, version, setup, paused_for, ephemeral_session, connector)) = row else {
        return Err(StoreError::UnknownSource(name.to_owned()).into());
    };
    let (Some(id), Some(version)) = (id, version) else {
        return Err(CatalogError::NoConnector(name.to_owned()));
    };
    let connector = connector.ok_or_else(|| CatalogError::Unknown(format!("{id} {version}")))?;
    let setup: BTreeMap<String, String> = serde_json::from_str(&setup)
        .map_err(|e| CatalogError::Setup(format!("stored setup values: {e}")))?;
    Ok(SourceSetup {
        source,
        connector,
        setup: setup.into_iter().collect(),
        paused_for,
        ephemeral_session,
    })
}
