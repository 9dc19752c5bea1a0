//! What one run may use: the limits a connector runs under, and which of
//! them a run hit.

use std::time::Duration;

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

/// Entries in a run's resource table: HTTP fields, requests, responses,
/// bodies, streams and pollables. A connector with its eight requests in
/// flight holds well under a hundred.
pub const MAX_RESOURCES: usize = 1024;
/// Largest header map a guest may build, as wasi:http counts it (the
/// names and values, plus its own overhead per entry).
pub(crate) const MAX_FIELDS_SIZE: usize = 16 * 1024;
/// Host memory one run may pin beyond its guest memory, by construction:
/// every resource table entry a header map at its size limit (16 MiB of
/// counted header bytes), twice over for what the maps and allocator keep
/// beside them. Measured: see BENCHMARKS.md.
pub const HOST_ALLOWANCE: usize = 2 * MAX_RESOURCES * MAX_FIELDS_SIZE;
/// Most random bytes one call may ask for.
pub(crate) const MAX_RANDOM: u64 = 64 * 1024;
