//! The sandbox's view of the contract's values, as plain Rust that the rest
//! of the host (journal, API) can store and serialize.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::bindings::wit;

/// A JSON document checked to be well-formed: configs, requests, events.
pub type Json = Box<RawValue>;

/// Who sent a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A checkout system.
    Checkout,
    /// A planner.
    Planner,
    /// An operator.
    Operator,
    /// The host itself.
    System,
}

/// What the plugin is told about a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// When the host accepted the command, ms since the Unix epoch.
    pub now_ms: i64,
    /// The request id.
    pub request_id: String,
    /// The caller's role.
    pub role: Role,
}

/// A command for a pool.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// Take capacity for a reservation.
    Reserve {
        /// The caller's reservation id.
        id: String,
        /// The type-specific request.
        request: Json,
    },
    /// Give a reservation's capacity back.
    Release {
        /// The reservation id.
        id: String,
    },
    /// Confirm a hold.
    Confirm {
        /// The reservation id.
        id: String,
    },
    /// A type-specific command.
    Custom {
        /// The command's name.
        name: String,
        /// Its arguments.
        payload: Json,
    },
}

/// A stable code and a message, as given by a plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Machine-readable.
    pub code: String,
    /// For people.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Why a plugin decided no events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "problem", rename_all = "snake_case")]
pub enum Failure {
    /// The command does not fit the type.
    Invalid(Problem),
    /// The rules refuse it in the current state.
    Rejected(Problem),
}

impl Failure {
    /// The problem, whichever kind of failure this is.
    pub fn problem(&self) -> &Problem {
        match self {
            Self::Invalid(p) | Self::Rejected(p) => p,
        }
    }
}

/// What a plugin decided: events, or why not.
pub type Decision = Result<Vec<Json>, Failure>;

/// A pool's serialized state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The plugin's state layout version.
    pub state_version: u32,
    /// Opaque bytes.
    pub bytes: Vec<u8>,
}

/// What a pool shows to readers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct View {
    /// The capacity-grid cells.
    pub cells: Vec<Cell>,
    /// Free-form details.
    pub details: Json,
}

/// One cell of the capacity grid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// Unique within the pool.
    pub key: String,
    /// What the cell is.
    pub labels: BTreeMap<String, String>,
    /// Start of its time range, ms since the Unix epoch.
    pub start_ms: Option<i64>,
    /// End of its time range, ms since the Unix epoch.
    pub end_ms: Option<i64>,
    /// Unit of the amounts.
    pub unit: String,
    /// Total capacity.
    pub capacity: u64,
    /// Taken by confirmed reservations.
    pub used: u64,
    /// Taken by holds.
    pub held: u64,
    /// Whether it takes reservations.
    pub open: bool,
}

impl From<&Context> for wit::Context {
    fn from(c: &Context) -> Self {
        wit::Context {
            now_ms: c.now_ms,
            request_id: c.request_id.clone(),
            role: match c.role {
                Role::Checkout => wit::Role::Checkout,
                Role::Planner => wit::Role::Planner,
                Role::Operator => wit::Role::Operator,
                Role::System => wit::Role::System,
            },
        }
    }
}

impl From<&Command> for wit::Command {
    fn from(c: &Command) -> Self {
        match c {
            Command::Reserve { id, request } => wit::Command::Reserve(wit::Reservation {
                id: id.clone(),
                request: request.get().to_owned(),
            }),
            Command::Release { id } => wit::Command::Release(id.clone()),
            Command::Confirm { id } => wit::Command::Confirm(id.clone()),
            Command::Custom { name, payload } => wit::Command::Custom(wit::CustomCommand {
                name: name.clone(),
                payload: payload.get().to_owned(),
            }),
        }
    }
}

impl From<wit::Problem> for Problem {
    fn from(p: wit::Problem) -> Self {
        Problem {
            code: p.code,
            message: p.message,
        }
    }
}

impl From<wit::Failure> for Failure {
    fn from(f: wit::Failure) -> Self {
        match f {
            wit::Failure::Invalid(p) => Failure::Invalid(p.into()),
            wit::Failure::Rejected(p) => Failure::Rejected(p.into()),
        }
    }
}

impl From<wit::Snapshot> for Snapshot {
    fn from(s: wit::Snapshot) -> Self {
        Snapshot {
            state_version: s.state_version,
            bytes: s.bytes,
        }
    }
}

impl From<&Snapshot> for wit::Snapshot {
    fn from(s: &Snapshot) -> Self {
        wit::Snapshot {
            state_version: s.state_version,
            bytes: s.bytes.clone(),
        }
    }
}

impl From<wit::Cell> for Cell {
    fn from(c: wit::Cell) -> Self {
        Cell {
            key: c.key,
            labels: c.labels.into_iter().map(|l| (l.name, l.value)).collect(),
            start_ms: c.start_ms,
            end_ms: c.end_ms,
            unit: c.unit,
            capacity: c.capacity,
            used: c.used,
            held: c.held,
            open: c.open,
        }
    }
}
