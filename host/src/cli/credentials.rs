//! `sourcebox credential`: a source's credentials, set, listed, revoked.

use std::io::Write;
use std::time::UNIX_EPOCH;

use clap::{Subcommand, ValueEnum};

use super::common::{CliError, print_table, read_value, writeln_out};
use crate::setup::{self};
use crate::vault::{Actor, CredentialClass, Vault};

/// `credential` subcommands.
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Store a value read from standard input (hidden prompt on a terminal).
    Set {
        /// Source name.
        source: String,
        /// Credential name, as the connector declares it.
        name: String,
        /// Credential class; taken from the connector's schema when the
        /// source has a connector.
        #[arg(long, value_enum)]
        class: Option<ClassArg>,
        /// Expiry, RFC 3339 (e.g. 2027-01-31T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        expires: Option<String>,
    },
    /// List credential metadata (never values).
    List {
        /// Only this source.
        source: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a credential: its data key is destroyed, the record stays.
    Revoke {
        /// Source name.
        source: String,
        /// Credential name.
        name: String,
    },
    /// Delete a credential and its data key.
    Rm {
        /// Source name.
        source: String,
        /// Credential name.
        name: String,
    },
}

/// Credential classes accepted on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClassArg {
    /// Password.
    Password,
    /// API key, personal access token, app password.
    Token,
    /// Cookies, browser storage state.
    Session,
    /// TOTP/HOTP seed.
    OtpSeed,
    /// OAuth bundle (JSON).
    Oauth,
}

pub(super) fn credential(
    vault: &Vault,
    cmd: CredentialCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        CredentialCommand::Set {
            source,
            name,
            class,
            expires,
        } => {
            let expires_at = expires
                .map(|t| {
                    humantime::parse_rfc3339_weak(&t)
                        .map(|st| st.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0))
                        .map_err(|_| CliError::Usage(format!("--expires '{t}' is not an RFC 3339 time such as 2027-01-31T00:00:00Z")))
                })
                .transpose()?;
            vault.store().source(&source)?;
            let value = read_value(&format!("value for {source}/{name}: "))?;
            let class = class.map(|class| match class {
                ClassArg::Password => CredentialClass::Password,
                ClassArg::Token => CredentialClass::Token,
                ClassArg::Session => CredentialClass::Session,
                ClassArg::OtpSeed => CredentialClass::OtpSeed,
                ClassArg::Oauth => CredentialClass::Oauth,
            });
            let meta = setup::capture_credential(
                vault,
                Actor::OWNER_CLI,
                &source,
                &name,
                class,
                value,
                expires_at,
            )?;
            tracing::info!(source = %meta.source, name = %meta.name, version = meta.version, "credential stored");
            writeln_out(
                out,
                format_args!(
                    "stored {}/{} ({}, version {}, {})",
                    meta.source, meta.name, meta.class, meta.version, meta.hint
                ),
            )
        }
        CredentialCommand::List { source, json } => {
            let source_ref = source.map(|s| vault.store().source(&s)).transpose()?;
            let metas = vault.list(source_ref.as_ref())?;
            if json {
                let doc = serde_json::to_string_pretty(&metas)
                    .map_err(|e| CliError::Io(e.to_string()))?;
                writeln_out(out, format_args!("{doc}"))
            } else {
                print_table(&metas, out)
            }
        }
        CredentialCommand::Revoke { source, name } => {
            vault.revoke(Actor::OWNER_CLI, &vault.store().source(&source)?, &name)?;
            writeln_out(
                out,
                format_args!("revoked {source}/{name}; its data key is destroyed"),
            )
        }
        CredentialCommand::Rm { source, name } => {
            vault.remove(Actor::OWNER_CLI, &vault.store().source(&source)?, &name)?;
            writeln_out(out, format_args!("deleted {source}/{name}"))
        }
    }
}
