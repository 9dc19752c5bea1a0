//! The `sourcebox` command line. It parses, unlocks and renders; every
//! decision lives in [`crate::store`] and [`crate::vault`].

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use std::sync::{Arc, Mutex};

use crate::catalog::{self, CatalogError};
use crate::interactions;
use crate::oauth;
use crate::runs::scheduler::{self, Schedule};
use crate::runs::{self, LaunchError};
use crate::runtime::bindings::sourcebox::connector::types::EgressHost;
use crate::runtime::{self, Runtime, RuntimeError};
use crate::setup::{self, SetupError};
use crate::store::{Store, StoreError};
use crate::vault::audit::{self, ChainCheck};
use crate::vault::{
    Actor, CredentialClass, CredentialMeta, Keyring, Secret, Vault, VaultError, WrapperKind,
};

/// A failed command, as the operator sees it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// From the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// From the vault.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// From the connector catalog.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// From the runtime.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A refused launch.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A setup step.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// An OAuth step.
    #[error(transparent)]
    Oauth(#[from] oauth::OauthError),
    /// A request that cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
    /// Terminal or file descriptor I/O.
    #[error("{0}")]
    Io(String),
}

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

/// `oauth-client` subcommands.
#[derive(Debug, Subcommand)]
pub enum OauthClientCommand {
    /// Register (or replace) the OAuth client of a connector: what the
    /// provider issued when the operator made the client with it.
    Set {
        /// Connector id.
        connector: String,
        /// The provider's authorization endpoint.
        #[arg(long, value_name = "URL")]
        authorize_url: String,
        /// The provider's token endpoint (https, or http to an address
        /// allowed with --egress-allow).
        #[arg(long, value_name = "URL")]
        token_url: String,
        /// The client id.
        #[arg(long, value_name = "ID")]
        client_id: String,
        /// The redirect URI registered with the provider: `sourcebox
        /// serve`'s /v1/oauth/callback as the owner's browser reaches it.
        #[arg(long, value_name = "URL")]
        redirect_uri: String,
        /// A scope to ask for (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A confidential client: read its secret from standard input
        /// (hidden prompt on a terminal). Without it, a public client.
        #[arg(long)]
        client_secret: bool,
    },
    /// List the registered clients (never a secret).
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a connector's client; its sources keep their grants but
    /// cannot refresh them.
    Rm {
        /// Connector id.
        connector: String,
    },
}

/// `owner-token` subcommands.
#[derive(Debug, Subcommand)]
pub enum OwnerTokenCommand {
    /// Make a new owner token and print it once; the old one stops
    /// working at once (a running `serve` included).
    Rotate,
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// How often schedules and the run queue are looked at.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub tick: Duration,
    /// Runs in flight at once, all connectors together.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent: u16,
    /// Runs in flight at once per connector.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub per_connector: u16,
    /// Backoff before the first retry of a transient failure (doubles per
    /// attempt, with jitter; a provider's retry-after wins when longer).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Attempts per run in all, the first included.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub retry_attempts: u32,
    /// How long a run waits for the owner to answer an interaction.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = humantime::parse_duration)]
    pub interaction_wait: Duration,
    /// On shutdown, how long runs in flight may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Where the HTTP API listens (port 0 picks a free port; the address
    /// is printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:7780")]
    pub listen: std::net::SocketAddr,
    /// Allow listening on a non-loopback address without TLS (tokens
    /// would cross the network in clear text).
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure_listen: bool,
    /// Failed authentications from one address, within a minute, after
    /// which it is refused for the rest of that minute.
    #[arg(long, value_name = "N", default_value_t = crate::api::Limits::default().auth_failures, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures: u32,
    /// The URL the owner's browser reaches this server by (behind a
    /// reverse proxy, the proxy's); by default, the address it listens
    /// on. OAuth clients must send the browser back to its
    /// /v1/oauth/callback.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<url::Url>,
    /// A reverse proxy in front of this server (repeatable): for its
    /// requests, failed authentications count against the client address
    /// it forwards in X-Forwarded-For, not against the proxy.
    #[arg(long, value_name = "IP")]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// How long one HTTP request may take (an event stream, once started,
    /// is not cut).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pub request_timeout: Duration,
    /// Serve HTTPS with this PEM certificate chain (server certificate
    /// first); needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

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

/// `init` options.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where the key-encryption key lives.
    #[arg(long, value_enum, default_value_t = WrapperArg::Local)]
    pub key_wrapper: WrapperArg,
    /// Production mode: refuses the development-only `local` wrapper.
    #[arg(long)]
    pub production: bool,
    /// PKCS#11 module (shared library) for `--key-wrapper pkcs11`.
    #[arg(long, value_name = "PATH", required_if_eq("key_wrapper", "pkcs11"))]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the initialized PKCS#11 token to keep the KEK in.
    #[arg(long, value_name = "LABEL", required_if_eq("key_wrapper", "pkcs11"))]
    pub pkcs11_token: Option<String>,
}

