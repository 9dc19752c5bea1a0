//! Installed connectors: each version's component, stored by digest in the data directory, the manifest it described at install, and the first-party connectors shipped with the host.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::error::CatalogError;
use crate::contract::{EgressHost, Manifest, Modality};
use crate::store::{Store, StoreError, now_ms};

/// First-party connector components, built from `connectors/` by the build
/// script and embedded in the binary, with their catalog entries.
pub const FIRST_PARTY: &[(&[u8], &str)] = &[(
    include_bytes!(env!("SOURCEBOX_COMPONENT_CONNECTOR_GITHUB")),
    include_str!("../../../manifests/github.json"),
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

pub(super) fn components_dir(store: &Store) -> PathBuf {
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

pub(super) const SELECT: &str =
    "SELECT id, version, digest, api_version, manifest, approved FROM connectors";

/// Manifests parsed so far, by component digest: a digest's manifest is
/// what that component described at install and never changes.
pub(super) static MANIFESTS: LazyLock<Mutex<HashMap<String, Arc<Manifest>>>> =
    LazyLock::new(Mutex::default);

/// The manifest of the row (`digest` in column `at + 2`, manifest in
/// column `at + 4`), parsed once per digest.
pub(super) fn parsed_manifest(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Arc<Manifest>> {
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
pub(super) fn installed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Installed> {
    installed_at(r, 0)
}

/// The installed version in the columns of [`SELECT`], from column `at`
/// on.
pub(super) fn installed_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Installed> {
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
