//! A test connector set up by OAuth provider authorization. Its only
//! credential is an `oauth`-class grant, which the host obtains, refreshes
//! and injects as a bearer token: this component never holds a token.
//! It reads `GET {api_url}/me` (the account) and `GET {api_url}/notes`
//! (pages chained by a cursor).

use sourcebox_sdk::http::{Request, Response, cursor_pages};
use sourcebox_sdk::setup_value;
use sourcebox_sdk::{
    AccountIdentity, CollectRequest, Connector, ConnectorError, CredentialClass, CredentialField,
    EgressHost, Manifest, Modality, RunSummary, SetupField, SetupValues, Stream, export_connector,
    records,
};

struct OauthFixture;

fn get(setup: &[(String, String)], path: &str) -> Result<Response, ConnectorError> {
    let base = setup_value(setup, "api_url").unwrap_or_default();
    let response = Request::get(&format!("{}{path}", base.trim_end_matches('/')))
        .bearer_credential("grant")
        .send()?;
    match response.status {
        200..=299 => Ok(response),
        401 => Err(ConnectorError::AuthRejected(
            "the provider refused the access token (401)".into(),
        )),
        500..=599 => Err(ConnectorError::UpstreamTransient(format!(
            "the provider returned {}",
            response.status
        ))),
        status => Err(ConnectorError::Fatal(format!(
            "the provider returned {status} for {path}"
        ))),
    }
}

impl Connector for OauthFixture {
    fn describe() -> Manifest {
        Manifest::new("oauth-fixture", "0.1.0", "OAuth (test fixture)")
            .stream(Stream::new("notes", &["id"]))
            .credential(CredentialField::new(
                "grant",
                "Authorization with the provider",
                CredentialClass::Oauth,
            ))
            .setup_field(SetupField::new("api_url", "The provider's API"))
            .egress(EgressHost::FromSetupField("api_url".into()))
            .modality(Modality::Oauth)
    }

    fn verify(setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        let me: serde_json::Value = get(&setup, "/me")?.json()?;
        Ok(AccountIdentity {
            id: me["id"].as_str().unwrap_or_default().to_owned(),
            display: me["login"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Notes come in pages chained by `next_cursor`.
    fn collect(request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        let base = setup_value(&request.setup, "api_url")
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        let pages = cursor_pages(
            |cursor| {
                let url = match cursor {
                    None => format!("{base}/notes"),
                    Some(c) => format!("{base}/notes?cursor={c}"),
                };
                Request::get(&url).bearer_credential("grant")
            },
            |page| {
                page.json::<serde_json::Value>().ok()?["next_cursor"]
                    .as_str()
                    .map(str::to_owned)
            },
        );
        let mut count = 0;
        for page in pages {
            let page: serde_json::Value = page?.check()?.json()?;
            for note in page["notes"].as_array().into_iter().flatten() {
                records::emit("notes", note)?;
                count += 1;
            }
        }
        Ok(RunSummary { records: count })
    }
}

export_connector!(OauthFixture);
