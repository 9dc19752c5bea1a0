//! A run's credentials: the one way the runtime and egress reach a
//! source's credentials. Bound at launch to one source and one phase
//! (authenticating or not), it applies the class rules once for all three
//! exits a value has — handed to the guest (`get`), written by it (`put`),
//! added by the host to a request (`inject`):
//!
//! - password and OTP-seed credentials leave the vault only while the
//!   connector authenticates, whichever the exit;
//! - a connector writes only what it refreshes itself (sessions and OAuth
//!   grants), never a password, an OTP seed or a token the owner entered;
//! - an injected credential goes only to the hosts declared for it, over
//!   https to that host's port (an address the operator allowed with
//!   `--egress-allow` excepted).
//!
//! Each credential is read from the vault (and audited) once per run; the
//! reads after that are counted, not audited again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::failure::RunFailure;
use super::limits::{Exhausted, Limits};
use crate::contract::bindings::sourcebox::connector::credentials::CredentialError;
use crate::contract::{CredentialClass, CredentialField, Manifest};
use crate::store::SourceRef;
use crate::vault::{
    Actor, CredentialClass as VaultClass, NewCredential, Provenance, Secret, Vault, VaultError,
};

/// A run's credentials, shared by its store and its egress hooks.
pub(crate) type Shared = Arc<Mutex<RunCredentials>>;

/// See the module documentation.
pub(crate) struct RunCredentials {
    vault: Arc<Mutex<Vault>>,
    source: SourceRef,
    run_id: String,
    authenticating: bool,
    manifest: Arc<Manifest>,
    /// Largest value a connector may `put`, by class: a browser session's
    /// cookies, an OAuth grant's JSON.
    max_session: u64,
    max_oauth: u64,
    /// Values read this run, by name, and how many reads each answered
    /// after the first (which was audited): these are audited as one row
    /// per credential when the run ends.
    read: HashMap<String, (Secret, u64)>,
    /// Values that may come back in what the guest prints or logs: those
    /// handed to it, injected for it, or answered by the owner.
    shown: Vec<Secret>,
    /// A revoked or undecryptable credential the run needed.
    failure: Option<RunFailure>,
    /// A `put` past its size or its count.
    exhausted: Option<Exhausted>,
    /// `put`s so far.
    puts: u32,
}

/// Most `put`s one run may make: each is a write to the vault and a row
/// in its audit log. A login stores its session once or twice.
const MAX_PUTS: u32 = 32;

impl std::fmt::Debug for RunCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCredentials")
            .field("source", &self.source.source)
            .field("authenticating", &self.authenticating)
            .finish_non_exhaustive()
    }
}

/// Where a request that would carry a credential goes.
#[derive(Debug)]
pub(crate) struct Destination<'a> {
    /// The request's host.
    pub host: &'a str,
    /// Over https.
    pub tls: bool,
    /// The port it connects to.
    pub port: u16,
    /// The port this host's credentials may go to over https.
    pub https_port: u16,
    /// Its address is one the operator allowed (`--egress-allow`).
    pub allowed: bool,
}

/// Why a credential was not injected.
#[derive(Debug)]
pub(crate) enum NotInjected {
    /// The request may not carry it: the run's egress is denied.
    Denied(String),
    /// It could not be had (revoked, undecryptable): the run's failure
    /// says so.
    Unavailable,
}

/// Whether `class` resolves only while the connector authenticates.
fn login_only(class: CredentialClass) -> bool {
    matches!(class, CredentialClass::Password | CredentialClass::OtpSeed)
}

impl RunCredentials {
    pub(crate) fn new(
        vault: Arc<Mutex<Vault>>,
        source: SourceRef,
        run_id: String,
        authenticating: bool,
        manifest: Arc<Manifest>,
        limits: &Limits,
    ) -> Self {
        Self {
            vault,
            source,
            run_id,
            authenticating,
            manifest,
            max_session: limits.session_bytes,
            max_oauth: limits.oauth_bytes,
            read: HashMap::new(),
            shown: Vec::new(),
            failure: None,
            exhausted: None,
            puts: 0,
        }
    }

