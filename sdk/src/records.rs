//! Emitting records and checkpoints into this source's streams.

use crate::wit::sourcebox::connector::records as wit;
pub use crate::wit::sourcebox::connector::records::{BatchError, RecordError};

/// Upserts one record, serialized as a JSON object, by its primary key.
/// A record whose JSON text is the same as the stored one's is left as it
/// was: it keeps its update time, so clients reading what changed are not
/// sent it again. That needs the same data to serialize to the same text
/// each run, as a struct or a `serde_json::Value` built the same way does.
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

/// Upserts records in order in one call to the host, as [`emit`] would one
/// by one: for a connector that collects many small records (a page of
/// them, say), where a call per record would cost more than the record.
/// On an error, [`BatchError::index`] is the first record not accepted;
/// the ones before it were.
///
/// ```no_run
/// let page = [serde_json::json!({"id": 1}), serde_json::json!({"id": 2})];
/// sourcebox_sdk::records::emit_batch("repos", &page)?;
/// # Ok::<(), sourcebox_sdk::records::BatchError>(())
/// ```
pub fn emit_batch<T: serde::Serialize>(stream: &str, records: &[T]) -> Result<(), BatchError> {
    let mut lines = Vec::with_capacity(records.len() * 64);
    for (index, record) in records.iter().enumerate() {
        let start = lines.len();
        // Compact JSON: no newline inside a record.
        if serde_json::to_writer(&mut lines, record).is_err() {
            // The ones before it go in, as the host would have taken them;
            // what it wrote of this one does not.
            lines.truncate(start);
            emit_lines(stream, &lines)?;
            return Err(BatchError {
                index: u32::try_from(index).expect("a batch's length fits in u32"),
                error: RecordError::InvalidRecord,
            });
        }
        lines.push(b'\n');
    }
    emit_lines(stream, &lines)
}

/// Upserts records given as JSON text, one object per line (NDJSON, as
/// some providers' exports come), in order, in one call to the host:
/// [`emit_json`] for a batch. Lines end at `\n`; a record must not
/// contain a newline of its own (compact JSON never does).
///
/// ```no_run
/// let page = "{\"id\":1}\n{\"id\":2}\n";
/// sourcebox_sdk::records::emit_batch_json("repos", page)?;
/// # Ok::<(), sourcebox_sdk::records::BatchError>(())
/// ```
pub fn emit_batch_json(stream: &str, lines: &str) -> Result<(), BatchError> {
    if lines.is_empty() {
        return Ok(());
    }
    wit::emit_batch(stream, lines)
}

fn emit_lines(stream: &str, lines: &[u8]) -> Result<(), BatchError> {
    let lines = std::str::from_utf8(lines).expect("serde_json writes UTF-8");
    emit_batch_json(stream, lines)
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
