//! Emitting records and checkpoints into this source's streams.

use crate::wit::sourcebox::connector::records as wit;
pub use crate::wit::sourcebox::connector::records::RecordError;

/// Upserts one record, serialized as a JSON object, by its primary key.
///
/// ```no_run
/// sourcebox_sdk::records::emit("repos", &serde_json::json!({"id": 1, "name": "x"}))?;
/// # Ok::<(), sourcebox_sdk::records::RecordError>(())
/// ```
pub fn emit(stream: &str, record: &impl serde::Serialize) -> Result<(), RecordError> {
    let json = serde_json::to_string(record).map_err(|_| RecordError::InvalidRecord)?;
    wit::emit(stream, &json)
}

/// Upserts one record given as JSON text, for a connector that already holds
/// the record serialized (for example a provider's response passed through).
/// The host checks that it is a JSON object with the stream's primary key.
///
/// ```no_run
/// sourcebox_sdk::records::emit_json("repos", r#"{"id":1,"name":"x"}"#)?;
/// # Ok::<(), sourcebox_sdk::records::RecordError>(())
/// ```
pub fn emit_json(stream: &str, record: &str) -> Result<(), RecordError> {
    wit::emit(stream, record)
}

/// Saves the stream's checkpoint.
///
/// ```no_run
/// sourcebox_sdk::records::checkpoint("repos", "2026-11-25T00:00:00Z")?;
/// # Ok::<(), sourcebox_sdk::records::RecordError>(())
/// ```
pub fn checkpoint(stream: &str, state: &str) -> Result<(), RecordError> {
    wit::checkpoint(stream, state)
}

/// The stream's last saved checkpoint.
///
/// ```no_run
/// let since = sourcebox_sdk::records::read_checkpoint("repos");
/// ```
pub fn read_checkpoint(stream: &str) -> Option<String> {
    wit::read_checkpoint(stream)
}
