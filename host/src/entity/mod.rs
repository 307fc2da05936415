//! Pool entities: one task per active pool, owning its plugin instance and
//! state, taking commands from a bounded mailbox one at a time.
//!
//! Throughput on a hot pool comes from batching: an entity takes every queued
//! command, decides them in order on the evolving state, appends all their
//! events in one transaction and only then answers. If the append fails, all
//! of them get a retryable error and the entity rebuilds from the journal, so
//! nothing unpersisted is ever visible.

mod history;
mod remembered;
mod replay;
mod runtime;
mod shadow;
mod task;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::ids::{PoolId, SeqNr};
use crate::journal::{self, RequestPrint};
use crate::sandbox::{self, Command, Context, Failure, Json, Problem};

pub use history::Point;
pub use runtime::{Fencing, Runtime, Settings, SwapRefusals, ViewSink};
pub use shadow::{Disagreement, ShadowReport};

/// A command for a pool, with what the host needs to run it.
#[derive(Clone, Debug)]
pub struct Request {
    /// What the plugin is told.
    pub context: Context,
    /// The command.
    pub command: Command,
    /// Who sent it (name and role), recorded with its events.
    pub actor: String,
    /// For type-specific commands: a key that makes retries safe. Reserve,
    /// release and confirm use their reservation id.
    pub idempotency_key: Option<String>,
    /// When the caller stops waiting for a command that is still queued:
    /// one not taken for deciding by then is never decided. One taken
    /// before is waited for until its outcome is known, at most
    /// [`OUTCOME_GRACE`] longer.
    pub deadline: Instant,
}

/// How long past its deadline a caller waits for a command its entity took
/// for deciding in time: the append of its batch, and after a failed
/// append the look into the journal that tells whether it was written.
/// Past this the outcome is [`Error::OutcomeUnknown`].
pub const OUTCOME_GRACE: Duration = Duration::from_secs(5);

/// Who settles a queued command's fate: the entity, by taking it to decide,
/// or the caller, by withdrawing it at its deadline. Whichever comes first
/// wins, so a caller told "not decided" can rely on it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ticket(Arc<AtomicU8>);

impl Ticket {
    const QUEUED: u8 = 0;
    const TAKEN: u8 = 1;
    const WITHDRAWN: u8 = 2;

    /// The entity takes the command to decide it; false if it was withdrawn.
    pub(crate) fn take(&self) -> bool {
        self.0
            .compare_exchange(
                Self::QUEUED,
                Self::TAKEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Withdraws the command unless it was taken: true if it will never be
    /// decided.
    pub(crate) fn withdraw(&self) -> bool {
        match self.0.compare_exchange(
            Self::QUEUED,
            Self::WITHDRAWN,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(state) => state == Self::WITHDRAWN,
        }
    }
}

impl Request {
    /// What the command asks for: the first 16 bytes of the SHA-256 of
    /// its kind, name and arguments as canonical JSON (keys sorted, no
    /// spaces), so that a retry that sends the same request in other
    /// bytes is the same request.
    pub fn print(&self) -> RequestPrint {
        use sha2::{Digest as _, Sha256};
        let mut text = Vec::new();
        let arguments = match &self.command {
            Command::Reserve { request, .. } => {
                text.extend_from_slice(b"reserve\0");
                Some(request)
            }
            Command::Release { .. } => {
                text.extend_from_slice(b"release\0");
                None
            }
            Command::Confirm { .. } => {
                text.extend_from_slice(b"confirm\0");
                None
            }
            Command::Custom { name, payload } => {
                text.extend_from_slice(b"custom\0");
                text.extend_from_slice(name.as_bytes());
                text.push(0);
                Some(payload)
            }
        };
        if let Some(arguments) = arguments {
            match serde_json::from_str::<serde_json::Value>(arguments.get()) {
                Ok(value) => canonical(&value, &mut text),
                Err(_) => text.extend_from_slice(arguments.get().as_bytes()),
            }
        }
        let digest = Sha256::digest(&text);
        let mut print = [0; 16];
        print.copy_from_slice(&digest[..16]);
        print
    }

    /// The key under which the command's first outcome is kept.
    pub fn key(&self) -> Option<String> {
        match &self.command {
            Command::Reserve { id, .. } => Some(format!("reserve:{id}")),
            Command::Release { id } => Some(format!("release:{id}")),
            Command::Confirm { id } => Some(format!("confirm:{id}")),
            Command::Custom { name, .. } => self
                .idempotency_key
                .as_ref()
                .map(|k| format!("custom:{name}:{k}")),
        }
    }
}

/// Writes `value` as JSON with every object's keys sorted.
fn canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("writing to memory");
                out.push(b':');
                canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out);
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).expect("writing to memory"),
    }
}

