//! The sandboxed connector runtime: one engine, components compiled once
//! and cached on disk, a fresh store per run bound to exactly one source.
//!
//! Deny by default: the WASI context is built from nothing (no env, args,
//! preopens, sockets or inherited stdio); the only other imports are the
//! sourcebox capabilities in [`state`], each resolving against the source
//! the store was created for, and `wasi:http`, every request of which goes
//! through the run's [`crate::runtime::egress`] policy.

pub mod api_version;
mod call;
mod clock;
mod compiled;
pub(crate) mod credentials;
pub mod egress;
mod failure;
pub(crate) mod limits;
pub mod manifest_check;
mod state;

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

pub use call::{Binding, Call, Outcome, RunControl};
pub use clock::RunClock;
pub(crate) use failure::Cancelled;
pub use failure::{RunFailure, RuntimeError};
pub use limits::{Exhausted, HOST_ALLOWANCE, Limits, MAX_RESOURCES};
pub use tokio_util::sync::CancellationToken;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};

pub use state::RunState;
#[cfg(test)]
pub(crate) use state::records::LAST_UPDATE;
pub use state::records::UPSERT_RECORD;

use crate::contract::{CollectRequest, Manifest};

/// How often the epoch advances; the time limit is counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How often running guest code yields, so that its call can be abandoned
/// at the run's deadline or cancellation, and other runs go on.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);
/// How long `describe()` (and instantiating for it) may take, waits
/// included.
pub const DESCRIBE_TIME: Duration = Duration::from_secs(10);

/// A compiled connector, ready to instantiate per run.
pub struct LoadedConnector {
    pre: crate::contract::bindings::SourceboxConnectorPre<RunState>,
    /// Shared with every run's store: cloning it per run cost more than
    /// the instantiation.
    manifest: Arc<Manifest>,
    api_version: String,
}

impl std::fmt::Debug for LoadedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedConnector")
            .field("id", &self.manifest.id)
            .field("version", &self.manifest.version)
            .field("api_version", &self.api_version)
            .finish()
    }
}

impl LoadedConnector {
    /// What the connector declared.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The contract version stamped in the component (checked at load).
    pub fn api_version(&self) -> &str {
        &self.api_version
    }
}

/// A component's bytes and their SHA-256, hashed once for everyone who
/// needs it: the catalog checks it against what was installed, and the
/// runtime names the component's compiled code by it.
#[derive(Clone)]
pub struct Wasm {
    bytes: Vec<u8>,
    digest: String,
}

impl std::fmt::Debug for Wasm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wasm")
            .field("len", &self.bytes.len())
            .field("sha256", &self.digest)
            .finish()
    }
}

impl Wasm {
    /// Hashes `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        let digest = digest(&bytes);
        Self { bytes, digest }
    }

    /// The component.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its digest (see [`digest`]).
    pub fn digest(&self) -> &str {
        &self.digest
    }
}

/// A component's digest as the catalog records it and the compiled copy is
/// named: its SHA-256, in lowercase hex.
pub fn digest(component: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(component))
}

