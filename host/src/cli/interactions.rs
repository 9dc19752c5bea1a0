//! `sourcebox interaction`: questions runs ask their owner.

use std::io::Write;
use std::path::Path;

use clap::Subcommand;

use super::common::{CliError, format_time, open_vault, print_json, read_value, writeln_out};
use crate::interactions;
use crate::runs::{self};
use crate::setup::{self};
use crate::store::Store;
use crate::vault::Actor;

/// `interaction` subcommands.
#[derive(Debug, Subcommand)]
pub enum InteractionCommand {
    /// List interactions waiting for an answer.
    List {
        /// Answered, declined and expired ones too.
        #[arg(long)]
        all: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Answer one; the answer is read from standard input or a no-echo
    /// prompt.
    Answer {
        /// Interaction id.
        id: String,
        /// Also keep the answer as this credential of the interaction's
        /// source (a credential its connector declares).
        #[arg(long, value_name = "NAME")]
        keep: Option<String>,
    },
    /// Decline one; the run is told the owner declined.
    Decline {
        /// Interaction id.
        id: String,
    },
}

pub(super) fn interaction(
    dir: &Path,
    unlock_fd: Option<u32>,
    cmd: InteractionCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        InteractionCommand::List { all, json } => {
            let store = Store::open(dir)?;
            // A question whose run's process is gone can no longer be answered.
            runs::recover(&store)?;
            let list = interactions::list(&store, all)?;
            if json {
                return print_json(&list, out);
            }
            if list.is_empty() {
                return writeln_out(out, format_args!("no interaction is waiting for an answer"));
            }
            for i in &list {
                writeln_out(
                    out,
                    format_args!(
                        "{} {} {} (run {}, {}, until {}): {}",
                        i.id,
                        i.source,
                        i.kind,
                        i.run,
                        i.state,
                        format_time(i.deadline),
                        i.prompt
                    ),
                )?;
            }
            Ok(())
        }
        InteractionCommand::Answer { id, keep } => {
            let vault = open_vault(dir, unlock_fd)?;
            runs::recover(vault.store())?;
            let asked = interactions::find(vault.store(), &id)?;
            let answer = read_value(&format!("answer to '{}': ", asked.prompt))?;
            setup::answer(&vault, Actor::OWNER_CLI, &id, answer, keep.as_deref())?;
            writeln_out(out, format_args!("answered {id} for {}", asked.source))?;
            if let Some(name) = keep {
                let meta = vault
                    .list(Some(&vault.store().source(&asked.source)?))?
                    .into_iter()
                    .find(|m| m.name == name)
                    .ok_or_else(|| CliError::Usage(format!("'{name}' was not kept")))?;
                writeln_out(
                    out,
                    format_args!(
                        "kept it as {}/{} ({}, version {})",
                        meta.source, meta.name, meta.class, meta.version
                    ),
                )?;
            }
            Ok(())
        }
        InteractionCommand::Decline { id } => {
            let declined = interactions::decline(&Store::open(dir)?, &id)?;
            writeln_out(out, format_args!("declined {id} for {}", declined.source))
        }
    }
}
