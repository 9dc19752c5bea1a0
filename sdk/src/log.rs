//! Log lines for the run's log. The host limits their length and redacts
//! the source's secrets.

use crate::wit::sourcebox::connector::log as wit;
pub use crate::wit::sourcebox::connector::log::Level;

/// Writes a line at `level`.
///
/// ```no_run
/// sourcebox_sdk::log::write(sourcebox_sdk::log::Level::Info, "fetched page 2");
/// ```
pub fn write(level: Level, message: &str) {
    wit::write(level, message);
}

/// Writes an info line.
///
/// ```no_run
/// sourcebox_sdk::log::info("starting");
/// ```
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Writes a warning.
///
/// ```no_run
/// sourcebox_sdk::log::warn("rate limited, waiting");
/// ```
pub fn warn(message: &str) {
    write(Level::Warn, message);
}
