//! The host's integration tests, one binary: each links wasmtime, so one
//! link instead of ten. Each module is one part of the house, tested
//! through its real path (components built from source, SQLite files, HTTP
//! over loopback, Chromium for streamed logins).

mod common;

mod api;
mod browser;
mod cli;
mod github;
mod layout;
mod runs;
mod runtime;
mod setup;
