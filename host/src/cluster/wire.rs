//! What nodes send each other: a command or a strongly consistent read for
//! a pool another node owns, and its answer, as postcard over HTTP.
//!
//! Postcard is not self-describing, so the JSON documents inside commands,
//! outcomes and views travel as text.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::entity::{Outcome, Request};
use crate::ids::SeqNr;
use crate::sandbox::{Command, Context, Json, View};

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

/// A [`Command`], with its JSON as text.
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

/// The owner's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The command was decided (and, if accepted, is in the journal).
    Outcome(WireOutcome),
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

/// An [`Outcome`], with its events as JSON text.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireOutcome {
    /// See [`Outcome::Accepted`].
    Accepted {
        /// The pool's seq after the events.
        seq_nr: i64,
        /// The events, as JSON text.
        events: Vec<String>,
    },
    /// See [`Outcome::Rejected`].
    Rejected {
        /// The problem's code.
        code: String,
        /// Its message.
        message: String,
    },
    /// See [`Outcome::Invalid`].
    Invalid {
        /// The problem's code.
        code: String,
        /// Its message.
        message: String,
    },
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
pub struct Malformed(String);

fn json(text: String) -> Result<Json, Malformed> {
    RawValue::from_string(text).map_err(|e| Malformed(e.to_string()))
}

impl Op {
    /// The op that asks the owner to decide `request`.
    pub fn execute(request: &Request) -> Self {
        let command = match &request.command {
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
        };
        Op::Execute {
            context: request.context.clone(),
            command,
            actor: request.actor.clone(),
            idempotency_key: request.idempotency_key.clone(),
        }
    }
}

impl WireCommand {
    /// The command it carries.
    pub fn into_command(self) -> Result<Command, Malformed> {
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

impl From<Outcome> for WireOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Accepted { seq_nr, events } => WireOutcome::Accepted {
                seq_nr: seq_nr.0,
                events: events.into_iter().map(|e| e.get().to_owned()).collect(),
            },
            Outcome::Rejected { problem } => WireOutcome::Rejected {
                code: problem.code,
                message: problem.message,
            },
            Outcome::Invalid { problem } => WireOutcome::Invalid {
                code: problem.code,
                message: problem.message,
            },
        }
    }
}

impl WireOutcome {
    /// The outcome it carries.
    pub fn into_outcome(self) -> Result<Outcome, Malformed> {
        use crate::sandbox::Problem;
        Ok(match self {
            WireOutcome::Accepted { seq_nr, events } => Outcome::Accepted {
                seq_nr: SeqNr(seq_nr),
                events: events.into_iter().map(json).collect::<Result<_, _>>()?,
            },
            WireOutcome::Rejected { code, message } => Outcome::Rejected {
                problem: Problem { code, message },
            },
            WireOutcome::Invalid { code, message } => Outcome::Invalid {
                problem: Problem { code, message },
            },
        })
    }
}

/// A view as JSON text.
pub fn view_text(view: &View) -> String {
    serde_json::to_string(view).expect("views serialize")
}

/// A view read back from JSON text.
pub fn view_from_text(text: &str) -> Result<View, Malformed> {
    serde_json::from_str(text).map_err(|e| Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let bytes = postcard::to_stdvec(&Reply::Outcome(outcome.into())).unwrap();
        let Reply::Outcome(back) = postcard::from_bytes(&bytes).unwrap() else {
            panic!("not an outcome");
        };
        match back.into_outcome().unwrap() {
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
