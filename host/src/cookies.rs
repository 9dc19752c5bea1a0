//! Sessions: the cookies a source keeps as its `session` credential.
//!
//! One format everywhere, a JSON array of cookies: `name`, `value`,
//! `domain` (a leading `.` for that domain and every host under it,
//! otherwise that host alone), `path`, `expires` (seconds since the Unix
//! epoch; absent or -1 for none), `secure` and `httpOnly`. A browser login
//! captures one ([`crate::browser::LoginBrowser::finish`]); an owner can
//! import one from a browser's cookie export ([`from_export`]); the host
//! sends it to a connector's requests as a `Cookie` header ([`header`]),
//! and never hands the cookies of one host to another.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::vault::Secret;

/// One cookie of a session.
#[derive(Serialize, Deserialize)]
struct Cookie {
    name: String,
    value: String,
    domain: String,
    #[serde(default = "root")]
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<f64>,
    #[serde(default)]
    secure: bool,
    #[serde(default, rename = "httpOnly")]
    http_only: bool,
}

fn root() -> String {
    "/".to_owned()
}

impl Drop for Cookie {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl Cookie {
    /// Whether a request to `host` carries it.
    fn for_host(&self, host: &str) -> bool {
        let domain = self.domain.to_ascii_lowercase();
        match domain.strip_prefix('.') {
            Some(parent) => host == parent || host.ends_with(&domain),
            None => host == domain,
        }
    }

    fn expired(&self, now: f64) -> bool {
        self.expires.is_some_and(|at| at > 0.0 && at < now)
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn parse(session: &Secret) -> Option<Vec<Cookie>> {
    serde_json::from_slice(session.expose_secret()).ok()
}

/// The `Cookie` header value a request to `host` carries from `session`:
/// its unexpired cookies for `host`, `Secure` ones only over TLS.
/// `Ok(None)` when none applies; `Err(())` when the session is not such
/// an array (a value a connector stored itself).
#[allow(clippy::result_unit_err)]
pub fn header(
    session: &Secret,
    host: &str,
    tls: bool,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, ()> {
    let cookies = parse(session).ok_or(())?;
    let (host, now) = (host.to_ascii_lowercase(), now());
    let mut header = zeroize::Zeroizing::new(Vec::new());
    for cookie in &cookies {
        if !cookie.for_host(&host) || cookie.expired(now) || (cookie.secure && !tls) {
            continue;
        }
        if !header.is_empty() {
            header.extend_from_slice(b"; ");
        }
        header.extend_from_slice(cookie.name.as_bytes());
        header.push(b'=');
        header.extend_from_slice(cookie.value.as_bytes());
    }
    Ok((!header.is_empty()).then_some(header))
}

/// Each cookie value of `session`, to be redacted one by one (a log line
/// may show one without the rest); nothing for a value of another shape.
pub fn values(session: &Secret) -> Vec<Secret> {
    parse(session)
        .unwrap_or_default()
        .iter()
        .filter(|c| !c.value.is_empty())
        .map(|c| Secret::from_slice(c.value.as_bytes()))
        .collect()
}

/// Why a cookie export could not become a session. Messages name lines
/// and hosts, never a cookie's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Not a cookie export this host reads.
    #[error(
        "{0}; export the cookies as a cookies.txt file (Netscape format) or a JSON array of cookies (name, value, domain)"
    )]
    Format(String),
    /// Nothing in it for the hosts the connector reaches.
    #[error(
        "the export holds no unexpired cookie for {hosts} (it had {other} for other hosts and {expired} expired); export it from a browser that is logged in to that site"
    )]
    NothingFor {
        /// The connector's hosts.
        hosts: String,
        /// Cookies for other hosts.
        other: usize,
        /// Expired cookies.
        expired: usize,
    },
}

/// A session made from a cookie export.
#[derive(Debug)]
pub struct Imported {
    /// The session, in the one format.
    pub session: Secret,
    /// Cookies kept.
    pub kept: usize,
    /// Cookies left out because no host the connector reaches gets them.
    pub other_hosts: usize,
    /// Cookies left out because they have expired.
    pub expired: usize,
}

