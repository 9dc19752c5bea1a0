//! The `sourcebox` command line. It parses, unlocks and renders; every
//! decision lives in [`crate::store`] and [`crate::vault`].

mod common;
mod connectors;
mod credentials;
mod init;
mod interactions;
mod oauth;
mod runs;
mod serve;
mod sources;
mod vault;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::store::Store;
use crate::vault::VaultError;
use crate::vault::audit::{self, ChainCheck};
pub use common::CliError;
use common::{open_vault, writeln_out};
pub use connectors::render_connector;
use connectors::{ConnectorCommand, connector};
use credentials::{CredentialCommand, credential};
use init::{InitArgs, WrapperArg, init};
use interactions::{InteractionCommand, interaction};
use oauth::{OauthClientCommand, oauth_client};
use runs::{print_runs, records, run_source};
use serve::{ServeArgs, serve, serve_tls};
pub use sources::render_source;
use sources::{SourceCommand, source};
use vault::{VaultCommand, vault};

/// sourcebox: a self-hosted host for personal-data connectors.
#[derive(Debug, Parser)]
#[command(name = "sourcebox", version, about, long_about = None)]
pub struct Cli {
    /// The data directory (database, key material).
    #[arg(
        long,
        global = true,
        env = "SOURCEBOX_DATA_DIR",
        default_value = "./sourcebox-data"
    )]
    pub data_dir: PathBuf,
    /// Read the passphrase or PKCS#11 PIN from this open file descriptor
    /// instead of prompting (it is never accepted as an argument).
    #[arg(long, global = true, value_name = "FD")]
    pub unlock_fd: Option<u32>,
    /// Let connectors reach this non-public address (e.g. a loopback test
    /// fixture), exactly this IP and port. Repeatable.
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub egress_allow: Vec<std::net::SocketAddr>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data directory: database and key material.
    Init(InitArgs),
    /// Install and list connectors.
    #[command(subcommand)]
    Connector(ConnectorCommand),
    /// Manage sources.
    #[command(subcommand)]
    Source(SourceCommand),
    /// Run a source's connector now.
    Run {
        /// Source name.
        source: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Run scheduled and retried runs until stopped (Ctrl-C or SIGTERM).
    Serve(ServeArgs),
    /// Cancel a queued run, or stop a run in flight.
    Cancel {
        /// Run id (see `sourcebox runs`).
        run: String,
    },
    /// Questions runs asked their owner.
    #[command(subcommand)]
    Interaction(InteractionCommand),
    /// List runs, newest first.
    Runs {
        /// Only this source.
        source: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show a source's collected records.
    Records {
        /// Source name.
        source: String,
        /// Stream name.
        stream: String,
        /// JSON output (one array).
        #[arg(long)]
        json: bool,
    },
    /// Manage stored credentials (values are never printed).
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Vault-wide key management and backup.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The owner token of the HTTP API.
    #[command(subcommand)]
    OwnerToken(OwnerTokenCommand),
    /// OAuth clients made with providers, one per connector.
    #[command(subcommand)]
    OauthClient(OauthClientCommand),
}

/// `owner-token` subcommands.
#[derive(Debug, Subcommand)]
pub enum OwnerTokenCommand {
    /// Make a new owner token and print it once; the old one stops
    /// working at once (a running `serve` included).
    Rotate,
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of the audit log.
    Verify,
}

/// Runs a parsed command, writing results to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    let dir = cli.data_dir.as_path();
    match cli.command {
        Command::Init(args) => init(dir, cli.unlock_fd, args, out),
        Command::Connector(cmd) => connector(dir, cmd, out),
        Command::Source(cmd) => source(dir, cli.unlock_fd, &cli.egress_allow, cmd, out),
        Command::Run { source, json } => run_source(
            open_vault(dir, cli.unlock_fd)?,
            &source,
            &cli.egress_allow,
            json,
            out,
        ),
        Command::Serve(args) => {
            // Refuse a bad listen setup before a fresh data directory is made.
            let tls = serve_tls(&args)?;
            if !dir.exists() {
                // First start on a fresh data directory: make it (development
                // key wrapper; `sourcebox init` offers the others).
                init(
                    dir,
                    cli.unlock_fd,
                    InitArgs {
                        key_wrapper: WrapperArg::Local,
                        production: false,
                        pkcs11_module: None,
                        pkcs11_token: None,
                    },
                    out,
                )?;
            }
            serve(
                open_vault(dir, cli.unlock_fd)?,
                &cli.egress_allow,
                args,
                tls,
                out,
            )
        }
        Command::Cancel { run } => {
            let record = crate::runs::cancel(&Store::open(dir)?, &run)?;
            let what = match record.state.as_str() {
                "cancelled" => "cancelled",
                _ => "asked to stop; it ends cancelled at its next check",
            };
            writeln_out(out, format_args!("run {run} of {}: {what}", record.source))
        }
        Command::Interaction(cmd) => interaction(dir, cli.unlock_fd, cmd, out),
        Command::Runs { source, json } => {
            let store = Store::open(dir)?;
            // Runs whose process is gone are shown as what they are.
            crate::runs::recover(&store)?;
            print_runs(&crate::runs::list(&store, source.as_deref())?, json, out)
        }
        Command::Records {
            source,
            stream,
            json,
        } => records(dir, &source, &stream, json, out),
        Command::Credential(cmd) => credential(&open_vault(dir, cli.unlock_fd)?, cmd, out),
        Command::Vault(cmd) => vault(&open_vault(dir, cli.unlock_fd)?, cmd, out),
        Command::OwnerToken(OwnerTokenCommand::Rotate) => {
            let token = crate::tokens::rotate_owner(&Store::open(dir)?)?;
            writeln_out(
                out,
                format_args!(
                    "owner token (shown once, keep it safe): {}",
                    String::from_utf8_lossy(token.expose_secret())
                ),
            )
        }
        Command::OauthClient(cmd) => oauth_client(dir, cli.unlock_fd, &cli.egress_allow, cmd, out),
        Command::Audit(AuditCommand::Verify) => {
            match audit::verify(Store::open(dir)?.conn()).map_err(VaultError::from)? {
                ChainCheck::Intact { rows } => {
                    writeln_out(out, format_args!("audit chain intact: {rows} rows"))
                }
                ChainCheck::BrokenAt { seq } => Err(CliError::Usage(format!(
                    "audit chain broken at row {seq}: that row or the one before it was changed or removed"
                ))),
            }
        }
    }
}
