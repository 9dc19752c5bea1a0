//! A hostile test connector whose manifest breaks the install rules: a
//! path for an id, a version that is not one, wildcard and empty egress
//! hosts, a display name that rewrites a terminal line, and far too many
//! streams. The host must refuse it, listing each problem.

use sourcebox_sdk::{
    AccountIdentity, CollectRequest, Connector, ConnectorError, EgressHost, Manifest, RunSummary,
    SetupValues, Stream, export_connector,
};

struct BadManifest;

impl Connector for BadManifest {
    fn describe() -> Manifest {
        let mut manifest = Manifest::new("../../x", "banana", "Safe\u{1b}[2K\rgithub.com")
            .egress(EgressHost::Fixed("*".into()))
            .egress(EgressHost::Fixed(String::new()));
        for i in 0..20_000 {
            manifest = manifest.stream(Stream::new(&format!("s{i}"), &["id"]));
        }
        manifest
    }

    fn verify(_setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        Err(ConnectorError::Fatal("never installed".into()))
    }

    fn collect(_request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        Err(ConnectorError::Fatal("never installed".into()))
    }
}

export_connector!(BadManifest);
