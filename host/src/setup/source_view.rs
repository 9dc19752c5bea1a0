//! A source's view: the facts read, the decision taken, the document built.

use super::error::SetupError;
use super::ladder::{self, Held, Next};
use super::view::{
    CredentialFieldView, CredentialStatus, Lifecycle, NextStep, SourceView, field_views,
    setup_field_view,
};
use crate::catalog::{self, CatalogError, Installed};
use crate::store::Store;
use crate::vault::CredentialClass;

/// The view of source `name`.
pub fn source_view(store: &Store, name: &str) -> Result<SourceView, SetupError> {
    // An unknown source is refused here, by its lookup.
    let setup = match catalog::source_setup(store, name) {
        Ok(setup) => setup,
        Err(CatalogError::NoConnector(_)) => {
            return Ok(SourceView {
                source: name.to_owned(),
                connector: None,
                modality: None,
                session: None,
                state: Lifecycle::Draft,
                identity: None,
                credentials: Vec::new(),
                setup: Vec::new(),
                next_step: NextStep::ChooseConnector,
                blocked: Some(crate::readiness::Blocked::NoConnector),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let source = &setup.source;
    let facts = ladder::read(store, source.source_id)?;
    let manifest = &setup.connector.manifest;
    let metas = crate::vault::metadata(store, Some(source))?;
    let credentials: Vec<CredentialStatus> = field_views(manifest)
        .into_iter()
        .map(|field| CredentialStatus {
            stored: metas
                .iter()
                .any(|m| m.name == field.name && m.revoked_at.is_none()),
            field,
        })
        .collect();
    // The newest value the owner gave: a verification older than it says
    // nothing about the credentials now held. A refresh since keeps when
    // the owner gave it (re-authorizing, then a refresh, is still a new
    // grant to verify).
    let last_write = metas
        .iter()
        .filter(|m| m.revoked_at.is_none())
        .map(|m| m.given_at)
        .max()
        .unwrap_or(0);
    let missing: Vec<CredentialFieldView> = credentials
        .iter()
        .filter(|c| c.field.required && !c.stored)
        .map(|c| c.field.clone())
        .collect();
    let held = Held {
        missing,
        logged_in: credentials
            .iter()
            .any(|c| c.stored && c.field.class == CredentialClass::Session.as_str()),
        last_write,
        ephemeral_session: setup.ephemeral_session,
        paused: setup.paused_for.is_some(),
        version: setup.connector.version.clone(),
        session_credential: crate::contract::session_credential(manifest).map(str::to_owned),
    };
    let (state, next) = ladder::decide(&facts, &held);
    let next_step = match next {
        Next::Step(step) => step,
        Next::BrowserLogin(reason) => browser_login(reason),
        Next::NewCredentials(reason) => new_credentials(
            store,
            &setup.connector,
            facts.modality.as_deref() == Some("oauth"),
            reason,
        )?,
    };
    let verified = ladder::verified(&facts, &held);
    let browser = facts.modality.as_deref() == Some("browser-login");

    Ok(SourceView {
        source: name.to_owned(),
        connector: Some(format!(
            "{} {}",
            setup.connector.id, setup.connector.version
        )),
        session: browser.then(|| {
            if setup.ephemeral_session {
                "ephemeral"
            } else {
                "kept"
            }
            .to_owned()
        }),
        modality: facts.modality,
        state,
        identity: facts.identity.filter(|_| verified),
        credentials,
        setup: manifest
            .setup
            .fields
            .iter()
            .map(|f| {
                let value = setup.setup.iter().find(|(k, _)| *k == f.name);
                setup_field_view(f, value.map(|(_, v)| v.clone()))
            })
            .collect(),
        next_step,
        blocked: crate::readiness::decide(
            &crate::readiness::facts(store, &setup)?,
            crate::readiness::Purpose::Collect,
        )
        .err(),
    })
}

/// A new browser login, after `reason` (or for the first time).
pub(super) fn browser_login(reason: Option<String>) -> NextStep {
    let supported = crate::browser::find_chromium().is_some();
    NextStep::BrowserLogin {
        supported,
        interaction: None,
        url: None,
        reason,
        operator: (!supported).then(|| match std::env::var_os("SOURCEBOX_CHROMIUM") {
            Some(path) => format!(
                "SOURCEBOX_CHROMIUM names {}, which is not a browser binary: fix it, then restart `sourcebox serve`",
                std::path::Path::new(&path).display()
            ),
            None => "this host has no browser for logins: install Chromium (Debian: apt-get install chromium) or set SOURCEBOX_CHROMIUM to its path, then restart `sourcebox serve`".to_owned(),
        }),
    }
}

/// What gets a source new credentials after `reason` (or for the first
/// time): a provider authorization for an OAuth source, the required
/// fields otherwise.
pub(super) fn new_credentials(
    store: &Store,
    connector: &Installed,
    oauth: bool,
    reason: Option<String>,
) -> Result<NextStep, SetupError> {
    if !oauth {
        return Ok(NextStep::ProvideCredentials {
            fields: field_views(&connector.manifest)
                .into_iter()
                .filter(|f| f.required)
                .collect(),
            reason,
        });
    }
    let operator = if crate::oauth::grant_field(&connector.manifest).is_none() {
        Some(format!(
            "connector {} {} declares no oauth-class credential to hold a grant; it cannot be authorized",
            connector.id, connector.version
        ))
    } else if crate::oauth::client(store, &connector.id)?.is_none() {
        Some(crate::oauth::OauthError::NoClient(connector.id.clone()).to_string())
    } else {
        None
    };
    Ok(NextStep::Authorize {
        supported: operator.is_none(),
        reason,
        operator,
    })
}
