//! The capacity grid: one cell per dimension of the truck.

use allot_sdk::time::Timestamp;
use allot_sdk::{Cell, View};
use serde::Serialize;

use crate::load::Dimension;
use crate::state::State;

#[derive(Serialize)]
struct Details<'a> {
    truck: &'a str,
    departure: Timestamp,
    /// When reservations close, ms since the Unix epoch.
    cutoff_ms: i64,
    holds: Vec<HoldDetails<'a>>,
    /// How many bookings there are.
    bookings: usize,
}

#[derive(Serialize)]
struct HoldDetails<'a> {
    reservation_id: &'a str,
    expires_ms: i64,
}

pub(crate) fn view(state: &State) -> View {
    let booked = state.booked();
    let held = state.held();
    let cells = Dimension::ALL
        .into_iter()
        .map(|d| {
            Cell::new(d.key(), d.unit(), state.capacity.get(d))
                .label("truck", &state.truck)
                .label("dimension", d.key())
                .between(state.closes_ms, state.departure.0)
                .used(booked.get(d))
                .held(held.get(d))
        })
        .collect();
    let details = Details {
        truck: &state.truck,
        departure: state.departure,
        cutoff_ms: state.closes_ms,
        holds: state
            .holds
            .iter()
            .map(|(id, hold)| HoldDetails {
                reservation_id: id,
                expires_ms: hold.expires_ms,
            })
            .collect(),
        bookings: state.bookings.len(),
    };
    View::new(cells).with_details(details)
}
