//! The per-run store data: an empty WASI context and the sourcebox
//! capabilities, every one resolving against the single source the run was
//! created for. No import takes a source id, so an instance cannot even
//! name another source.

use std::collections::HashMap;

pub(super) mod host_resources;

use rusqlite::params;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::call::{Binding, Outcome};
use super::credentials::{RunCredentials, Shared};
use super::failure::{Cancelled, RunFailure};
use super::limits::{Exhausted, Limits, MAX_FIELDS_SIZE, MAX_RANDOM, MAX_RESOURCES};
use crate::contract::Manifest;
use crate::contract::bindings::sourcebox::connector::credentials::{self, CredentialError};
use crate::contract::bindings::sourcebox::connector::interaction::{self, InteractionError, Kind};
use crate::contract::bindings::sourcebox::connector::log::{self, Level};
use crate::contract::bindings::sourcebox::connector::records::{self, BatchError, RecordError};
use crate::contract::bindings::sourcebox::connector::types;
use crate::egress::{EgressHooks, EgressPolicy};
use crate::events::EventKind;
use crate::interactions;
use crate::store::now_ms;
use crate::vault::{Actor, VaultError};

/// Records buffered before they are written in one transaction, and the
/// most bytes of them held before that.
const FLUSH_EVERY: usize = 500;
const FLUSH_BYTES: usize = 4 << 20;
/// Longest log line kept from a guest, and longest text of its errors.
const MAX_LOG_LINE: usize = 2000;
/// Longest account id or name a connector may report.
const MAX_IDENTITY: usize = 256;
/// Bytes of stdout and of stderr kept per run; writes beyond fail.
const MAX_GUEST_OUTPUT: usize = 64 * 1024;
/// Store data of one run.
pub struct RunState {
    wasi: WasiCtx,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    http: WasiHttpCtx,
    hooks: EgressHooks,
    table: ResourceTable,
    limits: Limits,
    exhausted: Option<Exhausted>,
    /// Bytes of all the instance's memories, and elements of all its
    /// tables, as grown so far.
    memory_total: usize,
    table_total: usize,
    bound: Option<Bound>,
}

