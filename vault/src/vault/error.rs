//! Why a vault operation failed, and the key wrapper an unlock error
//! names.

use std::str::FromStr;

use super::envelope::EnvelopeError;
use crate::store::StoreError;

/// Why a vault operation failed. No variant carries secret bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The data directory or database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No credential of that name is stored for the source.
    #[error(
        "source '{source_name}' has no credential named '{name}'; store one with `sourcebox credential set {source_name} {name} --class CLASS`"
    )]
    Missing {
        /// Source name.
        source_name: String,
        /// Credential name.
        name: String,
    },
    /// The credential was revoked; its data key is destroyed.
    #[error(
        "credential '{name}' of source '{source_name}' was revoked; store a new value with `sourcebox credential set`"
    )]
    Revoked {
        /// Source name.
        source_name: String,
        /// Credential name.
        name: String,
    },
    /// The stored bytes do not open: tampered, moved from another row, or
    /// sealed under a key this data directory no longer has.
    #[error(
        "credential '{name}' of source '{source_name}' cannot be decrypted ({reason}); store it again"
    )]
    Unrecoverable {
        /// Source name.
        source_name: String,
        /// Credential name.
        name: String,
        /// Which check failed.
        reason: EnvelopeError,
    },
    /// A wrapped data key did not open under its KEK.
    #[error("a data key did not unwrap: {0}")]
    KeyUnwrap(EnvelopeError),
    /// The data directory needs a passphrase or PIN to unlock.
    #[error("this data directory is locked by the {} key wrapper; give its {} with --unlock-fd N or at the prompt", .0.as_str(), if *.0 == WrapperKind::Pkcs11 { "PIN" } else { "passphrase" })]
    UnlockSecretRequired(WrapperKind),
    /// The passphrase or PIN does not unlock the KEK. Nothing was touched.
    #[error("wrong {} for this data directory; nothing was read or changed", if *.0 == WrapperKind::Pkcs11 { "PKCS#11 PIN" } else { "passphrase" })]
    WrongUnlockSecret(WrapperKind),
    /// The local key file does not match the database.
    #[error("the local key file does not belong to this database; nothing was read or changed")]
    WrongKeyFile,
    /// Reading or writing a local key file.
    #[error("local key file: {0}")]
    KeyFile(std::io::Error),
    /// The `local` wrapper in a production data directory.
    #[error(
        "the local key wrapper keeps the key beside the data and is for development only; a production data directory needs --key-wrapper passphrase or pkcs11"
    )]
    LocalWrapperInProduction,
    /// A row refers to a KEK version that is not active.
    #[error("key-encryption key version {0} is not available")]
    UnknownKekVersion(i64),
    /// A PKCS#11 failure.
    #[error("PKCS#11: {0}")]
    Hsm(String),
    /// A value or name that cannot be stored; the message never echoes a value.
    #[error("{0}")]
    Invalid(String),
    /// The audit row could not be written, so the operation was refused.
    #[error("the audit log could not be written, so the operation was refused: {0}")]
    AuditFailed(rusqlite::Error),
    /// Inconsistent vault metadata.
    #[error("vault metadata is inconsistent: {0}")]
    Corrupt(String),
    /// Backup export or import.
    #[error("backup: {0}")]
    Backup(String),
    /// SQLite failure.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Where the key-encryption key lives, chosen at `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrapperKind {
    /// A random KEK in a 0600 file in the data directory. Development only.
    Local,
    /// A KEK derived from the owner's passphrase with Argon2id.
    Passphrase,
    /// A KEK that never leaves a PKCS#11 token.
    Pkcs11,
}

impl WrapperKind {
    /// The name recorded in `meta` and accepted by `init --key-wrapper`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Passphrase => "passphrase",
            Self::Pkcs11 => "pkcs11",
        }
    }

    /// Whether unlocking needs a passphrase or PIN from the operator.
    pub fn needs_unlock_secret(self) -> bool {
        !matches!(self, Self::Local)
    }
}

impl FromStr for WrapperKind {
    type Err = VaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Self::Local),
            "passphrase" => Ok(Self::Passphrase),
            "pkcs11" => Ok(Self::Pkcs11),
            other => Err(VaultError::Corrupt(format!(
                "unknown key wrapper '{other}'"
            ))),
        }
    }
}
