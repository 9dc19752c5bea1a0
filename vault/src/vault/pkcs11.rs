//! The `pkcs11` key wrapper: the KEK is an AES-256 key generated inside a
//! PKCS#11 token (an HSM; SoftHSM2 in tests) and never leaves it.
//!
//! Data keys are wrapped with CKM_AES_GCM (NIST SP 800-38D): a 96-bit IV
//! from the token's RNG, the vault's associated data, a 128-bit tag. Stored
//! as `0x01 || iv (12) || ciphertext || tag (16)`.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::error::{VaultError, WrapperKind};
use super::secret::Secret;
use crate::store::Store;

const WRAP_V1: u8 = 1;
const IV_LEN: usize = 12;
const TAG_BITS: u64 = 128;

/// A logged-in session on the token named in the data directory's settings.
pub struct Pkcs11Token {
    session: Arc<Mutex<Session>>,
}

impl fmt::Debug for Pkcs11Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs11Token")
    }
}

/// One KEK object inside the token.
pub struct HsmKek {
    session: Arc<Mutex<Session>>,
    key: ObjectHandle,
}

/// PKCS#11 modules may be initialized once per process; every data
/// directory opened by this process shares the loaded module.
fn module(path: &str) -> Result<Pkcs11, VaultError> {
    static MODULES: OnceLock<Mutex<Vec<(String, Pkcs11)>>> = OnceLock::new();
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .expect("module lock");
    if let Some((_, m)) = modules.iter().find(|(p, _)| p == path) {
        return Ok(m.clone());
    }
    let pkcs11 = Pkcs11::new(path)
        .map_err(|e| VaultError::Hsm(format!("cannot load PKCS#11 module {path}: {e}")))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(VaultError::Hsm(format!(
                "cannot initialize PKCS#11 module {path}: {e}"
            )));
        }
    }
    modules.push((path.to_owned(), pkcs11.clone()));
    Ok(pkcs11)
}

impl Pkcs11Token {
    /// Opens a session on the configured token and logs in with `pin`.
    pub fn open(store: &Store, pin: &Secret) -> Result<Self, VaultError> {
        let module_path = store
            .setting("pkcs11_module")?
            .ok_or_else(|| VaultError::Corrupt("no PKCS#11 module recorded".into()))?;
        let token_label = store
            .setting("pkcs11_token")?
            .ok_or_else(|| VaultError::Corrupt("no PKCS#11 token recorded".into()))?;
        let pkcs11 = module(&module_path)?;
        let hsm = |e: Error| VaultError::Hsm(e.to_string());
        let mut slot = None;
        for candidate in pkcs11.get_slots_with_initialized_token().map_err(hsm)? {
            if pkcs11.get_token_info(candidate).map_err(hsm)?.label() == token_label {
                slot = Some(candidate);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            VaultError::Hsm(format!(
                "no initialized PKCS#11 token labelled '{token_label}'"
            ))
        })?;
        let session = pkcs11.open_rw_session(slot).map_err(hsm)?;
        let pin = std::str::from_utf8(pin.expose_secret())
            .map_err(|_| VaultError::WrongUnlockSecret(WrapperKind::Pkcs11))?;
        match session.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, Function::Login)) => {}
            Err(Error::Pkcs11(
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                _,
            )) => {
                return Err(VaultError::WrongUnlockSecret(WrapperKind::Pkcs11));
            }
            Err(e) => return Err(hsm(e)),
        }
        Ok(Self {
            session: Arc::new(Mutex::new(session)),
        })
    }

    /// Generates a new non-extractable AES-256 KEK labelled `label`.
    pub fn generate_kek(&self, label: &str) -> Result<HsmKek, VaultError> {
        if self.find(label)?.is_some() {
            return Err(VaultError::Hsm(format!(
                "the token already holds a key labelled '{label}'"
            )));
        }
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let key = self
            .session
            .lock()
            .expect("session lock")
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| VaultError::Hsm(e.to_string()))?;
        Ok(HsmKek {
            session: Arc::clone(&self.session),
            key,
        })
    }

    /// The KEK labelled `label`.
    pub fn find_kek(&self, label: &str) -> Result<HsmKek, VaultError> {
        let key = self
            .find(label)?
            .ok_or_else(|| VaultError::Hsm(format!("the token holds no key labelled '{label}'")))?;
        Ok(HsmKek {
            session: Arc::clone(&self.session),
            key,
        })
    }

    /// Destroys the KEK labelled `label`, if present.
    pub fn destroy_kek(&self, label: &str) -> Result<(), VaultError> {
        if let Some(key) = self.find(label)? {
            self.session
                .lock()
                .expect("session lock")
                .destroy_object(key)
                .map_err(|e| VaultError::Hsm(e.to_string()))?;
        }
        Ok(())
    }

    fn find(&self, label: &str) -> Result<Option<ObjectHandle>, VaultError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let mut found = self
            .session
            .lock()
            .expect("session lock")
            .find_objects(&template)
            .map_err(|e| VaultError::Hsm(e.to_string()))?;
        match found.len() {
            0 | 1 => Ok(found.pop()),
            n => Err(VaultError::Hsm(format!(
                "{n} keys labelled '{label}' on the token; remove the duplicates"
            ))),
        }
    }
}

impl HsmKek {
    /// AES-GCM encryption inside the token.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        let session = self.session.lock().expect("session lock");
        let hsm = |e: Error| VaultError::Hsm(e.to_string());
        let mut iv = [0u8; IV_LEN];
        session.generate_random_slice(&mut iv).map_err(hsm)?;
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, aad, TAG_BITS.into()).map_err(hsm)?;
        let ciphertext = session
            .encrypt(&Mechanism::AesGcm(params), self.key, plaintext)
            .map_err(hsm)?;
        let mut out = Vec::with_capacity(1 + IV_LEN + ciphertext.len());
        out.push(WRAP_V1);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// AES-GCM decryption inside the token; any authentication failure is
    /// [`VaultError::KeyUnwrap`].
    pub fn decrypt(&self, wrapped: &[u8], aad: &[u8]) -> Result<Secret, VaultError> {
        use super::envelope::EnvelopeError;
        if wrapped.len() < 1 + IV_LEN + 16 {
            return Err(VaultError::KeyUnwrap(EnvelopeError::Truncated(
                wrapped.len(),
            )));
        }
        if wrapped[0] != WRAP_V1 {
            return Err(VaultError::KeyUnwrap(EnvelopeError::UnknownVersion(
                wrapped[0],
            )));
        }
        let mut iv: [u8; IV_LEN] = wrapped[1..1 + IV_LEN].try_into().expect("length checked");
        let session = self.session.lock().expect("session lock");
        let params = GcmParams::new(&mut iv, aad, TAG_BITS.into())
            .map_err(|e| VaultError::Hsm(e.to_string()))?;
        match session.decrypt(&Mechanism::AesGcm(params), self.key, &wrapped[1 + IV_LEN..]) {
            Ok(plain) => Ok(Secret::new(plain)),
            // SoftHSM reports a failed tag as GeneralError; the standard says
            // EncryptedDataInvalid. Both mean the bytes or AAD do not match.
            Err(Error::Pkcs11(
                RvError::GeneralError | RvError::EncryptedDataInvalid,
                Function::Decrypt,
            )) => Err(VaultError::KeyUnwrap(EnvelopeError::Forged)),
            Err(e) => Err(VaultError::Hsm(e.to_string())),
        }
    }
}