/// What became of a command. An accepted outcome is kept for the command's
/// key and answered to every repetition; the latest refusal is recorded too,
/// for callers who ask what became of their reservation.
///
/// Externally tagged (`{"accepted": {...}}`): the events are raw JSON, which
/// serde cannot read back through the buffering an internal tag needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The plugin decided these events; they are in the journal.
    Accepted {
        /// The pool's seq after the events.
        seq_nr: SeqNr,
        /// The events, in order.
        events: Vec<Json>,
    },
    /// The rules refused the command.
    Rejected {
        /// Why.
        problem: Problem,
    },
    /// The command does not fit the type.
    Invalid {
        /// Why.
        problem: Problem,
    },
}

impl Outcome {
    /// Whether the command took effect. Only such outcomes are answered
    /// again for a repeated key; a refused command is decided afresh.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Outcome::Accepted { .. })
    }

    /// The outcome as recorded: a refusal's message cut to
    /// [`journal::MAX_RECORDED_MESSAGE`] bytes.
    fn recorded(&self) -> Self {
        let cut = |problem: &Problem| {
            let mut message = problem.message.clone();
            if message.len() > journal::MAX_RECORDED_MESSAGE {
                let mut end = journal::MAX_RECORDED_MESSAGE;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                message.push('…');
            }
            Problem {
                code: problem.code.clone(),
                message,
            }
        };
        match self {
            Outcome::Rejected { problem } => Outcome::Rejected {
                problem: cut(problem),
            },
            Outcome::Invalid { problem } => Outcome::Invalid {
                problem: cut(problem),
            },
            accepted => accepted.clone(),
        }
    }

    fn decided(seq_nr: SeqNr, decision: sandbox::Decision) -> Self {
        match decision {
            Ok(events) => Outcome::Accepted { seq_nr, events },
            Err(Failure::Rejected(problem)) => Outcome::Rejected { problem },
            Err(Failure::Invalid(problem)) => Outcome::Invalid { problem },
        }
    }
}

/// Why a command got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool does not exist.
    #[error("no pool {0}")]
    UnknownPool(PoolId),
    /// No plugin is loaded for the capacity type.
    #[error("no plugin is loaded for capacity type `{0}`")]
    UnknownCapacityType(String),
    /// The plugin refused the config of a new pool.
    #[error("invalid config: {0}")]
    InvalidConfig(Problem),
    /// A pool with this id exists with another type or config.
    #[error("pool {0} already exists with another capacity type or config")]
    PoolExists(PoolId),
    /// The pool's mailbox is full.
    #[error("pool {0} is overloaded; retry shortly")]
    Overloaded(PoolId),
    /// The deadline passed before the command was taken for deciding: it
    /// was not decided and never will be.
    #[error("the command's deadline passed before it was decided")]
    DeadlinePassed,
    /// The command was decided, but whether its events were written is not
    /// known (the append's answer was lost, and the journal could not be
    /// read to tell). Only a retry with the same key is safe: it answers
    /// the first outcome if there was one.
    #[error("the command was decided, but whether it was recorded is unknown")]
    OutcomeUnknown,
    /// The pool cannot be rebuilt from its history.
    #[error("pool {pool} has failed: {reason}")]
    PoolFailed {
        /// The pool.
        pool: PoolId,
        /// Why.
        reason: String,
    },
    /// The plugin faulted on this command.
    #[error(transparent)]
    Plugin(#[from] sandbox::Error),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// The key (reservation id or idempotency key) was used before for
    /// another request that took effect: a retry must send the same one.
    #[error("the key was used for another request")]
    KeyReused,
    /// The pool cannot move to its type's newly active version, which is
    /// being undone: the command was not decided, by either version.
    #[error("pool {0} cannot move to its type's active version, which is being undone")]
    VersionPending(PoolId),
    /// The runtime is shutting down.
    #[error("this node is shutting down")]
    ShuttingDown,
    /// This node does not hold the lease of the pool's shard (any more):
    /// the command was not decided here, and goes to the shard's owner.
    #[error("this node does not own shard {0}")]
    NotOwner(u32),
}

impl Error {
    /// Whether the same command may succeed if sent again (with the same
    /// idempotency key, so that it never takes effect twice).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Overloaded(_)
            | Error::VersionPending(_)
            | Error::DeadlinePassed
            | Error::ShuttingDown
            | Error::NotOwner(_) => true,
            Error::Plugin(e) => e.is_retryable(),
            Error::Journal(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Results of the entity layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