/// Runs `f`, which takes a while (compiling a component takes tens of
/// milliseconds or more, deserializing one about half a millisecond), without
/// holding up the other tasks of the worker it is called on: on a
/// multi-threaded runtime they move to another worker meanwhile. Elsewhere
/// (a current-thread runtime, as the CLI's, or none) it simply runs `f`.
fn off_the_worker<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The engine and linker shared by every run.
pub struct Runtime {
    engine: Engine,
    linker: Linking,
    compiled: compiled::Compiled,
    helper: Helper,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

/// The linker, built on the engine's helper thread while the first
/// component is read (it is about a third of a cold start, and needs only
/// the engine); its first use waits for it.
type Linking = LazyLock<Linked, Box<dyn FnOnce() -> Linked + Send>>;

/// The linker, or why it could not be built.
type Linked = Result<Linker<RunState>, String>;

/// Every capability a connector gets is added here and nowhere else.
fn link(engine: &Engine) -> wasmtime::Result<Linker<RunState>> {
    let mut linker = Linker::<RunState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    use crate::contract::bindings::sourcebox::connector as api;
    api::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    state::credentials::link(&mut linker)?;
    state::records::link(&mut linker)?;
    state::log::link(&mut linker)?;
    state::interaction::link(&mut linker)?;
    // Only the outgoing handler and its types; requests meet the egress policy.
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    state::host_resources::bound_request_strings(&mut linker)?;
    Ok(linker)
}

/// The engine's helper thread, until dropped. It builds the linker first,
/// then advances the engine's epoch every [`EPOCH_TICK`], and meanwhile
/// makes each loaded component's memory images (the first instance would
/// otherwise make them, on the way to a run). A panic in either chore is
/// caught: the epoch, which enforces time limits and cancellation, must
/// keep advancing.
struct Helper(std::sync::mpsc::Sender<Component>);

impl Helper {
    fn start(engine: &Engine) -> std::io::Result<(Self, Linking)> {
        use std::sync::mpsc::{self, RecvTimeoutError};
        let (linked, linker) = mpsc::sync_channel::<Linked>(1);
        let (images, loaded) = mpsc::channel::<Component>();
        let engine = engine.clone();
        std::thread::Builder::new()
            .name("sourcebox-engine".into())
            .spawn(move || {
                use std::panic::{AssertUnwindSafe, catch_unwind};
                let linker = catch_unwind(AssertUnwindSafe(|| link(&engine)))
                    .map_err(|_| "building the linker panicked".to_owned())
                    .and_then(|linker| linker.map_err(|e| format!("{e:#}")));
                let _ = linked.send(linker);
                let mut tick = Instant::now() + EPOCH_TICK;
                loop {
                    let now = Instant::now();
                    if now >= tick {
                        engine.increment_epoch();
                        tick = now + EPOCH_TICK;
                    }
                    match loaded.recv_timeout(tick - now) {
                        // Failing here is not an error: the first instance
                        // makes them then.
                        Ok(component) => drop(catch_unwind(AssertUnwindSafe(|| {
                            component.initialize_copy_on_write_image()
                        }))),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        let linking: Linking = LazyLock::new(Box::new(move || {
            linker
                .recv()
                .unwrap_or_else(|_| Err("the engine's helper thread ended".into()))
        }));
        Ok((Self(images), linking))
    }

    /// Has `component`'s memory images made, off this thread.
    fn images(&self, component: &Component) {
        let _ = self.0.send(component.clone());
    }
}

impl Runtime {
    /// An engine whose compiled components are cached under `cache_dir`
    /// (keyed by component digest and engine configuration).
    pub fn new(cache_dir: &Path) -> Result<Self, RuntimeError> {
        let engine_err = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(engine_err)?;
        let (helper, linker) = Helper::start(&engine)
            .map_err(|e| RuntimeError::Engine(format!("engine helper thread: {e}")))?;
        let compiled = compiled::Compiled::new(cache_dir, &engine).map_err(|e| {
            RuntimeError::Engine(format!(
                "compiled components directory {}: {e}; it must be a directory this \
                 user owns and can write",
                cache_dir.display()
            ))
        })?;
        Ok(Self {
            engine,
            linker,
            compiled,
            helper,
        })
    }

    /// Checks the contract version, compiles (or loads from the cache) and
    /// describes a component.
    pub async fn load(&self, component: &[u8]) -> Result<LoadedConnector, RuntimeError> {
        self.load_hashed(component, &digest(component)).await
    }

    /// [`Runtime::load`], for a component already hashed.
    pub async fn load_wasm(&self, component: &Wasm) -> Result<LoadedConnector, RuntimeError> {
        self.load_hashed(component.bytes(), component.digest())
            .await
    }

    async fn load_hashed(
        &self,
        component: &[u8],
        sha256: &str,
    ) -> Result<LoadedConnector, RuntimeError> {
        let api_version = api_version::check(component)?;
        let pre = off_the_worker(|| {
            let compiled = self
                .compiled
                .load(&self.engine, component, sha256)
                .map_err(|e| RuntimeError::Invalid(format!("{e:#}")))?;
            self.helper.images(&compiled);
            self.pre(&compiled)
        })?;
        let mut store = Store::new(&self.engine, RunState::describing(Limits::default()));
        store.limiter(|s| s);
        // Guest code yields now and then, so the timeout below stops a
        // `describe()` that spins as surely as one that sleeps.
        store.set_epoch_deadline(ticks(CHECK_EVERY));
        store.epoch_deadline_async_yield_and_update(ticks(CHECK_EVERY));
        let described = tokio::time::timeout(DESCRIBE_TIME, async {
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| RuntimeError::Invalid(format!("{e:#}")))?;
            instance
                .sourcebox_connector_connector()
                .call_describe(&mut store)
                .await
                .map_err(|e| RuntimeError::Invalid(format!("describe() failed: {e:#}")))
        })
        .await;
        let manifest = described.map_err(|_| {
            RuntimeError::Invalid(format!(
                "describe() did not return within {} s; a connector describes itself without waiting for anything",
                DESCRIBE_TIME.as_secs()
            ))
        })??;
        let problems = manifest_check::problems(&manifest);
        if !problems.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "its manifest does not hold: {}",
                problems.join("; ")
            )));
        }
        Ok(LoadedConnector {
            pre,
            manifest: Arc::new(manifest),
            api_version,
        })
    }

