//! The sandboxed connector runtime: one engine, components compiled once
//! and cached on disk, a fresh store per run bound to exactly one source.
//!
//! Deny by default: the WASI context is built from nothing (no env, args,
//! preopens, sockets or inherited stdio); the only other imports are the
//! sourcebox capabilities in [`state`], each resolving against the source
//! the store was created for, and `wasi:http`, every request of which goes
//! through the run's [`crate::egress`] policy.

pub mod api_version;
mod clock;
mod compiled;
pub(crate) mod credentials;
pub mod manifest_check;
mod state;

use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

pub use clock::RunClock;
pub use tokio_util::sync::CancellationToken;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap, UpdateDeadline};

#[cfg(test)]
pub(crate) use state::LAST_UPDATE;
pub use state::UPSERT_RECORD;
pub use state::{HOST_ALLOWANCE, MAX_RESOURCES, RunState};

use crate::events::Events;
use crate::store::SourceRef;
use crate::vault::Vault;

/// Generated host bindings of the `sourcebox:connector@0.1.1` contract (it also serves components built against 0.1.0: 0.1.1 only adds).
#[allow(missing_docs, missing_debug_implementations)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.1",
        world: "sourcebox-connector",
        imports: {
            // Called once per record: a plain host call, no future to
            // poll. It may write a batch to SQLite, as it did when async.
            "sourcebox:connector/records.emit": trappable,
            "sourcebox:connector/records.emit-batch": trappable,
            default: async | trappable,
        },
        exports: { default: async },
        additional_derives: [PartialEq, Eq, serde::Serialize, serde::Deserialize],
        with: {
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
            "wasi:io": wasmtime_wasi::p2::bindings::io,
        },
    });
}

use bindings::sourcebox::connector::types::{
    AccountIdentity, CollectRequest, ConnectorError, Manifest, RunSummary,
};

impl From<bindings::sourcebox::connector::types::CredentialClass>
    for crate::vault::CredentialClass
{
    fn from(class: bindings::sourcebox::connector::types::CredentialClass) -> Self {
        use bindings::sourcebox::connector::types::CredentialClass as Wit;
        match class {
            Wit::Password => Self::Password,
            Wit::Token => Self::Token,
            Wit::Session => Self::Session,
            Wit::OtpSeed => Self::OtpSeed,
            Wit::Oauth => Self::Oauth,
        }
    }
}

/// The session credential `manifest` declares: where a browser login or an
/// imported cookie export is kept.
pub fn session_credential(manifest: &Manifest) -> Option<&str> {
    manifest
        .credentials
        .iter()
        .find(|c| c.class == bindings::sourcebox::connector::types::CredentialClass::Session)
        .map(|c| c.name.as_str())
}

/// How often the epoch advances; the time limit is counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// How often running guest code yields, so that its call can be abandoned
/// at the run's deadline or cancellation, and other runs go on.
pub const CHECK_EVERY: Duration = Duration::from_millis(50);
/// How long `describe()` (and instantiating for it) may take, waits
/// included.
pub const DESCRIBE_TIME: Duration = Duration::from_secs(10);

