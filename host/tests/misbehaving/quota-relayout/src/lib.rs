//! A build of the `quota` capacity type whose state has its two numbers
//! in the other order but the same `STATE_VERSION`, as an author who
//! forgot to bump it would ship it: a snapshot written by the real type
//! restores without an error, to a state with capacity and use exchanged.
//! It follows the real type's history (its events and config) and decides
//! nothing; the replay check must refuse it, since its snapshots and its
//! events disagree.

#![allow(missing_docs)]

use std::collections::BTreeMap;

use allot_sdk::prelude::*;

pub struct Relayout;

allot_sdk::export_capacity_type!(Relayout);

#[derive(Deserialize)]
pub struct Config {
    name: String,
    units: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Reserved { reservation_id: String, units: u64 },
    Released { reservation_id: String },
    UnitsSet { units: u64 },
}

/// The real type's fields, `reserved` and `units` swapped.
#[derive(Serialize, Deserialize)]
pub struct State {
    name: String,
    reserved: u64,
    units: u64,
    reservations: BTreeMap<String, u64>,
}

impl CapacityType for Relayout {
    const CAPACITY_TYPE: &'static str = "quota";

    type Config = Config;
    type Request = ();
    type Command = NoCommands;
    type Event = Event;
    type State = State;

    fn create(config: Config) -> Result<State, Problem> {
        Ok(State {
            name: config.name,
            reserved: 0,
            units: config.units,
            reservations: BTreeMap::new(),
        })
    }

    fn reserve(_: &State, _: &Context, _: &str, _: ()) -> Decision<Event> {
        Err(Failure::rejected("read_only", "this build decides nothing"))
    }

    fn release(_: &State, _: &Context, _: &str) -> Decision<Event> {
        Err(Failure::rejected("read_only", "this build decides nothing"))
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
            Event::Released { reservation_id } => {
                state.reserved -= state.reservations.remove(&reservation_id).unwrap_or(0);
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
