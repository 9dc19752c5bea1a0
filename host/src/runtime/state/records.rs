//! The records capability: records checked against their stream and kept in batches, written in one transaction each, and checkpoints.

use wasmtime::component::{HasSelf, Linker};

use super::*;
use crate::contract::bindings::sourcebox::connector::records::{self, BatchError, RecordError};

/// Adds the records interface to `linker`, served by each run's state.
pub(in crate::runtime) fn link(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    records::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
}

/// Records buffered before they are written in one transaction, and the
/// most bytes of them held before that.
const FLUSH_EVERY: usize = 500;
const FLUSH_BYTES: usize = 4 << 20;

/// The newest update time in a stream: the last entry of its range.
pub(crate) const LAST_UPDATE: &str =
    "SELECT MAX(updated_at) FROM records WHERE source_id = ?1 AND stream = ?2";

/// A record, by its key: inserted, or, when its data changed, its data,
/// run and update time replaced (which moves it to the end of its
/// stream's page order). A record emitted again unchanged is left as it
/// was, so clients reading by update time are not sent it again. Public
/// so the benchmarks' native baseline writes with the same statement.
pub const UPSERT_RECORD: &str =
    "INSERT INTO records (source_id, stream, key, data, run_id, created_at, updated_at)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
     ON CONFLICT (source_id, stream, key) DO UPDATE SET
         data = excluded.data, run_id = excluded.run_id, updated_at = excluded.updated_at
     WHERE data IS NOT excluded.data";

impl RunState {
    /// Writes buffered records in one transaction.
    pub(in crate::runtime) fn flush_records(&mut self) -> Result<(), VaultError> {
        let Some(bound) = self.bound.as_mut() else {
            return Ok(());
        };
        if bound.pending.is_empty() {
            return Ok(());
        }
        let vault = bound.binding.vault.lock().expect("vault lock");
        let source_id = bound.binding.source.source_id;
        vault.store().write(|conn| {
            let mut stmt = conn.prepare_cached(UPSERT_RECORD)?;
            let mut last = conn.prepare_cached(LAST_UPDATE)?;
            let now = now_ms();
            // Each stream's batch is stamped after every record already in
            // the stream, even when the clock says otherwise (a second
            // batch in the same millisecond, a clock set back): a client
            // paging by cursor would otherwise never see it.
            let mut stamps: HashMap<&str, i64> = HashMap::new();
            for (stream, key, data) in &bound.pending {
                let at = match stamps.get(stream.as_str()) {
                    Some(at) => *at,
                    None => {
                        let newest: Option<i64> =
                            last.query_row(params![source_id, stream], |r| r.get(0))?;
                        let at = newest.map_or(now, |newest| now.max(newest + 1));
                        stamps.insert(stream, at);
                        at
                    }
                };
                stmt.execute(params![
                    source_id,
                    stream,
                    key,
                    data,
                    bound.binding.run_id,
                    at
                ])?;
            }
            Ok(())
        })?;
        bound.pending.clear();
        bound.pending_bytes = 0;
        bound.binding.control.events.send(
            &bound.binding.run_id,
            &bound.binding.source.source,
            EventKind::Progress {
                records: bound.emitted,
            },
        );
        Ok(())
    }
}

