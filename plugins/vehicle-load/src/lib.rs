//! The `vehicle-load` capacity type: what one truck departure can still carry.
//!
//! A pool is one departure of one truck, limited in three dimensions at once:
//! weight (kg), volume (litres) and pallet spaces. A reservation is a load
//! that must fit every dimension.
//!
//! Checkout usually *holds* a load while the customer pays, then confirms it.
//! A hold takes capacity until it is confirmed, released or expires; it has
//! expired once the command's time (`Context::now_ms`, never a clock) reaches
//! its `expires_ms`. Expired holds stop counting at once, and are removed from
//! the state by `hold_expired` events written by the next reservation or by
//! the host's periodic `expire_holds`.
//!
//! # Config
//!
//! ```json
//! {
//!   "truck": "B-AL-123",
//!   "departure": "2026-11-24T18:00:00+01:00",
//!   "cutoff_minutes": 60,
//!   "capacity": {"weight_kg": 12000, "volume_l": 40000, "pallets": 18},
//!   "max_hold_minutes": 30
//! }
//! ```
//!
//! Reservations close `cutoff_minutes` (default 60) before `departure`. Holds
//! last at most `max_hold_minutes` (default 30).
//!
//! # Reservations
//!
//! ```json
//! {"weight_kg": 800, "volume_l": 2000, "pallets": 2, "hold_minutes": 15}
//! ```
//!
//! Missing dimensions are zero. Without `hold_minutes` the load is booked at
//! once. A reservation is refused as `empty_load` or `invalid_hold` (invalid),
//! or as `duplicate_reservation`, `cutoff_passed` or `capacity_exceeded`
//! (rejected). Confirming refuses `unknown_reservation`, `already_confirmed`
//! and `hold_expired`; releasing refuses `unknown_reservation`.
//!
//! # Commands
//!
//! * `expire_holds {}` sweeps the holds that have expired.
//! * `set_capacity {"weight_kg"?, "volume_l"?, "pallets"?, "force": false}`
//!   changes the dimensions given. A capacity below what is booked and held is
//!   rejected as `would_overbook` unless `force` is set; the truck then shows
//!   as overbooked.
//!
//! # Events
//!
//! Tagged by `type`; a `load` is `{"weight_kg", "volume_l", "pallets"}`.
//!
//! * `held {reservation_id, load, expires_ms}`
//! * `booked {reservation_id, load}`
//! * `hold_confirmed {reservation_id, load}`
//! * `hold_expired {reservation_id, load}`
//! * `released {reservation_id, load, was_hold}`
//! * `capacity_changed {capacity, forced}`
//!
//! # View
//!
//! Cells `weight` (kg), `volume` (l) and `pallets`, each open from the cutoff
//! to the departure, with bookings as `used` and holds as `held`. Details name
//! the truck, departure, cutoff instant (`cutoff_ms`), the holds with their
//! expiry, and the number of bookings.
//!
//! # Layout
//!
//! * `config` checks a planner's config and builds an empty truck.
//! * `reservation` decides reservations, confirmations and releases.
//! * `commands` decides `expire_holds` and `set_capacity`.
//! * `state` holds the events and folds them into the state.
//! * `view` draws the state as grid cells.
//! * `load` is the arithmetic of three-dimensional amounts all of them share.

mod commands;
mod config;
mod load;
mod reservation;
mod state;
#[cfg(test)]
mod tests;
mod view;

use allot_sdk::prelude::*;

pub use commands::LoadCommand;
pub use config::Config;
pub use load::{Dimension, Load};
pub use reservation::Request;
pub use state::{Event, State};

/// The vehicle-load capacity type.
pub struct VehicleLoad;

impl CapacityType for VehicleLoad {
    const CAPACITY_TYPE: &'static str = "vehicle-load";
    type Config = Config;
    type Request = Request;
    type Command = LoadCommand;
    type Event = Event;
    type State = State;

    fn create(config: Config) -> Result<State, Problem> {
        config.into_state()
    }

    fn reserve(state: &State, context: &Context, id: &str, request: Request) -> Decision<Event> {
        reservation::reserve(state, context.now_ms, id, request)
    }

    fn release(state: &State, _: &Context, id: &str) -> Decision<Event> {
        reservation::release(state, id)
    }

    fn confirm(state: &State, context: &Context, id: &str) -> Decision<Event> {
        reservation::confirm(state, context.now_ms, id)
    }

    fn command(state: &State, context: &Context, command: LoadCommand) -> Decision<Event> {
        commands::command(state, context.now_ms, command)
    }

    fn apply(state: &mut State, event: Event) {
        state.apply(event);
    }

    fn view(state: &State) -> View {
        view::view(state)
    }
}

allot_sdk::export_capacity_type!(VehicleLoad);
