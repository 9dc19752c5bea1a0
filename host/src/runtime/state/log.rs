//! The log capability: a connector's log lines, bounded and redacted, into the host's log and the run's events.

use wasmtime::component::{HasSelf, Linker};

use super::*;
use crate::contract::bindings::sourcebox::connector::log::{self, Level};

/// Adds the log interface to `linker`, served by each run's state.
pub(in crate::runtime) fn link(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    log::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
}

impl log::Host for RunState {
    async fn write(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        if let Some(bound) = self.bound.as_mut() {
            bound.logged_lines += 1;
            bound.logged_bytes = bound.logged_bytes.saturating_add(message.len() as u64);
            let over = if bound.logged_lines > self.limits.log_lines {
                Some(Exhausted::LogLines)
            } else if bound.logged_bytes > self.limits.log_bytes {
                Some(Exhausted::LogBytes)
            } else {
                None
            };
            if let Some(limit) = over {
                self.exhausted = Some(limit);
                return Err(wasmtime::Error::msg("log limit exceeded"));
            }
        }
        let line = self.redact(&message);
        let (source, run) = self.log_context();
        if let Some(bound) = &self.bound {
            bound.binding.control.events.send(
                run,
                source,
                EventKind::Log {
                    level: format!("{level:?}").to_lowercase(),
                    line: line.clone(),
                },
            );
        }
        match level {
            Level::Trace => tracing::trace!(source, run, "{line}"),
            Level::Debug => tracing::debug!(source, run, "{line}"),
            Level::Info => tracing::info!(source, run, "{line}"),
            Level::Warn => tracing::warn!(source, run, "{line}"),
            Level::Error => tracing::error!(source, run, "{line}"),
        }
        Ok(())
    }
}
