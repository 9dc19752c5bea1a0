//! The versioned envelope every sealed value is stored in.
//!
//! Layout of version 1: `0x01 || nonce (24 bytes) || ciphertext || tag (16 bytes)`,
//! sealed with XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03, over the
//! ChaCha20-Poly1305 AEAD of RFC 8439). The nonce is random per seal; 192 bits
//! make random nonces safe for any number of seals under one key.
//!
//! The associated data is never stored in the envelope: the caller rebuilds
//! it from where the envelope is found, so an envelope moved elsewhere does
//! not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::secret::{Key256, Secret};

/// The only envelope version this build writes.
pub const ENVELOPE_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;

/// Why an envelope did not open. No variant carries key or plaintext bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than a header and a tag: cut off or not an envelope at all.
    #[error("the sealed value is truncated ({0} bytes)")]
    Truncated(usize),
    /// Written by a newer or unknown format.
    #[error("the sealed value has unknown envelope version {0}")]
    UnknownVersion(u8),
    /// Wrong key, wrong associated data, or modified bytes.
    #[error("the sealed value failed authentication (wrong key, moved row or tampered bytes)")]
    Forged,
}

/// Seals `plaintext` under `key`, bound to `aad`.
pub fn seal(key: &Key256, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system's random source failed");
    let cipher = XChaCha20Poly1305::new(key.expose_secret().into());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("plaintext within XChaCha20-Poly1305 limits");
    let mut envelope = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    envelope.push(ENVELOPE_V1);
    envelope.extend_from_slice(&nonce);
    envelope.extend_from_slice(&ciphertext);
    envelope
}

/// Opens an envelope sealed by [`seal`] with the same key and associated data.
pub fn open(key: &Key256, envelope: &[u8], aad: &[u8]) -> Result<Secret, EnvelopeError> {
    if envelope.len() < HEADER_LEN + TAG_LEN {
        return Err(EnvelopeError::Truncated(envelope.len()));
    }
    if envelope[0] != ENVELOPE_V1 {
        return Err(EnvelopeError::UnknownVersion(envelope[0]));
    }
    let nonce: [u8; NONCE_LEN] = envelope[1..HEADER_LEN].try_into().expect("length checked");
    let cipher = XChaCha20Poly1305::new(key.expose_secret().into());
    cipher
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &envelope[HEADER_LEN..],
                aad,
            },
        )
        .map(Secret::new)
        .map_err(|_| EnvelopeError::Forged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = Key256::generate();
        let sealed = seal(&key, b"value", b"aad");
        assert_eq!(
            open(&key, &sealed, b"aad").expect("opens").expose_secret(),
            b"value"
        );

        type Case = (&'static str, Vec<u8>, Vec<u8>, Key256, EnvelopeError);
        let cases: Vec<Case> = vec![
            (
                "wrong aad",
                sealed.clone(),
                b"other".to_vec(),
                Key256::from_slice(key.expose_secret()).expect("key"),
                EnvelopeError::Forged,
            ),
            (
                "wrong key",
                sealed.clone(),
                b"aad".to_vec(),
                Key256::generate(),
                EnvelopeError::Forged,
            ),
            (
                "flipped tag bit",
                {
                    let mut s = sealed.clone();
                    *s.last_mut().expect("tag") ^= 1;
                    s
                },
                b"aad".to_vec(),
                Key256::from_slice(key.expose_secret()).expect("key"),
                EnvelopeError::Forged,
            ),
            (
                "flipped nonce bit",
                {
                    let mut s = sealed.clone();
                    s[3] ^= 1;
                    s
                },
                b"aad".to_vec(),
                Key256::from_slice(key.expose_secret()).expect("key"),
                EnvelopeError::Forged,
            ),
            (
                "truncated",
                sealed[..20].to_vec(),
                b"aad".to_vec(),
                Key256::from_slice(key.expose_secret()).expect("key"),
                EnvelopeError::Truncated(20),
            ),
            (
                "unknown version",
                {
                    let mut s = sealed.clone();
                    s[0] = 9;
                    s
                },
                b"aad".to_vec(),
                Key256::from_slice(key.expose_secret()).expect("key"),
                EnvelopeError::UnknownVersion(9),
            ),
        ];
        for (name, envelope, aad, key, expected) in cases {
            assert_eq!(
                open(&key, &envelope, &aad).map(|_| ()),
                Err(expected),
                "{name}"
            );
        }
    }
}
