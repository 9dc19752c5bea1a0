//! sourcebox: a self-hosted host for personal-data connectors.
//!
//! This crate holds the host's boundaries, one module each:
//! [`store`] owns the data directory and its SQLite database, [`vault`] owns
//! every source's credentials (envelope encryption, key wrappers, audit), and
//! [`cli`] renders both for the operator.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod egress;
pub mod runs;
pub mod runtime;
pub mod store;
pub mod vault;
