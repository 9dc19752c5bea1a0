//! The contract version a component was built against, read from the
//! `sourcebox:api-version` custom section the SDK stamps into it, before
//! anything is compiled or instantiated.

use wasmparser::{Parser, Payload};

use super::failure::RuntimeError;

/// The custom section name the SDK writes.
pub const SECTION: &str = "sourcebox:api-version";

/// Contract versions this host serves. 0.1.1 only adds to 0.1.0 (a
/// batched emit), so one set of 0.1.1 bindings serves both: wasmtime links
/// a 0.1.0 component's imports and exports to them by semver.
pub const SUPPORTED: &[&str] = &["0.1.0", "0.1.1"];

/// Finds the stamped version anywhere in the component (the section lives
/// in the nested core module).
pub fn read(component: &[u8]) -> Result<String, RuntimeError> {
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload
            .map_err(|e| RuntimeError::Invalid(format!("not a WebAssembly component: {e}")))?;
        if let Payload::CustomSection(section) = payload
            && section.name() == SECTION
        {
            return String::from_utf8(section.data().to_vec())
                .map_err(|_| RuntimeError::Invalid("the api-version section is not UTF-8".into()));
        }
    }
    Err(RuntimeError::Invalid(format!(
        "the component has no '{SECTION}' section; build it with sourcebox-sdk"
    )))
}

/// Refuses a component built for a contract this host does not serve.
pub fn check(component: &[u8]) -> Result<String, RuntimeError> {
    supported(read(component)?)
}

/// Refuses a contract version this host does not serve.
pub fn supported(version: String) -> Result<String, RuntimeError> {
    if SUPPORTED.contains(&version.as_str()) {
        Ok(version)
    } else {
        Err(RuntimeError::IncompatibleApi {
            component: version,
            host: SUPPORTED.join(", "),
        })
    }
}
