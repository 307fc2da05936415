//! The `quota` capacity type with its state's fields reordered but its
//! `STATE_VERSION` unchanged, as an author who forgot to bump it would
//! ship it: a snapshot written by the real type restores without an
//! error, to a state with capacity and use exchanged. The replay check must
//! refuse it, since its snapshots and its events disagree.

#![allow(missing_docs)]

use std::collections::BTreeMap;

use allot_sdk::prelude::*;

/// The capacity type. The name under which pools are created is `CAPACITY_TYPE`.
pub struct Quota;

allot_sdk::export_capacity_type!(Quota);

/// Given when a pool is created.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    name: String,
    units: u64,
}

/// What a reservation asks for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    units: u64,
}

/// Commands of this type, by name.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum QuotaCommand {
    /// Changes the number of units.
    SetUnits {
        /// The new number.
        units: u64,
        /// Allow going below what is reserved.
        #[serde(default)]
        force: bool,
    },
}

/// Facts, stored forever as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Units were reserved.
    Reserved {
        /// The caller's id.
        reservation_id: String,
        /// How many.
        units: u64,
    },
    /// A reservation was released.
    Released {
        /// The caller's id.
        reservation_id: String,
        /// How many units came back.
        units: u64,
    },
    /// The number of units changed.
    UnitsSet {
        /// The new number.
        units: u64,
    },
}

/// Folded from events; snapshotted with postcard.
#[derive(Serialize, Deserialize)]
pub struct State {
    name: String,
    // Swapped with `units`, as a careless refactoring might: a snapshot
    // of the real type decodes, with the two numbers exchanged.
    reserved: u64,
    units: u64,
    reservations: BTreeMap<String, u64>,
}

impl CapacityType for Quota {
    const CAPACITY_TYPE: &'static str = "quota";

    type Config = Config;
    type Request = Request;
    type Command = QuotaCommand;
    type Event = Event;
    type State = State;

    fn create(config: Config) -> Result<State, Problem> {
        if config.name.is_empty() {
            return Err(Problem::new("invalid_config", "name must not be empty"));
        }
        Ok(State {
            name: config.name,
            units: config.units,
            reserved: 0,
            reservations: BTreeMap::new(),
        })
    }

    fn reserve(state: &State, _: &Context, id: &str, request: Request) -> Decision<Event> {
        if request.units == 0 {
            return Err(Failure::invalid(
                "invalid_units",
                "reserve at least one unit",
            ));
        }
        if state.reservations.contains_key(id) {
            return Err(Failure::rejected(
                "duplicate_reservation",
                format!("{id} exists"),
            ));
        }
        let free = state.units.saturating_sub(state.reserved);
        if request.units > free {
            return Err(Failure::rejected(
                "quota_exhausted",
                format!("{free} units left, {} asked", request.units),
            ));
        }
        Ok(vec![Event::Reserved {
            reservation_id: id.into(),
            units: request.units,
        }])
    }

    fn release(state: &State, _: &Context, id: &str) -> Decision<Event> {
        match state.reservations.get(id) {
            Some(&units) => Ok(vec![Event::Released {
                reservation_id: id.into(),
                units,
            }]),
            None => Err(Failure::rejected(
                "unknown_reservation",
                format!("no reservation {id}"),
            )),
        }
    }

    fn command(state: &State, _: &Context, command: QuotaCommand) -> Decision<Event> {
        match command {
            QuotaCommand::SetUnits { units, force } => {
                if units < state.reserved && !force {
                    return Err(Failure::rejected(
                        "would_overbook",
                        format!(
                            "{} units are reserved; send force: true to go below",
                            state.reserved
                        ),
                    ));
                }
                Ok(vec![Event::UnitsSet { units }])
            }
        }
    }

    fn apply(state: &mut State, event: Event) {
        match event {
            Event::Reserved {
                reservation_id,
                units,
            } => {
                state.reserved += units;
                state.reservations.insert(reservation_id, units);
            }
            Event::Released { reservation_id, .. } => {
                if let Some(units) = state.reservations.remove(&reservation_id) {
                    state.reserved -= units;
                }
            }
            Event::UnitsSet { units } => state.units = units,
        }
    }

    fn view(state: &State) -> View {
        View::new(vec![
            Cell::new("units", "units", state.units)
                .label("quota", &state.name)
                .used(state.reserved),
        ])
    }
}
