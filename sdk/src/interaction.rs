//! Asking the owner during a run: a one-time password, a login, an
//! identity confirmation. The host keeps the question durably and the run
//! waits (without holding a thread) until the owner answers, declines, or
//! the deadline passes.

pub use crate::wit::sourcebox::connector::interaction::{InteractionError, Kind};
use crate::{Secret, wit::sourcebox::connector::interaction as wit};

/// Asks the owner and waits for the answer. The answer may be a secret (an
/// OTP), so it comes back as a [`Secret`].
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