struct Bound {
    binding: Binding,
    manifest: std::sync::Arc<Manifest>,
    /// The run's clock, told when the run waits for the owner and asks.
    clock: super::clock::RunClock,
    /// Log lines and their bytes written so far.
    logged_lines: u64,
    logged_bytes: u64,
    pending: Vec<(String, String, String)>,
    /// Bytes of the records in `pending`.
    pending_bytes: usize,
    emitted: u64,
    emitted_bytes: u64,
    /// The run's credentials: the only way it reaches any.
    credentials: Shared,
    /// What the host saw go wrong that explains a failed run: an
    /// unanswered interaction, a login browser that failed.
    host_failure: Option<RunFailure>,
}

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
    /// For `describe()`: bound to no source, so every capability refuses.
    pub(super) fn describing(limits: Limits) -> Self {
        Self::new(limits, EgressHooks::deny_all(), None)
    }

    /// Bound to `binding.source`.
    pub(super) fn bound(
        binding: Binding,
        manifest: std::sync::Arc<Manifest>,
        authenticating: bool,
        clock: super::clock::RunClock,
    ) -> Self {
        let limits = binding.limits.clone();
        let policy = EgressPolicy::for_source(&manifest, &binding.setup, &binding.egress_allow);
        let credentials: Shared = std::sync::Arc::new(std::sync::Mutex::new(RunCredentials::new(
            std::sync::Arc::clone(&binding.vault),
            binding.source.clone(),
            binding.run_id.clone(),
            authenticating,
            std::sync::Arc::clone(&manifest),
            &limits,
        )));
        let hooks = EgressHooks::for_run(
            std::sync::Arc::new(policy),
            std::sync::Arc::clone(&credentials),
            &limits,
        );
        Self::new(
            limits,
            hooks,
            Some(Bound {
                binding,
                manifest,
                clock,
                logged_lines: 0,
                logged_bytes: 0,
                pending: Vec::new(),
                pending_bytes: 0,
                emitted: 0,
                emitted_bytes: 0,
                credentials,
                host_failure: None,
            }),
        )
    }

    fn new(limits: Limits, hooks: EgressHooks, bound: Option<Bound>) -> Self {
        // Built from nothing: no env, args, preopens, sockets or inherited
        // stdio. Nothing here may call an `inherit_*` method. Guest stdout
        // and stderr go to bounded buffers that end up in the host log.
        let stdout = MemoryOutputPipe::new(MAX_GUEST_OUTPUT);
        let stderr = MemoryOutputPipe::new(MAX_GUEST_OUTPUT);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .max_random_size(MAX_RANDOM)
            .build();
        // What the host keeps for the guest lives in the resource table:
        // bounding its entries and each entry's size bounds the host
        // memory one run can pin (see HOST_ALLOWANCE).
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_SIZE);
        Self {
            wasi,
            stdout,
            stderr,
            http,
            hooks,
            table,
            limits,
            exhausted: None,
            memory_total: 0,
            table_total: 0,
            bound,
        }
    }

    /// The limit the run hit, if any.
    pub(super) fn exhausted(&self) -> Option<Exhausted> {
        self.exhausted.or(self.hooks.exhausted()).or_else(|| {
            let bound = self.bound.as_ref()?;
            bound
                .credentials
                .lock()
                .expect("credentials lock")
                .exhausted()
        })
    }

    /// Writes what the guest printed to the host log, line by line, cut to
    /// length and with this run's secrets redacted.
    pub(super) fn log_guest_output(&self) {
        for (stream, pipe) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let bytes = pipe.contents();
            // Redacted whole before it is split, so a secret printed across
            // lines (a key in PEM, say) is found too.
            let printed = String::from_utf8_lossy(&bytes);
            let text = self.without_secrets(&printed, usize::MAX);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let (source, run) = self.log_context();
                let line = crate::inert::text(line, MAX_LOG_LINE);
                tracing::info!(source, run, stream, "{line}");
            }
        }
    }

    /// Audits the credential reads the run's first read of each answered.
    pub(super) fn audit_reads_again(&self) {
        let Some(bound) = &self.bound else {
            return;
        };
        let audited = bound
            .credentials
            .lock()
            .expect("credentials lock")
            .audit_reads_again();
        if let Err(e) = audited {
            let (source, run) = self.log_context();
            tracing::error!(source, run, error = %e, "the run's repeated credential reads could not be audited");
        }
    }

    /// The source and the run this store is bound to (`-` for `describe()`).
    pub(super) fn log_context(&self) -> (&str, &str) {
        match &self.bound {
            Some(bound) => (
                bound.binding.source.source.as_str(),
                bound.binding.run_id.as_str(),
            ),
            None => ("-", "-"),
        }
    }

    /// `line` with every value handed out this run replaced, then made
    /// inert and cut to length — in that order, so a secret straddling the
    /// cut is replaced whole rather than left less its last characters.
    pub(super) fn redact(&self, line: &str) -> String {
        self.redact_to(line, MAX_LOG_LINE)
    }

    /// [`RunState::redact`], cut to `max` characters.
    pub(super) fn redact_to(&self, text: &str, max: usize) -> String {
        crate::inert::text(&self.without_secrets(text, max), max)
    }

    /// `text`, as far as it can matter to a cut at `max` characters, with
    /// every value this run may show replaced.
    fn without_secrets<'t>(&self, text: &'t str, max: usize) -> std::borrow::Cow<'t, str> {
        let credentials = self
            .bound
            .as_ref()
            .map(|b| b.credentials.lock().expect("credentials lock"));
        if credentials.as_ref().is_none_or(|c| c.shown().is_empty()) {
            return std::borrow::Cow::Borrowed(text);
        }
        let secrets: Vec<&str> = credentials
            .iter()
            .flat_map(|c| c.shown())
            .filter_map(|s| std::str::from_utf8(s.expose_secret()).ok())
            .filter(|v| !v.is_empty())
            .collect();
        // What lies past the cut by more than the longest secret cannot
        // hold any part of a secret that starts before it.
        let longest = secrets.iter().map(|v| v.len()).max().unwrap_or(0);
        let window = match text.char_indices().nth(max.saturating_add(longest)) {
            Some((at, _)) => &text[..at],
            None => text,
        };
        let mut text = window.to_owned();
        for value in secrets {
            text = text.replace(value, "[redacted]");
        }
        std::borrow::Cow::Owned(text)
    }

    /// A connector's error, its text redacted and made inert: it becomes
    /// the run's detail, and may be kept as why a source needs re-auth.
    pub(super) fn redacted_error(&self, e: types::ConnectorError) -> types::ConnectorError {
        use types::ConnectorError as E;
        let text = |m: String| self.redact_to(&m, MAX_LOG_LINE);
        match e {
            E::AuthRejected(m) => E::AuthRejected(text(m)),
            E::AuthInsufficient(m) => E::AuthInsufficient(text(m)),
            E::UpstreamTransient(m) => E::UpstreamTransient(text(m)),
            E::Fatal(m) => E::Fatal(text(m)),
            e @ E::RateLimited(_) => e,
        }
    }

    /// What a connector returned, its text redacted and made inert: the
    /// account it says the credentials belong to is shown to the owner.
    pub(super) fn redacted_outcome(&self, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Verified(identity) => Outcome::Verified(types::AccountIdentity {
                id: self.redact_to(&identity.id, MAX_IDENTITY),
                display: self.redact_to(&identity.display, MAX_IDENTITY),
            }),
            outcome => outcome,
        }
    }

    /// A revoked or undecryptable credential the run asked for, or an
    /// interaction the owner did not answer in time.
    pub(super) fn host_failure(&self) -> Option<RunFailure> {
        let bound = self.bound.as_ref()?;
        let credentials = bound.credentials.lock().expect("credentials lock");
        bound.host_failure.clone().or_else(|| credentials.failure())
    }

    /// Why an outbound request was refused, if one was.
    pub(super) fn egress_denied(&self) -> Option<String> {
        self.hooks.denied()
    }

    /// Writes buffered records in one transaction.
    pub(super) fn flush_records(&mut self) -> Result<(), VaultError> {
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

impl std::fmt::Debug for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunState")
            .field(
                "source",
                &self.bound.as_ref().map(|b| &b.binding.source.source),
            )
            .field("exhausted", &self.exhausted)
            .finish_non_exhaustive()
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RunState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for RunState {}

impl credentials::Host for RunState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, CredentialError>> {
        let Some(bound) = self.bound.as_mut() else {
            return Ok(Err(CredentialError::Undeclared));
        };
        let mut credentials = bound.credentials.lock().expect("credentials lock");
        // A host fault (audit log, database) stops the run.
        let value = credentials
            .get(&name)
            .map_err(|e| wasmtime::Error::msg(format!("credential resolution failed: {e}")))?;
        Ok(
            value.and_then(|secret| match std::str::from_utf8(secret.expose_secret()) {
                Ok(text) => Ok(text.to_owned()),
                Err(_) => Err(CredentialError::Unrecoverable),
            }),
        )
    }

    async fn put(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), CredentialError>> {
        let Some(bound) = self.bound.as_mut() else {
            return Ok(Err(CredentialError::Undeclared));
        };
        let mut credentials = bound.credentials.lock().expect("credentials lock");
        credentials.put(&name, value).map_err(wasmtime::Error::msg)
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

impl log::Host for RunState {
    async fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if let Some(bound) = self.bound.as_mut() {
            bound.logged_lines += 1;
            bound.logged_bytes = bound.logged_bytes.saturating_add(message.len() as u64);
            let over = if bound.logged_lines > self.limits.log_lines {
                Some(Exhausted::LogLines)
            } else if bound.logged_bytes > self.limits.log_bytes {
                Some(Exhausted::LogBytes)
            } else {
                None
            };
            if let Some(limit) = over {
                self.exhausted = Some(limit);
                return Err(wasmtime::Error::msg("log limit exceeded"));
            }
        }
        let line = self.redact(&message);
        let (source, run) = self.log_context();
        if let Some(bound) = &self.bound {
            bound.binding.control.events.send(
                run,
                source,
                EventKind::Log {
                    level: format!("{level:?}").to_lowercase(),
                    line: line.clone(),
                },
            );
        }
        match level {
            Level::Trace => tracing::trace!(source, run, "{line}"),
            Level::Debug => tracing::debug!(source, run, "{line}"),
            Level::Info => tracing::info!(source, run, "{line}"),
            Level::Warn => tracing::warn!(source, run, "{line}"),
            Level::Error => tracing::error!(source, run, "{line}"),
        }
        Ok(())
    }
}

impl interaction::Host for RunState {
    /// Records a durable pending interaction and waits for the owner's
    /// answer without holding a thread; the answer is taken from the vault
    /// sealed for this run's source only.
    async fn ask(
        &mut self,
        kind: Kind,
        prompt: String,
    ) -> wasmtime::Result<Result<String, InteractionError>> {
        let prompt = self.redact(&prompt);
        let Some(bound) = self.bound.as_mut() else {
            return Ok(Err(InteractionError::Unsupported));
        };
        let control = bound.binding.control.clone();
        if !control.interactive {
            return Ok(Err(InteractionError::Unsupported));
        }
        // A connector that asks again and again is stopped, not answered.
        if bound.clock.ask() > self.limits.questions {
            self.exhausted = Some(Exhausted::Questions);
            return Err(wasmtime::Error::msg(format!(
                "the run asked the owner more than {} questions",
                self.limits.questions
            )));
        }
        let clock = bound.clock.clone();
        let kind = kind_name(kind);
        // A login opens the browser the owner will stream before the owner
        // is asked, at the page the connector named.
        let login = if kind == "login" {
            match open_login(bound, &prompt).await {
                Ok(login) => Some(login),
                Err(refusal) => return Ok(Err(refusal)),
            }
        } else {
            None
        };
        let source = bound.binding.source.clone();
        let run_id = bound.binding.run_id.clone();
        let vault = std::sync::Arc::clone(&bound.binding.vault);
        let deadline = crate::store::ms_after(now_ms(), control.interaction_wait);
        let id = {
            let vault = vault.lock().expect("vault lock");
            interactions::open(
                vault.store(),
                &run_id,
                source.source_id,
                kind,
                &prompt,
                deadline,
            )
            .map_err(|e| host_fault(&e))?
        };
        // Closed however the wait ends, the call abandoned included.
        let question = OpenQuestion {
            vault: std::sync::Arc::clone(&vault),
            id: id.clone(),
            run_id: run_id.clone(),
            open: true,
        };
        // Taken out of the registry however the wait ends, which closes it.
        let _open = login.map(|(browser, credential)| {
            control.logins.insert(&id, browser);
            OpenLogin {
                logins: control.logins.clone(),
                id: id.clone(),
                credential,
            }
        });
        tracing::info!(
            source = source.source,
            run = run_id,
            interaction = id,
            kind,
            "waiting for the owner"
        );
        control.events.send(
            &run_id,
            &source.source,
            EventKind::Interaction {
                id: id.clone(),
                kind: kind.to_owned(),
                prompt,
            },
        );
        control.events.send(
            &run_id,
            &source.source,
            EventKind::State {
                state: "waiting_for_owner".into(),
                failure: None,
            },
        );
        let waiting = clock.waiting();
        let actor = Actor {
            name: "connector",
            run_id: Some(&run_id),
        };
        let outcome = wait_for_answer(&vault, actor, &source, &id, deadline, &control).await?;
        drop(waiting);
        question.close().map_err(|e| host_fault(&e))?;
        control.events.send(
            &run_id,
            &source.source,
            EventKind::State {
                state: "running".into(),
                failure: None,
            },
        );
        let bound = self.bound.as_mut().expect("bound above");
        match outcome {
            Ok(answer) if _open.is_some() => {
                // The owner says the login is done: what the browser holds
                // becomes the source's session, and the connector hears
                // which credential it is.
                bound
                    .credentials
                    .lock()
                    .expect("credentials lock")
                    .answered(&answer);
                let login = _open.as_ref().expect("a login");
                store_session(bound, login).await
            }
            Ok(answer) => match std::str::from_utf8(answer.expose_secret()) {
                Ok(text) => {
                    let text = text.to_owned();
                    // An answer may be a secret: keep it out of the log.
                    bound
                        .credentials
                        .lock()
                        .expect("credentials lock")
                        .answered(&answer);
                    Ok(Ok(text))
                }
                Err(_) => Ok(Err(InteractionError::Declined)),
            },
            Err(None) => Err(wasmtime::Error::new(Cancelled)),
            Err(Some(InteractionError::Timeout)) => {
                bound.host_failure = Some(RunFailure::InteractionTimeout(id));
                Ok(Err(InteractionError::Timeout))
            }
            Err(Some(other)) => Ok(Err(other)),
        }
    }
}

/// A failure to keep an interaction's row: the host's, not the
/// connector's.
fn host_fault(e: &dyn std::fmt::Display) -> wasmtime::Error {
    wasmtime::Error::msg(format!("interaction could not be kept: {e}"))
}

/// The stored name of a kind of question.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Otp => "otp",
        Kind::Login => "login",
        Kind::IdentityConfirmation => "identity-confirmation",
        Kind::Challenge => "challenge",
    }
}

