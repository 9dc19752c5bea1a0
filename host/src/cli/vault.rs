//! `sourcebox vault`: key rotation, backup and restore.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::common::{CliError, writeln_out};
use crate::vault::{Actor, Vault};

/// `vault` subcommands.
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Re-wrap every data key under a new key-encryption key.
    RotateKek {
        /// Data keys re-wrapped per transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
    /// Write an age-encrypted backup of every credential.
    Export {
        /// age X25519 recipient (age1...).
        #[arg(long)]
        recipient: String,
        /// Output file; must not exist.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Restore credentials from a backup; existing ones are left alone.
    Import {
        /// Backup file.
        file: PathBuf,
        /// age identity file that decrypts it.
        #[arg(long)]
        identity: PathBuf,
    },
}

pub(super) fn vault(vault: &Vault, cmd: VaultCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        VaultCommand::RotateKek { batch } => {
            if batch == 0 {
                return Err(CliError::Usage("--batch must be at least 1".into()));
            }
            let rotation = vault.rotate_kek(Actor::OWNER_CLI, batch)?;
            writeln_out(
                out,
                format_args!(
                    "key-encryption key rotated to version {}; {} data keys re-wrapped",
                    rotation.version, rotation.rewrapped
                ),
            )
        }
        VaultCommand::Export { recipient, output } => {
            let count = vault.export(Actor::OWNER_CLI, &recipient, &output)?;
            writeln_out(
                out,
                format_args!("exported {count} credentials to {}", output.display()),
            )
        }
        VaultCommand::Import { file, identity } => {
            let report = vault.import(Actor::OWNER_CLI, &file, &identity)?;
            for s in &report.sources_created {
                writeln_out(out, format_args!("created source {s}"))?;
            }
            for c in &report.imported {
                writeln_out(out, format_args!("imported {c}"))?;
            }
            for c in &report.skipped {
                writeln_out(out, format_args!("skipped {c}: this vault already has it"))?;
            }
            Ok(())
        }
    }
}
