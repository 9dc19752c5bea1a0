//! Outbound HTTP over `wasi:http`.
//!
//! The host lets a request through only to hosts the manifest declares,
//! and only to public addresses it resolved itself. To authenticate without
//! ever holding the secret, ask the host to add a credential as a bearer
//! token with [`Request::bearer_credential`]: it is added only for the hosts
//! that credential declares.

use crate::wit::wasi::http::outgoing_handler;
use crate::wit::wasi::http::types::{self as wasi, ErrorCode};
use crate::wit::wasi::io::streams::StreamError;

/// Why a request produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not `http(s)://host[:port]/path`.
    InvalidUrl(String),
    /// The host refused the request (undeclared host, non-public address,
    /// or a credential not declared for this host).
    Denied,
    /// The connection or exchange failed.
    Transport(String),
}

/// A response, body read in full.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    ///
    /// ```
    /// # let r = sourcebox_sdk::http::Response { status: 200, headers: vec![("Link".into(), "<x>".into())], body: vec![] };
    /// assert_eq!(r.header("link"), Some("<x>"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// ```
    /// # let r = sourcebox_sdk::http::Response { status: 200, headers: vec![], body: br#"{"a":1}"#.to_vec() };
    /// let v: serde_json::Value = r.json().unwrap();
    /// assert_eq!(v["a"], 1);
    /// ```
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Transport(format!("response is not the expected JSON: {e}")))
    }
}

/// A request being built.
///
/// ```no_run
/// use sourcebox_sdk::http::Request;
/// let response = Request::get("https://api.github.com/user")
///     .header("accept", "application/vnd.github+json")
///     .bearer_credential("token")
///     .send()?;
/// # Ok::<(), sourcebox_sdk::http::HttpError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    url: String,
    headers: Vec<(String, String)>,
}

impl Request {
    /// A GET request.
    ///
    /// ```
    /// let r = sourcebox_sdk::http::Request::get("https://example.com/");
    /// # let _ = r;
    /// ```
    pub fn get(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            headers: vec![("user-agent".into(), "sourcebox-connector".into())],
        }
    }

    /// Adds a header field.
    ///
    /// ```
    /// let r = sourcebox_sdk::http::Request::get("https://example.com/").header("accept", "application/json");
    /// # let _ = r;
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Has the host send credential `name` as `Authorization: Bearer ...`.
    ///
    /// ```
    /// let r = sourcebox_sdk::http::Request::get("https://api.github.com/user").bearer_credential("token");
    /// # let _ = r;
    /// ```
    pub fn bearer_credential(self, name: &str) -> Self {
        self.header("x-sourcebox-bearer", name)
    }

    /// Sends the request and reads the whole response.
    ///
    /// ```no_run
    /// let r = sourcebox_sdk::http::Request::get("https://example.com/").send()?;
    /// # Ok::<(), sourcebox_sdk::http::HttpError>(())
    /// ```
    pub fn send(self) -> Result<Response, HttpError> {
        let (scheme, rest) = if let Some(rest) = self.url.strip_prefix("https://") {
            (wasi::Scheme::Https, rest)
        } else if let Some(rest) = self.url.strip_prefix("http://") {
            (wasi::Scheme::Http, rest)
        } else {
            return Err(HttpError::InvalidUrl(self.url));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(HttpError::InvalidUrl(self.url));
        }
        let fields = wasi::Fields::new();
        for (name, value) in &self.headers {
            fields
                .append(name, value.as_bytes())
                .map_err(|e| HttpError::InvalidUrl(format!("header {name}: {e:?}")))?;
        }
        let request = wasi::OutgoingRequest::new(fields);
        let invalid = |_| HttpError::InvalidUrl(self.url.clone());
        request.set_method(&wasi::Method::Get).map_err(invalid)?;
        request.set_scheme(Some(&scheme)).map_err(invalid)?;
        request.set_authority(Some(authority)).map_err(invalid)?;
        request.set_path_with_query(Some(path)).map_err(invalid)?;
        let body = request
            .body()
            .map_err(|_| HttpError::Transport("request body unavailable".into()))?;
        wasi::OutgoingBody::finish(body, None).map_err(error_code)?;

        let pending = outgoing_handler::handle(request, None).map_err(error_code)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(error_code(code)),
            _ => return Err(HttpError::Transport("no response".into())),
        };
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response
            .consume()
            .map_err(|_| HttpError::Transport("response body unavailable".into()))?;
        let stream = incoming
            .stream()
            .map_err(|_| HttpError::Transport("response body unavailable".into()))?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(HttpError::Transport(e.to_debug_string()));
                }
            }
        }
        drop(stream);
        let _ = wasi::IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn error_code(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied,
        other => HttpError::Transport(format!("{other:?}")),
    }
}