/// Key wrapper names accepted by `init`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WrapperArg {
    /// Random KEK in a 0600 file beside the database (development only).
    Local,
    /// KEK derived from a passphrase with Argon2id.
    Passphrase,
    /// KEK inside a PKCS#11 token (HSM).
    Pkcs11,
}

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
fn parse_size(text: &str) -> Result<u64, String> {
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
            let record = runs::cancel(&Store::open(dir)?, &run)?;
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
            runs::recover(&store)?;
            print_runs(&runs::list(&store, source.as_deref())?, json, out)
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

/// `--set FIELD=VALUE` arguments as pairs.
fn field_values(set: &[String]) -> Result<Vec<(String, String)>, CliError> {
    set.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("--set {kv}: expected FIELD=VALUE")))
        })
        .collect()
}

fn writeln_out(out: &mut dyn Write, args: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    writeln!(out, "{args}").map_err(|e| CliError::Io(format!("cannot write output: {e}")))
}

fn init(
    dir: &Path,
    unlock_fd: Option<u32>,
    args: InitArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let kind = match args.key_wrapper {
        WrapperArg::Local => WrapperKind::Local,
        WrapperArg::Passphrase => WrapperKind::Passphrase,
        WrapperArg::Pkcs11 => WrapperKind::Pkcs11,
    };
    let mut settings = Keyring::init_settings(kind, args.production)?;
    if let (Some(module), Some(token)) = (&args.pkcs11_module, &args.pkcs11_token) {
        settings.push(("pkcs11_module", module.to_string_lossy().into_owned()));
        settings.push(("pkcs11_token", token.clone()));
    }
    let unlock = match kind {
        WrapperKind::Local => None,
        WrapperKind::Passphrase => Some(new_passphrase(unlock_fd)?),
        WrapperKind::Pkcs11 => Some(unlock_secret(unlock_fd, "PKCS#11 user PIN")?),
    };
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = Store::init(dir, &pairs)?;
    let first_party = Keyring::create_first(&store, unlock)
        .map_err(CliError::from)
        .and_then(|_| {
            let runtime = Runtime::new(&store.dir().join("cache"))?;
            Ok(async_runtime()?.block_on(catalog::install_first_party(&store, &runtime))?)
        });
    let first_party = match first_party {
        Ok(installed) => installed,
        Err(e) => {
            // Leave nothing half-made behind: the directory was new or empty.
            drop(store);
            let _ = std::fs::remove_dir_all(dir);
            return Err(e);
        }
    };
    tracing::info!(dir = %dir.display(), wrapper = kind.as_str(), "data directory initialized");
    for c in &first_party {
        writeln_out(
            out,
            format_args!("installed first-party connector {} {}", c.id, c.version),
        )?;
    }
    writeln_out(
        out,
        format_args!(
            "initialized {} (key wrapper: {}{})",
            dir.display(),
            kind.as_str(),
            if args.production { ", production" } else { "" }
        ),
    )?;
    if kind == WrapperKind::Local {
        writeln_out(
            out,
            format_args!(
                "note: the local key wrapper keeps the key that protects every credential in a file beside them: it is for development. For real credentials, start a new data directory with `sourcebox init --key-wrapper passphrase` (a passphrase asked at every start) or `--key-wrapper pkcs11` (a hardware or software token)."
            ),
        )?;
    }
    Ok(())
}