    /// A connector installed before, from the component this engine
    /// compiled for its digest, without reading, hashing or describing the
    /// component again: `api_version` and `manifest` are what it stamped
    /// and described at install. `None` when this engine has no usable
    /// compiled copy of it; then [`Runtime::load_wasm`] the component.
    pub fn load_compiled(
        &self,
        sha256: &str,
        api_version: &str,
        manifest: Arc<Manifest>,
    ) -> Result<Option<LoadedConnector>, RuntimeError> {
        let api_version = api_version::supported(api_version.to_owned())?;
        off_the_worker(|| {
            let Some(compiled) = self.compiled.find(&self.engine, sha256) else {
                return Ok(None);
            };
            self.helper.images(&compiled);
            Ok(Some(LoadedConnector {
                pre: self.pre(&compiled)?,
                manifest,
                api_version,
            }))
        })
    }

    fn pre(
        &self,
        compiled: &Component,
    ) -> Result<crate::contract::bindings::SourceboxConnectorPre<RunState>, RuntimeError> {
        let pre = self.linker()?.instantiate_pre(compiled).map_err(|e| {
            RuntimeError::Invalid(format!(
                "it asks for imports this host does not grant: {e:#}"
            ))
        })?;
        crate::contract::bindings::SourceboxConnectorPre::new(pre)
            .map_err(|e| RuntimeError::Invalid(format!("{e:#}")))
    }

    /// The linker, once its thread has built it.
    fn linker(&self) -> Result<&Linker<RunState>, RuntimeError> {
        LazyLock::force(&self.linker)
            .as_ref()
            .map_err(|e| RuntimeError::Engine(e.clone()))
    }

