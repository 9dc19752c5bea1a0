//! `sourcebox source`: add, set up, show, verify, schedule, account choices, remove.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;

use std::sync::Mutex;

use super::common::{
    CliError, async_runtime, field_values, format_time, launch_config, launcher, open_vault,
    print_json, read_export, read_field, read_path, writeln_out,
};
use crate::catalog::{self};
use crate::oauth;
use crate::runs::scheduler::{self, Schedule};
use crate::runs::{self};
use crate::setup::{self};
use crate::store::Store;
use crate::vault::Actor;

/// `source` subcommands.
#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Add a source, optionally running an installed connector.
    Add {
        /// Source name.
        name: String,
        /// Installed connector id.
        #[arg(long)]
        connector: Option<String>,
        /// A setup field value, FIELD=VALUE (repeatable; never a secret).
        #[arg(long = "set", value_name = "FIELD=VALUE", requires = "connector")]
        set: Vec<String>,
        /// How to set it up (static-secret, oauth, browser-login,
        /// local-import); by default the first proven one.
        #[arg(long, requires = "connector")]
        modality: Option<String>,
        /// Allow a modality not yet proven for this connector version.
        #[arg(long, requires = "connector")]
        allow_unproven: bool,
        /// Browser login: erase the session when each run ends, so every
        /// run asks you to log in (by default it is kept, sealed, for
        /// later runs).
        #[arg(long, requires = "connector")]
        ephemeral_session: bool,
        /// JSON output: the source's setup view.
        #[arg(long)]
        json: bool,
    },
    /// Change setup values (non-secret fields such as a base URL); the
    /// source is verified again before it counts as ready.
    Configure {
        /// Source name.
        name: String,
        /// A setup field value, FIELD=VALUE (repeatable; never a secret).
        #[arg(long = "set", value_name = "FIELD=VALUE", required = true)]
        set: Vec<String>,
        /// JSON output: the source's setup view.
        #[arg(long)]
        json: bool,
    },
    /// Show a source's setup state and what to do next.
    Show {
        /// Source name.
        name: String,
        /// JSON output: the setup view document.
        #[arg(long)]
        json: bool,
    },
    /// Walk a source's next setup steps: ask for missing credentials
    /// (secret ones without echo), then verify them.
    Setup {
        /// Source name.
        name: String,
        /// JSON output: the final setup view.
        #[arg(long)]
        json: bool,
    },
    /// Import the session from a cookie export of a browser logged in to
    /// the site (cookies.txt, or a JSON array of cookies); only the cookies
    /// for the connector's hosts are kept.
    Import {
        /// Source name.
        name: String,
        /// The export file; `-` reads standard input.
        file: PathBuf,
        /// JSON output: what was kept.
        #[arg(long)]
        json: bool,
    },
    /// Verify the stored credentials: which account they belong to.
    Verify {
        /// Source name.
        name: String,
        /// JSON output: the setup view afterwards.
        #[arg(long)]
        json: bool,
    },
    /// Authorize an OAuth source with its provider: prints the URL to open.
    /// The provider sends the browser back to `sourcebox serve`; without a
    /// server, pass --finish and paste the address the browser was sent to.
    Authorize {
        /// Source name.
        name: String,
        /// Complete an authorization: read the address the provider sent
        /// the browser back to from standard input.
        #[arg(long)]
        finish: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Confirm that a source may connect an account another source of the
    /// same connector is already connected to.
    Confirm {
        /// Source name.
        name: String,
    },
    /// Choose what happens to a source whose credentials now belong to
    /// another account than the one it was connected to.
    Account {
        /// Source name.
        name: String,
        /// Connect the source to the new account; its records stay.
        #[arg(long)]
        accept: bool,
        /// Move the credentials into a new source of this name, connected
        /// to the new account; this source asks for its credentials again.
        #[arg(long, value_name = "NAME")]
        new_source: Option<String>,
        /// Delete the new credentials; this source asks for its
        /// credentials again.
        #[arg(long)]
        discard: bool,
    },
    /// List sources.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Delete a source and destroy every credential it holds.
    Rm {
        /// Source name.
        name: String,
    },
    /// Set when `sourcebox serve` runs a source on its own.
    Schedule {
        /// Source name.
        name: String,
        /// Run every DURATION (e.g. 30m, 6h, 1d).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with_all = ["cron", "off"], required_unless_present_any = ["cron", "off"])]
        every: Option<Duration>,
        /// Run on a five-field cron expression, in UTC (e.g. '0 3 * * *').
        #[arg(long, value_name = "EXPR", conflicts_with = "off")]
        cron: Option<String>,
        /// Remove the schedule.
        #[arg(long)]
        off: bool,
    },
}

