//! Outbound HTTP policy (invariant 8): a connector reaches only the hosts it
//! declared and the operator approved, and only at addresses the host
//! resolved and checked itself.
//!
//! Every `wasi:http` request of a run goes through [`EgressHooks`]: the
//! request's host must be on the run's list; the host resolves the name and
//! refuses private, loopback, link-local, IPv4-mapped and metadata
//! addresses unless the operator allowed that exact `ADDR:PORT`; the
//! connection is made to the address that was checked (so a second DNS
//! answer cannot redirect it), with TLS verified against the host name. A
//! redirect is a new request from the guest and is checked again.
//!
//! A connector may ask the host to add a credential: a request carrying
//! `x-sourcebox-bearer: NAME` leaves with `authorization: Bearer <value>`,
//! but only to the hosts declared for that credential (any of the run's
//! hosts if it declares none). The value never enters guest memory.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Scheme;
use http_body_util::BodyExt;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::credentials::{Destination, NotInjected, Shared as RunCredentials};
use super::limits::{Exhausted, Limits};
use crate::contract::{EgressHost, Manifest};

/// The header a guest sets to have a credential injected in the form its
/// class takes: a bearer token (token, OAuth access token), or the
/// cookies of a captured session.
pub const BEARER_HEADER: &str = "x-sourcebox-bearer";

/// How long an exchange the host makes itself (an OAuth token exchange)
/// may take in all.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one run may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Host names (lowercase) or IP literals the run may address.
    hosts: Vec<String>,
    /// Exact socket addresses the operator allowed despite their class
    /// (`--egress-allow`), e.g. a loopback fixture.
    allowed_addrs: Vec<SocketAddr>,
    /// The port a setup field's URL names for its host, where it names
    /// one; every other host's https port is 443.
    ports: Vec<(String, u16)>,
}

impl EgressPolicy {
    /// The manifest's fixed hosts plus the hosts of URL setup fields it
    /// names, with the operator's address exceptions.
    pub fn for_source(
        manifest: &Manifest,
        setup: &[(String, String)],
        allowed_addrs: &[SocketAddr],
    ) -> Self {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for host in &manifest.setup.egress {
            match host {
                EgressHost::Fixed(h) => hosts.push(h.to_ascii_lowercase()),
                EgressHost::FromSetupField(field) => {
                    let Some(uri) = setup
                        .iter()
                        .find(|(k, _)| k == field)
                        .and_then(|(_, v)| v.parse::<http::Uri>().ok())
                    else {
                        continue;
                    };
                    if let Some(host) = uri
                        .host()
                        .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
                    {
                        if let Some(port) = uri.port_u16() {
                            ports.push((host.clone(), port));
                        }
                        hosts.push(host);
                    }
                }
            }
        }
        Self {
            hosts,
            allowed_addrs: allowed_addrs.to_vec(),
            ports,
        }
    }

    /// The host names and addresses a run may address.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The port a credential may be sent to `host` on, over https.
    pub fn https_port(&self, host: &str) -> u16 {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.ports
            .iter()
            .find(|(h, _)| *h == host)
            .map_or(443, |(_, port)| *port)
    }

