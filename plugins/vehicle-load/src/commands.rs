//! The vehicle-load commands of its own: sweeping holds and resizing the truck.

use allot_sdk::{Decision, Failure};
use serde::Deserialize;

use crate::load::Dimension;
use crate::state::{Event, State};

/// The commands of the vehicle-load type, sent as `{"<name>": {payload}}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadCommand {
    /// Sweeps the holds that have expired; the host sends it periodically.
    ExpireHolds {},
    /// Changes the dimensions given and keeps the others.
    SetCapacity {
        weight_kg: Option<u64>,
        volume_l: Option<u64>,
        pallets: Option<u64>,
        /// Accept a capacity below what is already booked and held.
        #[serde(default)]
        force: bool,
    },
}

pub(crate) fn command(state: &State, now_ms: i64, command: LoadCommand) -> Decision<Event> {
    match command {
        LoadCommand::ExpireHolds {} => Ok(state.expire_holds(now_ms)),
        LoadCommand::SetCapacity {
            weight_kg,
            volume_l,
            pallets,
            force,
        } => set_capacity(state, now_ms, [weight_kg, volume_l, pallets], force),
    }
}

/// `changes` holds the new amount per dimension, in [`Dimension::ALL`] order.
fn set_capacity(
    state: &State,
    now_ms: i64,
    changes: [Option<u64>; 3],
    force: bool,
) -> Decision<Event> {
    let changes: Vec<(Dimension, u64)> = Dimension::ALL
        .into_iter()
        .zip(changes)
        .filter_map(|(d, amount)| Some((d, amount?)))
        .collect();
    if changes.is_empty() {
        return Err(Failure::invalid(
            "invalid_capacity",
            "give at least one of weight_kg, volume_l, pallets",
        ));
    }
    if let Some((d, _)) = changes.iter().find(|(_, amount)| *amount == 0) {
        return Err(Failure::invalid(
            "invalid_capacity",
            format!("{} must be greater than 0", d.field()),
        ));
    }
    let capacity = changes
        .into_iter()
        .fold(state.capacity, |capacity, (d, amount)| {
            capacity.with(d, amount)
        });

    let taken = state.taken_at(now_ms);
    let overbooks = !taken.fits_within(capacity);
    if overbooks && !force {
        let shortfalls: Vec<String> = taken
            .exceeding(capacity)
            .map(|d| {
                format!(
                    "{}: new capacity {} is below the {} booked and held",
                    d.key(),
                    d.amount(capacity.get(d)),
                    d.amount(taken.get(d))
                )
            })
            .collect();
        return Err(Failure::rejected(
            "would_overbook",
            format!("{}; send force: true to overbook", shortfalls.join("; ")),
        ));
    }
    Ok(vec![Event::CapacityChanged {
        capacity,
        forced: overbooks,
    }])
}
