//! Outbound HTTP over `wasi:http`.
//!
//! The host lets a request through only to hosts the manifest declares,
//! and only to public addresses it resolved itself. To authenticate without
//! ever holding the secret, ask the host to add a credential as a bearer
//! token with [`Request::bearer_credential`], or a captured session as
//! cookies with [`Request::session_credential`]: it is added only for the
//! hosts that credential declares.

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

    /// The cookies this response sets (`Set-Cookie`), as the session a
    /// connector keeps with `credentials::put` after logging in: the same
    /// JSON array a browser login captures, each cookie bound to `host`,
    /// the host the request went to. The host sends it back, to that host
    /// only, with [`Request::session_credential`].
    ///
    /// ```
    /// # use sourcebox_sdk::http::Response;
    /// let r = Response { status: 303, headers: vec![
    ///     ("set-cookie".into(), "sid=abc; Path=/; HttpOnly; Secure".into()),
    /// ], body: vec![] };
    /// let session: serde_json::Value = serde_json::from_str(&r.session("bank.example")).unwrap();
    /// assert_eq!(session[0]["name"], "sid");
    /// assert_eq!(session[0]["domain"], "bank.example");
    /// assert_eq!(session[0]["secure"], true);
    /// ```
    pub fn session(&self, host: &str) -> String {
        let cookies: Vec<serde_json::Value> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, line)| {
                let mut parts = line.split(';').map(str::trim);
                let (name, value) = parts.next()?.split_once('=')?;
                let mut cookie = serde_json::json!({
                    "name": name, "value": value, "domain": host, "path": "/",
                    "secure": false, "httpOnly": false,
                });
                for attribute in parts {
                    let (key, val) = attribute.split_once('=').unwrap_or((attribute, ""));
                    match key.to_ascii_lowercase().as_str() {
                        "path" => cookie["path"] = val.into(),
                        "secure" => cookie["secure"] = true.into(),
                        "httponly" => cookie["httpOnly"] = true.into(),
                        _ => {}
                    }
                }
                Some(cookie)
            })
            .collect();
        serde_json::Value::from(cookies).to_string()
    }

    /// The `Retry-After` field as seconds to wait: delta-seconds, or an
    /// HTTP-date counted from now (RFC 9110 §10.2.3).
    ///
    /// ```
    /// # use sourcebox_sdk::http::Response;
    /// let r = Response { status: 429, headers: vec![("Retry-After".into(), "120".into())], body: vec![] };
    /// assert_eq!(r.retry_after(), Some(120));
    /// let past = Response { status: 503, headers: vec![("retry-after".into(), "Wed, 21 Oct 2015 07:28:00 GMT".into())], body: vec![] };
    /// assert_eq!(past.retry_after(), Some(0));
    /// ```
    pub fn retry_after(&self) -> Option<u32> {
        let value = self.header("retry-after")?.trim();
        if let Ok(seconds) = value.parse::<u32>() {
            return Some(seconds);
        }
        let at = httpdate::parse_http_date(value).ok()?;
        let wait = at
            .duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Some(u32::try_from(wait).unwrap_or(u32::MAX))
    }

    /// The target of the `Link` field's `rel="next"` link (RFC 8288), as
    /// REST APIs such as GitHub's paginate.
    ///
    /// ```
    /// # use sourcebox_sdk::http::Response;
    /// let link = r#"<https://api.example.com/items?page=3>; rel="next", <https://api.example.com/items?page=9>; rel="last""#;
    /// let r = Response { status: 200, headers: vec![("Link".into(), link.into())], body: vec![] };
    /// assert_eq!(r.next_link().as_deref(), Some("https://api.example.com/items?page=3"));
    /// ```
    pub fn next_link(&self) -> Option<String> {
        self.header("link")?.split(',').find_map(|part| {
            let (target, params) = part.split_once(';')?;
            let next = params.split(';').any(|p| {
                let Some((key, value)) = p.split_once('=') else {
                    return false;
                };
                key.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            });
            next.then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
        })
    }

    /// The response if its status is 2xx; otherwise the typed error the
    /// host acts on: 401 → `AuthRejected` (the source needs new
    /// credentials); 429, or 403/503 with `Retry-After` → `RateLimited`
    /// (retried after the provider's delay); other 403 →
    /// `AuthInsufficient`; 5xx → `UpstreamTransient` (retried with
    /// backoff); anything else → `Fatal`.
    ///
    /// ```
    /// # use sourcebox_sdk::{ConnectorError, http::Response};
    /// let limited = Response { status: 429, headers: vec![("retry-after".into(), "30".into())], body: vec![] };
    /// assert!(matches!(limited.check(), Err(ConnectorError::RateLimited(Some(30)))));
    /// let ok = Response { status: 204, headers: vec![], body: vec![] };
    /// assert!(ok.check().is_ok());
    /// ```
    pub fn check(self) -> Result<Response, crate::ConnectorError> {
        use crate::ConnectorError;
        let retry_after = self.retry_after();
        match self.status {
            200..=299 => Ok(self),
            401 => Err(ConnectorError::AuthRejected(
                "the provider refused the credentials (401)".into(),
            )),
            429 => Err(ConnectorError::RateLimited(retry_after)),
            403 | 503 if retry_after.is_some() => Err(ConnectorError::RateLimited(retry_after)),
            403 => Err(ConnectorError::AuthInsufficient(
                "the provider answered 403: the credentials lack a permission or scope".into(),
            )),
            status @ 500..=599 => Err(ConnectorError::UpstreamTransient(format!(
                "the provider answered {status}"
            ))),
            status => Err(ConnectorError::Fatal(format!(
                "the provider answered {status}"
            ))),
        }
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
#[derive(Clone)]
pub struct Request {
    url: String,
    method: wasi::Method,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Header values and the body may carry a password: they do not print.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("body_len", &self.body.len())
            .finish()
    }
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
            method: wasi::Method::Get,
            headers: vec![("user-agent".into(), "sourcebox-connector".into())],
            body: Vec::new(),
        }
    }

    /// A POST of an HTML form (`application/x-www-form-urlencoded`), as a
    /// login page's form sends it.
    ///
    /// ```
    /// let r = sourcebox_sdk::http::Request::post_form(
    ///     "https://bank.example/login",
    ///     &[("user", "carol"), ("password", "a b&c")],
    /// );
    /// # let _ = r;
    /// ```
    pub fn post_form(url: &str, fields: &[(&str, &str)]) -> Self {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish()
            .into_bytes();
        Self {
            method: wasi::Method::Post,
            body,
            ..Self::get(url)
        }
        .header("content-type", "application/x-www-form-urlencoded")
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

    /// Has the host send session credential `name` (the cookies a browser
    /// login captured) as this request's `Cookie` header: the cookies of
    /// the request's host only, `Secure` ones only over https.
    ///
    /// ```
    /// let r = sourcebox_sdk::http::Request::get("https://bank.example/accounts").session_credential("session");
    /// # let _ = r;
    /// ```
    pub fn session_credential(self, name: &str) -> Self {
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
        request.set_method(&self.method).map_err(invalid)?;
        request.set_scheme(Some(&scheme)).map_err(invalid)?;
        request.set_authority(Some(authority)).map_err(invalid)?;
        request.set_path_with_query(Some(path)).map_err(invalid)?;
        let body = request
            .body()
            .map_err(|_| HttpError::Transport("request body unavailable".into()))?;
        // Sent first, then its body streamed to it.
        let pending = outgoing_handler::handle(request, None).map_err(error_code)?;
        let unavailable = |_| HttpError::Transport("request body unavailable".into());
        if !self.body.is_empty() {
            let stream = body.write().map_err(unavailable)?;
            // At most 4096 bytes per write (the wasi:io contract).
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::Transport(format!("request body: {e:?}")))?;
            }
            drop(stream);
        }
        wasi::OutgoingBody::finish(body, None).map_err(error_code)?;
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