    /// Whether `host` is on the list.
    pub fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    /// Resolves `host` and returns the first address the run may connect
    /// to, or why none: a name that does not resolve (a DNS failure, which
    /// may pass) apart from one that resolves only to addresses the run
    /// may not reach (a refusal).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, Unreachable> {
        let host = host.trim_matches(['[', ']']);
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| Unreachable::Lookup(format!("{host} does not resolve: {e}")))?
                .collect(),
        };
        addrs
            .iter()
            .copied()
            .find(|addr| !forbidden(addr.ip()) || self.allowed_addrs.contains(addr))
            .ok_or_else(|| match addrs.first() {
                Some(addr) => Unreachable::Denied(format!(
                    "{host} resolves to {}, a non-public address",
                    addr.ip()
                )),
                None => Unreachable::Lookup(format!("{host} has no addresses")),
            })
    }

    /// What a login browser for this source may reach, under the same
    /// rules as a run's requests: each declared host whose name resolves
    /// to a public address, pinned to that address (any port); a
    /// non-public address only where the operator allowed it exactly, on
    /// that port. A host that resolves to neither is left out, so the
    /// browser cannot reach it.
    pub async fn browser_reach(&self) -> Vec<crate::browser::Reach> {
        use crate::browser::Reach;
        let mut reach = Vec::new();
        for host in &self.hosts {
            let literal = host.parse::<IpAddr>().ok();
            let ips: Vec<IpAddr> = match literal {
                Some(ip) => vec![ip],
                None => tokio::net::lookup_host((host.as_str(), 443))
                    .await
                    .map(|addrs| addrs.map(|a| a.ip()).collect())
                    .unwrap_or_default(),
            };
            // A literal needs no pin; a name is pinned to what was vetted.
            let pin = |ip: IpAddr| literal.is_none().then_some(ip);
            if let Some(ip) = ips.iter().copied().find(|ip| !forbidden(*ip)) {
                reach.push(Reach {
                    host: host.clone(),
                    port: None,
                    address: pin(ip),
                });
                continue;
            }
            for allowed in self.allowed_addrs.iter().filter(|a| ips.contains(&a.ip())) {
                reach.push(Reach {
                    host: host.clone(),
                    port: Some(allowed.port()),
                    address: pin(allowed.ip()),
                });
            }
        }
        reach
    }
}

/// Addresses a connector may never reach unless the operator allowed the
/// exact address: anything not globally routable, and cloud metadata.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254, the metadata service
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.to_ipv4_mapped().is_some() // ::ffff:a.b.c.d, always refused
        || (seg[0..6] == [0; 6]) // IPv4-compatible ::a.b.c.d
        || (seg[0] & 0xfe00) == 0xfc00 // unique local, incl. fd00:ec2::254 metadata
        || (seg[0] & 0xffc0) == 0xfe80 // link-local
        || (seg[0] == 0x64 && seg[1] == 0xff9b) // NAT64 onto IPv4
        || seg[0] == 0x2002 // 6to4
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
}

/// The `wasi:http` hooks of one run.
pub struct EgressHooks {
    policy: Arc<EgressPolicy>,
    /// The run's credentials, which decide what may be injected where;
    /// `None` for `describe()`, which may send nothing.
    credentials: Option<RunCredentials>,
    /// The first refusal, reported as the run's `egress_denied` failure.
    denied: Arc<Mutex<Option<String>>>,
    /// Requests sent so far, and how many the run may send.
    requests: u64,
    max_requests: u64,
    /// Response body bytes received so far, and how many the run may read.
    response_bytes: Arc<AtomicU64>,
    max_response_bytes: u64,
    /// The run's limits (its HTTP timeouts).
    limits: Limits,
    /// Exchanges in flight: a request waits for a permit before it
    /// connects, and its connection holds it until it closes. Made at the
    /// run's first request.
    in_flight: Option<Arc<tokio::sync::Semaphore>>,
}

/// Outbound exchanges one run may have in flight at once.
pub const MAX_IN_FLIGHT: usize = 8;
/// Largest chunk of a request body the host buffers for the guest.
const OUTGOING_CHUNK: usize = 16 * 1024;

