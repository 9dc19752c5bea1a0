//! Asking the owner during a run: a one-time password, a login, an
//! identity confirmation. The host keeps the question durably and the run
//! waits (without holding a thread) until the owner answers, declines, or
//! the deadline passes.

pub use crate::wit::sourcebox::connector::interaction::{InteractionError, Kind};
use crate::{Secret, wit::sourcebox::connector::interaction as wit};

/// Asks the owner and waits for the answer. The answer may be a secret (an
/// OTP), so it comes back as a [`Secret`].
///
/// For [`Kind::Login`], `prompt` is the URL of the login page, on a host
/// the connector declares. The host opens it in a browser the owner
/// streams; once the owner is logged in, the host keeps the browser's
/// cookies as the connector's `session`-class credential and answers with
/// that credential's name. Send it with
/// [`crate::http::Request::session_credential`], so the session itself
/// need not enter the component.
///
/// ```no_run
/// use sourcebox_sdk::interaction::{self, Kind};
/// let code = interaction::ask(Kind::Otp, "Enter the code your bank sent by SMS")?;
/// # Ok::<(), sourcebox_sdk::interaction::InteractionError>(())
/// ```
pub fn ask(kind: Kind, prompt: &str) -> Result<Secret, InteractionError> {
    wit::ask(kind, prompt).map(Secret::new)
}

impl From<InteractionError> for crate::ConnectorError {
    /// An unanswered or declined question ends the run as the connector's
    /// own failure; the host records an unanswered one as
    /// `interaction_timeout`.
    fn from(e: InteractionError) -> Self {
        crate::ConnectorError::Fatal(match e {
            InteractionError::Unsupported => "this host cannot ask the owner".into(),
            InteractionError::Timeout => "the owner did not answer in time".into(),
            InteractionError::Declined => "the owner declined".into(),
        })
    }
}