/// Reads a browser's cookie export (`cookies.txt` in the Netscape format,
/// or a JSON array of cookies as browser extensions export them) and keeps
/// only the unexpired cookies that a request to one of `hosts` would
/// carry: an export holds every site's cookies, and a source keeps its own
/// site's only.
pub fn from_export(export: &Secret, hosts: &[String]) -> Result<Imported, ImportError> {
    let text = std::str::from_utf8(export.expose_secret())
        .map_err(|_| ImportError::Format("the export is not UTF-8 text".into()))?;
    let cookies = if text.trim_start().starts_with('[') {
        from_json(text)?
    } else {
        from_netscape(text)?
    };
    if cookies.is_empty() {
        return Err(ImportError::Format("the export holds no cookie".into()));
    }
    let now = now();
    let (mut kept, mut other_hosts, mut expired) = (Vec::new(), 0, 0);
    for cookie in cookies {
        if !hosts
            .iter()
            .any(|h| cookie.for_host(&h.to_ascii_lowercase()))
        {
            other_hosts += 1;
        } else if cookie.expired(now) {
            expired += 1;
        } else {
            kept.push(cookie);
        }
    }
    if kept.is_empty() {
        return Err(ImportError::NothingFor {
            hosts: hosts.join(", "),
            other: other_hosts,
            expired,
        });
    }
    Ok(Imported {
        session: Secret::new(serde_json::to_vec(&kept).expect("cookies serialize")),
        kept: kept.len(),
        other_hosts,
        expired,
    })
}