impl std::fmt::Debug for EgressHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressHooks")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl EgressHooks {
    /// Hooks that refuse everything (for `describe()`).
    pub fn deny_all() -> Self {
        Self {
            policy: Arc::new(EgressPolicy::default()),
            credentials: None,
            denied: Arc::default(),
            requests: 0,
            max_requests: 0,
            response_bytes: Arc::default(),
            max_response_bytes: 0,
            limits: Limits::default(),
            in_flight: None,
        }
    }

    /// Hooks for a run under `policy`, injecting from `credentials`.
    pub(crate) fn for_run(
        policy: Arc<EgressPolicy>,
        credentials: RunCredentials,
        limits: &Limits,
    ) -> Self {
        Self {
            policy,
            credentials: Some(credentials),
            denied: Arc::default(),
            requests: 0,
            max_requests: limits.http_requests,
            response_bytes: Arc::default(),
            max_response_bytes: limits.http_response_bytes,
            limits: limits.clone(),
            in_flight: None,
        }
    }

    /// The HTTP limit the run went past, if any.
    pub fn exhausted(&self) -> Option<Exhausted> {
        if self.credentials.is_none() {
            None
        } else if self.requests > self.max_requests {
            Some(Exhausted::HttpRequests)
        } else if self.response_bytes.load(Ordering::Relaxed) > self.max_response_bytes {
            Some(Exhausted::HttpResponseBytes)
        } else {
            None
        }
    }

    /// Why a request was refused, if one was.
    pub fn denied(&self) -> Option<String> {
        self.denied.lock().expect("denied lock").clone()
    }
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for EgressHooks {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_CHUNK
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let policy = Arc::clone(&self.policy);
        let denied = Arc::clone(&self.denied);
        let deny = move |why: String| {
            tracing::warn!(reason = %why, "egress denied");
            denied.lock().expect("denied lock").get_or_insert(why);
            HttpError::HttpRequestDenied
        };
        self.requests += 1;
        if self.requests > self.max_requests {
            return Box::new(async { Err(HttpError::ConnectionLimitReached) });
        }
        let uri = request.uri().clone();
        let Some(host) = uri.host().map(str::to_owned) else {
            return Box::new(async { Err(HttpError::HttpRequestUriInvalid) });
        };
        // `user@host` reads as one host and goes to another; refused, so a
        // policy check and a log line never disagree with the destination.
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            // Quoted by its host alone: what precedes it may be a secret.
            let err = deny(format!(
                "a request to {host} carries user information before its host; a request names its host alone"
            ));
            return Box::new(async move { Err(err) });
        }
        if !policy.host_allowed(&host) {
            let err = deny(format!("{host} is not a host this connector declared"));
            return Box::new(async move { Err(err) });
        }
        // A credential to inject is named now, and decided once the
        // address the request goes to is known.
        let inject = request
            .headers_mut()
            .remove(BEARER_HEADER)
            .map(|name| name.to_str().unwrap_or_default().to_owned());
        let credentials = self.credentials.clone();
        let budget = Budget {
            used: Arc::clone(&self.response_bytes),
            max: self.max_response_bytes,
        };
        let timeouts = Timeouts::at_most(&self.limits, options.as_ref());
        let in_flight = Arc::clone(
            self.in_flight
                .get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT))),
        );
        Box::new(async move {
            let permit = in_flight
                .acquire_owned()
                .await
                .map_err(|_| HttpError::ConnectionLimitReached)?;
            let tls = uri.scheme() == Some(&Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
            // Resolving counts toward connecting.
            let addr = tokio::time::timeout(timeouts.connect, policy.resolve(&host, port))
                .await
                .map_err(|_| HttpError::DnsTimeout)?
                .map_err(|e| match e {
                    // Not a refusal: the connector sees a DNS error.
                    Unreachable::Lookup(why) => {
                        tracing::info!(reason = %why, "egress: the name did not resolve");
                        HttpError::DnsError {
                            rcode: Some("name does not resolve".into()),
                            info_code: None,
                        }
                    }
                    Unreachable::Denied(why) => deny(why),
                })?;
            if let Some(name) = inject {
                let Some(credentials) = credentials else {
                    return Err(deny(format!(
                        "credential '{name}' may not be sent to {host}"
                    )));
                };
                let to = Destination {
                    host: &host,
                    tls,
                    port,
                    https_port: policy.https_port(&host),
                    allowed: policy.allowed_addrs.contains(&addr),
                };
                let injected = credentials
                    .lock()
                    .expect("credentials lock")
                    .inject(&name, &to);
                match injected {
                    Ok((name, value)) => {
                        request.headers_mut().insert(name, value);
                    }
                    Err(NotInjected::Denied(why)) => return Err(deny(why)),
                    Err(NotInjected::Unavailable) => return Err(HttpError::HttpRequestDenied),
                }
            }
            send_pinned(request, addr, &host, tls, budget, timeouts, Some(permit)).await
        })
    }
}

