//! `sourcebox connector`: install (review first), list, show, limits, approve.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;

use super::common::{CliError, async_runtime, print_json, writeln_out};
use crate::catalog::{self};
use crate::contract::EgressHost;
use crate::runtime::{self, Runtime};
use crate::setup::{self};
use crate::store::Store;
use crate::vault::CredentialClass;

/// `connector` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Install a connector component after reviewing what it asks for.
    Install {
        /// The component (.wasm).
        path: PathBuf,
        /// Approve the capabilities shown without asking.
        #[arg(long)]
        yes: bool,
        /// Sources that must approve what this version asks for beyond
        /// theirs are paused until they do (default: they keep running the
        /// version they run).
        #[arg(long)]
        pause_until_approved: bool,
    },
    /// List installed connectors.
    List {
        /// JSON output: each installed version as a catalog entry, the
        /// shape of the files in `manifests/` (digest, capabilities,
        /// approvals, proven modalities).
        #[arg(long)]
        json: bool,
    },
    /// Approve an upgrade that asks for more (new credentials, hosts,
    /// modalities): the source moves to the new version.
    Approve {
        /// Connector id.
        id: String,
        /// Only this source (default: every source waiting on one).
        #[arg(long)]
        source: Option<String>,
    },
    /// Show what setting up a source of a connector takes.
    Show {
        /// Connector id.
        id: String,
        /// JSON output: the connector view document.
        #[arg(long)]
        json: bool,
    },
    /// Show or set a connector's run limits; a limit not given keeps its
    /// value, `--reset` returns all to the defaults.
    Limits {
        /// Connector id.
        id: String,
        /// Time a run may take, its waits for the owner left out (e.g. 90s, 10m).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        time: Option<Duration>,
        /// Time a run may take in all, waits for the owner included (e.g. 2h).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        wall: Option<Duration>,
        /// Questions a run may ask the owner.
        #[arg(long, value_name = "N")]
        questions: Option<u32>,
        /// Linear memory (e.g. 64MiB, 1GiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        memory: Option<u64>,
        /// Records a run may emit.
        #[arg(long, value_name = "N")]
        records: Option<u64>,
        /// Bytes of records a run may emit (e.g. 512MiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        record_bytes: Option<u64>,
        /// Outbound HTTP requests a run may send.
        #[arg(long, value_name = "N")]
        http_requests: Option<u64>,
        /// Bytes of HTTP response bodies a run may read (e.g. 1GiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        http_response_bytes: Option<u64>,
        /// Log lines a run may write.
        #[arg(long, value_name = "N")]
        log_lines: Option<u64>,
        /// Bytes of log lines a run may write (e.g. 4MiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        log_bytes: Option<u64>,
        /// Largest checkpoint (e.g. 1MiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        checkpoint_bytes: Option<u64>,
        /// Largest record (e.g. 1MiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        record_size: Option<u64>,
        /// Largest session a connector may store (e.g. 256KiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        session_bytes: Option<u64>,
        /// Largest OAuth grant a connector may store (e.g. 64KiB).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        oauth_bytes: Option<u64>,
        /// Return every limit to its default.
        #[arg(long, conflicts_with_all = ["time", "wall", "questions", "memory", "records", "record_bytes", "http_requests", "http_response_bytes", "log_lines", "log_bytes", "checkpoint_bytes", "record_size", "session_bytes", "oauth_bytes"])]
        reset: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// A byte size: a number with an optional unit (B, KB, MB, GB, KiB, MiB,
/// GiB).
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as 512MiB or 1GB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit '{other}'; use B, KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("'{text}' is too large"))
}

