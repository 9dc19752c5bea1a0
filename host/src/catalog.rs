//! Installed connectors: each version's component (stored by digest in the
//! data directory), the manifest it described at install, and what the
//! operator approved. Sources name the connector version they run.

mod error;
mod install;
mod installed;
mod limits;
mod sources;
mod upgrade;

pub use error::CatalogError;
pub use install::{Review, install_first_party, install_reviewed, install_shipped, review};
pub use installed::{
    Approved, CatalogEntry, CatalogProof, EntryCredential, FIRST_PARTY, Installed, approval_for,
    component, entries, install, latest, list, modality_name, proofs,
};
pub use limits::{LimitOverrides, connector_limits, set_connector_limits};
pub use sources::{AddOptions, SourceSetup, add_source, set_setup, source_setup, validate_setup};
pub use upgrade::{Meanwhile, Upgrade, approve_upgrade, manifest_changes, offer_upgrade};
