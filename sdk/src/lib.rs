//! # sourcebox-sdk
//!
//! Everything a connector author needs to write a sourcebox connector in
//! Rust and build it for `wasm32-wasip2`: the [`Connector`] trait and the
//! [`export_connector!`] macro, typed [`Manifest`] builders, the source's
//! [`credentials`], [`records`] and [`log`].
//!
//! A connector runs for exactly one source. Every capability here is
//! already bound to that source by the host: there is no way to name
//! another source, read environment variables or files, or reach a host the
//! manifest does not declare.
//!
//! ```no_run
//! use sourcebox_sdk::{
//!     AccountIdentity, CollectRequest, Connector, ConnectorError, CredentialField, Manifest,
//!     RunSummary, Stream, credentials, export_connector, records,
//! };
//!
//! struct Hello;
//!
//! impl Connector for Hello {
//!     fn describe() -> Manifest {
//!         Manifest::new("hello", "0.1.0", "Hello")
//!             .stream(Stream::new("greetings", &["id"]))
//!             .credential(CredentialField::token("token", "API token"))
//!     }
//!
//!     fn verify(_setup: sourcebox_sdk::SetupValues) -> Result<AccountIdentity, ConnectorError> {
//!         let _token = credentials::get("token")?;
//!         Ok(AccountIdentity { id: "1".into(), display: "hello".into() })
//!     }
//!
//!     fn collect(_request: CollectRequest) -> Result<RunSummary, ConnectorError> {
//!         records::emit("greetings", &serde_json::json!({"id": 1, "text": "hi"}))?;
//!         Ok(RunSummary { records: 1 })
//!     }
//! }
//!
//! export_connector!(Hello);
//! ```
#![deny(missing_docs)]

// The generated bindings name this crate by its public path, so the same
// paths work inside it and in the connectors that use its macros.
extern crate self as sourcebox_sdk;

mod manifest;
mod secret;

pub mod credentials;
pub mod http;
pub mod interaction;
pub mod log;
pub mod records;

pub use secret::Secret;
pub use wit::sourcebox::connector::types::{
    AccountIdentity, CollectRequest, ConnectorError, RunSummary, SetupValues,
};

/// The value of setup field `name`, if the source has one.
///
/// ```
/// let setup = vec![("base_url".to_string(), "https://x.example".to_string())];
/// assert_eq!(sourcebox_sdk::setup_value(&setup, "base_url"), Some("https://x.example"));
/// ```
pub fn setup_value<'a>(setup: &'a [(String, String)], name: &str) -> Option<&'a str> {
    setup
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
pub use wit::sourcebox::connector::types::{
    CredentialClass, CredentialField, EgressHost, Manifest, Modality, SetupDescriptor, SetupField,
    Stream,
};

/// The contract version this SDK speaks, stamped into every component
/// (custom section `sourcebox:api-version`) so the host can refuse what it
/// cannot serve before instantiating it.
#[doc(hidden)]
#[allow(unsafe_code)] // a custom section is the only way to stamp the version
#[unsafe(link_section = "sourcebox:api-version")]
#[used]
pub static API_VERSION: [u8; 5] = *include_bytes!(concat!(env!("OUT_DIR"), "/api_version"));

/// A connector. Each run gets a fresh instance bound to one source, so the
/// functions take no `self`: state lives in credentials and checkpoints.
pub trait Connector {
    /// What the connector is and what it needs.
    ///
    /// ```
    /// # use sourcebox_sdk::{Manifest, Stream};
    /// let manifest = Manifest::new("hello", "0.1.0", "Hello").stream(Stream::new("greetings", &["id"]));
    /// assert_eq!(manifest.streams.len(), 1);
    /// ```
    fn describe() -> Manifest;

    /// Proves the credentials work and says whose account they belong to.
    fn verify(setup: SetupValues) -> Result<AccountIdentity, ConnectorError>;

    /// Logs in with password or OTP-seed credentials to obtain a session
    /// credential. Connectors with static tokens keep this default.
    fn authenticate(setup: SetupValues) -> Result<(), ConnectorError> {
        let _ = setup;
        Err(ConnectorError::Fatal(
            "this connector has no login step".into(),
        ))
    }

    /// Collects records into the source's streams.
    fn collect(request: CollectRequest) -> Result<RunSummary, ConnectorError>;
}

/// Exports a [`Connector`] implementation as the component's `connector`
/// interface. Use it once, in the connector's `lib.rs`.
///
/// ```ignore
/// sourcebox_sdk::export_connector!(MyConnector);
/// ```
#[macro_export]
macro_rules! export_connector {
    ($connector:ty) => {
        #[doc(hidden)]
        struct __SourceboxExport;

        impl $crate::__private::Guest for __SourceboxExport {
            fn describe() -> $crate::__private::WitManifest {
                <$connector as $crate::Connector>::describe()
            }
            fn verify(setup: $crate::SetupValues) -> Result<$crate::AccountIdentity, $crate::ConnectorError> {
                <$connector as $crate::Connector>::verify(setup)
            }
            fn authenticate(setup: $crate::SetupValues) -> Result<(), $crate::ConnectorError> {
                <$connector as $crate::Connector>::authenticate(setup)
            }
            fn collect(request: $crate::CollectRequest) -> Result<$crate::RunSummary, $crate::ConnectorError> {
                <$connector as $crate::Connector>::collect(request)
            }
        }

        $crate::__private::export!(__SourceboxExport with_types_in $crate::__private::wit);
    };
}

#[doc(hidden)]
#[allow(missing_docs, unsafe_code)] // generated canonical-ABI glue
pub mod wit {
    wit_bindgen::generate!({
        path: "../wit/since_v0.1.1",
        world: "sourcebox-connector",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_connector_world",
        default_bindings_module: "sourcebox_sdk::__private::wit",
        runtime_path: "sourcebox_sdk::__private::wit_bindgen_rt",
    });
}

#[doc(hidden)]
pub mod __private {
    pub use crate::wit;
    pub use crate::wit::__export_connector_world as export;
    pub use crate::wit::exports::sourcebox::connector::connector::Guest;
    pub use crate::wit::sourcebox::connector::types::Manifest as WitManifest;

    /// What the generated bindings call `runtime_path`.
    pub mod wit_bindgen_rt {
        pub use wit_bindgen::rt::*;
    }
}

impl From<credentials::CredentialError> for ConnectorError {
    fn from(e: credentials::CredentialError) -> Self {
        ConnectorError::Fatal(format!("credential unavailable: {}", e.name()))
    }
}

impl From<http::HttpError> for ConnectorError {
    fn from(e: http::HttpError) -> Self {
        match e {
            http::HttpError::Transport(why) => ConnectorError::UpstreamTransient(why),
            other => ConnectorError::Fatal(format!("request failed: {other:?}")),
        }
    }
}

impl From<records::RecordError> for ConnectorError {
    fn from(e: records::RecordError) -> Self {
        ConnectorError::Fatal(format!("record not accepted: {}", e.name()))
    }
}

impl From<records::BatchError> for ConnectorError {
    fn from(e: records::BatchError) -> Self {
        ConnectorError::Fatal(format!(
            "record {} of the batch not accepted: {}",
            e.index,
            e.error.name()
        ))
    }
}