/// Pages linked by `Link: <...>; rel="next"`, from `first` on: each
/// request is built by `request` from the page's URL (to add headers or a
/// credential), and iteration ends after the page with no next link, or
/// at the first failed request.
///
/// ```no_run
/// use sourcebox_sdk::http::{Request, link_pages};
/// for page in link_pages("https://api.github.com/user/repos?per_page=100", |url| {
///     Request::get(url).bearer_credential("token")
/// }) {
///     let items: Vec<serde_json::Value> = page?.check()?.json()?;
///     # let _ = items;
/// }
/// # Ok::<(), sourcebox_sdk::ConnectorError>(())
/// ```
pub fn link_pages<F: FnMut(&str) -> Request>(first: &str, request: F) -> LinkPages<F> {
    LinkPages {
        next: Some(first.to_owned()),
        request,
    }
}

/// The iterator of [`link_pages`].
pub struct LinkPages<F> {
    next: Option<String>,
    request: F,
}

impl<F> std::fmt::Debug for LinkPages<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkPages")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl<F: FnMut(&str) -> Request> Iterator for LinkPages<F> {
    type Item = Result<Response, HttpError>;

    fn next(&mut self) -> Option<Self::Item> {
        let url = self.next.take()?;
        let response = (self.request)(&url).send();
        if let Ok(response) = &response {
            // A page that failed has no next page to follow.
            if (200..300).contains(&response.status) {
                self.next = response.next_link();
            }
        }
        Some(response)
    }
}

