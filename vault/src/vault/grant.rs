//! The stored form of an `oauth`-class credential, and how it becomes a
//! request header: one JSON object, `{"access_token": string,
//! "refresh_token"?: string, "expires_at"?: Unix seconds}`. The vault
//! checks every value of the class against it; the OAuth flows write it;
//! a run's requests carry its access token.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::error::VaultError;
use super::secret::Secret;

/// A grant as stored. Its tokens are wiped when it is dropped.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The token a request carries.
    pub access_token: String,
    /// The token that gets a new access token, if the provider gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires, Unix seconds, if the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// Says which tokens it holds, never what they are.
impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.access_token.zeroize();
        if let Some(refresh) = self.refresh_token.as_mut() {
            refresh.zeroize();
        }
    }
}

/// What a value of the class must be, for an error (never the value).
const SHAPE: &str = "an oauth credential is a JSON object {\"access_token\": string, \"refresh_token\"?: string, \"expires_at\"?: Unix seconds}";

impl Grant {
    /// Reads a stored value; refused, describing the shape and never the
    /// value, when it is not a grant or its access token is empty.
    pub fn parse(value: &Secret) -> Result<Self, VaultError> {
        let grant: Self = serde_json::from_slice(value.expose_secret()).map_err(|e| {
            VaultError::Invalid(format!(
                "{SHAPE} (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if grant.access_token.is_empty() {
            return Err(VaultError::Invalid(format!(
                "{SHAPE}; access_token is empty"
            )));
        }
        Ok(grant)
    }

    /// The value to store.
    pub fn to_secret(&self) -> Secret {
        Secret::new(serde_json::to_vec(self).expect("a grant serializes"))
    }

    /// When the access token expires, ms since the Unix epoch.
    pub fn expires_at_ms(&self) -> Option<i64> {
        self.expires_at.map(|s| s.saturating_mul(1000))
    }

    /// The access token as an `Authorization: Bearer` header value.
    pub fn bearer(&self) -> Option<http::HeaderValue> {
        let line =
            zeroize::Zeroizing::new([b"Bearer ".as_slice(), self.access_token.as_bytes()].concat());
        let mut value = http::HeaderValue::from_bytes(&line).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Each token, a value to redact on its own.
    pub fn tokens(&self) -> Vec<Secret> {
        let mut tokens = vec![Secret::from_slice(self.access_token.as_bytes())];
        if let Some(refresh) = &self.refresh_token {
            tokens.push(Secret::from_slice(refresh.as_bytes()));
        }
        tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_read_checked_and_carried_as_a_bearer_header() {
        let value = Secret::from_slice(
            br#"{"access_token":"at-1","refresh_token":"rt-1","expires_at":1700000000}"#,
        );
        let grant = Grant::parse(&value).expect("grant");
        assert_eq!(grant.expires_at_ms(), Some(1_700_000_000_000));
        let header = grant.bearer().expect("header");
        assert_eq!(header.as_bytes(), b"Bearer at-1");
        assert!(header.is_sensitive());
        assert_eq!(grant.tokens().len(), 2);
        let shown = format!("{grant:?}");
        assert!(
            !shown.contains("at-1") && !shown.contains("rt-1"),
            "{shown}"
        );
        assert_eq!(
            Grant::parse(&grant.to_secret())
                .expect("again")
                .access_token,
            "at-1"
        );
        for bad in [
            br#"{"access_token":""}"#.as_slice(),
            br#"{"access_token":"x","extra":1}"#,
            b"not json at-2",
        ] {
            let e = Grant::parse(&Secret::from_slice(bad)).expect_err("refused");
            assert!(!e.to_string().contains("at-2"), "{e}");
            assert!(e.to_string().contains("access_token"), "{e}");
        }
    }
}
