//! The vocabulary shared by every capacity type.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// What the host knows about the command being decided.
///
/// Take the time from [`Context::now_ms`] and nowhere else: the host records it
/// with the command, so a decision can be explained and reproduced later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    /// When the host accepted the command, in milliseconds since the Unix epoch (UTC).
    pub now_ms: i64,
    /// The request id, for logs and provenance.
    pub request_id: String,
    /// Who sent the command.
    pub role: Role,
}

impl Context {
    /// A context at the given time, as a checkout caller. Handy in tests.
    pub fn at(now_ms: i64) -> Self {
        Self {
            now_ms,
            request_id: String::new(),
            role: Role::Checkout,
        }
    }

    /// The same context with another role.
    pub fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }
}

/// Who sent a command, as established by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A checkout system reserving on behalf of a customer.
    Checkout,
    /// A planner shaping capacity.
    Planner,
    /// An operator running the system.
    Operator,
    /// The host itself, for example when expiring holds.
    System,
}

/// A stable code and a message for people.
///
/// Codes are `snake_case` and part of your type's API: checkout systems branch on
/// them (`slot_full`, `cutoff_passed`), so do not rename them casually.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Machine-readable, stable.
    pub code: String,
    /// What happened and, where possible, what to do about it.
    pub message: String,
}

impl Problem {
    /// A problem with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Why a command produced no events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The command cannot be understood or does not fit the type: an unknown
    /// slot, a negative amount. Sending it again unchanged fails again.
    Invalid(Problem),
    /// A valid command the rules refuse in the current state: the slot is full,
    /// the cut-off has passed.
    Rejected(Problem),
}

impl Failure {
    /// An invalid command.
    pub fn invalid(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(Problem::new(code, message))
    }

    /// A business rejection.
    pub fn rejected(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Rejected(Problem::new(code, message))
    }

    /// The problem, whichever kind of failure this is.
    pub fn problem(&self) -> &Problem {
        match self {
            Self::Invalid(p) | Self::Rejected(p) => p,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(p) => write!(f, "invalid: {p}"),
            Self::Rejected(p) => write!(f, "rejected: {p}"),
        }
    }
}

/// The outcome of deciding a command: the events that happen, in order, or why not.
pub type Decision<E> = Result<Vec<E>, Failure>;

/// A command, as the test kit sends it. `R` is the type's reservation request,
/// `C` its own commands.
#[derive(Clone, Debug, PartialEq)]
pub enum Command<R, C> {
    /// Take capacity for a reservation.
    Reserve {
        /// The caller's reservation id.
        id: String,
        /// What to reserve.
        request: R,
    },
    /// Give back a reservation's capacity.
    Release {
        /// The reservation id.
        id: String,
    },
    /// Turn a hold into a booking.
    Confirm {
        /// The reservation id.
        id: String,
    },
    /// A type-specific command.
    Custom(C),
}

impl<R, C> Command<R, C> {
    /// A reservation.
    pub fn reserve(id: impl Into<String>, request: R) -> Self {
        Self::Reserve {
            id: id.into(),
            request,
        }
    }

    /// A release.
    pub fn release(id: impl Into<String>) -> Self {
        Self::Release { id: id.into() }
    }

    /// A confirmation of a hold.
    pub fn confirm(id: impl Into<String>) -> Self {
        Self::Confirm { id: id.into() }
    }
}

/// The `Command` type of a capacity type that has no commands of its own.
///
/// It has no values, so every custom command is refused as `unknown_command`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoCommands {}

impl<'de> Deserialize<'de> for NoCommands {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom(
            "this capacity type has no commands of its own",
        ))
    }
}

/// What a pool shows to readers: grid cells plus free-form details.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    /// The cells of the capacity grid.
    pub cells: Vec<Cell>,
    /// Anything else worth showing, as JSON.
    pub details: serde_json::Value,
}

impl View {
    /// A view of these cells with no details.
    pub fn new(cells: Vec<Cell>) -> Self {
        Self {
            cells,
            details: serde_json::Value::Null,
        }
    }

    /// The same view with details, serialized to JSON.
    pub fn with_details(mut self, details: impl Serialize) -> Self {
        self.details = serde_json::to_value(details).unwrap_or(serde_json::Value::Null);
        self
    }

    /// The cell with this key, if any.
    pub fn cell(&self, key: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| c.key == key)
    }
}

/// One cell of the capacity grid: a slot, an hour, a dimension.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// Unique within the pool and stable across events.
    pub key: String,
    /// What the cell is, as name/value pairs: `slot = 08-10`.
    pub labels: Vec<(String, String)>,
    /// Start of the cell's time range, ms since the Unix epoch.
    pub start_ms: Option<i64>,
    /// End of the cell's time range, ms since the Unix epoch.
    pub end_ms: Option<i64>,
    /// Unit of the amounts: `stops`, `items`, `kg`.
    pub unit: String,
    /// Total capacity.
    pub capacity: u64,
    /// Taken by confirmed reservations; above `capacity` when overbooked.
    pub used: u64,
    /// Taken by holds not yet confirmed.
    pub held: u64,
    /// Whether the cell takes new reservations.
    pub open: bool,
}

impl Cell {
    /// An open, empty cell.
    pub fn new(key: impl Into<String>, unit: impl Into<String>, capacity: u64) -> Self {
        Self {
            key: key.into(),
            unit: unit.into(),
            capacity,
            open: true,
            ..Self::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }

    /// Sets the time range.
    pub fn between(mut self, start_ms: i64, end_ms: i64) -> Self {
        self.start_ms = Some(start_ms);
        self.end_ms = Some(end_ms);
        self
    }

    /// Sets the amount used by confirmed reservations.
    pub fn used(mut self, used: u64) -> Self {
        self.used = used;
        self
    }

    /// Sets the amount held.
    pub fn held(mut self, held: u64) -> Self {
        self.held = held;
        self
    }

    /// Sets whether the cell takes new reservations.
    pub fn open(mut self, open: bool) -> Self {
        self.open = open;
        self
    }

    /// What is left: capacity minus used and held, never below zero.
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used + self.held)
    }

    /// Whether more is taken than there is.
    pub fn overbooked(&self) -> bool {
        self.used + self.held > self.capacity
    }
}
