//! Why a component could not be loaded, and why a run failed.

use super::limits::Exhausted;
use crate::contract::ConnectorError;

/// Why loading a component failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Not a usable component.
    #[error("invalid connector component: {}", crate::inert::Inert(.0))]
    Invalid(String),
    /// Built for a contract version this host does not serve.
    #[error(
        "the component was built for sourcebox:connector API {}; this host serves API {host}; rebuild it with a matching sourcebox-sdk",
        crate::inert::Inert(component)
    )]
    IncompatibleApi {
        /// Version stamped in the component.
        component: String,
        /// Versions this host serves.
        host: String,
    },
    /// Engine setup.
    #[error("runtime: {0}")]
    Engine(String),
}

/// Why a run failed, typed as the runs module stores it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunFailure {
    /// A limit was hit.
    #[error("resource exhausted: {0:?}")]
    ResourceExhausted(Exhausted),
    /// The guest trapped (panic, unreachable, bad memory access).
    #[error("connector trapped: {}", crate::inert::Inert(.0))]
    ConnectorTrap(String),
    /// The connector returned an error.
    #[error("{}", connector_message(.0))]
    Connector(ConnectorError),
    /// A request to a host or address the run may not reach.
    #[error("egress denied: {}", crate::inert::Inert(.0))]
    EgressDenied(String),
    /// The run failed after a credential it asked for turned out revoked.
    #[error("credential '{0}' is revoked")]
    CredentialRevoked(String),
    /// The run failed after a credential it asked for did not decrypt.
    #[error("credential '{0}' cannot be decrypted")]
    CredentialUnrecoverable(String),
    /// The instance could not be created (e.g. it imports something this
    /// host does not grant).
    #[error("connector could not be instantiated: {}", crate::inert::Inert(.0))]
    Instantiation(String),
    /// The owner did not answer an interaction before its deadline.
    #[error("the owner did not answer interaction {0} before its deadline")]
    InteractionTimeout(String),
    /// Cancelled by the owner.
    #[error("cancelled by the owner")]
    Cancelled,
}

/// A connector's error in words: the connector's own message, with what
/// kind of failure it is.
fn connector_message(e: &ConnectorError) -> String {
    match e {
        ConnectorError::AuthRejected(m) => kind_and("the provider refused the credentials", m),
        ConnectorError::AuthInsufficient(m) => kind_and("the credentials lack a permission", m),
        ConnectorError::RateLimited(Some(secs)) => {
            format!("rate limited by the provider; retry after {secs} s")
        }
        ConnectorError::RateLimited(None) => "rate limited by the provider".to_owned(),
        ConnectorError::UpstreamTransient(m) => kind_and("temporary provider failure", m),
        ConnectorError::Fatal(m) => kind_and("the connector gave up", m),
    }
}

/// `kind: message`, or the message alone when it already says what kind
/// of failure it is (not "refused the credentials: ... refused the
/// credentials").
fn kind_and(kind: &str, message: &str) -> String {
    if message.to_lowercase().contains(&kind.to_lowercase()) {
        message.to_owned()
    } else {
        format!("{kind}: {message}")
    }
}

/// The error a cancelled run's guest is stopped with.
#[derive(Debug)]
pub(crate) struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}