    fn declared(&self, name: &str) -> Option<&CredentialField> {
        self.manifest.credentials.iter().find(|f| f.name == name)
    }

    /// Who reads or writes, in the audit log: the connector itself, or
    /// the host's egress on its behalf.
    fn actor<'a>(&'a self, name: &'static str) -> Actor<'a> {
        Actor {
            name,
            run_id: Some(&self.run_id),
        }
    }

    /// `name`'s value, from the vault the first time in this run (audited
    /// as `exit`'s read). `Ok(Err)` is what the guest hears; `Err` is a
    /// host fault (the audit row could not be written), which stops the
    /// run.
    fn resolve(
        &mut self,
        name: &str,
        exit: &'static str,
    ) -> Result<Result<Secret, CredentialError>, VaultError> {
        if let Some((value, again)) = self.read.get_mut(name) {
            *again += 1;
            return Ok(Ok(value.clone()));
        }
        let read = self
            .vault
            .lock()
            .expect("vault lock")
            .get(self.actor(exit), &self.source, name);
        match read {
            Ok(value) => {
                // Its name only; the launch benchmark times a launch to it.
                tracing::trace!(
                    source = self.source.source,
                    run = self.run_id,
                    credential = name,
                    "credential resolved"
                );
                self.read.insert(name.to_owned(), (value.clone(), 0));
                Ok(Ok(value))
            }
            Err(VaultError::Missing { .. }) => Ok(Err(CredentialError::Missing)),
            Err(VaultError::Revoked { .. }) => {
                self.failure = Some(RunFailure::CredentialRevoked(name.to_owned()));
                Ok(Err(CredentialError::Revoked))
            }
            Err(VaultError::Unrecoverable { .. }) => {
                self.failure = Some(RunFailure::CredentialUnrecoverable(name.to_owned()));
                Ok(Err(CredentialError::Unrecoverable))
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps `value` to redact from the run's output, once per value it
    /// takes in the run: a session cookie by cookie and a grant token by
    /// token as well, since a line may show one of them without the rest.
    fn show(&mut self, class: CredentialClass, value: &Secret) {
        if self
            .shown
            .iter()
            .any(|s| s.expose_secret() == value.expose_secret())
        {
            return;
        }
        match class {
            CredentialClass::Session => self.shown.extend(crate::cookies::values(value)),
            CredentialClass::Oauth => {
                if let Ok(grant) = crate::vault::Grant::parse(value) {
                    self.shown.extend(grant.tokens());
                }
            }
            _ => {}
        }
        self.shown.push(value.clone());
    }

    /// `credentials.get`: a declared credential of this source, if its
    /// class resolves in this phase.
    pub(crate) fn get(
        &mut self,
        name: &str,
    ) -> Result<Result<Secret, CredentialError>, VaultError> {
        let Some(class) = self.declared(name).map(|f| f.class) else {
            return Ok(Err(CredentialError::Undeclared));
        };
        if login_only(class) && !self.authenticating {
            return Ok(Err(CredentialError::NotNow));
        }
        let fresh = !self.read.contains_key(name);
        let value = self.resolve(name, "connector")?;
        if let (true, Ok(value)) = (fresh, &value) {
            self.show(class, value);
        }
        Ok(value)
    }

    /// `credentials.put`: a refreshed session or OAuth grant. Any other
    /// class was entered by the owner and is not the connector's to
    /// change. `Err` stops the run (a value past its size, or a host
    /// fault).
    pub(crate) fn put(
        &mut self,
        name: &str,
        value: String,
    ) -> Result<Result<(), CredentialError>, String> {
        let Some(class) = self.declared(name).map(|f| f.class) else {
            return Ok(Err(CredentialError::Undeclared));
        };
        let max = match class {
            CredentialClass::Session => self.max_session,
            CredentialClass::Oauth => self.max_oauth,
            _ => return Ok(Err(CredentialError::NotNow)),
        };
        self.puts += 1;
        if self.puts > MAX_PUTS {
            self.exhausted = Some(Exhausted::CredentialWrites);
            return Err(format!(
                "credential '{name}' put more than {MAX_PUTS} times in one run"
            ));
        }
        if value.len() as u64 > max {
            self.exhausted = Some(Exhausted::CredentialBytes);
            return Err(format!(
                "credential '{name}' put with {} bytes; at most {max} are kept",
                value.len()
            ));
        }
        let value = Secret::new(value.into_bytes());
        match self.store(name, class, value, Provenance::ConnectorRefresh) {
            Ok(()) => Ok(Ok(())),
            Err(VaultError::Invalid(_)) => Ok(Err(CredentialError::Unrecoverable)),
            Err(e) => Err(format!("credential store failed: {e}")),
        }
    }

    /// Stores `value` as credential `name` of this source, and answers the
    /// run's later reads with it.
    fn store(
        &mut self,
        name: &str,
        class: CredentialClass,
        value: Secret,
        provenance: Provenance,
    ) -> Result<(), VaultError> {
        let new = NewCredential {
            name,
            class: VaultClass::from(class),
            provenance,
            value: value.clone(),
            expires_at: None,
        };
        let actor = match provenance {
            Provenance::Interaction => "browser-login",
            _ => "connector",
        };
        self.vault
            .lock()
            .expect("vault lock")
            .set(self.actor(actor), &self.source, new)?;
        self.show(class, &value);
        let again = self.read.get(name).map_or(0, |(_, again)| *again);
        self.read.insert(name.to_owned(), (value, again));
        Ok(())
    }

    /// Keeps the session a login browser captured for this run as session
    /// credential `name`.
    pub(crate) fn captured(&mut self, name: &str, session: Secret) -> Result<(), VaultError> {
        self.store(
            name,
            CredentialClass::Session,
            session,
            Provenance::Interaction,
        )
    }

    /// The header that carries credential `name` on a request to `to`.
    pub(crate) fn inject(
        &mut self,
        name: &str,
        to: &Destination<'_>,
    ) -> Result<(http::HeaderName, http::HeaderValue), NotInjected> {
        let refused = |why: String| Err(NotInjected::Denied(why));
        let tls = to.tls;
        let host = to.host.trim_matches(['[', ']']).to_ascii_lowercase();
        let Some(field) = self.declared(name) else {
            return refused(format!("credential '{name}' may not be sent to {host}"));
        };
        let class = field.class;
        // A credential that lists no hosts may go to any host of the run
        // (the request's host was checked before); otherwise only to its own.
        if !field.hosts.is_empty() && !field.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            return refused(format!("credential '{name}' may not be sent to {host}"));
        }
        if login_only(class) && !self.authenticating {
            return refused(format!(
                "credential '{name}' is sent only while the connector authenticates"
            ));
        }
        if let Err(why) = transport(tls, to.port, to.https_port, to.allowed) {
            return refused(format!("credential '{name}' {why} ({host})"));
        }
        let fresh = !self.read.contains_key(name);
        let value = match self.resolve(name, "egress") {
            Ok(Ok(value)) => value,
            Ok(Err(CredentialError::Missing)) => {
                return refused(format!("credential '{name}' is not stored for this source"));
            }
            Ok(Err(_)) => return Err(NotInjected::Unavailable),
            Err(e) => {
                return refused(format!("credential '{name}' could not be read: {e}"));
            }
        };
        if fresh {
            self.show(class, &value);
        }
        let unusable =
            || NotInjected::Denied(format!("credential '{name}' may not be sent to {host}"));
        let mut header = match class {
            CredentialClass::Oauth => crate::vault::Grant::parse(&value)
                .ok()
                .and_then(|grant| grant.bearer())
                .map(|h| (http::header::AUTHORIZATION, h))
                .ok_or_else(unusable)?,
            // A captured session goes as the cookies of this host; a value
            // the connector stored itself as before.
            CredentialClass::Session => match crate::cookies::header(&value, &host, tls) {
                Ok(Some(line)) => http::HeaderValue::from_bytes(&line)
                    .map(|h| (http::header::COOKIE, h))
                    .map_err(|_| unusable())?,
                Ok(None) => {
                    return refused(format!(
                        "session '{name}' holds no cookie for {host}; log in again"
                    ));
                }
                Err(()) => bearer(&value).ok_or_else(unusable)?,
            },
            _ => bearer(&value).ok_or_else(unusable)?,
        };
        header.1.set_sensitive(true);
        Ok(header)
    }

    /// Keeps an owner's answer to redact from the run's output.
    pub(crate) fn answered(&mut self, answer: &Secret) {
        self.shown.push(answer.clone());
    }

    /// The values to redact from the run's output.
    pub(crate) fn shown(&self) -> &[Secret] {
        &self.shown
    }

    /// A revoked or undecryptable credential the run needed.
    pub(crate) fn failure(&self) -> Option<RunFailure> {
        self.failure.clone()
    }

    /// A `put` past its size.
    pub(crate) fn exhausted(&self) -> Option<Exhausted> {
        self.exhausted
    }

    /// Audits, one row per credential, the reads this run answered
    /// without reading the vault again.
    pub(crate) fn audit_reads_again(&self) -> Result<(), VaultError> {
        if self.read.values().all(|(_, again)| *again == 0) {
            return Ok(());
        }
        let vault = self.vault.lock().expect("vault lock");
        for (name, (_, again)) in &self.read {
            if *again > 0 {
                vault.audit_reads_again(self.actor("connector"), &self.source, name, *again)?;
            }
        }
        Ok(())
    }
}

/// Whether a credential may travel on a request over `tls` to `port`, the
/// host's https port being `https_port`: only over https to that port,
/// unless the address is one the operator allowed (a test fixture).
fn transport(tls: bool, port: u16, https_port: u16, allowed: bool) -> Result<(), String> {
    match (allowed, tls, port == https_port) {
        (true, _, _) | (false, true, true) => Ok(()),
        (false, false, _) => Err("is sent only over https".into()),
        (false, true, false) => Err(format!("is sent only to port {https_port}, not {port}")),
    }
}

/// `Authorization: Bearer <value>`.
fn bearer(value: &Secret) -> Option<(http::HeaderName, http::HeaderValue)> {
    let line = zeroize::Zeroizing::new([b"Bearer ".as_slice(), value.expose_secret()].concat());
    http::HeaderValue::from_bytes(&line)
        .ok()
        .map(|h| (http::header::AUTHORIZATION, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_travels_only_over_https_to_its_hosts_port() {
        type Case = (bool, u16, u16, bool, Result<(), &'static str>);
        let table: &[Case] = &[
            (true, 443, 443, false, Ok(())),
            (true, 8443, 8443, false, Ok(())),
            (false, 80, 443, false, Err("is sent only over https")),
            (false, 443, 443, false, Err("is sent only over https")),
            (
                true,
                8443,
                443,
                false,
                Err("is sent only to port 443, not 8443"),
            ),
            (
                true,
                443,
                8443,
                false,
                Err("is sent only to port 8443, not 443"),
            ),
            // An address the operator allowed: a fixture on loopback.
            (false, 8080, 443, true, Ok(())),
            (true, 9443, 443, true, Ok(())),
        ];
        for (tls, port, https_port, allowed, expected) in table {
            assert_eq!(
                transport(*tls, *port, *https_port, *allowed),
                expected.map_err(str::to_owned),
                "tls {tls}, port {port}, https port {https_port}, allowed {allowed}"
            );
        }
    }
}