pub(super) fn source(
    dir: &Path,
    unlock_fd: Option<u32>,
    egress_allow: &[std::net::SocketAddr],
    cmd: SourceCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        SourceCommand::Add {
            name,
            connector: None,
            ..
        } => {
            let source = Store::open(dir)?.add_source(&name)?;
            writeln_out(out, format_args!("added source {}", source.source))
        }
        SourceCommand::Add {
            name,
            connector: Some(connector),
            set,
            modality,
            allow_unproven,
            ephemeral_session,
            json,
        } => {
            let values = field_values(&set)?;
            let vault = open_vault(dir, unlock_fd)?;
            catalog::add_source(
                vault.store(),
                &name,
                &connector,
                &values,
                catalog::AddOptions {
                    modality: modality.as_deref(),
                    allow_unproven,
                    egress_allow,
                    ephemeral_session,
                },
            )?;
            print_view(&setup::source_view(vault.store(), &name)?, json, out)
        }
        SourceCommand::Configure { name, set, json } => {
            let vault = open_vault(dir, unlock_fd)?;
            // The values given replace those fields; the others stay.
            let mut values: BTreeMap<String, String> = catalog::source_setup(vault.store(), &name)?
                .setup
                .into_iter()
                .collect();
            values.extend(field_values(&set)?);
            let values: Vec<(String, String)> = values.into_iter().collect();
            catalog::set_setup(vault.store(), &name, &values, egress_allow)?;
            print_view(&setup::source_view(vault.store(), &name)?, json, out)
        }
        SourceCommand::Show { name, json } => {
            let vault = open_vault(dir, unlock_fd)?;
            print_view(&setup::source_view(vault.store(), &name)?, json, out)
        }
        SourceCommand::Import { name, file, json } => {
            let export = read_export(&file)?;
            let vault = open_vault(dir, unlock_fd)?;
            let summary =
                setup::import_session(&vault, Actor::OWNER_CLI, &name, &export, egress_allow)?;
            if json {
                return print_json(&summary, out);
            }
            print_import(&name, &summary, out)?;
            print_view(&setup::source_view(vault.store(), &name)?, false, out)
        }
        SourceCommand::Verify { name, json } => {
            verify(dir, unlock_fd, egress_allow, &name, json, out)
        }
        SourceCommand::Setup { name, json } => {
            let launcher = launcher(open_vault(dir, unlock_fd)?, launch_config(egress_allow))?;
            walk_setup(&launcher, &name, egress_allow, json, out)
        }
        SourceCommand::Authorize {
            name,
            finish: false,
            json,
        } => {
            let vault = open_vault(dir, unlock_fd)?;
            let started = oauth::begin(&vault, Actor::OWNER_CLI, &name)?;
            if json {
                return print_json(&started, out);
            }
            writeln_out(
                out,
                format_args!(
                    "open this address and authorize (it works for {} minutes):\n{}",
                    oauth::PENDING_FOR.as_secs() / 60,
                    started.authorize_url
                ),
            )
        }
        SourceCommand::Authorize {
            name,
            finish: true,
            json,
        } => finish_authorization(dir, unlock_fd, egress_allow, &name, json, out),
        SourceCommand::Confirm { name } => {
            let vault = open_vault(dir, unlock_fd)?;
            print_view(
                &setup::confirm_identity(&vault, Actor::OWNER_CLI, &name)?,
                false,
                out,
            )
        }
        SourceCommand::Account {
            name,
            accept,
            new_source,
            discard,
        } => {
            let choice = account_choice(&name, accept, new_source, discard)?;
            let vault = open_vault(dir, unlock_fd)?;
            print_view(
                &setup::choose_account(&vault, Actor::OWNER_CLI, &name, choice)?,
                false,
                out,
            )
        }
        SourceCommand::List { json } => list(dir, json, out),
        SourceCommand::Schedule {
            name,
            every,
            cron,
            off: _,
        } => schedule(dir, &name, every, cron, out),
        SourceCommand::Rm { name } => {
            let vault = open_vault(dir, unlock_fd)?;
            let source = vault.store().source(&name)?;
            let destroyed = vault.delete_source(Actor::OWNER_CLI, &source)?;
            writeln_out(
                out,
                format_args!("deleted source {name} and destroyed {destroyed} credentials"),
            )
        }
    }
}

