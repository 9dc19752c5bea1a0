//! Secret values: bytes that zeroize on drop and cannot be printed.

use std::fmt;

use secrecy::{ExposeSecret, SecretSlice};
use zeroize::Zeroizing;

/// A credential value or other secret bytes.
///
/// `Debug` prints `[redacted]`; there is no `Display` and no `Serialize`.
/// The bytes are zeroized when the value is dropped. Reaching them is one
/// explicit call, [`Secret::expose_secret`], so every use is greppable.
pub struct Secret(SecretSlice<u8>);

impl Secret {
    /// Takes ownership of `bytes`; the caller's buffer moves into the secret.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(SecretSlice::from(bytes))
    }

    /// Copies `bytes` into a new secret.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The secret bytes. Keep the borrow short and never log what it returns.
    pub fn expose_secret(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// Length in bytes (not secret: it is shown in credential hints).
    pub fn len(&self) -> usize {
        self.expose_secret().len()
    }

    /// True when the secret holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        Self::from_slice(self.expose_secret())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A 256-bit symmetric key (a data key or a key-encryption key).
pub struct Key256(Zeroizing<[u8; 32]>);

impl Key256 {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut()).expect("the operating system's random source failed");
        Self(key)
    }

    /// Wraps existing key bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(array)))
    }

    /// The key bytes, for the cipher that uses them.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let secret = Secret::from_slice(b"canary-7f3a");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
        let key = Key256::from_slice(&[0x41; 32]).expect("32 bytes");
        assert_eq!(format!("{key:?}"), "[redacted]");
    }
}
