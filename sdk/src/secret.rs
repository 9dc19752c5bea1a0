//! Secret strings that cannot be printed.

use std::fmt;

/// A credential value. `Debug` prints `[redacted]`; there is no `Display`.
/// The bytes are overwritten when it is dropped. Reach them with
/// [`Secret::expose_secret`], and never log what it returns.
///
/// ```
/// let s = sourcebox_sdk::Secret::new("ghp_abc".into());
/// assert_eq!(format!("{s:?}"), "[redacted]");
/// assert_eq!(s.expose_secret(), "ghp_abc");
/// ```
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    ///
    /// ```
    /// let s = sourcebox_sdk::Secret::new(String::from("v"));
    /// assert_eq!(s.expose_secret(), "v");
    /// ```
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The value.
    ///
    /// ```
    /// let s = sourcebox_sdk::Secret::new("v".into());
    /// let header = format!("Bearer {}", s.expose_secret());
    /// # assert_eq!(header, "Bearer v");
    /// ```
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        // Keeps the wipe from being optimized away as a dead store.
        std::hint::black_box(&bytes);
    }
}