/// `source verify NAME`: a verification run, then the view; the exit
/// status says whether it failed.
fn verify(
    dir: &Path,
    unlock_fd: Option<u32>,
    egress_allow: &[std::net::SocketAddr],
    name: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let launcher = launcher(open_vault(dir, unlock_fd)?, launch_config(egress_allow))?;
    let run = async_runtime()?.block_on(launcher.launch(name, runs::Trigger::SetupVerification))?;
    let vault = launcher.vault().lock().expect("vault lock");
    print_view(&setup::source_view(vault.store(), name)?, json, out)?;
    // The view says what to do next; the exit status says it failed.
    match &run.failure {
        None => Ok(()),
        Some(kind) => Err(CliError::Usage(format!(
            "the verification failed: {kind}: {}",
            run.detail.as_deref().unwrap_or("")
        ))),
    }
}

/// `source authorize NAME --finish`: the address the provider sent the
/// browser to, read from standard input, completes the authorization.
fn finish_authorization(
    dir: &Path,
    unlock_fd: Option<u32>,
    egress_allow: &[std::net::SocketAddr],
    name: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut address = String::new();
    std::io::stdin()
        .read_to_string(&mut address)
        .map_err(|e| CliError::Io(format!("cannot read the address: {e}")))?;
    let url = url::Url::parse(address.trim()).map_err(|e| {
        CliError::Usage(format!(
            "standard input must be the address the provider sent the browser to ({e})"
        ))
    })?;
    let callback: oauth::Callback =
        serde_urlencoded::from_str(url.query().unwrap_or("")).map_err(|e| {
            CliError::Usage(format!(
                "that address carries no authorization response ({e})"
            ))
        })?;
    let vault = Mutex::new(open_vault(dir, unlock_fd)?);
    let authorized = async_runtime()?.block_on(oauth::complete(
        &vault,
        Actor::OWNER_CLI,
        callback,
        egress_allow,
    ))?;
    if authorized != name {
        writeln_out(
            out,
            format_args!("that authorization was for source '{authorized}'"),
        )?;
    }
    let vault = vault.into_inner().expect("vault lock");
    print_view(&setup::source_view(vault.store(), &authorized)?, json, out)
}