/// Waits for the owner's answer to interaction `id` of `source`: the
/// answer, or why there is none (declined, expired or past `deadline`;
/// `None` when the run was cancelled).
async fn wait_for_answer(
    vault: &std::sync::Arc<std::sync::Mutex<crate::vault::Vault>>,
    actor: Actor<'_>,
    source: &crate::store::SourceRef,
    id: &str,
    deadline: i64,
    control: &super::call::RunControl,
) -> wasmtime::Result<Result<crate::vault::Secret, Option<InteractionError>>> {
    loop {
        if control.cancel.is_cancelled() {
            return Ok(Err(None));
        }
        let (answer, state) = {
            let vault = vault.lock().expect("vault lock");
            let answer = vault
                .take_answer(actor, source, id)
                .map_err(|e| host_fault(&e))?;
            let state = interactions::state(vault.store(), id).map_err(|e| host_fault(&e))?;
            (answer, state)
        };
        match (answer, state.as_str()) {
            (Some(answer), _) => return Ok(Ok(answer)),
            (None, "declined") => return Ok(Err(Some(InteractionError::Declined))),
            (None, "pending") if now_ms() < deadline => {}
            (None, "pending" | "expired") => return Ok(Err(Some(InteractionError::Timeout))),
            // Answered, but the answer is gone: another taker, or a
            // restart expired it.
            (None, _) => return Ok(Err(Some(InteractionError::Timeout))),
        }
        tokio::time::sleep(control.poll).await;
    }
}

