//! What the owner gives a source: credentials, answers kept as credentials, an imported session, each through the same schema checks.

use serde::{Deserialize, Serialize};

use super::error::SetupError;
use crate::catalog::{self, CatalogError};
use crate::store::Store;
use crate::vault::{CredentialClass, Provenance, Vault};

/// What an owner's cookie export came to, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportSummary {
    /// The session credential it was stored as.
    pub credential: String,
    /// Cookies kept: those a request to the connector's hosts carries.
    pub kept: usize,
    /// Cookies left out, for hosts the connector does not reach.
    pub other_hosts: usize,
    /// Cookies left out, expired.
    pub expired: usize,
}

/// Stores, as `source`'s session credential, the cookies of a browser's
/// cookie export (`cookies.txt` or a JSON array) that requests to its
/// connector's hosts carry; every other cookie in it is left out. Nothing
/// is stored when the export is unreadable or holds none of them.
pub fn import_session(
    vault: &Vault,
    actor: crate::vault::Actor<'_>,
    source: &str,
    export: &crate::vault::Secret,
    egress_allow: &[std::net::SocketAddr],
) -> Result<ImportSummary, SetupError> {
    let setup = catalog::source_setup(vault.store(), source)?;
    let manifest = &setup.connector.manifest;
    let Some(credential) = crate::contract::session_credential(manifest).map(str::to_owned) else {
        return Err(SetupError::NotNow(format!(
            "connector {} declares no session credential to import cookies into",
            setup.connector.id
        )));
    };
    let policy =
        crate::runtime::egress::EgressPolicy::for_source(manifest, &setup.setup, egress_allow);
    let imported = crate::cookies::from_export(export, policy.hosts())
        .map_err(|e| SetupError::NotNow(format!("{e}; nothing was stored")))?;
    vault.set(
        actor,
        &setup.source,
        crate::vault::NewCredential {
            name: &credential,
            class: CredentialClass::Session,
            provenance: Provenance::Imported,
            value: imported.session,
            expires_at: None,
        },
    )?;
    Ok(ImportSummary {
        credential,
        kept: imported.kept,
        other_hosts: imported.other_hosts,
        expired: imported.expired,
    })
}

/// The class `name` is stored as for `source`, once `value` passes its
/// connector's credentials schema: the name declared, the class the
/// declared one (taken from the schema when not given), the value matching
/// the declared pattern. Errors name the field and the rule, never the
/// value. A source without a connector takes any name, with the class
/// given. Every way a credential is stored from the owner's hand (typed,
/// or an answer kept) goes through here.
pub(super) fn checked_class(
    store: &Store,
    source: &str,
    name: &str,
    class: Option<CredentialClass>,
    value: &crate::vault::Secret,
) -> Result<CredentialClass, SetupError> {
    match catalog::source_setup(store, source) {
        Ok(setup) => {
            let manifest = &setup.connector.manifest;
            let Some(field) = manifest.credentials.iter().find(|c| c.name == name) else {
                let declared: Vec<&str> = manifest
                    .credentials
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                return Err(SetupError::NotNow(format!(
                    "connector {} declares no credential '{name}'; it declares: {}; nothing was stored",
                    setup.connector.id,
                    declared.join(", ")
                )));
            };
            let declared = CredentialClass::from(field.class);
            if let Some(given) = class.filter(|c| *c != declared) {
                return Err(SetupError::NotNow(format!(
                    "connector {} declares '{name}' as class {declared}, not {given}; nothing was stored",
                    setup.connector.id
                )));
            }
            if let Some(pattern) = &field.pattern {
                let re = regex::Regex::new(pattern).map_err(|e| {
                    SetupError::NotNow(format!(
                        "connector {} declares an invalid pattern for '{name}' ({e}); nothing was stored",
                        setup.connector.id
                    ))
                })?;
                let matches = std::str::from_utf8(value.expose_secret())
                    .map(|text| re.is_match(text))
                    .unwrap_or(false);
                if !matches {
                    return Err(SetupError::NotNow(format!(
                        "the value for '{name}' does not look like a {} (it must match {pattern}); nothing was stored",
                        field.label
                    )));
                }
            }
            Ok(declared)
        }
        Err(CatalogError::NoConnector(_)) => class.ok_or_else(|| {
            SetupError::NotNow(format!(
                "source '{source}' has no connector to declare '{name}'; pass --class"
            ))
        }),
        Err(e) => Err(e.into()),
    }
}

/// Answers interaction `id` with `value` and, with `keep_as`, keeps the
/// answer as that credential of the interaction's source, checked against
/// the connector's credentials schema first (as a credential the owner
/// types is): a refused name, class or value answers nothing and stores
/// nothing. A login is kept from its browser, never from an answer.
pub fn answer(
    vault: &Vault,
    actor: crate::vault::Actor<'_>,
    id: &str,
    value: crate::vault::Secret,
    keep_as: Option<&str>,
) -> Result<crate::interactions::Interaction, SetupError> {
    let store = vault.store();
    let asked = crate::interactions::find(store, id)?;
    let source = store.source(&asked.source)?;
    let keep = match keep_as {
        Some(_) if asked.kind == "login" => {
            return Err(SetupError::NotNow(
                "a login is kept from its browser, not from the answer; answer it without keeping it"
                    .into(),
            ));
        }
        Some(name) => Some((
            name,
            checked_class(store, &asked.source, name, None, &value)?,
        )),
        None => None,
    };
    vault.answer_interaction(actor, &source, id, &value)?;
    if let Some((name, class)) = keep {
        vault.set(
            actor,
            &source,
            crate::vault::NewCredential {
                name,
                class,
                provenance: Provenance::Interaction,
                value,
                expires_at: None,
            },
        )?;
    }
    Ok(crate::interactions::find(store, id)?)
}

/// Stores a credential the owner provides for `source`, checked against
/// its connector's credentials schema first: the name must be declared,
/// the class must be the declared one (taken from the schema when not
/// given), and the value must match the declared pattern. Errors name the
/// field and the rule, never the value. A source without a connector takes
/// any name, with the class given.
pub fn capture_credential(
    vault: &Vault,
    actor: crate::vault::Actor<'_>,
    source: &str,
    name: &str,
    class: Option<CredentialClass>,
    value: crate::vault::Secret,
    expires_at: Option<i64>,
) -> Result<crate::vault::CredentialMeta, SetupError> {
    let source_ref = vault.store().source(source)?;
    let class = checked_class(vault.store(), source, name, class, &value)?;
    Ok(vault.set(
        actor,
        &source_ref,
        crate::vault::NewCredential {
            name,
            class,
            provenance: Provenance::Owner,
            value,
            expires_at,
        },
    )?)
}
