//! A connector's view: its modalities, credentials and setup fields, and what it has proven.

use super::error::SetupError;
use super::view::{ConnectorView, ModalityView, field_views, setup_field_view};
use crate::catalog::{self};
use crate::contract::Manifest;
use crate::store::Store;

/// The view of the latest installed version of connector `id`.
pub fn connector_view(store: &Store, id: &str) -> Result<ConnectorView, SetupError> {
    let installed = catalog::latest(store, id)?;
    let proven = catalog::proofs(store, &installed)?;
    Ok(view_of(
        &installed.version,
        &installed.manifest,
        &installed.approved.hosts,
        &proven,
    ))
}

/// The view of every installed connector, at its latest version.
pub fn connector_views(store: &Store) -> Result<Vec<ConnectorView>, SetupError> {
    let mut ids: Vec<String> = catalog::list(store)?.into_iter().map(|c| c.id).collect();
    ids.dedup();
    ids.iter().map(|id| connector_view(store, id)).collect()
}

/// The view of a component that is not installed yet: what installing it
/// would approve. No modality of it is proven.
pub fn connector_preview(manifest: &Manifest) -> ConnectorView {
    view_of(
        &manifest.version,
        manifest,
        &catalog::approval_for(manifest).hosts,
        &[],
    )
}

pub(super) fn view_of(
    version: &str,
    manifest: &Manifest,
    hosts: &[String],
    proven: &[catalog::CatalogProof],
) -> ConnectorView {
    ConnectorView {
        id: manifest.id.clone(),
        version: version.to_owned(),
        name: manifest.name.clone(),
        modalities: manifest
            .setup
            .modalities
            .iter()
            .map(|m| {
                let name = catalog::modality_name(*m);
                let evidence = proven
                    .iter()
                    .find(|p| p.modality == name)
                    .map(|p| p.evidence.clone());
                ModalityView {
                    modality: name.to_owned(),
                    support: if evidence.is_some() {
                        "proven"
                    } else {
                        "unproven"
                    }
                    .to_owned(),
                    evidence,
                }
            })
            .collect(),
        credentials: field_views(manifest),
        setup_fields: manifest
            .setup
            .fields
            .iter()
            .map(|f| setup_field_view(f, f.default_value.clone()))
            .collect(),
        hosts: hosts.to_vec(),
    }
}