pub(super) fn connector(
    dir: &Path,
    cmd: ConnectorCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let store = Store::open(dir)?;
    match cmd {
        ConnectorCommand::Limits {
            id,
            time,
            wall,
            questions,
            memory,
            records,
            record_bytes,
            http_requests,
            http_response_bytes,
            log_lines,
            log_bytes,
            checkpoint_bytes,
            record_size,
            session_bytes,
            oauth_bytes,
            reset,
            json,
        } => {
            let stored = catalog::connector_limits(&store, &id)?;
            let given = catalog::LimitOverrides {
                time_secs: time.map(|t| t.as_secs()),
                wall_secs: wall.map(|t| t.as_secs()),
                questions,
                memory_bytes: memory,
                records,
                record_bytes,
                http_requests,
                http_response_bytes,
                log_lines,
                log_bytes,
                checkpoint_bytes,
                record_size,
                session_bytes,
                oauth_bytes,
            };
            let limits = if reset {
                catalog::LimitOverrides::default()
            } else {
                stored.updated(&given)
            };
            if reset || given != catalog::LimitOverrides::default() {
                catalog::set_connector_limits(&store, &id, &limits)?;
            } else {
                catalog::latest(&store, &id)?;
            }
            print_limits(&id, &limits, json, out)
        }
        ConnectorCommand::Install {
            path,
            yes,
            pause_until_approved,
        } => install(&store, &path, yes, pause_until_approved, out),
        ConnectorCommand::Approve { id, source } => {
            for upgrade in catalog::approve_upgrade(&store, &id, source.as_deref())? {
                writeln_out(
                    out,
                    format_args!(
                        "source {} now runs {id} {} (was {}); approved: {}",
                        upgrade.source,
                        upgrade.to,
                        upgrade.from,
                        upgrade.changes.join("; ")
                    ),
                )?;
            }
            Ok(())
        }
        ConnectorCommand::Show { id, json } => {
            let view = setup::connector_view(&Store::open(dir)?, &id)?;
            if json {
                return print_json(&view, out);
            }
            write!(out, "{}", render_connector(&view))
                .map_err(|e| CliError::Io(format!("cannot write output: {e}")))
        }
        ConnectorCommand::List { json } => {
            if json {
                let doc = serde_json::to_string_pretty(&catalog::entries(&store)?)
                    .map_err(|e| CliError::Io(e.to_string()))?;
                return writeln_out(out, format_args!("{doc}"));
            }
            let installed = catalog::list(&store)?;
            installed.iter().try_for_each(|c| {
                writeln_out(
                    out,
                    format_args!("{} {} ({})", c.id, c.version, c.manifest.name),
                )
            })
        }
    }
}

/// A connector's limits: each effective value, and whether it is the
/// connector's own or the default.
fn print_limits(
    id: &str,
    limits: &catalog::LimitOverrides,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let effective = limits.apply(&runtime::Limits::default());
    if json {
        let doc = serde_json::json!({
            "connector": id,
            "set": limits,
            "effective": catalog::LimitOverrides::all(&effective),
        });
        return writeln_out(out, format_args!("{doc}"));
    }
    let mark = |set: bool| if set { "" } else { " (default)" };
    let rows: [(&str, String, bool); 14] = [
        (
            "time",
            humantime::format_duration(effective.time).to_string(),
            limits.time_secs.is_some(),
        ),
        (
            "wall clock",
            humantime::format_duration(effective.wall).to_string(),
            limits.wall_secs.is_some(),
        ),
        (
            "questions",
            effective.questions.to_string(),
            limits.questions.is_some(),
        ),
        (
            "memory",
            format!("{} bytes", effective.memory),
            limits.memory_bytes.is_some(),
        ),
        (
            "records",
            effective.records.to_string(),
            limits.records.is_some(),
        ),
        (
            "record bytes",
            effective.record_bytes.to_string(),
            limits.record_bytes.is_some(),
        ),
        (
            "record size",
            format!("{} bytes", effective.record_size),
            limits.record_size.is_some(),
        ),
        (
            "HTTP requests",
            effective.http_requests.to_string(),
            limits.http_requests.is_some(),
        ),
        (
            "HTTP response bytes",
            effective.http_response_bytes.to_string(),
            limits.http_response_bytes.is_some(),
        ),
        (
            "log lines",
            effective.log_lines.to_string(),
            limits.log_lines.is_some(),
        ),
        (
            "log bytes",
            effective.log_bytes.to_string(),
            limits.log_bytes.is_some(),
        ),
        (
            "checkpoint bytes",
            effective.checkpoint_bytes.to_string(),
            limits.checkpoint_bytes.is_some(),
        ),
        (
            "session bytes",
            effective.session_bytes.to_string(),
            limits.session_bytes.is_some(),
        ),
        (
            "OAuth bytes",
            effective.oauth_bytes.to_string(),
            limits.oauth_bytes.is_some(),
        ),
    ];
    writeln_out(out, format_args!("limits of {id}:"))?;
    for (name, value, set) in rows {
        writeln_out(out, format_args!("  {name} {value}{}", mark(set)))?;
    }
    Ok(())
}

