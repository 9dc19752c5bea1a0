//! Key-encryption keys: the wrappers that protect data keys, and the ring of
//! KEK versions a data directory has.
//!
//! The wrapper kind is chosen at `init` and recorded in `meta`; each KEK
//! version records how to reach its key in `kek_versions.params`. A ring
//! loads every active version, checks each against its verifier before any
//! data is touched, and loads versions created later (by a rotation in
//! another process) on first use.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Params, Version};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::envelope;
use super::error::{VaultError, WrapperKind};
use super::pkcs11::{HsmKek, Pkcs11Token};
use super::secret::{Key256, Secret};
use crate::store::{Store, now_ms};

/// Wraps and unwraps data keys under one key-encryption key.
pub trait KeyWrapper: Send + Sync {
    /// Seals `key` bound to `aad`.
    fn wrap(&self, key: &Key256, aad: &[u8]) -> Result<Vec<u8>, VaultError>;
    /// Opens what [`KeyWrapper::wrap`] sealed with the same `aad`.
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Key256, VaultError>;
}

/// A KEK held in process memory: read from a key file or derived from a
/// passphrase. Wrapping is the vault envelope with the KEK as key.
struct MemoryKek(Key256);

impl KeyWrapper for MemoryKek {
    fn wrap(&self, key: &Key256, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        Ok(envelope::seal(&self.0, key.expose_secret(), aad))
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Key256, VaultError> {
        let bytes = envelope::open(&self.0, wrapped, aad).map_err(VaultError::KeyUnwrap)?;
        Key256::from_slice(bytes.expose_secret())
            .ok_or(VaultError::KeyUnwrap(envelope::EnvelopeError::Forged))
    }
}

/// Argon2id parameters: RFC 9106 section 4, second recommended option
/// (64 MiB, 3 passes, 4 lanes), recorded beside the salt of each version.
pub const ARGON2_M_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const ARGON2_T: u32 = 3;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 4;

/// How to reach one KEK version, stored as JSON in `kek_versions.params`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum KekParams {
    Local {
        file: String,
    },
    Passphrase {
        kdf: String,
        m_kib: u32,
        t: u32,
        p: u32,
        salt: String,
    },
    Pkcs11 {
        label: String,
    },
}

