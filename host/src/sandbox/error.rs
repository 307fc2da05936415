use std::time::Duration;

use super::Problem;

/// What can go wrong loading or running a plugin.
///
/// A caller that gets one for a command rejects that command; the pool itself
/// is rebuilt (see [`super::LivePool`]). Only a timeout may be worth a retry:
/// the deadline is wall-clock time, which a loaded machine can run out of.
/// Everything else fails the same way again for the same input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a WebAssembly component.
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),

    /// The component is a capacity type for a contract this host does not speak.
    #[error(
        "the component implements contract allot:capacity@{found}, but this host accepts {}; \
         rebuild it with an allot-sdk for one of those",
        super::ACCEPTED_CONTRACTS.join(", ")
    )]
    WrongContract {
        /// The contract version the component exports.
        found: String,
    },

    /// The component does not export the capacity-type interface at all.
    #[error(
        "not an Allot capacity type: it exports no allot:capacity/decider (it exports: {exports})"
    )]
    NotACapacityType {
        /// What it exports instead.
        exports: String,
    },

    /// The component needs something the sandbox does not provide.
    #[error("the component cannot be linked: {0}")]
    Link(String),

    /// The component trapped or misbehaved while starting.
    #[error("the plugin failed to start: {0}")]
    Start(String),

    /// A call ran past its deadline.
    #[error("plugin call `{call}` ran past its deadline of {limit:?}")]
    Timeout {
        /// The call.
        call: &'static str,
        /// The deadline.
        limit: Duration,
    },

    /// A call tried to grow memory past the cap.
    #[error("plugin call `{call}` tried to use more than {limit} bytes of memory")]
    MemoryLimit {
        /// The call.
        call: &'static str,
        /// The cap.
        limit: usize,
    },

    /// A call trapped: a panic, an `unreachable`, an out-of-bounds access.
    #[error("plugin call `{call}` trapped: {message}")]
    Trap {
        /// The call.
        call: &'static str,
        /// The trap and, for a panic, the panic message.
        message: String,
    },

    /// A call returned something that breaks the contract.
    #[error("plugin call `{call}` returned malformed output: {reason}")]
    BadOutput {
        /// The call.
        call: &'static str,
        /// What was wrong.
        reason: String,
    },

    /// The plugin could not fold an event into the state. The event came
    /// from the plugin's own decisions, so this is a plugin fault.
    #[error("the plugin refused to apply an event: {0}")]
    Apply(Problem),

    /// The instance failed earlier and cannot be called again.
    #[error("the pool's plugin instance failed earlier and must be rebuilt")]
    Poisoned,

    /// The pool could not be rebuilt after a plugin fault; it refuses
    /// commands until an operator acts.
    #[error("the pool failed and cannot be rebuilt: {0}")]
    Failed(String),
}

impl Error {
    /// Whether the same command may succeed if sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// Whether the instance that returned this error can no longer be trusted
    /// and must be rebuilt. Malformed output leaves the state untouched.
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, Error::BadOutput { .. })
    }
}

/// Results of the sandbox.
pub type Result<T, E = Error> = std::result::Result<T, E>;