/// `source list`: every source, its schedule and whether it may run.
fn list(dir: &Path, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let sources = scheduler::statuses(&Store::open(dir)?)?;
    if json {
        return print_json(&sources, out);
    }
    for s in &sources {
        let schedule = match &s.schedule {
            Some(row) => {
                let when = match (&row.every_secs, &row.cron) {
                    (Some(secs), _) => format!(
                        "every {}",
                        humantime::format_duration(Duration::from_secs(*secs))
                    ),
                    (None, Some(expr)) => format!("cron '{expr}'"),
                    (None, None) => "-".into(),
                };
                match &row.disabled {
                    Some(why) => format!(
                        "{when} (disabled: {why}; set it again with `sourcebox source schedule {}`)",
                        s.name
                    ),
                    None => when,
                }
            }
            None => "unscheduled".into(),
        };
        // The one readiness decision, as the launch and the
        // scheduler take it.
        let state = match &s.blocked {
            Some(blocked) => format!("not ready: {}", blocked.explain(&s.name)),
            None => "ready".into(),
        };
        writeln_out(
            out,
            format_args!(
                "{}  {}  {schedule}  {state}",
                s.name,
                s.connector.as_deref().unwrap_or("(no connector)")
            ),
        )?;
    }
    Ok(())
}

/// `source schedule NAME`: a schedule set, or removed.
fn schedule(
    dir: &Path,
    name: &str,
    every: Option<Duration>,
    cron: Option<String>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let schedule = match (every, cron) {
        (Some(every), _) => Some(Schedule::Every(every)),
        (None, Some(expr)) => Some(Schedule::Cron(expr)),
        (None, None) => None,
    };
    match scheduler::set_schedule(&Store::open(dir)?, name, schedule)? {
        Some(row) => writeln_out(
            out,
            format_args!(
                "{name} runs {} under `sourcebox serve`; next at {}",
                match (&row.every_secs, &row.cron) {
                    (Some(secs), _) => format!(
                        "every {}",
                        humantime::format_duration(Duration::from_secs(*secs))
                    ),
                    (None, Some(expr)) => format!("on '{expr}' (UTC)"),
                    (None, None) => String::new(),
                },
                format_time(row.next_at)
            ),
        ),
        None => writeln_out(out, format_args!("{name} has no schedule")),
    }
}