/// Derives a KEK from a passphrase with Argon2id (RFC 9106).
pub fn derive_passphrase_kek(
    passphrase: &[u8],
    salt: &[u8],
    m_kib: u32,
    t: u32,
    p: u32,
) -> Result<Key256, VaultError> {
    let params = Params::new(m_kib, t, p, Some(32))
        .map_err(|e| VaultError::Corrupt(format!("Argon2id parameters: {e}")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| VaultError::Corrupt(format!("Argon2id: {e}")))?;
    Ok(Key256::from_slice(out.as_ref()).expect("32 bytes"))
}

/// The data directory's active KEK versions.
pub struct Keyring {
    kind: WrapperKind,
    dir: PathBuf,
    /// Kept so versions created later by a rotation can be reached without
    /// asking the operator again. Zeroized on drop.
    unlock_secret: Option<Secret>,
    token: Option<Pkcs11Token>,
    versions: Mutex<BTreeMap<i64, Arc<dyn KeyWrapper>>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("kind", &self.kind)
            .field(
                "versions",
                &self
                    .versions
                    .lock()
                    .map(|v| v.keys().copied().collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .finish_non_exhaustive()
    }
}

fn verifier_aad(version: i64) -> Vec<u8> {
    let mut aad = b"sourcebox/kek-verifier/v1\0".to_vec();
    aad.extend_from_slice(&version.to_le_bytes());
    aad
}

impl Keyring {
    /// The settings `init` records for a data directory using `kind`.
    pub fn init_settings(
        kind: WrapperKind,
        production: bool,
    ) -> Result<Vec<(&'static str, String)>, VaultError> {
        if production && kind == WrapperKind::Local {
            return Err(VaultError::LocalWrapperInProduction);
        }
        Ok(vec![
            ("key_wrapper", kind.as_str().to_owned()),
            ("production", if production { "1" } else { "0" }.to_owned()),
        ])
    }

    /// Creates the first KEK version of a freshly initialized store.
    pub fn create_first(store: &Store, unlock_secret: Option<Secret>) -> Result<Self, VaultError> {
        let ring = Self::empty(store, unlock_secret)?;
        ring.create_version(store.conn())?;
        Ok(ring)
    }

    /// Unlocks the store's active KEK versions, refusing a wrong passphrase,
    /// PIN or key file before any credential is touched.
    pub fn unlock(store: &Store, unlock_secret: Option<Secret>) -> Result<Self, VaultError> {
        let ring = Self::empty(store, unlock_secret)?;
        ring.load_missing(store.conn())?;
        if ring.versions.lock().expect("keyring lock").is_empty() {
            return Err(VaultError::Corrupt("no active key-encryption key".into()));
        }
        Ok(ring)
    }

    fn empty(store: &Store, unlock_secret: Option<Secret>) -> Result<Self, VaultError> {
        let kind: WrapperKind = store
            .setting("key_wrapper")?
            .ok_or_else(|| VaultError::Corrupt("no key wrapper recorded".into()))?
            .parse()?;
        if kind == WrapperKind::Local && store.setting("production")?.as_deref() == Some("1") {
            return Err(VaultError::LocalWrapperInProduction);
        }
        if kind.needs_unlock_secret() && unlock_secret.is_none() {
            return Err(VaultError::UnlockSecretRequired(kind));
        }
        let token = match kind {
            WrapperKind::Pkcs11 => Some(Pkcs11Token::open(
                store,
                unlock_secret.as_ref().expect("checked above"),
            )?),
            _ => None,
        };
        Ok(Self {
            kind,
            dir: store.dir().to_path_buf(),
            unlock_secret,
            token,
            versions: Mutex::new(BTreeMap::new()),
        })
    }

    /// The wrapper kind of this data directory.
    pub fn kind(&self) -> WrapperKind {
        self.kind
    }

    /// The wrapper of `version`, loading it if a rotation elsewhere made it.
    pub fn wrapper(
        &self,
        conn: &Connection,
        version: i64,
    ) -> Result<Arc<dyn KeyWrapper>, VaultError> {
        if let Some(w) = self.versions.lock().expect("keyring lock").get(&version) {
            return Ok(Arc::clone(w));
        }
        self.load_missing(conn)?;
        self.versions
            .lock()
            .expect("keyring lock")
            .get(&version)
            .cloned()
            .ok_or(VaultError::UnknownKekVersion(version))
    }

    /// The newest active version, which wraps every new data key. Read from
    /// the database inside the caller's write transaction, so a write never
    /// races a rotation that is retiring an older version.
    pub fn current(&self, conn: &Connection) -> Result<(i64, Arc<dyn KeyWrapper>), VaultError> {
        let version: i64 = conn
            .prepare_cached("SELECT max(version) FROM kek_versions WHERE retired_at IS NULL")?
            .query_row([], |row| row.get::<_, Option<i64>>(0))?
            .ok_or_else(|| VaultError::Corrupt("no active key-encryption key".into()))?;
        Ok((version, self.wrapper(conn, version)?))
    }

    /// Creates, records and loads a new KEK version; returns its number.
    pub fn create_version(&self, conn: &Connection) -> Result<i64, VaultError> {
        let version: i64 = conn.query_row(
            "SELECT coalesce(max(version), 0) + 1 FROM kek_versions",
            [],
            |r| r.get(0),
        )?;
        let (params, wrapper): (KekParams, Arc<dyn KeyWrapper>) = match self.kind {
            WrapperKind::Local => {
                let file = format!("kek-{version}.key");
                let key = Key256::generate();
                write_key_file(&self.dir.join("keys"), &file, &key)?;
                (KekParams::Local { file }, Arc::new(MemoryKek(key)))
            }
            WrapperKind::Passphrase => {
                let mut salt = [0u8; 16];
                getrandom::fill(&mut salt).expect("the operating system's random source failed");
                let key = derive_passphrase_kek(
                    self.secret()?.expose_secret(),
                    &salt,
                    ARGON2_M_KIB,
                    ARGON2_T,
                    ARGON2_P,
                )?;
                let params = KekParams::Passphrase {
                    kdf: "argon2id".into(),
                    m_kib: ARGON2_M_KIB,
                    t: ARGON2_T,
                    p: ARGON2_P,
                    salt: hex::encode(salt),
                };
                (params, Arc::new(MemoryKek(key)))
            }
            WrapperKind::Pkcs11 => {
                let label = format!("sourcebox-kek-{version}");
                let kek = self.token()?.generate_kek(&label)?;
                (KekParams::Pkcs11 { label }, Arc::new(kek))
            }
        };
        let verifier = wrapper.wrap(&Key256::generate(), &verifier_aad(version))?;
        conn.execute(
            "INSERT INTO kek_versions (version, params, verifier, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![version, serde_json::to_string(&params).expect("params serialize"), verifier, now_ms()],
        )?;
        self.versions
            .lock()
            .expect("keyring lock")
            .insert(version, wrapper);
        Ok(version)
    }

    /// Destroys the key material of retired versions (key files, HSM
    /// objects) and forgets them. Call after their retirement committed.
    pub fn destroy_retired(&self, conn: &Connection) -> Result<(), VaultError> {
        let mut stmt =
            conn.prepare("SELECT version, params FROM kek_versions WHERE retired_at IS NOT NULL")?;
        let retired: Vec<(i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (version, params) in retired {
            match parse_params(&params)? {
                KekParams::Local { file } => {
                    match fs::remove_file(self.dir.join("keys").join(file)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(VaultError::KeyFile(e));
                        }
                        _ => {}
                    }
                }
                KekParams::Pkcs11 { label } => self.token()?.destroy_kek(&label)?,
                KekParams::Passphrase { .. } => {}
            }
            self.versions.lock().expect("keyring lock").remove(&version);
        }
        Ok(())
    }

    fn load_missing(&self, conn: &Connection) -> Result<(), VaultError> {
        let mut stmt = conn.prepare_cached(
            "SELECT version, params, verifier FROM kek_versions WHERE retired_at IS NULL",
        )?;
        let rows: Vec<(i64, String, Vec<u8>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (version, params, verifier) in rows {
            if self
                .versions
                .lock()
                .expect("keyring lock")
                .contains_key(&version)
            {
                continue;
            }
            let wrapper: Arc<dyn KeyWrapper> = match parse_params(&params)? {
                KekParams::Local { file } => {
                    Arc::new(MemoryKek(read_key_file(&self.dir.join("keys").join(file))?))
                }
                KekParams::Passphrase {
                    kdf,
                    m_kib,
                    t,
                    p,
                    salt,
                } => {
                    if kdf != "argon2id" {
                        return Err(VaultError::Corrupt(format!("unknown KDF '{kdf}'")));
                    }
                    let salt = hex::decode(salt)
                        .map_err(|_| VaultError::Corrupt("KDF salt is not hex".into()))?;
                    Arc::new(MemoryKek(derive_passphrase_kek(
                        self.secret()?.expose_secret(),
                        &salt,
                        m_kib,
                        t,
                        p,
                    )?))
                }
                KekParams::Pkcs11 { label } => Arc::new(self.token()?.find_kek(&label)?),
            };
            wrapper
                .unwrap(&verifier, &verifier_aad(version))
                .map_err(|_| match self.kind {
                    WrapperKind::Local => VaultError::WrongKeyFile,
                    _ => VaultError::WrongUnlockSecret(self.kind),
                })?;
            self.versions
                .lock()
                .expect("keyring lock")
                .insert(version, wrapper);
        }
        Ok(())
    }

    fn secret(&self) -> Result<&Secret, VaultError> {
        self.unlock_secret
            .as_ref()
            .ok_or(VaultError::UnlockSecretRequired(self.kind))
    }

    fn token(&self) -> Result<&Pkcs11Token, VaultError> {
        self.token
            .as_ref()
            .ok_or(VaultError::UnlockSecretRequired(self.kind))
    }
}

impl KeyWrapper for HsmKek {
    fn wrap(&self, key: &Key256, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.encrypt(key.expose_secret(), aad)
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Key256, VaultError> {
        let bytes = self.decrypt(wrapped, aad)?;
        Key256::from_slice(bytes.expose_secret())
            .ok_or(VaultError::KeyUnwrap(envelope::EnvelopeError::Forged))
    }
}

fn parse_params(params: &str) -> Result<KekParams, VaultError> {
    serde_json::from_str(params).map_err(|e| VaultError::Corrupt(format!("KEK parameters: {e}")))
}

fn write_key_file(keys_dir: &Path, file: &str, key: &Key256) -> Result<(), VaultError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(keys_dir)
        .map_err(VaultError::KeyFile)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(keys_dir.join(file))
        .map_err(VaultError::KeyFile)?;
    f.write_all(key.expose_secret())
        .and_then(|()| f.sync_all())
        .map_err(VaultError::KeyFile)?;
    fs::File::open(keys_dir)
        .and_then(|d| d.sync_all())
        .map_err(VaultError::KeyFile)
}

fn read_key_file(path: &Path) -> Result<Key256, VaultError> {
    let bytes = Zeroizing::new(fs::read(path).map_err(VaultError::KeyFile)?);
    Key256::from_slice(&bytes).ok_or(VaultError::WrongKeyFile)
}
