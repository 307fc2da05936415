//! Logging to the host.
//!
//! Lines go to the host's log, tagged with the pool they came from. Keep them
//! rare on the decision path: every line is a call out of the sandbox. In
//! native tests they are printed to standard error.

/// How severe a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unusual.
    Warn,
    /// Something failed.
    Error,
}

/// Writes a line at the given level.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::guest::bindings::allot::capacity::log as host;
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// Writes a trace line.
pub fn trace(message: &str) {
    log(Level::Trace, message)
}

/// Writes a debug line.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}

/// Writes an info line.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// Writes a warning.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// Writes an error line.
pub fn error(message: &str) {
    log(Level::Error, message)
}
