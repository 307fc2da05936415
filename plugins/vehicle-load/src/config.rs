//! A planner's config for one departure, checked and turned into a new pool.

use allot_sdk::Problem;
use allot_sdk::time::{MINUTE_MS, Timestamp};
use serde::Deserialize;

use crate::load::{Dimension, Load};
use crate::state::State;

/// What a planner gives when creating the pool of one truck departure.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The truck's plate or fleet number.
    pub truck: String,
    /// When the truck leaves, RFC 3339 in JSON.
    pub departure: Timestamp,
    /// How long before departure reservations close.
    #[serde(default = "default_cutoff_minutes")]
    pub cutoff_minutes: u64,
    /// What the truck carries at most.
    pub capacity: Load,
    /// The longest hold a reservation may ask for.
    #[serde(default = "default_max_hold_minutes")]
    pub max_hold_minutes: u64,
}

fn default_cutoff_minutes() -> u64 {
    60
}

fn default_max_hold_minutes() -> u64 {
    30
}

impl Config {
    /// Checks the config and builds the state of an empty truck.
    pub(crate) fn into_state(self) -> Result<State, Problem> {
        if self.truck.trim().is_empty() {
            return Err(invalid("truck must not be empty"));
        }
        if let Some(dimension) = Dimension::ALL
            .into_iter()
            .find(|&d| self.capacity.get(d) == 0)
        {
            return Err(invalid(format!(
                "capacity.{} must be greater than 0",
                dimension.field()
            )));
        }
        if self.max_hold_minutes == 0 {
            return Err(invalid("max_hold_minutes must be greater than 0"));
        }
        // Both durations become milliseconds later; refusing absurd values
        // here keeps that arithmetic from overflowing in the decisions.
        if minutes_to_ms(self.max_hold_minutes).is_none() {
            return Err(invalid("max_hold_minutes is too large"));
        }
        let closes_ms = minutes_to_ms(self.cutoff_minutes)
            .and_then(|cutoff_ms| self.departure.0.checked_sub(cutoff_ms))
            .ok_or_else(|| invalid("cutoff_minutes is too large"))?;
        Ok(State::new(
            self.truck,
            self.departure,
            closes_ms,
            self.max_hold_minutes,
            self.capacity,
        ))
    }
}

/// Minutes as milliseconds, if that fits an `i64`.
pub(crate) fn minutes_to_ms(minutes: u64) -> Option<i64> {
    i64::try_from(minutes).ok()?.checked_mul(MINUTE_MS)
}

fn invalid(message: impl Into<String>) -> Problem {
    Problem::new("invalid_config", message)
}
