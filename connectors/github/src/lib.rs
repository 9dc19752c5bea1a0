//! The GitHub connector: a personal access token (static secret), an
//! optional API base URL for GitHub Enterprise, and three streams:
//! `repositories`, `starred` and `issues` (incremental by `updated_at`).
//!
//! Follows GitHub's REST conventions: `Link` header pagination, 401 for a
//! bad token, 403/429 with `retry-after` or `x-ratelimit-remaining: 0` for
//! rate limits. The token is added by the host (`bearer_credential`), so it
//! never enters this component's memory.

use sourcebox_sdk::http::{Request, Response, link_pages};
use sourcebox_sdk::setup_value;
use sourcebox_sdk::{
    AccountIdentity, CollectRequest, Connector, ConnectorError, CredentialField, EgressHost,
    Manifest, RunSummary, SetupField, SetupValues, Stream, export_connector, log, records,
};

struct GitHub;

const DEFAULT_API: &str = "https://api.github.com";

fn api_base(setup: &[(String, String)]) -> String {
    setup_value(setup, "api_base_url")
        .map(|v| v.trim_end_matches('/').to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_API.to_owned())
}

/// A GET with GitHub's headers; the host adds the token.
fn request(url: &str) -> Request {
    Request::get(url)
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .bearer_credential("token")
}

/// GitHub's failure statuses as typed errors: the SDK's mapping, plus
/// GitHub's wording for a bad token and its primary rate limit (403 with
/// `x-ratelimit-remaining: 0` and no `retry-after`).
fn checked(response: Response) -> Result<Response, ConnectorError> {
    match response.status {
        401 => Err(ConnectorError::AuthRejected(
            "GitHub refused the token (401 Bad credentials)".into(),
        )),
        403 | 429 if response.header("x-ratelimit-remaining") == Some("0") => {
            Err(ConnectorError::RateLimited(response.retry_after()))
        }
        _ => response.check(),
    }
}

/// Emits every item of every page starting at `url` (`Link` pagination);
/// returns the count and the largest `updated_at` seen.
fn collect_pages(stream: &str, url: String) -> Result<(u64, Option<String>), ConnectorError> {
    let mut count = 0;
    let mut newest: Option<String> = None;
    for page in link_pages(&url, request) {
        let items: Vec<serde_json::Value> = checked(page?)?.json()?;
        for item in &items {
            if let Some(updated) = item.get("updated_at").and_then(|v| v.as_str())
                && newest.as_deref().is_none_or(|n| updated > n)
            {
                newest = Some(updated.to_owned());
            }
            records::emit(stream, item)?;
            count += 1;
        }
    }
    Ok((count, newest))
}

impl Connector for GitHub {
    fn describe() -> Manifest {
        Manifest::new("github", "0.1.0", "GitHub")
            .stream(Stream::new("repositories", &["id"]))
            .stream(Stream::new("starred", &["id"]))
            .stream(Stream::new("issues", &["id"]))
            .credential(
                CredentialField::token("token", "Personal access token")
                    .help("github.com → Settings → Developer settings → Personal access tokens; scopes: repo, read:user")
                    .pattern("^(gh[pousr]_[A-Za-z0-9_]{20,}|github_pat_[A-Za-z0-9_]{20,})$"),
            )
            .setup_field(
                SetupField::new("api_base_url", "API base URL (GitHub Enterprise only)").default_value(DEFAULT_API),
            )
            .egress(EgressHost::FromSetupField("api_base_url".into()))
    }

    fn verify(setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        let user: serde_json::Value =
            checked(request(&format!("{}/user", api_base(&setup))).send()?)?.json()?;
        let login = user["login"]
            .as_str()
            .ok_or_else(|| ConnectorError::Fatal("GitHub's /user has no login".into()))?;
        Ok(AccountIdentity {
            id: user["id"].to_string(),
            display: login.to_owned(),
        })
    }

    fn collect(request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        let base = api_base(&request.setup);
        let wanted = |s: &str| request.streams.is_empty() || request.streams.iter().any(|w| w == s);
        let mut total = 0;
        if wanted("repositories") {
            total += collect_pages(
                "repositories",
                format!("{base}/user/repos?per_page=100&sort=updated"),
            )?
            .0;
        }
        if wanted("starred") {
            total += collect_pages("starred", format!("{base}/user/starred?per_page=100"))?.0;
        }
        if wanted("issues") {
            let since = records::read_checkpoint("issues");
            let mut url = format!("{base}/issues?filter=all&state=all&per_page=100");
            if let Some(since) = &since {
                url.push_str(&format!("&since={since}"));
            }
            let (count, newest) = collect_pages("issues", url)?;
            if let Some(newest) = newest.or(since) {
                records::checkpoint("issues", &newest)?;
            }
            total += count;
        }
        log::info(&format!("collected {total} records"));
        Ok(RunSummary { records: total })
    }
}

export_connector!(GitHub);