/// A question waiting for the owner: closed (expired if still pending, the
/// run running again) when the wait ends, or when it is dropped because
/// the call waiting was abandoned.
struct OpenQuestion {
    vault: std::sync::Arc<std::sync::Mutex<crate::vault::Vault>>,
    id: String,
    run_id: String,
    /// Until closed by [`OpenQuestion::close`].
    open: bool,
}

impl OpenQuestion {
    fn close(mut self) -> Result<(), crate::store::StoreError> {
        self.open = false;
        self.close_now()
    }

    fn close_now(&self) -> Result<(), crate::store::StoreError> {
        let vault = self.vault.lock().unwrap_or_else(|e| e.into_inner());
        interactions::close(vault.store(), &self.id, &self.run_id)
    }
}

impl Drop for OpenQuestion {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        if let Err(e) = self.close_now() {
            tracing::warn!(run = self.run_id, interaction = self.id, error = %e, "an abandoned question could not be closed");
        }
    }
}

/// A login browser open under an interaction, closed when dropped.
struct OpenLogin {
    logins: crate::browser::Logins,
    id: String,
    /// The session credential the login is captured as.
    credential: String,
}

impl Drop for OpenLogin {
    fn drop(&mut self) {
        // Dropping the last handle ends the browser and erases its profile.
        drop(self.logins.remove(&self.id));
    }
}

