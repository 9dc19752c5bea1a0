//! A well-behaved test connector. Each record carries a fingerprint of the
//! source's `token` (never the token), so a test can tell which source's
//! credential a run received.

use sourcebox_sdk::EgressHost;
use sourcebox_sdk::SetupValues;
use sourcebox_sdk::credentials::{self, CredentialError};
use sourcebox_sdk::http::Request;
use sourcebox_sdk::interaction::{self, Kind};
use sourcebox_sdk::setup_value;
use sourcebox_sdk::{
    AccountIdentity, CollectRequest, Connector, ConnectorError, CredentialClass, CredentialField,
    Manifest, Modality, RunSummary, SetupField, Stream, export_connector, log, records,
};

struct Echo;

/// 0.2.0 when built as the `next` fixture.
const VERSION: &str = if cfg!(feature = "next") {
    "0.2.0"
} else {
    "0.1.0"
};

/// FNV-1a: a fingerprint that identifies the token without revealing it.
fn fingerprint(value: &str) -> String {
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

impl Connector for Echo {
    fn describe() -> Manifest {
        let manifest = Manifest::new("echo", VERSION, "Echo (test fixture)")
            .stream(Stream::new("items", &["id"]))
            .stream(Stream::new("pages", &["url"]))
            .stream(Stream::new("answers", &["kind"]))
            .credential(CredentialField::token("token", "Token").hosts(&["127.0.0.1"]))
            .credential(
                CredentialField::new("password", "Password", CredentialClass::Password)
                    .optional()
                    .pattern(r"^\S+$"),
            )
            .credential(
                CredentialField::new("session", "Session", CredentialClass::Session).optional(),
            )
            .setup_field(SetupField::new("count", "Records per run").default_value("3"))
            .setup_field(
                SetupField::new("url", "A page to fetch with the token (optional)")
                    .default_value(""),
            )
            .setup_field(
                SetupField::new("ask", "Ask the owner for an OTP during collection (otp)")
                    .default_value(""),
            )
            .setup_field(
                SetupField::new("spin_ms", "Busy milliseconds after the checkpoint")
                    .default_value("0"),
            )
            .setup_field(
                SetupField::new(
                    "batch",
                    "Emit the items in one batch (yes), or in a batch whose third lacks its key (broken)",
                )
                .default_value(""),
            )
            .egress(EgressHost::FromSetupField("url".into()));
        if cfg!(feature = "next") {
            // What an upgrade asks for beyond 0.1.0.
            manifest
                .credential(CredentialField::token("api_key", "API key").optional())
                .egress(EgressHost::Fixed("localhost".into()))
                .modality(Modality::Oauth)
                .modality(Modality::BrowserLogin)
        } else {
            manifest
        }
    }

    fn verify(_setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        let token = credentials::get("token")?;
        if token.expose_secret() == "bad" {
            return Err(ConnectorError::AuthRejected(
                "the provider refused this token".into(),
            ));
        }
        let id = fingerprint(token.expose_secret());
        Ok(AccountIdentity {
            display: format!("user-{}", &id[..6]),
            id,
        })
    }

    /// Trades the password for a session credential, as a login would.
    fn authenticate(_setup: SetupValues) -> Result<(), ConnectorError> {
        let password = credentials::get("password")?;
        credentials::put(
            "session",
            &format!("session-{}", fingerprint(password.expose_secret())),
        )?;
        Ok(())
    }

    fn collect(request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        let token = credentials::get("token")?;
        let count: u64 = setup_value(&request.setup, "count")
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        // Password-class credentials must not resolve during collection.
        let password = match credentials::get("password") {
            Ok(_) => "resolved",
            Err(CredentialError::NotNow) => "not-now",
            Err(_) => "other",
        };
        let previous = records::read_checkpoint("items");
        let items: Vec<_> = (0..count)
            .map(|i| {
                serde_json::json!({
                    "id": i,
                    "token_fingerprint": fingerprint(token.expose_secret()),
                    "password_during_collect": password,
                    "previous_checkpoint": previous,
                })
            })
            .collect();
        match setup_value(&request.setup, "batch") {
            Some("yes") => records::emit_batch("items", &items)?,
            Some("broken") => {
                let mut items = items;
                if let Some(third) = items.get_mut(2).and_then(|i| i.as_object_mut()) {
                    third.remove("id");
                }
                // What the host said of the batch, as a record.
                let outcome = match records::emit_batch("items", &items) {
                    Ok(()) => serde_json::json!({"kind": "batch", "accepted": true}),
                    Err(e) => {
                        serde_json::json!({"kind": "batch", "index": e.index, "error": e.error.name()})
                    }
                };
                records::emit("answers", &outcome)?;
            }
            _ => {
                for item in &items {
                    records::emit("items", item)?;
                }
            }
        }
        records::checkpoint("items", &format!("emitted-{count}"))?;
        if setup_value(&request.setup, "ask") == Some("otp") {
            let code = interaction::ask(Kind::Otp, "Enter the one-time code sent to you")?;
            records::emit(
                "answers",
                &serde_json::json!({"kind": "otp", "fingerprint": fingerprint(code.expose_secret())}),
            )?;
        }
        let spin: u64 = setup_value(&request.setup, "spin_ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < u128::from(spin) {
            std::hint::spin_loop();
        }
        if let Some(url) = setup_value(&request.setup, "url").filter(|u| !u.is_empty()) {
            // The host adds the token; this component never sees it here.
            let response = Request::get(url).bearer_credential("token").send()?;
            records::emit(
                "pages",
                &serde_json::json!({"url": url, "status": response.status, "body": String::from_utf8_lossy(&response.body)}),
            )?;
        }
        if cfg!(feature = "next")
            && let Some(url) = setup_value(&request.setup, "url").filter(|u| !u.is_empty())
        {
            // 0.2.0 also reaches the same service as `localhost`.
            let next = url.replacen("127.0.0.1", "localhost", 1);
            let response = Request::get(&next).send()?;
            records::emit(
                "pages",
                &serde_json::json!({"url": next, "status": response.status}),
            )?;
        }
        log::info(&format!("emitted {count} records"));
        Ok(RunSummary { records: count })
    }
}

export_connector!(Echo);