/// Why a host could not be connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreachable {
    /// Its name did not resolve: a DNS failure, which may pass.
    Lookup(String),
    /// It resolves only to addresses this may not reach: a refusal.
    Denied(String),
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lookup(why) | Self::Denied(why) => f.write_str(why),
        }
    }
}

/// Why a form POST the host makes itself failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostError {
    /// Refused before anything was sent: the URL, its scheme or its
    /// address is not allowed. Trying again does not help.
    Refused(String),
    /// Sent, or tried, and failed on the way: it may pass.
    Failed(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) | Self::Failed(why) => f.write_str(why),
        }
    }
}

/// A form POST the host makes itself (an OAuth token exchange), under a
/// run's address rules: https, or plain http only to an address the
/// operator allowed; the name resolved and checked by the host and the
/// connection pinned to the checked address. Returns the status and the
/// body, refused past `max_body` bytes.
pub async fn post_form(
    url: &str,
    authorization: Option<http::HeaderValue>,
    form: Vec<u8>,
    allowed_addrs: &[SocketAddr],
    max_body: u64,
) -> Result<(u16, Vec<u8>), PostError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| PostError::Refused("the URL is not a URL".into()))?;
    let host = uri
        .host()
        .ok_or_else(|| PostError::Refused("the URL names no host".into()))?
        .to_owned();
    // Never sent on, and not quoted: it may hold a password.
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(PostError::Refused(format!(
            "the URL for {host} carries user information; give it without"
        )));
    }
    let tls = uri.scheme() == Some(&Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let policy = EgressPolicy {
        hosts: vec![host.to_ascii_lowercase()],
        allowed_addrs: allowed_addrs.to_vec(),
        ports: Vec::new(),
    };
    let addr = policy.resolve(&host, port).await.map_err(|e| match e {
        Unreachable::Lookup(why) => PostError::Failed(why),
        Unreachable::Denied(why) => PostError::Refused(why),
    })?;
    if !tls && !allowed_addrs.contains(&addr) {
        return Err(PostError::Refused(format!(
            "'{url}' is plain http; only https is used, or http to an address allowed with --egress-allow ADDR:PORT"
        )));
    }
    // The host and port only.
    let authority = match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.clone(),
    };
    let body = http_body_util::Full::new(bytes::Bytes::from(form))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut request = http::Request::post(uri)
        .header(http::header::HOST, authority)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(body)
        .map_err(|e| {
            PostError::Refused(format!("the request to {host} could not be built: {e}"))
        })?;
    if let Some(mut value) = authorization {
        value.set_sensitive(true);
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    let budget = Budget {
        used: Arc::default(),
        max: max_body,
    };
    let timeouts = Timeouts {
        connect: EXCHANGE_TIMEOUT,
        first_byte: EXCHANGE_TIMEOUT,
        between_bytes: EXCHANGE_TIMEOUT,
    };
    let exchange = async {
        let (response, io) = send_pinned(request, addr, &host, tls, budget, timeouts, None)
            .await
            .map_err(|e| format!("{host} could not be reached: {e}"))?;
        let io = Box::into_pin(io);
        let status = response.status().as_u16();
        let (body, _) = tokio::join!(response.into_body().collect(), io);
        let body =
            body.map_err(|e| format!("the response from {host} was cut off or too large: {e}"))?;
        Ok::<_, String>((status, body.to_bytes().to_vec()))
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            format!(
                "{host} did not answer within {} s",
                EXCHANGE_TIMEOUT.as_secs()
            )
        })
        .flatten()
        .map_err(PostError::Failed)
}

/// The run's response-body byte budget: one counter for all its
/// responses, debited as each part of a body arrives.
#[derive(Clone)]
struct Budget {
    used: Arc<AtomicU64>,
    max: u64,
}

