//! The interaction capability: questions to the owner (an OTP, a login in the streamed browser), each with its deadline, bounded per run.

use wasmtime::component::{HasSelf, Linker};

use super::*;
use crate::contract::bindings::sourcebox::connector::interaction::{self, InteractionError, Kind};

/// Adds the interaction interface to `linker`, served by each run's state.
pub(in crate::runtime) fn link(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    interaction::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
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
    control: &crate::runtime::call::RunControl,
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