/// Opens the browser for a login at `url`: only where this host has a
/// browser, the connector declares a session credential to capture, and
/// `url` is on a host the source may reach.
async fn open_login(
    bound: &mut Bound,
    url: &str,
) -> Result<(crate::browser::LoginBrowser, String), InteractionError> {
    let logins = bound.binding.control.logins.clone();
    if !logins.available() {
        return Err(InteractionError::Unsupported);
    }
    let Some(credential) = crate::contract::session_credential(&bound.manifest).map(str::to_owned)
    else {
        tracing::warn!(
            run = bound.binding.run_id,
            "a login was asked for, but the connector declares no session credential to keep it in"
        );
        return Err(InteractionError::Unsupported);
    };
    let policy = EgressPolicy::for_source(
        &bound.manifest,
        &bound.binding.setup,
        &bound.binding.egress_allow,
    );
    let reach = policy.browser_reach().await;
    match logins.open(url, &reach).await {
        Ok(browser) => Ok((browser, credential)),
        Err(crate::browser::BrowserError::NotAllowed(what)) => {
            let why = if url::Url::parse(&what).is_ok() {
                format!("a login page at {what} is not on a host this source may reach")
            } else {
                format!("a login was asked for at '{what}', which is not a URL")
            };
            tracing::warn!(run = bound.binding.run_id, "{why}");
            bound.host_failure = Some(RunFailure::EgressDenied(why));
            Err(InteractionError::Unsupported)
        }
        Err(e) => {
            tracing::warn!(run = bound.binding.run_id, error = %e, "the login browser did not start");
            bound.host_failure = Some(browser_failed(&e));
            Err(InteractionError::Unsupported)
        }
    }
}

