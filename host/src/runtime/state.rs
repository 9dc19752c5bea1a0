//! The per-run store data: an empty WASI context and the sourcebox
//! capabilities, every one resolving against the single source the run was
//! created for. No import takes a source id, so an instance cannot even
//! name another source.

use std::collections::HashMap;

pub(super) mod credentials;
pub(super) mod host_resources;
pub(super) mod interaction;
pub(super) mod log;
pub(super) mod records;

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
use crate::contract::bindings::sourcebox::connector::types;
use crate::events::EventKind;
use crate::interactions;
use crate::runtime::egress::{EgressHooks, EgressPolicy};
use crate::store::now_ms;
use crate::vault::{Actor, VaultError};

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
