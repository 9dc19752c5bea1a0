//! What every command shares: its error, unlocking the data directory, prompts and secret input, and printing.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use zeroize::Zeroizing;

use std::sync::{Arc, Mutex};

use crate::catalog::CatalogError;
use crate::oauth;
use crate::runs::{self, LaunchError};
use crate::runtime::{Runtime, RuntimeError};
use crate::setup::{self, SetupError};
use crate::store::{Store, StoreError};
use crate::vault::{CredentialMeta, Keyring, Secret, Vault, VaultError, WrapperKind};

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

/// `--set FIELD=VALUE` arguments as pairs.
pub(super) fn field_values(set: &[String]) -> Result<Vec<(String, String)>, CliError> {
    set.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("--set {kv}: expected FIELD=VALUE")))
        })
        .collect()
}

pub(super) fn writeln_out(
    out: &mut dyn Write,
    args: std::fmt::Arguments<'_>,
) -> Result<(), CliError> {
    writeln!(out, "{args}").map_err(|e| CliError::Io(format!("cannot write output: {e}")))
}

pub(super) fn async_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the async runtime: {e}")))
}

pub(super) fn launcher(
    vault: Vault,
    config: runs::LaunchConfig,
) -> Result<Arc<runs::Launcher>, CliError> {
    let runtime = Runtime::new(&vault.store().dir().join("cache"))?;
    Ok(Arc::new(runs::Launcher::new(
        runtime,
        Arc::new(Mutex::new(vault)),
        config,
    )?))
}

pub(super) fn launch_config(egress_allow: &[std::net::SocketAddr]) -> runs::LaunchConfig {
    runs::LaunchConfig {
        egress_allow: egress_allow.to_vec(),
        ..runs::LaunchConfig::default()
    }
}

/// `value` as one line of JSON.
pub(super) fn print_json(
    value: &impl serde::Serialize,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let doc = serde_json::to_string(value).map_err(|e| CliError::Io(e.to_string()))?;
    writeln_out(out, format_args!("{doc}"))
}

/// A file's path: prompted for on a terminal, one line from a pipe.
pub(super) fn read_path(label: &str) -> Result<PathBuf, CliError> {
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
pub(super) fn read_field(field: &setup::CredentialFieldView) -> Result<Secret, CliError> {
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

pub(super) fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero, e.g. 30s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e}; e.g. 30s or 2m")),
    }
}

/// A time (ms since the Unix epoch) as RFC 3339 UTC, to the second.
pub(super) fn format_time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

/// A time (ms since the Unix epoch) as a person reads it, in UTC.
pub(super) fn utc(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

pub(super) fn print_table(metas: &[CredentialMeta], out: &mut dyn Write) -> Result<(), CliError> {
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

pub(super) fn open_vault(dir: &Path, unlock_fd: Option<u32>) -> Result<Vault, CliError> {
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
pub(super) fn unlock_secret(unlock_fd: Option<u32>, what: &str) -> Result<Secret, CliError> {
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
pub(super) const MIN_PASSPHRASE: usize = 12;

pub(super) fn new_passphrase(unlock_fd: Option<u32>) -> Result<Secret, CliError> {
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

pub(super) fn prompt(text: &str, what: &str) -> Result<Secret, CliError> {
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

pub(super) fn read_fd(fd: u32) -> Result<Secret, CliError> {
    let path = format!("/dev/fd/{fd}");
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| CliError::Io(format!("cannot read --unlock-fd {fd}: {e}")))?;
    Ok(Secret::from_slice(trim_newline(&bytes)))
}

/// A cookie export: the file, or all of standard input for `-`.
pub(super) fn read_export(file: &Path) -> Result<Secret, CliError> {
    let mut bytes = Zeroizing::new(Vec::new());
    let read = if file == Path::new("-") {
        std::io::stdin().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| CliError::Io(format!("cannot read {}: {e}", file.display())))?;
    Ok(Secret::from_slice(&bytes))
}

pub(super) fn read_value(text: &str) -> Result<Secret, CliError> {
    if std::io::stdin().is_terminal() {
        return prompt(text, "value");
    }
    let mut bytes = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::Io(format!("cannot read the value from standard input: {e}")))?;
    Ok(Secret::from_slice(trim_newline(&bytes)))
}

pub(super) fn trim_newline(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}
