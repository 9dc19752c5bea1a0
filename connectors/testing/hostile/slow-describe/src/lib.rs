//! A hostile test connector that waits inside the host while it describes
//! itself, as `connector install` asks it to. The host must give up on it
//! at its describe time limit.

use sourcebox_sdk::{
    AccountIdentity, CollectRequest, Connector, ConnectorError, Manifest, RunSummary, SetupValues,
    export_connector,
};

struct SlowDescribe;

impl Connector for SlowDescribe {
    fn describe() -> Manifest {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        Manifest::new("slow-describe", "0.1.0", "Slow describe (test fixture)")
    }

    fn verify(_setup: SetupValues) -> Result<AccountIdentity, ConnectorError> {
        Err(ConnectorError::Fatal("never installed".into()))
    }

    fn collect(_request: CollectRequest) -> Result<RunSummary, ConnectorError> {
        Err(ConnectorError::Fatal("never installed".into()))
    }
}

export_connector!(SlowDescribe);