impl RunState {
    /// Checks one record and adds it to the pending batch, storing the
    /// batch when it is full: what `emit` does, and `emit-batch` for each
    /// of its records. `Err` ends the run.
    fn accept(
        &mut self,
        stream: &str,
        record: String,
    ) -> wasmtime::Result<Result<(), RecordError>> {
        if self.exhausted.is_some() {
            // It was told to stop and kept going.
            return Err(wasmtime::Error::msg("record limit exceeded"));
        }
        let Some(bound) = self.bound.as_mut() else {
            return Ok(Err(RecordError::UnknownStream));
        };
        let Some(declared) = bound.manifest.streams.iter().find(|s| s.name == stream) else {
            return Ok(Err(RecordError::UnknownStream));
        };
        if bound.emitted + 1 > self.limits.records {
            self.exhausted = Some(Exhausted::Records);
            return Ok(Err(RecordError::LimitReached));
        }
        if record.len() as u64 > self.limits.record_size {
            self.exhausted = Some(Exhausted::RecordSize);
            return Ok(Err(RecordError::LimitReached));
        }
        if bound.emitted_bytes + record.len() as u64 > self.limits.record_bytes {
            self.exhausted = Some(Exhausted::RecordBytes);
            return Ok(Err(RecordError::LimitReached));
        }
        let Ok(serde_json::Value::Object(object)) =
            serde_json::from_str::<serde_json::Value>(&record)
        else {
            return Ok(Err(RecordError::InvalidRecord));
        };
        let mut key = Vec::with_capacity(declared.primary_key.len());
        for field in &declared.primary_key {
            match object.get(field) {
                Some(value) if !value.is_null() => key.push(value),
                _ => return Ok(Err(RecordError::InvalidRecord)),
            }
        }
        let key = serde_json::to_string(&key).expect("JSON values serialize");
        bound.emitted += 1;
        bound.emitted_bytes += record.len() as u64;
        bound.pending_bytes += record.len();
        bound.pending.push((stream.to_owned(), key, record));
        if bound.pending.len() >= FLUSH_EVERY || bound.pending_bytes >= FLUSH_BYTES {
            self.flush_records()
                .map_err(|e| wasmtime::Error::msg(format!("records could not be stored: {e}")))?;
        }
        Ok(Ok(()))
    }
}

impl records::Host for RunState {
    fn emit(
        &mut self,
        stream: String,
        record: String,
    ) -> wasmtime::Result<Result<(), RecordError>> {
        self.accept(&stream, record)
    }

    fn emit_batch(
        &mut self,
        stream: String,
        records: String,
    ) -> wasmtime::Result<Result<(), BatchError>> {
        let lines = records.strip_suffix('\n').unwrap_or(&records);
        if lines.is_empty() {
            return Ok(Ok(()));
        }
        for (index, record) in lines.split('\n').enumerate() {
            if let Err(error) = self.accept(&stream, record.to_owned())? {
                // At most one line per byte of a string that fits in u32.
                let index = u32::try_from(index).expect("a line index fits in u32");
                return Ok(Err(BatchError { index, error }));
            }
        }
        Ok(Ok(()))
    }

    async fn checkpoint(
        &mut self,
        stream: String,
        state: String,
    ) -> wasmtime::Result<Result<(), RecordError>> {
        let Some(bound) = self.bound.as_ref() else {
            return Ok(Err(RecordError::UnknownStream));
        };
        if !bound.manifest.streams.iter().any(|s| s.name == stream) {
            return Ok(Err(RecordError::UnknownStream));
        }
        if state.len() as u64 > self.limits.checkpoint_bytes {
            self.exhausted = Some(Exhausted::CheckpointBytes);
            return Ok(Err(RecordError::LimitReached));
        }
        // Records emitted before the checkpoint are stored before it.
        self.flush_records()
            .map_err(|e| wasmtime::Error::msg(format!("records could not be stored: {e}")))?;
        let bound = self.bound.as_ref().expect("checked above");
        let vault = bound.binding.vault.lock().expect("vault lock");
        vault
            .store()
            .conn()
            .execute(
                "INSERT INTO checkpoints (source_id, stream, state, run_id, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (source_id, stream) DO UPDATE SET state = excluded.state, run_id = excluded.run_id,
                 updated_at = excluded.updated_at",
                params![bound.binding.source.source_id, stream, state, bound.binding.run_id, now_ms()],
            )
            .map_err(|e| wasmtime::Error::msg(format!("checkpoint could not be stored: {e}")))?;
        Ok(Ok(()))
    }

    async fn read_checkpoint(&mut self, stream: String) -> wasmtime::Result<Option<String>> {
        let Some(bound) = self.bound.as_ref() else {
            return Ok(None);
        };
        let vault = bound.binding.vault.lock().expect("vault lock");
        let state = vault
            .store()
            .conn()
            .query_row(
                "SELECT state FROM checkpoints WHERE source_id = ?1 AND stream = ?2",
                params![bound.binding.source.source_id, stream],
                |r| r.get(0),
            )
            .ok();
        Ok(state)
    }
}
