//! A test connector set up by browser login. Its only credential is a
//! `session`, which this component never holds: when there is none, it
//! asks the owner to log in at `{site_url}/login` (a `login` interaction),
//! the host keeps the cookies of that login as the session, and sends them
//! on each request as a `Cookie` header. It reads `GET {site_url}/me` (the
//! account) and `GET {site_url}/notes`.

use sourcebox_sdk::credentials::{self, CredentialError};
use sourcebox_sdk::http::{Request, Response};
use sourcebox_sdk::interaction::{self, Kind};
use sourcebox_sdk::setup_value;
use sourcebox_sdk::{
    AccountIdentity, CollectRequest, Connector, ConnectorError, CredentialClass, CredentialField,
    EgressHost, Manifest, Modality, RunSummary, SetupField, SetupValues, Stream, export_connector,
    records,
};

struct BrowserFixture;

fn site(setup: &[(String, String)]) -> String {
    setup_value(setup, "site_url")
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned()
}

fn get(setup: &[(String, String)], path: &str) -> Result<Response, ConnectorError> {
    let response = Request::get(&format!("{}{path}", site(setup)))
        .session_credential("session")
        .send()?;
    match response.status {
        200..=299 => Ok(response),
        401 => Err(ConnectorError::AuthRejected(
            "the site refused the session (401); log in again".into(),
        )),
        status => Err(ConnectorError::Fatal(format!(
            "the site returned {status} for {path}"
        ))),
    }
}

/// Whether the source holds a session. (Asking reads it; a connector that
/// never needs to know sends it with `session_credential` only.)
fn has_session() -> bool {
    match credentials::get("session") {
        Err(CredentialError::Missing) => false,
        Err(_) => true,
        Ok(session) => {
            // Careless on purpose: the host must redact each cookie value
            // from the log, not only the whole session.
            let cookies: serde_json::Value =
                serde_json::from_str(session.expose_secret()).unwrap_or_default();
            if let Some(value) = cookies[0]["value"].as_str() {
                sourcebox_sdk::log::info(&format!("resuming with cookie {value}"));
            }
            true
        }
    }
}

/// Asks the owner to log in at the site's login page; the host keeps the
/// session.
fn log_in(setup: &[(String, String)]) -> Result<(), ConnectorError> {
    interaction::ask(Kind::Login, &format!("{}/login", site(setup)))
        .map(drop)
        .map_err(|e| ConnectorError::AuthRejected(format!("the login did not complete: {e:?}")))
}

impl Connector for BrowserFixture {
    fn describe() -> Manifest {
        Manifest::new("browser-fixture", "0.1.0", "Browser login (test fixture)")
            .stream(Stream::new("notes", &["id"]))
            .credential(
                CredentialField::new(
                    "session",
                    "Session (captured by the browser login)",
                    CredentialClass::Session,
                )
                .optional(),
            )
            .setup_field(SetupField::new("site_url", "The site"))
            .egress(EgressHost::FromSetupField("site_url".into()))
            .modality(Modality::BrowserLogin)
            // Or the owner imports a session from their own browser.
            .modality(Modality::LocalImport)
    }

    /// Without a session, or with one the site no longer takes, the owner
    /// logs in.
    fn verify(setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        let me = match has_session().then(|| get(&setup, "/me")) {
            // A refused session: log in again if the owner can be asked,
            // else say why a login was needed.
            Some(Err(ConnectorError::AuthRejected(refused))) => {
                log_in(&setup).map_err(|_| ConnectorError::AuthRejected(refused))?;
                get(&setup, "/me")?
            }
            None => {
                log_in(&setup)?;
                get(&setup, "/me")?
            }
            Some(me) => me?,
        };
        let me: serde_json::Value = me.json()?;
        Ok(AccountIdentity {
            id: me["id"].as_str().unwrap_or_default().to_owned(),
            display: me["login"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// A source that keeps no session between runs logs in each time.
    fn collect(request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        if !has_session() {
            log_in(&request.setup)?;
        }
        let notes: serde_json::Value = get(&request.setup, "/notes")?.json()?;
        let mut count = 0;
        for note in notes["notes"].as_array().into_iter().flatten() {
            records::emit("notes", note)?;
            count += 1;
        }
        Ok(RunSummary { records: count })
    }
}

export_connector!(BrowserFixture);
