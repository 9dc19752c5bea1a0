//! `sourcebox run`, `runs` and `records`: running a source and reading what runs did and kept.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::common::{CliError, async_runtime, launch_config, launcher, utc, writeln_out};
use crate::runs::{self};
use crate::store::{Store, StoreError};
use crate::vault::Vault;

pub(super) fn run_source(
    vault: Vault,
    source: &str,
    egress_allow: &[std::net::SocketAddr],
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let launcher = launcher(vault, launch_config(egress_allow))?;
    let run = async_runtime()?.block_on(launcher.launch(source, runs::Trigger::Manual))?;
    print_runs(std::slice::from_ref(&run), json, out)?;
    match &run.failure {
        None => Ok(()),
        Some(kind) => Err(CliError::Usage(format!(
            "the run failed: {kind}: {}",
            run.detail.as_deref().unwrap_or("")
        ))),
    }
}

pub(super) fn print_runs(
    runs: &[runs::RunRecord],
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if json {
        let doc = serde_json::to_string(runs).map_err(|e| CliError::Io(e.to_string()))?;
        return writeln_out(out, format_args!("{doc}"));
    }
    for run in runs {
        let outcome = match &run.failure {
            None if run.state == "succeeded" && run.trigger == "setup_verification" => {
                "verified".to_owned()
            }
            None if run.state == "succeeded" => format!("collected {} records", run.records),
            None => run.state.clone(),
            Some(kind) => format!("failed: {kind}: {}", run.detail.as_deref().unwrap_or("")),
        };
        let account = match &run.account {
            Some(account) => format!(", account {account}"),
            None => String::new(),
        };
        let when = match (run.finished_at, run.not_before) {
            (Some(end), _) => format!(
                "{}, took {}",
                utc(run.started_at),
                humantime::format_duration(Duration::from_millis(
                    end.saturating_sub(run.started_at).max(0) as u64
                ))
            ),
            (None, Some(at)) if run.state == "queued" => format!("due {}", utc(at)),
            (None, _) => format!("since {}", utc(run.started_at)),
        };
        writeln_out(
            out,
            format_args!(
                "run {} of {} ({}, {}{account}) {when}: {outcome}",
                run.id,
                run.source,
                run.trigger,
                run.connector.as_deref().unwrap_or("-")
            ),
        )?;
    }
    Ok(())
}

pub(super) fn records(
    dir: &Path,
    source: &str,
    stream: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let store = Store::open(dir)?;
    let source_ref = store.source(source)?;
    let mut stmt = store
        .conn()
        .prepare("SELECT data FROM records WHERE source_id = ?1 AND stream = ?2 ORDER BY key")
        .map_err(StoreError::from)?;
    let rows: Vec<String> = stmt
        .query_map(rusqlite::params![source_ref.source_id, stream], |r| {
            r.get(0)
        })
        .and_then(|rows| rows.collect())
        .map_err(StoreError::from)?;
    if json {
        writeln_out(out, format_args!("[{}]", rows.join(",")))
    } else {
        rows.iter()
            .try_for_each(|r| writeln_out(out, format_args!("{r}")))
    }
}