impl Budget {
    /// Debits `len` bytes; `false` once the run has read more than it may.
    fn debit(&self, len: usize) -> bool {
        let len = len as u64;
        self.used
            .fetch_add(len, Ordering::Relaxed)
            .saturating_add(len)
            <= self.max
    }
}

/// How long an exchange may wait, at most, for each of its steps. A
/// connector's request options may shorten these, never lengthen them.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting: TCP, TLS and the HTTP handshake.
    pub connect: Duration,
    /// From the request sent to the response's head.
    pub first_byte: Duration,
    /// Between two parts of the response's body.
    pub between_bytes: Duration,
}

impl Timeouts {
    /// The host's `limits`, each lowered where `options` ask for less.
    fn at_most(limits: &Limits, options: Option<&RequestOptions>) -> Self {
        let lower = |host: Duration, asked: Option<Duration>| match asked {
            Some(asked) => host.min(asked),
            None => host,
        };
        Self {
            connect: lower(
                limits.http_connect_timeout,
                options.and_then(|o| o.connect_timeout),
            ),
            first_byte: lower(
                limits.http_first_byte_timeout,
                options.and_then(|o| o.first_byte_timeout),
            ),
            between_bytes: lower(
                limits.http_between_bytes_timeout,
                options.and_then(|o| o.between_bytes_timeout),
            ),
        }
    }
}

/// Sends `request` over a connection to exactly `addr`, verifying TLS
/// against `host`.
async fn send_pinned(
    mut request: http::Request<WasiBody>,
    addr: SocketAddr,
    host: &str,
    tls: bool,
    budget: Budget,
    timeouts: Timeouts,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Sent {
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        )
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(HttpError::Connect)?;
        if !tls {
            return handshake(TokioIo::new(tcp), permit).await;
        }
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(HttpError::Tls)?;
        handshake(TokioIo::new(stream), permit).await
    };
    let (mut sender, driver) = tokio::time::timeout(timeouts.connect, connect)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)??;
    let response = tokio::time::timeout(timeouts.first_byte, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)??;
    let response = response.map(|body| {
        Paced {
            body,
            budget,
            between_bytes: timeouts.between_bytes,
            next_by: Box::pin(tokio::time::sleep(timeouts.between_bytes)),
        }
        .boxed_unsync()
    });
    let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
        Box::new(async move { driver.finished().await });
    Ok((response, io))
}

/// The HTTP/1 handshake over `io`, its connection driven by a task that
/// ends when the [`Driver`] is dropped; the driver holds the run's
/// `permit` for an exchange in flight.
async fn handshake<S>(
    io: TokioIo<S>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<(hyper::client::conn::http1::SendRequest<WasiBody>, Driver), HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        // A response head the host keeps for the guest is bounded (hyper's
        // smallest read buffer), as are its fields.
        .max_buf_size(RESPONSE_HEAD_LIMIT)
        .max_headers(RESPONSE_HEADERS_LIMIT)
        .handshake(io)
        .await?;
    Ok((
        sender,
        Driver {
            task: tokio::spawn(conn),
            _permit: permit,
        },
    ))
}

/// Largest response head the host reads, bytes; and most header fields.
const RESPONSE_HEAD_LIMIT: usize = 16 * 1024;
const RESPONSE_HEADERS_LIMIT: usize = 100;

