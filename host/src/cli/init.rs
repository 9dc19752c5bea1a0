//! `sourcebox init`: a new data directory and its key wrapper.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::common::{CliError, async_runtime, new_passphrase, unlock_secret, writeln_out};
use crate::catalog::{self};
use crate::runtime::Runtime;
use crate::store::Store;
use crate::vault::{Keyring, WrapperKind};

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

pub(super) fn init(
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