    /// Runs `call` in a fresh instance bound to `binding.source`.
    ///
    /// The call races the run's clock and its cancellation: whichever
    /// comes first, guest code running or the host waiting on its behalf
    /// (a sleep, an HTTP response, the owner), the call is abandoned and
    /// the instance dropped.
    pub async fn run(
        &self,
        connector: &LoadedConnector,
        binding: Binding,
        call: Call,
    ) -> Result<Outcome, RunFailure> {
        let limits = binding.limits.clone();
        let authenticating = matches!(call, Call::Authenticate);
        let setup = binding.setup.clone();
        let cancel = binding.control.cancel.clone();
        let clock = binding.control.clock.clone();
        let mut store = Store::new(
            &self.engine,
            RunState::bound(
                binding,
                Arc::clone(&connector.manifest),
                authenticating,
                clock.clone(),
            ),
        );
        store.limiter(|s| s);
        // While guest code runs it yields every CHECK_EVERY (or at the
        // deadline, if sooner), and traps once the time is spent.
        let deadline = {
            let (clock, cancel, limits) = (clock.clone(), cancel.clone(), limits.clone());
            move || {
                if cancel.is_cancelled() {
                    return Err(wasmtime::Error::new(Cancelled));
                }
                match clock.left(&limits) {
                    Some(left) => Ok(ticks(CHECK_EVERY.min(left))),
                    None => Err(wasmtime::Error::new(Trap::Interrupt)),
                }
            }
        };
        store.set_epoch_deadline(ticks(CHECK_EVERY.min(limits.time)));
        store.epoch_deadline_callback(move |_| deadline().map(UpdateDeadline::Yield));
        if cancel.is_cancelled() {
            return Err(RunFailure::Cancelled);
        }

        let result = {
            let guest = async {
                let instance = connector
                    .pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(Failure::Instantiate)?;
                let (source, run) = store.data().log_context();
                tracing::trace!(source, run, "instance ready");
                let guest = instance.sourcebox_connector_connector();
                Ok::<_, Failure>(match call {
                    Call::Verify => guest
                        .call_verify(&mut store, &setup)
                        .await
                        .map_err(Failure::Trap)?
                        .map(Outcome::Verified),
                    Call::Authenticate => guest
                        .call_authenticate(&mut store, &setup)
                        .await
                        .map_err(Failure::Trap)?
                        .map(|()| Outcome::Authenticated),
                    Call::Collect(streams) => guest
                        .call_collect(&mut store, &CollectRequest { streams, setup })
                        .await
                        .map_err(Failure::Trap)?
                        .map(Outcome::Collected),
                })
            };
            // Losing the race drops the call: wasmtime unwinds the guest's
            // stack, and whatever the host awaited for it is dropped. The
            // call is polled first: one that ends without waiting never
            // registers the cancellation's waiter or the clock's timer.
            tokio::select! {
                biased;
                result = guest => result,
                () = cancel.cancelled() => Err(Failure::Stopped(RunFailure::Cancelled)),
                () = clock.spent(&limits) => {
                    Err(Failure::Stopped(RunFailure::ResourceExhausted(Exhausted::Time)))
                }
            }
        };

        let state = store.data_mut();
        state.log_guest_output();
        state.audit_reads_again();
        let flushed = state.flush_records();
        let exhausted = state.exhausted();
        // The host stopping guest code (a trap at the deadline or at a
        // cancellation) is the same ending as the host abandoning a wait.
        let result = match result {
            Err(Failure::Trap(e)) if e.downcast_ref::<Cancelled>().is_some() => {
                Err(Failure::Stopped(RunFailure::Cancelled))
            }
            Err(Failure::Trap(e)) if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) => {
                Err(Failure::Stopped(RunFailure::ResourceExhausted(
                    Exhausted::Time,
                )))
            }
            result => result,
        };
        // Why the run ended, first to last: the owner cancelled it; it hit
        // a limit (the first it hit, else its time); a request it may not
        // make; a credential or question that failed it; its own ending.
        if let Err(Failure::Stopped(RunFailure::Cancelled)) = &result {
            return Err(RunFailure::Cancelled);
        }
        if let Some(limit) = exhausted {
            return Err(RunFailure::ResourceExhausted(limit));
        }
        if let Err(Failure::Stopped(failure)) = &result {
            return Err(failure.clone());
        }
        if let Some(why) = state.egress_denied() {
            return Err(RunFailure::EgressDenied(why));
        }
        if let (Err(_) | Ok(Err(_)), Some(failure)) = (&result, state.host_failure()) {
            return Err(failure);
        }
        match result {
            Err(Failure::Trap(e)) if host_resources_full(&e) => {
                Err(RunFailure::ResourceExhausted(Exhausted::HostResources))
            }
            Err(Failure::Trap(e)) => Err(RunFailure::ConnectorTrap(trap_message(&e))),
            Err(Failure::Instantiate(e)) => Err(RunFailure::Instantiation(format!("{e:#}"))),
            Err(Failure::Stopped(failure)) => Err(failure),
            Ok(Err(e)) => Err(RunFailure::Connector(state.redacted_error(e))),
            Ok(Ok(outcome)) => match flushed {
                Ok(()) => Ok(state.redacted_outcome(outcome)),
                Err(e) => Err(RunFailure::ConnectorTrap(format!(
                    "records could not be stored: {e}"
                ))),
            },
        }
    }
}

enum Failure {
    Instantiate(wasmtime::Error),
    Trap(wasmtime::Error),
    /// The call was abandoned: cancelled, or its time spent.
    Stopped(RunFailure),
}

fn ticks(time: Duration) -> u64 {
    (time.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

/// The trap's kind and the guest frames, without host internals.
fn trap_message(e: &wasmtime::Error) -> String {
    let message = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    crate::inert::text(&message, MAX_DETAIL)
}

/// Whether the guest was stopped for asking the host to keep more than a
/// run may: its resource table full, or a header map past its size.
fn host_resources_full(e: &wasmtime::Error) -> bool {
    use wasmtime::component::ResourceTableError;
    use wasmtime_wasi_http::FieldMapError;
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ResourceTableError>(),
            Some(ResourceTableError::Full)
        ) || matches!(
            cause.downcast_ref::<FieldMapError>(),
            Some(FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields)
        )
    })
}

/// Longest text a connector's error, or the host's about it, may put in a
/// run's detail.
const MAX_DETAIL: usize = 2000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ConnectorError;

    #[test]
    fn a_failure_does_not_repeat_what_kind_it_is() {
        let said = |e: ConnectorError| RunFailure::Connector(e).to_string();
        assert_eq!(
            said(ConnectorError::AuthRejected(
                "The provider refused the credentials (401)".into()
            )),
            "The provider refused the credentials (401)"
        );
        assert_eq!(
            said(ConnectorError::AuthRejected(
                "GitHub refused the token (401 Bad credentials)".into()
            )),
            "the provider refused the credentials: GitHub refused the token (401 Bad credentials)"
        );
        assert_eq!(
            said(ConnectorError::UpstreamTransient(
                "the provider answered 502".into()
            )),
            "temporary provider failure: the provider answered 502"
        );
    }
}
