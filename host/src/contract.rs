//! The connector contract: what a component declares (its manifest, its
//! credentials and setup) and what it exchanges with the host, as the WIT
//! under `wit/` defines them.
//!
//! `bindings` is generated from the newest contract version; the host
//! serves components of every version since the oldest it still accepts
//! (`runtime::api_version`). The rest of the host names these types from
//! here; only the runtime, which links a component, uses the bindings'
//! interfaces themselves.

/// Generated host bindings of the `sourcebox:connector@0.1.1` contract (it also serves components built against 0.1.0: 0.1.1 only adds).
#[allow(missing_docs, missing_debug_implementations)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.1",
        world: "sourcebox-connector",
        imports: {
            // Called once per record: a plain host call, no future to
            // poll. It may write a batch to SQLite, as it did when async.
            "sourcebox:connector/records.emit": trappable,
            "sourcebox:connector/records.emit-batch": trappable,
            default: async | trappable,
        },
        exports: { default: async },
        additional_derives: [PartialEq, Eq, serde::Serialize, serde::Deserialize],
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
        },
    });
}

pub use bindings::sourcebox::connector::types::{
    AccountIdentity, CollectRequest, ConnectorError, CredentialClass, CredentialField, EgressHost,
    Manifest, Modality, RunSummary, SetupDescriptor, SetupField, Stream,
};

impl From<CredentialClass> for crate::vault::CredentialClass {
    fn from(class: CredentialClass) -> Self {
        use CredentialClass as Wit;
        match class {
            Wit::Password => Self::Password,
            Wit::Token => Self::Token,
            Wit::Session => Self::Session,
            Wit::OtpSeed => Self::OtpSeed,
            Wit::Oauth => Self::Oauth,
        }
    }
}

/// The session credential `manifest` declares: where a browser login or an
/// imported cookie export is kept.
pub fn session_credential(manifest: &Manifest) -> Option<&str> {
    manifest
        .credentials
        .iter()
        .find(|c| c.class == CredentialClass::Session)
        .map(|c| c.name.as_str())
}
