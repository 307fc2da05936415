//! What the capacity grid shows of a warehouse day.

use allot_sdk::prelude::*;

use crate::{State, clock};

/// The summary shown next to the grid.
#[derive(Serialize)]
struct Details<'a> {
    warehouse: &'a str,
    date: &'a str,
    orders: usize,
    total_capacity: u64,
    total_allocated: u64,
    /// Hours where forced reductions left more booked than there is capacity.
    overbooked_hours: Vec<u32>,
}

pub(crate) fn view(state: &State) -> View {
    // Hours with neither capacity nor bookings are closed and would only
    // clutter the grid.
    let shown = state
        .hours
        .iter()
        .filter(|(_, hour)| hour.capacity > 0 || hour.allocated > 0);
    let cells = shown
        .map(|(h, hour)| {
            Cell::new(format!("{h:02}"), "items", hour.capacity)
                .label("warehouse", &state.warehouse)
                .label("hour", format!("{}-{}", clock(h), clock(h + 1)))
                .between(state.hour_start(h), state.hour_start(h + 1))
                .used(hour.allocated)
        })
        .collect();
    let details = Details {
        warehouse: &state.warehouse,
        date: &state.date,
        orders: state.orders.len(),
        total_capacity: state
            .hours
            .iter()
            .map(|(_, hour)| hour.capacity)
            .fold(0, u64::saturating_add),
        total_allocated: state
            .hours
            .iter()
            .map(|(_, hour)| hour.allocated)
            .fold(0, u64::saturating_add),
        overbooked_hours: state
            .hours
            .iter()
            .filter(|(_, hour)| hour.overbooked())
            .map(|(h, _)| h)
            .collect(),
    };
    View::new(cells).with_details(details)
}