/// Per-run limits. Exceeding one ends the run with
/// [`RunFailure::ResourceExhausted`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time the run may take, its waits for the owner left
    /// out: guest code, and everything the host waits for on its behalf
    /// (sleeps, HTTP).
    pub time: Duration,
    /// Wall-clock time the run may take in all, waits for the owner
    /// included.
    pub wall: Duration,
    /// Questions the run may ask the owner.
    pub questions: u32,
    /// Log lines the run may write.
    pub log_lines: u64,
    /// Bytes of log lines the run may write.
    pub log_bytes: u64,
    /// Largest checkpoint, bytes.
    pub checkpoint_bytes: u64,
    /// Largest record, bytes.
    pub record_size: u64,
    /// Largest session a connector may store (`credentials.put`), bytes.
    pub session_bytes: u64,
    /// Largest OAuth grant a connector may store, bytes.
    pub oauth_bytes: u64,
    /// Linear memory, bytes.
    pub memory: usize,
    /// Records emitted per run.
    pub records: u64,
    /// Bytes of records emitted per run.
    pub record_bytes: u64,
    /// Outbound HTTP requests per run.
    pub http_requests: u64,
    /// Bytes of HTTP response bodies per run.
    pub http_response_bytes: u64,
    /// Longest wait for an outbound connection (TCP, TLS and the HTTP
    /// handshake). A connector's request options may only shorten this,
    /// and the two below.
    pub http_connect_timeout: Duration,
    /// Longest wait for a response's head once its request is sent.
    pub http_first_byte_timeout: Duration,
    /// Longest wait between two parts of a response's body.
    pub http_between_bytes_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            time: Duration::from_secs(600),
            wall: Duration::from_secs(2 * 3600),
            questions: 8,
            log_lines: 10_000,
            log_bytes: 4 << 20,
            checkpoint_bytes: 1 << 20,
            record_size: 1 << 20,
            session_bytes: 256 << 10,
            oauth_bytes: 64 << 10,
            http_connect_timeout: Duration::from_secs(10),
            http_first_byte_timeout: Duration::from_secs(60),
            http_between_bytes_timeout: Duration::from_secs(30),
            memory: 256 << 20,
            records: 1_000_000,
            record_bytes: 1 << 30,
            http_requests: 100_000,
            http_response_bytes: 4 << 30,
        }
    }
}

/// Which limit a run hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The time limit or the wall clock.
    Time,
    /// The number of questions to the owner.
    Questions,
    /// The memory limit.
    Memory,
    /// The record-count limit.
    Records,
    /// The record-bytes limit.
    RecordBytes,
    /// A credential the connector put was larger than its class allows.
    CredentialBytes,
    /// The connector put credentials more often than a run may.
    CredentialWrites,
    /// The log-line limit.
    LogLines,
    /// The log-bytes limit.
    LogBytes,
    /// A checkpoint larger than the checkpoint limit.
    CheckpointBytes,
    /// A record larger than the record-size limit.
    RecordSize,
    /// What the host keeps for the run (HTTP fields, requests, streams):
    /// its resource table is full.
    HostResources,
    /// The outbound request limit.
    HttpRequests,
    /// The response-body byte limit.
    HttpResponseBytes,
}

/// Why loading a component failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Not a usable component.
    #[error("invalid connector component: {}", crate::inert::Inert(.0))]
    Invalid(String),
    /// Built for a contract version this host does not serve.
    #[error(
        "the component was built for sourcebox:connector API {}; this host serves API {host}; rebuild it with a matching sourcebox-sdk",
        crate::inert::Inert(component)
    )]
    IncompatibleApi {
        /// Version stamped in the component.
        component: String,
        /// Versions this host serves.
        host: String,
    },
    /// Engine setup.
    #[error("runtime: {0}")]
    Engine(String),
}

/// Why a run failed, typed as the runs module stores it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RunFailure {
    /// A limit was hit.
    #[error("resource exhausted: {0:?}")]
    ResourceExhausted(Exhausted),
    /// The guest trapped (panic, unreachable, bad memory access).
    #[error("connector trapped: {}", crate::inert::Inert(.0))]
    ConnectorTrap(String),
    /// The connector returned an error.
    #[error("{}", connector_message(.0))]
    Connector(ConnectorError),
    /// A request to a host or address the run may not reach.
    #[error("egress denied: {}", crate::inert::Inert(.0))]
    EgressDenied(String),
    /// The run failed after a credential it asked for turned out revoked.
    #[error("credential '{0}' is revoked")]
    CredentialRevoked(String),
    /// The run failed after a credential it asked for did not decrypt.
    #[error("credential '{0}' cannot be decrypted")]
    CredentialUnrecoverable(String),
    /// The instance could not be created (e.g. it imports something this
    /// host does not grant).
    #[error("connector could not be instantiated: {}", crate::inert::Inert(.0))]
    Instantiation(String),
    /// The owner did not answer an interaction before its deadline.
    #[error("the owner did not answer interaction {0} before its deadline")]
    InteractionTimeout(String),
    /// Cancelled by the owner.
    #[error("cancelled by the owner")]
    Cancelled,
}