/// A JSON array of cookies: this host's own format, or a browser
/// extension's (`expirationDate`, `hostOnly`).
fn from_json(text: &str) -> Result<Vec<Cookie>, ImportError> {
    #[derive(Deserialize)]
    struct Exported {
        name: String,
        value: String,
        domain: String,
        #[serde(default = "root")]
        path: String,
        #[serde(default, alias = "expirationDate")]
        expires: Option<f64>,
        #[serde(default)]
        secure: bool,
        #[serde(default, rename = "httpOnly")]
        http_only: bool,
        #[serde(default, rename = "hostOnly")]
        host_only: Option<bool>,
    }
    impl Drop for Exported {
        fn drop(&mut self) {
            self.value.zeroize();
        }
    }
    let exported: Vec<Exported> = serde_json::from_str(text).map_err(|e| {
        ImportError::Format(format!(
            "the JSON export is not an array of cookies with name, value and domain (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    Ok(exported
        .into_iter()
        .map(|mut e| {
            let bare = e.domain.trim_start_matches('.');
            let domain = match e.host_only {
                Some(false) => format!(".{bare}"),
                Some(true) => bare.to_owned(),
                None => e.domain.clone(),
            };
            Cookie {
                name: std::mem::take(&mut e.name),
                value: std::mem::take(&mut e.value),
                domain,
                path: std::mem::take(&mut e.path),
                expires: e.expires,
                secure: e.secure,
                http_only: e.http_only,
            }
        })
        .collect())
}

/// Netscape `cookies.txt`: one cookie per line, seven tab-separated
/// fields (domain, subdomains too, path, secure, expiry, name, value);
/// `#` starts a comment, except `#HttpOnly_` before a domain.
fn from_netscape(text: &str) -> Result<Vec<Cookie>, ImportError> {
    let mut cookies = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        let (line, http_only) = match line.strip_prefix("#HttpOnly_") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [domain, subdomains, path, secure, expires, name, value] = fields[..] else {
            return Err(ImportError::Format(format!(
                "line {} is not a cookies.txt line (seven tab-separated fields)",
                number + 1
            )));
        };
        let flag = |field: &str, what: &str| match field {
            "TRUE" => Ok(true),
            "FALSE" => Ok(false),
            _ => Err(ImportError::Format(format!(
                "line {}: {what} must be TRUE or FALSE",
                number + 1
            ))),
        };
        let bare = domain.trim_start_matches('.');
        let expires: f64 = expires.parse().map_err(|_| {
            ImportError::Format(format!("line {}: the expiry is not a number", number + 1))
        })?;
        cookies.push(Cookie {
            name: name.to_owned(),
            value: value.to_owned(),
            domain: if flag(subdomains, "the subdomain flag")? {
                format!(".{bare}")
            } else {
                bare.to_owned()
            },
            path: path.to_owned(),
            expires: (expires > 0.0).then_some(expires),
            secure: flag(secure, "the secure flag")?,
            http_only,
        });
    }
    Ok(cookies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["bank.example".to_owned()]
    }

    #[test]
    fn a_cookies_txt_keeps_only_the_sources_hosts_unexpired_cookies() {
        let export = "# Netscape HTTP Cookie File\n\
            #HttpOnly_bank.example\tFALSE\t/\tTRUE\t0\tsid\ts3cret\n\
            .bank.example\tTRUE\t/\tFALSE\t4102444800\tpref\tdark\n\
            .tracker.example\tTRUE\t/\tFALSE\t4102444800\tid\ttracked\n\
            bank.example\tFALSE\t/\tFALSE\t1\told\tgone\n";
        let imported =
            from_export(&Secret::from_slice(export.as_bytes()), &hosts()).expect("import");
        assert_eq!(
            (imported.kept, imported.other_hosts, imported.expired),
            (2, 1, 1)
        );
        let line = header(&imported.session, "bank.example", true)
            .expect("array")
            .expect("cookies");
        assert_eq!(&line[..], b"sid=s3cret; pref=dark");
        // The secure cookie stays off plain http; the domain cookie goes to
        // a host under it; the host-only one does not.
        let plain = header(&imported.session, "bank.example", false)
            .expect("array")
            .expect("cookies");
        assert_eq!(&plain[..], b"pref=dark");
        let sub = header(&imported.session, "api.bank.example", true)
            .expect("array")
            .expect("cookies");
        assert_eq!(&sub[..], b"pref=dark");
        assert!(
            header(&imported.session, "evilbank.example", true)
                .expect("array")
                .is_none()
        );
    }

    #[test]
    fn a_json_export_reads_the_extension_fields() {
        let export = r#"[{"name":"sid","value":"v1","domain":"bank.example","hostOnly":false,"expirationDate":4102444800,"secure":true,"httpOnly":true}]"#;
        let imported =
            from_export(&Secret::from_slice(export.as_bytes()), &hosts()).expect("import");
        let sub = header(&imported.session, "www.bank.example", true)
            .expect("array")
            .expect("cookies");
        assert_eq!(&sub[..], b"sid=v1");
    }

    #[test]
    fn bad_exports_say_what_is_wrong_and_never_show_a_value() {
        let cases = [
            (
                "bank.example\tFALSE\t/\tTRUE\tsid\tvalue-canary\n",
                "line 1 is not a cookies.txt line",
            ),
            (
                "bank.example\tMAYBE\t/\tTRUE\t0\tsid\tvalue-canary\n",
                "line 1: the subdomain flag must be TRUE or FALSE",
            ),
            (
                r#"[{"name":"sid","value":"value-canary"}]"#,
                "not an array of cookies with name, value and domain",
            ),
            (
                ".other.example\tTRUE\t/\tFALSE\t0\tsid\tvalue-canary\n",
                "holds no unexpired cookie for bank.example (it had 1 for other hosts and 0 expired)",
            ),
            ("# only a comment\n", "holds no cookie"),
        ];
        for (export, expected) in cases {
            let err = from_export(&Secret::from_slice(export.as_bytes()), &hosts())
                .expect_err(export)
                .to_string();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("value-canary"), "{err}");
        }
    }

    #[test]
    fn a_session_that_is_not_a_cookie_array_is_not_taken_for_one() {
        assert!(header(&Secret::from_slice(b"plain-token"), "bank.example", true).is_err());
        assert!(values(&Secret::from_slice(b"plain-token")).is_empty());
    }
}
