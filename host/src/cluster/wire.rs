//! What nodes send each other: a command or a strongly consistent read for
//! a pool another node owns, and its answer, as postcard over HTTP.
//!
//! Postcard is not self-describing, so outcomes and views travel as their
//! JSON text, and the raw JSON inside commands as text.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::entity::Request;
use crate::sandbox::{Command, Context};

/// The internal route forwarded work is posted to.
pub const FORWARD_PATH: &str = "/internal/v1/forward";

/// The content type of forwarded bodies.
pub const POSTCARD: &str = "application/x-postcard";

/// Work for the owner of a pool.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forward {
    /// The pool.
    pub pool: String,
    /// How long the sender still waits, in milliseconds.
    pub timeout_ms: u64,
    /// What to do.
    pub op: Op,
}

/// What a forwarded request asks of the owner.
#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    /// Decide a command.
    Execute {
        /// What the plugin is told.
        context: Context,
        /// The command.
        command: WireCommand,
        /// Who sent it.
        actor: String,
        /// The caller's idempotency key, for type-specific commands.
        idempotency_key: Option<String>,
    },
    /// Read the pool through its entity.
    View,
}

/// A [`Command`] as postcard can carry it. Not the command itself: its
/// JSON form is internally tagged with raw JSON inside, which serde can
/// write but not read back, and postcard takes neither.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireCommand {
    /// See [`Command::Reserve`].
    Reserve {
        /// The reservation id.
        id: String,
        /// The request, as JSON text.
        request: String,
    },
    /// See [`Command::Release`].
    Release {
        /// The reservation id.
        id: String,
    },
    /// See [`Command::Confirm`].
    Confirm {
        /// The reservation id.
        id: String,
    },
    /// See [`Command::Custom`].
    Custom {
        /// The command's name.
        name: String,
        /// Its arguments, as JSON text.
        payload: String,
    },
}

impl From<&Command> for WireCommand {
    fn from(command: &Command) -> Self {
        match command {
            Command::Reserve { id, request } => WireCommand::Reserve {
                id: id.clone(),
                request: request.get().to_owned(),
            },
            Command::Release { id } => WireCommand::Release { id: id.clone() },
            Command::Confirm { id } => WireCommand::Confirm { id: id.clone() },
            Command::Custom { name, payload } => WireCommand::Custom {
                name: name.clone(),
                payload: payload.get().to_owned(),
            },
        }
    }
}

impl WireCommand {
    /// The command it carries.
    pub fn into_command(self) -> Result<Command, Malformed> {
        let json = |text: String| RawValue::from_string(text).map_err(Malformed);
        Ok(match self {
            WireCommand::Reserve { id, request } => Command::Reserve {
                id,
                request: json(request)?,
            },
            WireCommand::Release { id } => Command::Release { id },
            WireCommand::Confirm { id } => Command::Confirm { id },
            WireCommand::Custom { name, payload } => Command::Custom {
                name,
                payload: json(payload)?,
            },
        })
    }
}

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The command was decided (and, if accepted, is in the journal): the
    /// [`crate::entity::Outcome`] as JSON text.
    Outcome(String),
    /// The pool's state, as read through its entity.
    View {
        /// The seq it is as of.
        seq_nr: i64,
        /// The view, as JSON text.
        view: String,
    },
    /// The receiver does not own the pool's shard: ask again who does.
    NotOwner,
    /// The command failed: the problem the owner's API would answer.
    Problem(WireProblem),
}

/// An API problem as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireProblem {
    /// The HTTP status.
    pub status: u16,
    /// The stable code.
    pub code: String,
    /// The title.
    pub title: String,
    /// What went wrong.
    pub detail: String,
    /// Whether a retry may succeed.
    pub retryable: bool,
}

/// Why a forwarded body could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("a forwarded message is malformed: {0}")]
pub struct Malformed(#[from] serde_json::Error);

/// A document as JSON text.
pub fn to_text(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("commands, outcomes and views serialize")
}

/// A document read back from JSON text.
pub fn from_text<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Malformed> {
    Ok(serde_json::from_str(text)?)
}

impl Op {
    /// The op that asks the owner to decide `request`.
    pub fn execute(request: &Request) -> Self {
        Op::Execute {
            context: request.context.clone(),
            command: WireCommand::from(&request.command),
            actor: request.actor.clone(),
            idempotency_key: request.idempotency_key.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::Outcome;
    use crate::ids::SeqNr;
    use crate::sandbox::Role;

    #[test]
    fn a_forwarded_reservation_and_its_outcome_survive_the_trip() {
        let request = Request {
            context: Context {
                now_ms: 1_700_000_000_000,
                request_id: "r-1".into(),
                role: Role::Checkout,
            },
            command: Command::Reserve {
                id: "order-7".into(),
                request: RawValue::from_string(r#"{"units": 2}"#.into()).unwrap(),
            },
            actor: "shop (checkout)".into(),
            idempotency_key: None,
            deadline: tokio::time::Instant::now(),
        };
        let forward = Forward {
            pool: "p-1".into(),
            timeout_ms: 900,
            op: Op::execute(&request),
        };
        let bytes = postcard::to_stdvec(&forward).unwrap();
        let back: Forward = postcard::from_bytes(&bytes).unwrap();
        let Op::Execute {
            context, command, ..
        } = back.op
        else {
            panic!("not an execute");
        };
        assert_eq!(context, request.context);
        match command.into_command().unwrap() {
            Command::Reserve { id, request } => {
                assert_eq!(id, "order-7");
                assert_eq!(request.get(), r#"{"units": 2}"#);
            }
            other => panic!("{other:?}"),
        }

        let outcome = Outcome::Accepted {
            seq_nr: SeqNr(12),
            events: vec![RawValue::from_string(r#"{"type":"reserved"}"#.into()).unwrap()],
        };
        let bytes = postcard::to_stdvec(&Reply::Outcome(to_text(&outcome))).unwrap();
        let Reply::Outcome(back) = postcard::from_bytes(&bytes).unwrap() else {
            panic!("not an outcome");
        };
        match from_text::<Outcome>(&back).unwrap() {
            Outcome::Accepted { seq_nr, events } => {
                assert_eq!(seq_nr, SeqNr(12));
                assert_eq!(events[0].get(), r#"{"type":"reserved"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_json_inside_a_forward_is_refused() {
        let command = WireCommand::Custom {
            name: "x".into(),
            payload: "{not json".into(),
        };
        assert!(command.into_command().is_err());
    }
}