/// `connector install PATH`: what the component asks for, to review;
/// with `--yes`, installed, and each source of an older version upgraded
/// or asked for approval.
fn install(
    store: &Store,
    path: &Path,
    yes: bool,
    pause_until_approved: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
    let runtime = Runtime::new(&store.dir().join("cache"))?;
    let review = async_runtime()?.block_on(catalog::review(&runtime, bytes))?;
    let manifest = review.manifest();
    writeln_out(
        out,
        format_args!("{} {} ({})", manifest.id, manifest.version, manifest.name),
    )?;
    writeln_out(
        out,
        format_args!(
            "  streams: {}",
            manifest
                .streams
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;
    for c in &manifest.credentials {
        writeln_out(
            out,
            format_args!(
                "  credential {} ({}, {})",
                c.name,
                CredentialClass::from(c.class),
                if c.required { "required" } else { "optional" }
            ),
        )?;
    }
    let hosts: Vec<String> = manifest
        .setup
        .egress
        .iter()
        .map(|h| match h {
            EgressHost::Fixed(host) => host.clone(),
            EgressHost::FromSetupField(field) => {
                format!("the host of setup field '{field}'")
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "none".to_owned()
    } else {
        hosts.join(", ")
    };
    writeln_out(out, format_args!("  network hosts: {hosts}"))?;
    if !yes {
        return Err(CliError::Usage(
            "review the capabilities above, then run again with --yes to approve and install"
                .into(),
        ));
    }
    let meanwhile = catalog::Meanwhile::paused_if(pause_until_approved);
    let (installed, upgrades) = catalog::install_reviewed(store, &review, meanwhile)?;
    writeln_out(
        out,
        format_args!(
            "installed {} {} (sha256 {})",
            installed.id, installed.version, installed.digest
        ),
    )?;
    for upgrade in upgrades {
        if upgrade.changes.is_empty() {
            writeln_out(
                out,
                format_args!(
                    "  source {} upgraded from {} to {} (it asks for nothing more)",
                    upgrade.source, upgrade.from, upgrade.to
                ),
            )?;
        } else {
            let meanwhile = match upgrade.meanwhile {
                catalog::Meanwhile::KeepRunning => {
                    format!("it keeps running {} meanwhile", upgrade.from)
                }
                catalog::Meanwhile::Pause => "it is paused until then".to_owned(),
            };
            writeln_out(
                out,
                format_args!(
                    "  source {} needs approval to move from {} to {}; {meanwhile}. {} asks for: {}. Approve with: sourcebox connector approve {} --source {}",
                    upgrade.source,
                    upgrade.from,
                    upgrade.to,
                    upgrade.to,
                    upgrade.changes.join("; "),
                    installed.id,
                    upgrade.source
                ),
            )?;
        }
    }
    Ok(())
}

/// The text form of a connector view.
pub fn render_connector(view: &setup::ConnectorView) -> String {
    let mut text = format!("{} {} ({})\n", view.id, view.version, view.name);
    for m in &view.modalities {
        text += &format!(
            "  modality {}: {}{}\n",
            m.modality,
            m.support,
            m.evidence
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    for c in &view.credentials {
        text += &format!(
            "  credential {} ({}, {}{}): {}\n",
            c.name,
            c.class,
            if c.required { "required" } else { "optional" },
            if c.secret { ", secret" } else { "" },
            c.label
        );
    }
    for f in &view.setup_fields {
        text += &format!(
            "  setup {} ({}): default {}\n",
            f.name,
            f.label,
            f.value.as_deref().unwrap_or("-")
        );
    }
    for h in &view.hosts {
        text += &format!("  host {h}\n");
    }
    text
}
