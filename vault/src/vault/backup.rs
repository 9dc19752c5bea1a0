//! Whole-vault backup as an age-encrypted file to an owner-supplied
//! recipient (age-encryption.org/v1, X25519 recipients).
//!
//! The plaintext inside the age file is JSON holding every usable
//! credential's metadata and value. It exists only in zeroized buffers on
//! the way in and out. Import never overwrites: a credential the target
//! already has (even revoked) is skipped and reported, so a backup cannot
//! quietly bring back a value the owner revoked.

use std::fs;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{Actor, CredentialClass, NewCredential, Provenance, Secret, Vault, VaultError, audit};
use crate::store::StoreError;

const FORMAT: &str = "sourcebox-vault-backup";
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backup {
    format: String,
    version: u32,
    sources: Vec<String>,
    credentials: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    source: String,
    name: String,
    class: String,
    provenance: String,
    expires_at: Option<i64>,
    /// Base64 of the value; zeroized after use.
    value: String,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    /// Sources created because the backup had them and this vault did not.
    pub sources_created: Vec<String>,
    /// Credentials stored, as `source/name`.
    pub imported: Vec<String>,
    /// Credentials left alone because this vault already has them.
    pub skipped: Vec<String>,
}

fn backup_err(what: impl std::fmt::Display) -> VaultError {
    VaultError::Backup(what.to_string())
}

impl Vault {
    /// Writes every usable credential to `output`, age-encrypted to
    /// `recipient` (an `age1...` X25519 recipient). Refuses to overwrite.
    /// Returns the number of credentials written.
    pub fn export(
        &self,
        actor: Actor<'_>,
        recipient: &str,
        output: &Path,
    ) -> Result<usize, VaultError> {
        let recipient = age::x25519::Recipient::from_str(recipient).map_err(|e| {
            backup_err(format!(
                "'{recipient}' is not an age X25519 recipient (age1...): {e}"
            ))
        })?;
        let sources = self.store().sources()?;
        let mut entries = Vec::new();
        for meta in self.list(None)? {
            if meta.revoked_at.is_some() {
                continue;
            }
            let source = self.store().source(&meta.source)?;
            let value = self.get(actor, &source, &meta.name)?;
            entries.push(Entry {
                source: meta.source,
                name: meta.name,
                class: meta.class.as_str().into(),
                provenance: meta.provenance.as_str().into(),
                expires_at: meta.expires_at,
                value: B64.encode(value.expose_secret()),
            });
        }
        let count = entries.len();
        let backup = Backup {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            sources: sources.into_iter().map(|s| s.source).collect(),
            credentials: entries,
        };
        let mut plain = Zeroizing::new(Vec::with_capacity(4096 + count * 512));
        serde_json::to_writer(&mut *plain, &backup).map_err(backup_err)?;
        drop(backup);

        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(output)
            .map_err(|e| {
                backup_err(format!(
                    "cannot create {}: {e} (export never overwrites a file)",
                    output.display()
                ))
            })?;
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(backup_err)?;
        let mut writer = encryptor.wrap_output(file).map_err(backup_err)?;
        writer.write_all(&plain).map_err(backup_err)?;
        writer
            .finish()
            .and_then(|f| f.sync_all())
            .map_err(backup_err)?;
        audit::append(
            self.store().conn(),
            &audit::AuditEntry {
                actor: actor.name,
                action: "vault.export",
                owner: None,
                source: None,
                credential: None,
                run_id: actor.run_id,
                outcome: &format!("ok: {count} credentials"),
            },
        )
        .map_err(VaultError::AuditFailed)?;
        Ok(count)
    }

    /// Restores a backup written by [`Vault::export`], decrypting it with the
    /// age identities in `identity_file`.
    pub fn import(
        &self,
        actor: Actor<'_>,
        input: &Path,
        identity_file: &Path,
    ) -> Result<ImportReport, VaultError> {
        let identities = age::IdentityFile::from_file(identity_file.to_string_lossy().into_owned())
            .and_then(|f| f.into_identities().map_err(std::io::Error::other))
            .map_err(|e| {
                backup_err(format!(
                    "cannot read age identity file {}: {e}",
                    identity_file.display()
                ))
            })?;
        let file = fs::File::open(input)
            .map_err(|e| backup_err(format!("cannot open {}: {e}", input.display())))?;
        let decryptor = age::Decryptor::new(BufReader::new(file))
            .map_err(|e| backup_err(format!("{} is not an age file: {e}", input.display())))?;
        let mut reader = decryptor
            .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| backup_err(format!("cannot decrypt {}: {e}", input.display())))?;
        let mut plain = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut plain)
            .map_err(|e| backup_err(format!("{} is damaged: {e}", input.display())))?;
        let backup: Backup = serde_json::from_slice(&plain)
            .map_err(|e| backup_err(format!("not a sourcebox backup: {e}")))?;
        if backup.format != FORMAT || backup.version != FORMAT_VERSION {
            return Err(backup_err(format!(
                "unsupported backup format {} version {}; this sourcebox reads {FORMAT} version {FORMAT_VERSION}",
                backup.format, backup.version
            )));
        }

        let mut report = ImportReport::default();
        for name in &backup.sources {
            match self.store().add_source(name) {
                Ok(_) => report.sources_created.push(name.clone()),
                Err(StoreError::SourceExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for entry in &backup.credentials {
            let label = format!("{}/{}", entry.source, entry.name);
            let source = match self.store().source(&entry.source) {
                Ok(s) => s,
                Err(StoreError::UnknownSource(_)) => {
                    report.sources_created.push(entry.source.clone());
                    self.store().add_source(&entry.source)?
                }
                Err(e) => return Err(e.into()),
            };
            if !self
                .list(Some(&source))?
                .iter()
                .all(|m| m.name != entry.name)
            {
                report.skipped.push(label);
                continue;
            }
            let value = Secret::new(
                B64.decode(&entry.value)
                    .map_err(|_| backup_err(format!("{label}: value is not base64")))?,
            );
            // Provenance of an import is `imported`; the original is not kept.
            let _ = Provenance::from_str(&entry.provenance)?;
            self.set(
                actor,
                &source,
                NewCredential {
                    name: &entry.name,
                    class: CredentialClass::from_str(&entry.class)?,
                    provenance: Provenance::Imported,
                    value,
                    expires_at: entry.expires_at,
                },
            )?;
            report.imported.push(label);
        }
        audit::append(
            self.store().conn(),
            &audit::AuditEntry {
                actor: actor.name,
                action: "vault.import",
                owner: None,
                source: None,
                credential: None,
                run_id: actor.run_id,
                outcome: &format!(
                    "ok: {} imported, {} skipped",
                    report.imported.len(),
                    report.skipped.len()
                ),
            },
        )
        .map_err(VaultError::AuditFailed)?;
        Ok(report)
    }
}
