//! The credentials of the source this run is for.

pub use crate::wit::sourcebox::connector::credentials::CredentialError;
use crate::{Secret, wit::sourcebox::connector::credentials as wit};

/// The value of a credential the manifest declares.
///
/// ```no_run
/// let token = sourcebox_sdk::credentials::get("token")?;
/// # Ok::<(), sourcebox_sdk::credentials::CredentialError>(())
/// ```
pub fn get(name: &str) -> Result<Secret, CredentialError> {
    wit::get(name).map(Secret::new)
}

/// Stores a refreshed value for a declared credential.
///
/// ```no_run
/// sourcebox_sdk::credentials::put("session", "cookie=...")?;
/// # Ok::<(), sourcebox_sdk::credentials::CredentialError>(())
/// ```
pub fn put(name: &str, value: &str) -> Result<(), CredentialError> {
    wit::put(name, value)
}