/// The text form of a source's setup view: a rendering of the document
/// and nothing else.
pub fn render_source(view: &setup::SourceView) -> String {
    let name = &view.source;
    let mut text = format!(
        "source {name}: {}\n",
        serde_json::to_value(view.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    if let Some(connector) = &view.connector {
        text += &format!(
            "  connector: {connector} ({})\n",
            view.modality.as_deref().unwrap_or("-")
        );
    }
    if let Some(session) = &view.session {
        text += &format!("  session: {session}\n");
    }
    if let Some(identity) = &view.identity {
        text += &format!(
            "  account: {} (provider id {})\n",
            identity.display, identity.id
        );
    }
    for field in &view.setup {
        text += &format!(
            "  setup {}: {}\n",
            field.name,
            field.value.as_deref().unwrap_or("-")
        );
    }
    for c in &view.credentials {
        text += &format!(
            "  credential {} ({}, {}): {}\n",
            c.field.name,
            c.field.class,
            if c.field.required {
                "required"
            } else {
                "optional"
            },
            if c.stored { "stored" } else { "missing" }
        );
    }
    text += &render_next_step(view);
    text
}

/// The next step of a source's setup view, in words, with the command
/// that takes it.
fn render_next_step(view: &setup::SourceView) -> String {
    use setup::NextStep;
    let name = &view.source;
    match &view.next_step {
        NextStep::ChooseConnector => format!(
            "next: choose a connector: sourcebox source rm {name}, then sourcebox source add {name} --connector ID\n"
        ),
        NextStep::ProvideCredentials { fields, reason } => {
            let mut step = String::new();
            if let Some(reason) = reason {
                step += &format!("  refused: {reason}\n");
            }
            step += &format!("next: provide credentials: sourcebox source setup {name}\n");
            for f in fields {
                step += &format!(
                    "  {} — {}{}{}\n    or: sourcebox credential set {name} {} --class {}\n",
                    f.name,
                    f.label,
                    if f.help.is_empty() { "" } else { ": " },
                    f.help,
                    f.name,
                    f.class
                );
            }
            step
        }
        NextStep::Authorize {
            supported,
            reason,
            operator,
        } => {
            let mut step = String::new();
            if let Some(reason) = reason {
                step.push_str(&format!("the provider refused the grant: {reason}\n"));
            }
            match (supported, operator) {
                (true, _) => step.push_str(&format!(
                    "next: authorize with the provider: sourcebox source authorize {name} (then open the URL it prints)\n"
                )),
                (false, Some(operator)) => {
                    step.push_str(&format!("next: authorize with the provider; first, {operator}\n"))
                }
                (false, None) => step.push_str("next: authorize with the provider\n"),
            }
            step
        }
        NextStep::BrowserLogin {
            supported,
            interaction,
            url,
            reason,
            operator,
        } => {
            let mut step = String::new();
            if let Some(reason) = reason {
                step.push_str(&format!("the session was refused: {reason}\n"));
            }
            match (interaction, url, operator) {
                (Some(id), Some(url), _) => step.push_str(&format!(
                    "next: log in at {url} in the login browser of interaction {id}: stream it with GET /v1/owner/interactions/{id}/screen and POST /v1/owner/interactions/{id}/input on `sourcebox serve`, then: sourcebox interaction answer {id} (done)\n"
                )),
                (_, _, Some(operator)) if !supported => {
                    step.push_str(&format!("next: log in through the login browser; first, {operator}\n"))
                }
                _ => step.push_str(&format!(
                    "next: log in through the login browser: with `sourcebox serve` running, POST /v1/owner/sources/{name}/verify; the connector opens its login page for you to stream\n"
                )),
            }
            step
        }
        NextStep::ImportSession { credential, reason } => {
            let mut step = String::new();
            if let Some(reason) = reason {
                step.push_str(&format!("the session was refused: {reason}\n"));
            }
            match credential {
                Some(credential) => step.push_str(&format!(
                    "next: import the session ({credential}) from a cookie export of a browser logged in to the site (cookies.txt or a JSON array): sourcebox source import {name} FILE\n"
                )),
                None => step.push_str(
                    "next: nothing to import into: the connector declares no session credential\n",
                ),
            }
            step
        }
        NextStep::Verify => {
            format!("next: verify the credentials: sourcebox source verify {name}\n")
        }
        NextStep::Wait { run } => format!("next: wait for verification run {run}\n"),
        NextStep::AnswerInteraction { id, kind, prompt } => format!(
            "next: answer the {kind} question \"{prompt}\": sourcebox interaction answer {id}\n"
        ),
        NextStep::ConfirmIdentity { identity, existing } => format!(
            "next: this account ({}) is already connected as '{existing}'; if that is intended: sourcebox source confirm {name}\n",
            identity.display
        ),
        NextStep::ConfirmAccountChange {
            previous,
            identity,
            records,
            choices,
        } => render_account_change(name, previous, identity, *records, choices),
        NextStep::Inspect { failure, detail } => {
            format!("next: verification failed ({failure}): {detail}; see sourcebox runs {name}\n")
        }
        NextStep::ApproveUpgrade {
            from,
            to,
            changes,
            meanwhile,
        } => {
            let connector = view
                .connector
                .as_deref()
                .and_then(|c| c.split(' ').next())
                .unwrap_or("");
            let until = match meanwhile {
                catalog::Meanwhile::Pause => "the source is paused: no run starts".to_owned(),
                catalog::Meanwhile::KeepRunning => format!("the source keeps running {from}"),
            };
            let mut step = format!(
                "next: approve {connector} {to}, which asks for more than {from}; until then {until}\n"
            );
            for change in changes {
                step += &format!("  {change}\n");
            }
            step + &format!("  approve: sourcebox connector approve {connector} --source {name}\n")
        }
        NextStep::None => format!("ready: sourcebox run {name}\n"),
    }
}

/// The one account choice `source account` was given.
fn account_choice(
    name: &str,
    accept: bool,
    new_source: Option<String>,
    discard: bool,
) -> Result<setup::AccountChoice, CliError> {
    match (accept, new_source, discard) {
        (true, None, false) => Ok(setup::AccountChoice::Accept),
        (false, Some(new), false) => Ok(setup::AccountChoice::NewSource { name: Some(new) }),
        (false, None, true) => Ok(setup::AccountChoice::Discard),
        _ => Err(CliError::Usage(format!(
            "choose one of --accept, --new-source NAME or --discard; `sourcebox source show {name}` says what each does"
        ))),
    }
}

/// The three choices of an account change, each with its command.
fn render_account_change(
    name: &str,
    previous: &str,
    identity: &setup::Identity,
    records: u64,
    choices: &[setup::AccountChoice],
) -> String {
    let account = format!("{} (provider id {})", identity.display, identity.id);
    let mut step = format!(
        "next: the credentials now belong to {account}, not to {previous}, whose {records} records this source holds; nothing collects until you choose:\n"
    );
    for choice in choices {
        step += &match choice {
            setup::AccountChoice::Accept => format!(
                "  connect this source to {account}: sourcebox source account {name} --accept\n"
            ),
            setup::AccountChoice::NewSource { .. } => format!(
                "  keep the accounts apart, {} in a source of its own: sourcebox source account {name} --new-source NAME\n",
                identity.display
            ),
            setup::AccountChoice::Discard => format!(
                "  discard the new credentials: sourcebox source account {name} --discard\n"
            ),
        };
    }
    step
}

/// Walks the next steps the engine names: missing credentials are asked
/// for (one line each from a pipe, a hidden prompt on a terminal for secret
/// ones) and stored, then verified; stops at any step the owner must take
/// elsewhere.
pub(super) fn walk_setup(
    launcher: &runs::Launcher,
    name: &str,
    egress_allow: &[std::net::SocketAddr],
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let rt = async_runtime()?;
    for _ in 0..4 {
        let view = {
            let vault = launcher.vault().lock().expect("vault lock");
            setup::source_view(vault.store(), name)?
        };
        match &view.next_step {
            setup::NextStep::ProvideCredentials { fields, reason } => {
                if let Some(reason) = reason {
                    writeln_out(out, format_args!("refused: {reason}"))?;
                }
                let vault = launcher.vault().lock().expect("vault lock");
                for field in fields {
                    let value = read_field(field)?;
                    let meta = setup::capture_credential(
                        &vault,
                        Actor::OWNER_CLI,
                        name,
                        &field.name,
                        None,
                        value,
                        None,
                    )?;
                    writeln_out(
                        out,
                        format_args!("stored {}/{} ({})", meta.source, meta.name, meta.hint),
                    )?;
                }
            }
            setup::NextStep::ImportSession {
                credential: Some(_),
                reason,
            } => {
                if let Some(reason) = reason {
                    writeln_out(out, format_args!("refused: {reason}"))?;
                }
                let file =
                    read_path("Cookie export of a logged-in browser (cookies.txt or JSON): ")?;
                let export = read_export(&file)?;
                let vault = launcher.vault().lock().expect("vault lock");
                let summary =
                    setup::import_session(&vault, Actor::OWNER_CLI, name, &export, egress_allow)?;
                print_import(name, &summary, out)?;
            }
            setup::NextStep::Verify => {
                rt.block_on(launcher.launch(name, runs::Trigger::SetupVerification))?;
            }
            _ => return print_view(&view, json, out),
        }
    }
    let vault = launcher.vault().lock().expect("vault lock");
    print_view(&setup::source_view(vault.store(), name)?, json, out)
}

pub(super) fn print_import(
    name: &str,
    summary: &setup::ImportSummary,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    writeln_out(
        out,
        format_args!(
            "stored {name}/{}: {} cookies kept; left out {} for other hosts and {} expired",
            summary.credential, summary.kept, summary.other_hosts, summary.expired
        ),
    )
}

pub(super) fn print_view(
    view: &setup::SourceView,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if json {
        return print_json(view, out);
    }
    write!(out, "{}", render_source(view))
        .map_err(|e| CliError::Io(format!("cannot write output: {e}")))
}
