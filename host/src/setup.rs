//! The setup engine: everything about setting a source up is decided here,
//! as a [`SourceView`] or [`ConnectorView`] document. The CLI (and the HTTP
//! API) render these documents and nothing else; `--json` prints them as
//! they are.
//!
//! A source's lifecycle state is derived, never stored: from what the
//! vault holds for it (metadata only, nothing is decrypted), its last
//! verification, its runs and its pending interactions.

mod account;
mod capture;
mod connectors;
mod error;
mod ladder;
mod source_view;
mod view;

pub use account::{choose_account, confirm_identity};
pub(crate) use account::{record_proof, record_verification};
pub use capture::{ImportSummary, answer, capture_credential, import_session};
pub use connectors::{connector_preview, connector_view, connector_views};
pub use error::SetupError;
#[cfg(test)]
pub(crate) use ladder::FACTS;
pub use source_view::source_view;
pub use view::{
    AccountChoice, ConnectorView, CredentialFieldView, CredentialStatus, Identity, Lifecycle,
    ModalityView, NextStep, SetupFieldView, SourceView,
};
