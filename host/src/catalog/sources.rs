//! A source's connector, modality and setup values: chosen, checked and read back.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rusqlite::{OptionalExtension, params};

use super::error::CatalogError;
use super::installed::{Installed, installed_at, latest, modality_name, proofs};
use crate::contract::{EgressHost, Manifest};
use crate::store::{DEFAULT_OWNER, SourceRef, Store, StoreError};

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
pub(super) fn setup_json(setup: &[(String, String)]) -> String {
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
pub(super) fn choose_modality(
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
pub(super) fn check_urls(
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