/// A connector's error in words: the connector's own message, with what
/// kind of failure it is.
fn connector_message(e: &ConnectorError) -> String {
    match e {
        ConnectorError::AuthRejected(m) => kind_and("the provider refused the credentials", m),
        ConnectorError::AuthInsufficient(m) => kind_and("the credentials lack a permission", m),
        ConnectorError::RateLimited(Some(secs)) => {
            format!("rate limited by the provider; retry after {secs} s")
        }
        ConnectorError::RateLimited(None) => "rate limited by the provider".to_owned(),
        ConnectorError::UpstreamTransient(m) => kind_and("temporary provider failure", m),
        ConnectorError::Fatal(m) => kind_and("the connector gave up", m),
    }
}

/// `kind: message`, or the message alone when it already says what kind
/// of failure it is (not "refused the credentials: ... refused the
/// credentials").
fn kind_and(kind: &str, message: &str) -> String {
    if message.to_lowercase().contains(&kind.to_lowercase()) {
        message.to_owned()
    } else {
        format!("{kind}: {message}")
    }
}

/// The error a cancelled run's guest is stopped with.
#[derive(Debug)]
pub(crate) struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// A compiled connector, ready to instantiate per run.
pub struct LoadedConnector {
    pre: bindings::SourceboxConnectorPre<RunState>,
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

/// The source a run is bound to, and how to reach its credentials.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The vault holding every source's credentials; the run only ever
    /// asks it for `source`'s.
    pub vault: Arc<Mutex<Vault>>,
    /// The one source this run is for.
    pub source: SourceRef,
    /// Non-secret setup field values.
    pub setup: Vec<(String, String)>,
    /// Identifies the run in audit rows and records.
    pub run_id: String,
    /// Limits for this run.
    pub limits: Limits,
    /// Non-public addresses the operator allowed (`--egress-allow`).
    pub egress_allow: Vec<std::net::SocketAddr>,
    /// Cancellation, events and owner interactions.
    pub control: RunControl,
}

/// How the launch seam steers a run from outside.
#[derive(Debug, Clone)]
pub struct RunControl {
    /// Cancelled to end the run: whatever its guest is doing, the call is
    /// abandoned at once (within [`CHECK_EVERY`] while guest code runs).
    pub cancel: CancellationToken,
    /// The run's clock and its count of questions, shared by every call
    /// of the run (an `authenticate` that waited for an OTP, then the
    /// `collect`), started when the control is made.
    pub clock: RunClock,
    /// Where the run's events go.
    pub events: Events,
    /// Whether the run may ask its owner; `interaction.ask` answers
    /// `unsupported` otherwise.
    pub interactive: bool,
    /// How long an interaction waits for the owner.
    pub interaction_wait: Duration,
    /// How often a waiting interaction looks for the answer.
    pub poll: Duration,
    /// Where a login interaction opens its browser.
    pub logins: crate::browser::Logins,
}

impl Default for RunControl {
    fn default() -> Self {
        Self {
            cancel: CancellationToken::new(),
            clock: RunClock::start(),
            events: Events::default(),
            interactive: false,
            interaction_wait: Duration::from_secs(15 * 60),
            poll: Duration::from_millis(200),
            logins: crate::browser::Logins::default(),
        }
    }
}

/// What a run calls.
#[derive(Debug, Clone)]
pub enum Call {
    /// `verify()`.
    Verify,
    /// `authenticate()`: password and OTP-seed credentials resolve.
    Authenticate,
    /// `collect(request)`.
    Collect(Vec<String>),
}

/// What a successful run returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// From `verify()`.
    Verified(AccountIdentity),
    /// From `authenticate()`.
    Authenticated,
    /// From `collect()`.
    Collected(RunSummary),
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
    use bindings::sourcebox::connector as api;
    api::types::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    api::credentials::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    api::records::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    api::log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    api::interaction::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    // Only the outgoing handler and its types; requests meet the egress policy.
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    state::bound_request_strings(&mut linker)?;
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
    ) -> Result<bindings::SourceboxConnectorPre<RunState>, RuntimeError> {
        let pre = self.linker()?.instantiate_pre(compiled).map_err(|e| {
            RuntimeError::Invalid(format!(
                "it asks for imports this host does not grant: {e:#}"
            ))
        })?;
        bindings::SourceboxConnectorPre::new(pre)
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
