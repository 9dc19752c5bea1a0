//! sourcebox: a self-hosted host for personal-data connectors.
//!
//! This crate holds the host's boundaries, one module each:
//! - [`store`] and [`vault`]: the data directory, its SQLite database,
//!   owners and sources, and every source's credentials (envelope
//!   encryption, key wrappers, audit, backup): the `sourcebox-vault`
//!   crate, without wasmtime;
//! - [`contract`]: the connector contract (what a component declares and
//!   exchanges with the host), from the WIT under `wit/`;
//! - [`runtime`]: the sandbox a connector component runs in, bound to one
//!   source per run, and its capabilities (credentials, records, log,
//!   interaction, and HTTP through [`runtime::egress`]: where a run's
//!   outbound requests may go);
//! - [`catalog`]: installed connectors and the first-party ones;
//! - [`runs`]: `launch`, the one way a connector runs, the scheduler and
//!   retries;
//! - [`interactions`]: questions a run asks its owner;
//! - [`readiness`]: whether a source may run now, and why not: one
//!   decision for the launch, the scheduler and the setup view;
//! - [`setup`]: the setup engine: lifecycle, next steps, views;
//! - [`browser`] and [`cookies`]: logins in a streamed browser, and the
//!   sessions they (or an owner's cookie export) leave;
//! - [`oauth`]: provider authorization and the refresh of its grants;
//! - [`events`]: run events for live streams;
//! - [`inert`]: connector-supplied text, escaped before anyone reads it;
//! - [`api`] and [`tokens`]: the owner and client HTTP surfaces;
//! - [`cli`]: the operator's command line over all of them.
#![deny(unsafe_code)]

pub mod api;
pub mod browser;
pub mod catalog;
pub mod cli;
pub mod contract;
pub mod cookies;
pub mod events;
pub mod inert;
pub mod interactions;
pub mod oauth;
pub mod readiness;
pub mod runs;
pub mod runtime;
pub mod setup;
pub mod tokens;

// The data directory and the vault are their own crate, without wasmtime;
// the host names them as its own modules.
pub use sourcebox_vault::{store, vault};

#[cfg(test)]
mod queries;
