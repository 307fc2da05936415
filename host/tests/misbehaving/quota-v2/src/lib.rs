//! A second version of the `quota` capacity type, as a team might ship it:
//! it no longer knows the `units_set` event (so pools whose history has one
//! cannot be replayed), and its cells carry a new label (so every other
//! pool's view differs). Its state layout is new, so pools move to it by
//! replay. The registry's replay check must report both, and a forced
//! activation must be rolled back when a live pool cannot move.

#![allow(missing_docs)]

use std::collections::BTreeMap;

use allot_sdk::prelude::*;

pub struct QuotaV2;

allot_sdk::export_capacity_type!(QuotaV2);

#[derive(Deserialize)]
pub struct Config {
    name: String,
    units: u64,
}

#[derive(Deserialize)]
pub struct Request {
    units: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Reserved { reservation_id: String, units: u64 },
    Released { reservation_id: String, units: u64 },
}

#[derive(Serialize, Deserialize)]
pub struct State {
    name: String,
    units: u64,
    reserved: u64,
    reservations: BTreeMap<String, u64>,
}

impl CapacityType for QuotaV2 {
    const CAPACITY_TYPE: &'static str = "quota";
    // A new state layout: live pools move to this version by replaying
    // their events, not by a snapshot.
    const STATE_VERSION: u32 = 2;

    type Config = Config;
    type Request = Request;
    type Command = NoCommands;
    type Event = Event;
    type State = State;

    fn create(config: Config) -> Result<State, Problem> {
        Ok(State {
            name: config.name,
            units: config.units,
            reserved: 0,
            reservations: BTreeMap::new(),
        })
    }

    fn reserve(state: &State, _: &Context, id: &str, request: Request) -> Decision<Event> {
        if request.units > state.units.saturating_sub(state.reserved) {
            return Err(Failure::rejected("quota_exhausted", "not enough units"));
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
                "no such reservation",
            )),
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
        }
    }

    fn view(state: &State) -> View {
        View::new(vec![
            Cell::new("units", "units", state.units)
                .label("quota", &state.name)
                .label("generation", "2")
                .used(state.reserved),
        ])
    }
}