/// The task driving one connection; aborted when dropped, so an exchange
/// the guest gives up on (or that the host abandons with its run) closes
/// its connection instead of leaving it open.
struct Driver {
    task: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Driver {
    async fn finished(mut self) -> Result<(), HttpError> {
        match (&mut self.task).await {
            Ok(result) => result.map_err(HttpError::from),
            Err(_) => Err(HttpError::ConnectionTerminated),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response body, its bytes debited from the run's budget as they
/// arrive, that fails when the next part is slower than `between_bytes`.
struct Paced {
    body: hyper::body::Incoming,
    budget: Budget,
    between_bytes: Duration,
    next_by: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Paced {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        use std::task::Poll;
        match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && !self.budget.debit(data.len())
                {
                    return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(None))));
                }
                let next_by = tokio::time::Instant::now() + self.between_bytes;
                self.next_by.as_mut().reset(next_by);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.next_by.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        let table: &[(&str, bool)] = &[
            ("140.82.112.6", false),
            ("1.1.1.1", false),
            ("127.0.0.1", true),
            ("127.8.9.10", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("0.0.0.0", true),
            ("100.64.0.1", true),
            ("255.255.255.255", true),
            ("224.0.0.1", true),
            ("2606:4700::1111", false),
            ("::1", true),
            ("::", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:140.82.112.6", true),
            ("::127.0.0.1", true),
            ("fd00:ec2::254", true),
            ("fe80::1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("2002:a9fe:a9fe::", true),
            ("2001:db8::1", true),
        ];
        for (ip, expected) in table {
            assert_eq!(forbidden(ip.parse().expect("ip")), *expected, "{ip}");
        }
    }

    #[tokio::test]
    async fn a_form_post_refuses_user_information_and_forbidden_addresses_as_refusals() {
        let allowed: Vec<SocketAddr> = vec!["127.0.0.1:9".parse().expect("addr")];
        let refused = post_form(
            "http://admin:hunter2@127.0.0.1:9/token",
            None,
            Vec::new(),
            &allowed,
            1024,
        )
        .await
        .expect_err("userinfo");
        assert!(matches!(&refused, PostError::Refused(_)), "{refused:?}");
        assert!(!refused.to_string().contains("hunter2"), "{refused}");
        let forbidden = post_form("https://169.254.169.254/token", None, Vec::new(), &[], 1024)
            .await
            .expect_err("metadata address");
        assert!(matches!(forbidden, PostError::Refused(_)), "{forbidden:?}");
        // Nothing listens on the allowed address: a failure, not a refusal.
        let failed = post_form("http://127.0.0.1:9/token", None, Vec::new(), &allowed, 1024)
            .await
            .expect_err("nothing listens");
        assert!(matches!(failed, PostError::Failed(_)), "{failed:?}");
    }

    #[tokio::test]
    async fn resolution_refuses_non_public_addresses_unless_allowed() {
        let policy = EgressPolicy {
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            allowed_addrs: vec!["127.0.0.1:8080".parse().expect("addr")],
            ports: Vec::new(),
        };
        assert!(policy.resolve("localhost", 9).await.is_err());
        assert!(policy.resolve("169.254.169.254", 80).await.is_err());
        assert_eq!(
            policy.resolve("127.0.0.1", 8080).await,
            Ok("127.0.0.1:8080".parse().expect("addr"))
        );
        assert!(policy.host_allowed("LOCALHOST"));
        assert!(!policy.host_allowed("example.com"));
    }

    #[tokio::test]
    async fn a_login_browser_reaches_what_a_run_may_reach_pinned() {
        use crate::browser::Reach;
        let policy = EgressPolicy {
            hosts: vec![
                "127.0.0.1".into(),
                "localhost".into(),
                "169.254.169.254".into(),
                "10.1.2.3".into(),
                "93.184.215.14".into(),
            ],
            allowed_addrs: vec!["127.0.0.1:8080".parse().expect("addr")],
            ports: Vec::new(),
        };
        assert_eq!(
            policy.browser_reach().await,
            [
                // Loopback only on the allowed port; the literal unpinned,
                // the name pinned to the allowed address.
                Reach {
                    host: "127.0.0.1".into(),
                    port: Some(8080),
                    address: None,
                },
                Reach {
                    host: "localhost".into(),
                    port: Some(8080),
                    address: Some([127, 0, 0, 1].into()),
                },
                // Metadata and private addresses: left out.
                Reach {
                    host: "93.184.215.14".into(),
                    port: None,
                    address: None,
                },
            ]
        );
    }
}
