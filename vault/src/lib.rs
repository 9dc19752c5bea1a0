//! sourcebox's data directory and its credential vault, on their own:
//! nothing here runs a connector, so nothing here links wasmtime.
//!
//! - [`store`]: the data directory, its SQLite database and migrations,
//!   owners and sources;
//! - [`vault`]: every source's credentials (envelope encryption, key
//!   wrappers, audit, backup), values kept aside (answers, OAuth client
//!   secrets and verifiers), and how a stored OAuth grant becomes a
//!   request header.

pub mod store;
pub mod vault;