/// Pages chained by a cursor in each response (a `next_cursor` field, a
/// continuation token): `request(None)` builds the first request,
/// `request(Some(cursor))` the following ones, and `cursor` reads the next
/// cursor from a page, `None` on the last one. Iteration also ends at the
/// first failed request or non-2xx page (yielded, so its status can be
/// checked).
///
/// ```no_run
/// use sourcebox_sdk::http::{Request, cursor_pages};
/// let pages = cursor_pages(
///     |cursor| match cursor {
///         None => Request::get("https://api.example.com/items"),
///         Some(c) => Request::get(&format!("https://api.example.com/items?cursor={c}")),
///     },
///     |page| page.json::<serde_json::Value>().ok()?["next_cursor"].as_str().map(str::to_owned),
/// );
/// for page in pages {
///     let items: serde_json::Value = page?.check()?.json()?;
///     # let _ = items;
/// }
/// # Ok::<(), sourcebox_sdk::ConnectorError>(())
/// ```
pub fn cursor_pages<F, C>(request: F, cursor: C) -> CursorPages<F, C>
where
    F: FnMut(Option<&str>) -> Request,
    C: FnMut(&Response) -> Option<String>,
{
    CursorPages {
        state: Some(None),
        request,
        cursor,
    }
}

/// The iterator of [`cursor_pages`].
pub struct CursorPages<F, C> {
    /// `None` when done; `Some(None)` before the first page.
    state: Option<Option<String>>,
    request: F,
    cursor: C,
}

impl<F, C> std::fmt::Debug for CursorPages<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorPages")
            .field("done", &self.state.is_none())
            .finish_non_exhaustive()
    }
}

impl<F, C> Iterator for CursorPages<F, C>
where
    F: FnMut(Option<&str>) -> Request,
    C: FnMut(&Response) -> Option<String>,
{
    type Item = Result<Response, HttpError>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.state.take()?;
        let response = (self.request)(at.as_deref()).send();
        if let Ok(response) = &response
            && (200..300).contains(&response.status)
        {
            // A cursor that does not move would loop forever: stop instead.
            self.state = (self.cursor)(response)
                .filter(|next| Some(next) != at.as_ref())
                .map(Some);
        }
        Some(response)
    }
}

fn error_code(code: ErrorCode) -> HttpError {
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied,
        other => HttpError::Transport(format!("{other:?}")),
    }
}
