//! A new version of a connector: what it asks for beyond the old one, offered to each source, approved source by source.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::error::CatalogError;
use super::installed::{Installed, SELECT, installed_row, modality_name};
use crate::contract::{EgressHost, Manifest};
use crate::store::Store;

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