/// A run that failed because the login browser did: the host's fault,
/// not the owner's, so not a reason to log in again.
fn browser_failed(e: &crate::browser::BrowserError) -> RunFailure {
    RunFailure::Connector(types::ConnectorError::UpstreamTransient(format!(
        "the login browser failed: {e}"
    )))
}

/// Keeps the cookies the login browser holds as the source's session
/// credential; answers the connector with its name. A browser that holds
/// none (the owner did not log in) is a declined login. (Cookies a login
/// page sets before the login count as a session: the connector finds out
/// when the site refuses it.)
async fn store_session(
    bound: &mut Bound,
    login: &OpenLogin,
) -> wasmtime::Result<Result<String, InteractionError>> {
    let run = bound.binding.run_id.clone();
    let Some(browser) = login.logins.remove(&login.id) else {
        bound.host_failure = Some(browser_failed(&crate::browser::BrowserError::Protocol(
            "the browser was closed before the login was kept".into(),
        )));
        return Ok(Err(InteractionError::Unsupported));
    };
    let session = match browser.cookies().await {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(run, error = %e, "the login browser's session could not be read");
            bound.host_failure = Some(browser_failed(&e));
            return Ok(Err(InteractionError::Unsupported));
        }
    };
    drop(browser);
    if session.expose_secret() == b"[]" {
        tracing::info!(run, "the login ended without a session");
        return Ok(Err(InteractionError::Declined));
    }
    // Through the run's credentials, so its later reads and injections
    // use the new session, and its output is redacted of it.
    let stored = bound
        .credentials
        .lock()
        .expect("credentials lock")
        .captured(&login.credential, session);
    match stored {
        Ok(_) => {
            tracing::info!(run, credential = login.credential, "browser login captured");
            Ok(Ok(login.credential.clone()))
        }
        Err(e) => Err(wasmtime::Error::msg(format!(
            "the captured session could not be stored: {e}"
        ))),
    }
}