fn source(
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
            let launcher = launcher(open_vault(dir, unlock_fd)?, launch_config(egress_allow))?;
            let run = async_runtime()?
                .block_on(launcher.launch(&name, runs::Trigger::SetupVerification))?;
            let vault = launcher.vault().lock().expect("vault lock");
            print_view(&setup::source_view(vault.store(), &name)?, json, out)?;
            // The view says what to do next; the exit status says it failed.
            match &run.failure {
                None => Ok(()),
                Some(kind) => Err(CliError::Usage(format!(
                    "the verification failed: {kind}: {}",
                    run.detail.as_deref().unwrap_or("")
                ))),
            }
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
        } => {
            let mut address = String::new();
            std::io::stdin()
                .read_to_string(&mut address)
                .map_err(|e| CliError::Io(format!("cannot read the address: {e}")))?;
            let url = url::Url::parse(address.trim()).map_err(|e| {
                CliError::Usage(format!(
                    "standard input must be the address the provider sent the browser to ({e})"
                ))
            })?;
            let callback: oauth::Callback = serde_urlencoded::from_str(url.query().unwrap_or(""))
                .map_err(|e| {
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
            let choice = match (accept, new_source, discard) {
                (true, None, false) => setup::AccountChoice::Accept,
                (false, Some(new), false) => setup::AccountChoice::NewSource { name: Some(new) },
                (false, None, true) => setup::AccountChoice::Discard,
                _ => {
                    return Err(CliError::Usage(format!(
                        "choose one of --accept, --new-source NAME or --discard; `sourcebox source show {name}` says what each does"
                    )));
                }
            };
            let vault = open_vault(dir, unlock_fd)?;
            print_view(
                &setup::choose_account(&vault, Actor::OWNER_CLI, &name, choice)?,
                false,
                out,
            )
        }
        SourceCommand::List { json } => {
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
        SourceCommand::Schedule {
            name,
            every,
            cron,
            off: _,
        } => {
            let schedule = match (every, cron) {
                (Some(every), _) => Some(Schedule::Every(every)),
                (None, Some(expr)) => Some(Schedule::Cron(expr)),
                (None, None) => None,
            };
            match scheduler::set_schedule(&Store::open(dir)?, &name, schedule)? {
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

fn async_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the async runtime: {e}")))
}

fn connector(dir: &Path, cmd: ConnectorCommand, out: &mut dyn Write) -> Result<(), CliError> {
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
        ConnectorCommand::Install {
            path,
            yes,
            pause_until_approved,
        } => {
            let bytes = std::fs::read(&path)
                .map_err(|e| CliError::Io(format!("cannot read {}: {e}", path.display())))?;
            let runtime = Runtime::new(&store.dir().join("cache"))?;
            let loaded = async_runtime()?.block_on(runtime.load(&bytes))?;
            let manifest = loaded.manifest();
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
                return Err(CliError::Usage("review the capabilities above, then run again with --yes to approve and install".into()));
            }
            let installed = catalog::install(&store, &bytes, loaded.api_version(), manifest)?;
            writeln_out(
                out,
                format_args!(
                    "installed {} {} (sha256 {})",
                    installed.id, installed.version, installed.digest
                ),
            )?;
            let meanwhile = catalog::Meanwhile::paused_if(pause_until_approved);
            for upgrade in catalog::offer_upgrade(&store, &installed, meanwhile)? {
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

fn launcher(vault: Vault, config: runs::LaunchConfig) -> Result<Arc<runs::Launcher>, CliError> {
    let runtime = Runtime::new(&vault.store().dir().join("cache"))?;
    Ok(Arc::new(runs::Launcher::new(
        runtime,
        Arc::new(Mutex::new(vault)),
        config,
    )?))
}

fn launch_config(egress_allow: &[std::net::SocketAddr]) -> runs::LaunchConfig {
    runs::LaunchConfig {
        egress_allow: egress_allow.to_vec(),
        ..runs::LaunchConfig::default()
    }
}

/// `value` as one line of JSON.
fn print_json(value: &impl serde::Serialize, out: &mut dyn Write) -> Result<(), CliError> {
    let doc = serde_json::to_string(value).map_err(|e| CliError::Io(e.to_string()))?;
    writeln_out(out, format_args!("{doc}"))
}

fn print_view(view: &setup::SourceView, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    if json {
        return print_json(view, out);
    }
    write!(out, "{}", render_source(view))
        .map_err(|e| CliError::Io(format!("cannot write output: {e}")))
}

/// The text form of a source's setup view: a rendering of the document
/// and nothing else.
pub fn render_source(view: &setup::SourceView) -> String {
    use setup::NextStep;
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
    text += &match &view.next_step {
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
        } => {
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
    };
    text
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

/// Walks the next steps the engine names: missing credentials are asked
/// for (one line each from a pipe, a hidden prompt on a terminal for secret
/// ones) and stored, then verified; stops at any step the owner must take
/// elsewhere.
fn walk_setup(
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

fn print_import(
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

/// A file's path: prompted for on a terminal, one line from a pipe.
fn read_path(label: &str) -> Result<PathBuf, CliError> {
    if std::io::stdin().is_terminal() {
        eprint!("{label}");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::Io(format!("cannot read the file's path: {e}")))?;
    let path = line.trim_end_matches(['\r', '\n']);
    if path.is_empty() {
        return Err(CliError::Usage(
            "no file given; nothing was imported (`sourcebox source import NAME FILE` imports one)"
                .into(),
        ));
    }
    Ok(PathBuf::from(path))
}

/// One credential field's value: a hidden prompt (secret) or an echoed
/// line on a terminal, one line from a pipe.
fn read_field(field: &setup::CredentialFieldView) -> Result<Secret, CliError> {
    let label = format!("{} ({}): ", field.label, field.name);
    if std::io::stdin().is_terminal() {
        if field.secret {
            return prompt(&label, "value");
        }
        eprint!("{label}");
    }
    let mut line = Zeroizing::new(Vec::new());
    std::io::BufRead::read_until(&mut std::io::stdin().lock(), b'\n', &mut line)
        .map_err(|e| CliError::Io(format!("cannot read {}: {e}", field.name)))?;
    let value = Secret::from_slice(trim_newline(&line));
    if value.is_empty() {
        return Err(CliError::Usage(format!(
            "no value for {} ({}); nothing was stored for it",
            field.name, field.label
        )));
    }
    Ok(value)
}

fn run_source(
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

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero, e.g. 30s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; e.g. 30s or 2m")),
    }
}

/// The operator's certificate, if any; a non-loopback address without one
/// is refused unless `--insecure-listen`.
fn serve_tls(args: &ServeArgs) -> Result<Option<crate::api::Tls>, CliError> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::api::Tls::from_pem_files(cert, key)
                .map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.insecure_listen {
        return Err(CliError::Usage(format!(
            "{} is not a loopback address and this server has no TLS; tokens would cross the network in clear text. Pass --tls-cert and --tls-key, listen on 127.0.0.1, or pass --insecure-listen to do it anyway",
            args.listen
        )));
    }
    Ok(tls)
}

fn serve(
    vault: Vault,
    egress_allow: &[std::net::SocketAddr],
    args: ServeArgs,
    tls: Option<crate::api::Tls>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let config = runs::LaunchConfig {
        retry: runs::RetryPolicy {
            base: args.retry_base,
            max_attempts: args.retry_attempts,
            ..runs::RetryPolicy::default()
        },
        interaction_wait: args.interaction_wait,
        // Only the server opens login browsers: the owner streams them
        // through its API.
        browser: crate::browser::find_chromium(),
        ..launch_config(egress_allow)
    };
    match &config.browser {
        Some(browser) => tracing::info!(browser = %browser.display(), "login browser"),
        None => tracing::warn!(
            "no browser for logins (install Chromium or set SOURCEBOX_CHROMIUM): a connector asking for a login hears `unsupported`"
        ),
    }
    if let Some(token) = crate::tokens::ensure_owner_token(vault.store())? {
        // The one time it is shown; only its hash is kept.
        writeln_out(
            out,
            format_args!(
                "owner token (shown once, keep it safe): {}",
                String::from_utf8_lossy(token.expose_secret())
            ),
        )?;
    }
    let dir = vault.store().dir().to_owned();
    let launcher = launcher(vault, config)?;
    let scheduler = scheduler::SchedulerConfig {
        tick: args.tick,
        max_concurrent: args.max_concurrent.into(),
        per_connector: args.per_connector.into(),
        grace: args.grace,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the async runtime: {e}")))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .map_err(|e| CliError::Io(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Io(format!("cannot listen on {}: {e}", args.listen)))?;
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(%local, "listening on a non-loopback address without TLS");
        writeln_out(
            out,
            format_args!("warning: {local} is reachable from the network and has no TLS"),
        )?;
    }
    let public_url = match &args.public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => format!("{}://{local}", if tls.is_some() { "https" } else { "http" }),
    };
    // An OAuth client that sends the owner's browser elsewhere than this
    // server's callback cannot complete an authorization here.
    let callback = oauth::callback_url(&public_url);
    let elsewhere: Vec<oauth::ClientView> = {
        let vault = launcher.vault().lock().expect("vault lock");
        oauth::clients(vault.store())?
    }
    .into_iter()
    .filter(|c| c.redirect_uri != callback)
    .collect();
    for client in &elsewhere {
        tracing::error!(
            connector = client.connector,
            redirect_uri = client.redirect_uri,
            "the OAuth client's redirect URI is not this server's callback"
        );
        writeln_out(
            out,
            format_args!(
                "warning: the OAuth client of {} sends the browser back to {}, not to this server's {callback}; register it again with --redirect-uri {callback}, or start serve with the --public-url it was registered for",
                client.connector, client.redirect_uri
            ),
        )?;
    }
    writeln_out(
        out,
        format_args!(
            "sourcebox serving {} on {}://{local}: the HTTP API, scheduled and retried runs; stop with Ctrl-C",
            dir.display(),
            if tls.is_some() { "https" } else { "http" }
        ),
    )?;
    out.flush()
        .map_err(|e| CliError::Io(format!("cannot write output: {e}")))?;
    runtime.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
            }
            let _ = stop.send(true);
        };
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let app = crate::api::router(crate::api::Api::with_limits(
            Arc::clone(&launcher),
            crate::api::Limits {
                auth_failures: args.auth_failures,
                request_timeout: args.request_timeout,
                trusted_proxies: args.trusted_proxy.clone(),
                public_url: Some(public_url.clone()),
            },
        ));
        let server = crate::api::serve(listener, tls, app, wait(stopped.clone()), args.grace);
        let (_, (), scheduled) = tokio::join!(
            signal,
            server,
            scheduler::run(launcher, scheduler, wait(stopped))
        );
        scheduled.map_err(CliError::from)
    })?;
    writeln_out(out, format_args!("sourcebox stopped"))
}

fn interaction(
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

/// A time (ms since the Unix epoch) as RFC 3339 UTC, to the second.
fn format_time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// A time (ms since the Unix epoch) as a person reads it, in UTC.
fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn print_runs(runs: &[runs::RunRecord], json: bool, out: &mut dyn Write) -> Result<(), CliError> {
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

fn records(
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

fn credential(vault: &Vault, cmd: CredentialCommand, out: &mut dyn Write) -> Result<(), CliError> {
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

fn vault(vault: &Vault, cmd: VaultCommand, out: &mut dyn Write) -> Result<(), CliError> {
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

fn print_table(metas: &[CredentialMeta], out: &mut dyn Write) -> Result<(), CliError> {
    let time = |ms: i64| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
            .to_string()
    };
    writeln_out(
        out,
        format_args!(
            "{:<16} {:<20} {:<9} {:<17} {:>3}  {:<20} {:<20} {:<20} HINT",
            "SOURCE", "NAME", "CLASS", "PROVENANCE", "VER", "CREATED", "ROTATED", "EXPIRES"
        ),
    )?;
    for m in metas {
        writeln_out(
            out,
            format_args!(
                "{:<16} {:<20} {:<9} {:<17} {:>3}  {:<20} {:<20} {:<20} {}",
                m.source,
                m.name,
                m.class,
                m.provenance,
                m.version,
                time(m.created_at),
                time(m.rotated_at),
                m.expires_at.map(time).unwrap_or_else(|| "-".into()),
                m.hint
            ),
        )?;
    }
    Ok(())
}

fn open_vault(dir: &Path, unlock_fd: Option<u32>) -> Result<Vault, CliError> {
    let store = Store::open(dir)?;
    let kind: WrapperKind = store
        .setting("key_wrapper")?
        .ok_or_else(|| VaultError::Corrupt("no key wrapper recorded".into()))?
        .parse()?;
    let unlock = match kind {
        WrapperKind::Local => None,
        WrapperKind::Passphrase => Some(unlock_secret(unlock_fd, "passphrase")?),
        WrapperKind::Pkcs11 => Some(unlock_secret(unlock_fd, "PKCS#11 user PIN")?),
    };
    let keyring = Keyring::unlock(&store, unlock)?;
    Ok(Vault::new(store, keyring))
}

/// Reads the passphrase or PIN from `--unlock-fd` or a no-echo prompt.
fn unlock_secret(unlock_fd: Option<u32>, what: &str) -> Result<Secret, CliError> {
    let secret = match unlock_fd {
        Some(fd) => read_fd(fd)?,
        None => prompt(&format!("{what}: "), what)?,
    };
    if secret.is_empty() {
        return Err(CliError::Usage(format!("the {what} is empty")));
    }
    Ok(secret)
}

/// Minimum passphrase length accepted by `init`.
const MIN_PASSPHRASE: usize = 12;

fn new_passphrase(unlock_fd: Option<u32>) -> Result<Secret, CliError> {
    let passphrase = match unlock_fd {
        Some(fd) => read_fd(fd)?,
        None => {
            let first = prompt("new passphrase: ", "passphrase")?;
            let again = prompt("repeat passphrase: ", "passphrase")?;
            if first.expose_secret() != again.expose_secret() {
                return Err(CliError::Usage(
                    "the passphrases do not match; nothing was created".into(),
                ));
            }
            first
        }
    };
    if passphrase.len() < MIN_PASSPHRASE {
        return Err(CliError::Usage(format!(
            "the passphrase must be at least {MIN_PASSPHRASE} bytes; nothing was created"
        )));
    }
    Ok(passphrase)
}

fn prompt(text: &str, what: &str) -> Result<Secret, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!(
            "no terminal to ask for the {what}; pass it on a file descriptor with --unlock-fd N"
        )));
    }
    let typed = Zeroizing::new(
        rpassword::prompt_password(text)
            .map_err(|e| CliError::Io(format!("cannot read the {what}: {e}")))?,
    );
    Ok(Secret::from_slice(typed.as_bytes()))
}

fn read_fd(fd: u32) -> Result<Secret, CliError> {
    let path = format!("/dev/fd/{fd}");
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| CliError::Io(format!("cannot read --unlock-fd {fd}: {e}")))?;
    Ok(Secret::from_slice(trim_newline(&bytes)))
}

/// A credential value: a no-echo prompt on a terminal, otherwise all of
/// standard input with one trailing newline removed.
fn oauth_client(
    dir: &Path,
    unlock_fd: Option<u32>,
    egress_allow: &[std::net::SocketAddr],
    cmd: OauthClientCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let vault = open_vault(dir, unlock_fd)?;
    match cmd {
        OauthClientCommand::Set {
            connector,
            authorize_url,
            token_url,
            client_id,
            redirect_uri,
            scopes,
            client_secret,
        } => {
            let client_secret = client_secret
                .then(|| read_value(&format!("client secret for {connector}: ")))
                .transpose()?;
            let view = oauth::register(
                &vault,
                Actor::OWNER_CLI,
                oauth::Registration {
                    connector,
                    authorize_url,
                    token_url,
                    client_id,
                    scopes,
                    redirect_uri,
                    client_secret,
                },
                egress_allow,
            )?;
            writeln_out(
                out,
                format_args!(
                    "OAuth client of {} registered ({}); sources of it can now be authorized",
                    view.connector,
                    if view.confidential {
                        "confidential"
                    } else {
                        "public, PKCE only"
                    }
                ),
            )
        }
        OauthClientCommand::List { json } => {
            let clients = oauth::clients(vault.store())?;
            if json {
                return print_json(&clients, out);
            }
            for c in &clients {
                writeln_out(
                    out,
                    format_args!(
                        "{}  client {}  {}  scopes: {}  redirect: {}",
                        c.connector,
                        c.client_id,
                        if c.confidential {
                            "confidential"
                        } else {
                            "public"
                        },
                        if c.scopes.is_empty() {
                            "-".to_owned()
                        } else {
                            c.scopes.join(" ")
                        },
                        c.redirect_uri
                    ),
                )?;
            }
            Ok(())
        }
        OauthClientCommand::Rm { connector } => {
            oauth::unregister(&vault, Actor::OWNER_CLI, &connector)?;
            writeln_out(out, format_args!("OAuth client of {connector} removed"))
        }
    }
}

/// A cookie export: the file, or all of standard input for `-`.
fn read_export(file: &Path) -> Result<Secret, CliError> {
    let mut bytes = Zeroizing::new(Vec::new());
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| CliError::Io(format!("cannot read {}: {e}", file.display())))?;
    Ok(Secret::from_slice(&bytes))
}

fn read_value(text: &str) -> Result<Secret, CliError> {
    if std::io::stdin().is_terminal() {
        return prompt(text, "value");
    }
    let mut bytes = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::Io(format!("cannot read the value from standard input: {e}")))?;
    Ok(Secret::from_slice(trim_newline(&bytes)))
}

fn trim_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}
