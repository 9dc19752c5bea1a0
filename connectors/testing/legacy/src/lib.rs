//! A connector built against contract 0.1.0 as it was released (the frozen
//! `wit/since_v0.1.0` folder), with bindings of its own instead of the SDK,
//! which speaks the newest contract. A host that serves 0.1.1 must still
//! load and run it: it emits `count` records one by one, with the one
//! `emit` 0.1.0 has, and checkpoints.

// Generated canonical-ABI glue and the version section.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    path: "../../../wit/since_v0.1.0",
    world: "sourcebox-connector",
    generate_all,
});

use exports::sourcebox::connector::connector::Guest;
use sourcebox::connector::records;
use sourcebox::connector::types::{
    AccountIdentity, CollectRequest, ConnectorError, Manifest, Modality, RunSummary,
    SetupDescriptor, SetupField, SetupValues, Stream,
};

/// The version this component was built against, stamped where the host
/// reads it, as the SDK of that release did.
#[unsafe(link_section = "sourcebox:api-version")]
#[used]
static API_VERSION: [u8; 5] = *b"0.1.0";

struct Legacy;

impl Guest for Legacy {
    fn describe() -> Manifest {
        Manifest {
            id: "legacy".into(),
            version: "0.1.0".into(),
            name: "Legacy (test fixture, contract 0.1.0)".into(),
            streams: vec![Stream {
                name: "items".into(),
                primary_key: vec!["id".into()],
                json_schema: "{}".into(),
            }],
            credentials: Vec::new(),
            setup: SetupDescriptor {
                modalities: vec![Modality::StaticSecret],
                fields: vec![SetupField {
                    name: "count".into(),
                    label: "Records per run".into(),
                    help: String::new(),
                    required: false,
                    default_value: Some("3".into()),
                    pattern: None,
                }],
                egress: Vec::new(),
            },
        }
    }

    fn verify(_setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        Ok(AccountIdentity {
            id: "legacy".into(),
            display: "legacy".into(),
        })
    }

    fn authenticate(_setup: SetupValues) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn collect(request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        let count: u64 = request
            .setup
            .iter()
            .find(|(name, _)| name == "count")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(3);
        for i in 0..count {
            records::emit("items", &format!(r#"{{"id":{i},"contract":"0.1.0"}}"#))
                .map_err(|e| ConnectorError::Fatal(format!("not accepted: {}", e.name())))?;
        }
        records::checkpoint("items", &format!("emitted-{count}"))
            .map_err(|e| ConnectorError::Fatal(format!("not accepted: {}", e.name())))?;
        Ok(RunSummary { records: count })
    }
}

export!(Legacy);
