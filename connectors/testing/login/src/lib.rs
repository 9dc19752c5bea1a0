//! A test connector that logs in with the owner's stored password, as a
//! site without an API is logged in to. `authenticate()` (the only call in
//! which a `password` resolves) posts the login form at
//! `{site_url}/login` and keeps the cookies it gets as the `session`;
//! `verify()` and `collect()` send that session, which the host adds as a
//! `Cookie` header, to `GET {site_url}/me` and `GET {site_url}/notes`.

use sourcebox_sdk::credentials;
use sourcebox_sdk::http::{Request, Response};
use sourcebox_sdk::setup_value;
use sourcebox_sdk::{
    AccountIdentity, CollectRequest, Connector, ConnectorError, CredentialClass, CredentialField,
    EgressHost, Manifest, Modality, RunSummary, SetupField, SetupValues, Stream, export_connector,
    records,
};

struct LoginFixture;

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
            "the site refused the session (401)".into(),
        )),
        status => Err(ConnectorError::Fatal(format!(
            "the site returned {status} for {path}"
        ))),
    }
}

impl Connector for LoginFixture {
    fn describe() -> Manifest {
        Manifest::new("login-fixture", "0.1.0", "Password login (test fixture)")
            .stream(Stream::new("notes", &["id"]))
            .credential(CredentialField::new(
                "password",
                "Password",
                CredentialClass::Password,
            ))
            .credential(
                CredentialField::new(
                    "session",
                    "Session (obtained by logging in)",
                    CredentialClass::Session,
                )
                .optional(),
            )
            .setup_field(SetupField::new("site_url", "The site"))
            .setup_field(SetupField::new("user", "User name"))
            .egress(EgressHost::FromSetupField("site_url".into()))
            .modality(Modality::StaticSecret)
    }

    /// Posts the login form with the stored password; keeps the session.
    fn authenticate(setup: SetupValues) -> Result<(), ConnectorError> {
        let password = credentials::get("password")?;
        let password = password.expose_secret();
        let site = site(&setup);
        let user = setup_value(&setup, "user").unwrap_or_default();
        let response = Request::post_form(
            &format!("{site}/login"),
            &[("user", user), ("password", password)],
        )
        .send()?;
        if !(200..400).contains(&response.status) || response.header("set-cookie").is_none() {
            return Err(ConnectorError::AuthRejected(format!(
                "the site refused the login ({})",
                response.status
            )));
        }
        let host = site
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', ':']).next())
            .unwrap_or_default();
        credentials::put("session", &response.session(host))?;
        Ok(())
    }

    fn verify(setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        let me: serde_json::Value = get(&setup, "/me")?.json()?;
        Ok(AccountIdentity {
            id: me["id"].as_str().unwrap_or_default().to_owned(),
            display: me["login"].as_str().unwrap_or_default().to_owned(),
        })
    }

    fn collect(request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        let notes: serde_json::Value = get(&request.setup, "/notes")?.json()?;
        let mut count = 0;
        for note in notes["notes"].as_array().into_iter().flatten() {
            records::emit("notes", note)?;
            count += 1;
        }
        Ok(RunSummary { records: count })
    }
}

export_connector!(LoginFixture);
