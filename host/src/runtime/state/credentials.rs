//! The credentials capability: `get` and `put` of the run's own source, by name, through the run's credential capability; nothing else is reachable.

use wasmtime::component::{HasSelf, Linker};

use super::*;
use crate::contract::bindings::sourcebox::connector::credentials::{self, CredentialError};

/// Adds the credentials interface to `linker`, served by each run's state.
pub(in crate::runtime) fn link(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    credentials::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
}

impl credentials::Host for RunState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, CredentialError>> {
        let Some(bound) = self.bound.as_mut() else {
            return Ok(Err(CredentialError::Undeclared));
        };
        let mut credentials = bound.credentials.lock().expect("credentials lock");
        // A host fault (audit log, database) stops the run.
        let value = credentials
            .get(&name)
            .map_err(|e| wasmtime::Error::msg(format!("credential resolution failed: {e}")))?;
        Ok(
            value.and_then(|secret| match std::str::from_utf8(secret.expose_secret()) {
                Ok(text) => Ok(text.to_owned()),
                Err(_) => Err(CredentialError::Unrecoverable),
            }),
        )
    }

    async fn put(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), CredentialError>> {
        let Some(bound) = self.bound.as_mut() else {
            return Ok(Err(CredentialError::Undeclared));
        };
        let mut credentials = bound.credentials.lock().expect("credentials lock");
        credentials.put(&name, value).map_err(wasmtime::Error::msg)
    }
}
