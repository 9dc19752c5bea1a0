//! The vault's integration tests, on real SQLite files and real crypto,
//! without the rest of the host: every credential bound to its row and
//! source, every key wrapper, the audit chain, backups, and writes that
//! survive kill -9.

mod crash;
mod credentials;
