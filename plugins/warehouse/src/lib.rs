//! The `warehouse` capacity type: the hourly picking capacity of one warehouse
//! on one day.
//!
//! Each pool is a grid of 24 hours (hour `h` covers `[h:00, h+1:00)` local
//! time). Every hour has a capacity in items and the items already allocated
//! to orders. An order of N items due by hour H may be picked in any hour
//! before H that has not started yet; the plugin chooses the hours and
//! records that allocation in the event, so releasing the order later frees
//! exactly what it took.
//!
//! Allocation is *backward*: the hours closest to the due hour fill first, so
//! that earlier hours stay free for orders that are due earlier.
//!
//! # Config
//!
//! ```json
//! {
//!   "warehouse": "ams-1",
//!   "date": "2026-11-24",
//!   "utc_offset": "+01:00",
//!   "open_hour": 6,
//!   "close_hour": 22,
//!   "items_per_hour": 400
//! }
//! ```
//!
//! Hours in `[open_hour, close_hour)` start with `items_per_hour` capacity,
//! the others with none. `utc_offset` defaults to `+00:00`; `close_hour` may
//! be 24 (the end of the day). Unknown fields are refused.
//!
//! # Reservations
//!
//! The request is `{"items": 300, "due_hour": 14}`: 300 items picked by
//! 14:00, so in hours 13 and earlier. `due_hour` is 1 to 24. Refusals:
//!
//! | code | kind | when |
//! |---|---|---|
//! | `invalid_items` | invalid | `items` is 0 |
//! | `invalid_due_hour` | invalid | `due_hour` is not 1 to 24 |
//! | `duplicate_reservation` | rejected | an order with this id is placed |
//! | `due_passed` | rejected | the due hour has been reached |
//! | `insufficient_capacity` | rejected | the free items before the due hour are fewer than asked |
//!
//! Releasing an unknown id is rejected as `unknown_reservation`.
//!
//! # Planner commands
//!
//! * `set_capacity` `{"hour": 13, "items": 250, "force": false}` sets one
//!   hour's capacity. Going below the items already booked in that hour is
//!   rejected as `would_overbook` unless `force` is true; the hour then shows
//!   as overbooked and its orders keep their allocation.
//! * `add_shift` `{"from_hour": 18, "to_hour": 24, "items_per_hour": 150}`
//!   adds capacity to every hour in `[from_hour, to_hour)`.
//!
//! # Events
//!
//! ```json
//! {"type": "order_placed", "reservation_id": "o-1", "items": 500, "due_hour": 14,
//!  "allocation": [{"hour": 12, "items": 100}, {"hour": 13, "items": 400}]}
//! {"type": "order_released", "reservation_id": "o-1", "items": 500,
//!  "allocation": [{"hour": 12, "items": 100}, {"hour": 13, "items": 400}]}
//! {"type": "capacity_set", "hour": 13, "items": 250, "forced": true}
//! {"type": "shift_added", "from_hour": 18, "to_hour": 24, "items_per_hour": 150}
//! ```
//!
//! # View
//!
//! One cell per hour that has capacity or bookings, keyed `"06"` and labelled
//! with the warehouse and `06:00-07:00`; `used` is the allocated items and
//! exceeds `capacity` in an overbooked hour. The details carry the
//! warehouse, date, number of orders, totals and the overbooked hours.
//!
//! # Layout
//!
//! * `lib.rs`: the public shapes (config, request, commands, events) and the
//!   rules that decide and apply them.
//! * `hours`: the 24-hour grid and the backward scheduling of an order into it.
//! * `view`: what the capacity grid shows.

#![warn(missing_docs)]

mod hours;
mod view;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ops::Range;

use allot_sdk::prelude::*;
use allot_sdk::time::{Day, HOUR_MS};

use crate::hours::{Grid, HOURS_PER_DAY};

/// The warehouse capacity type.
pub struct Warehouse;

/// A pool's config: one warehouse on one day.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The warehouse's code, e.g. `ams-1`.
    pub warehouse: String,
    /// The local day, `YYYY-MM-DD`.
    pub date: String,
    /// The day's offset from UTC, `±HH:MM`.
    #[serde(default = "utc")]
    pub utc_offset: String,
    /// The first hour with picking capacity.
    pub open_hour: u32,
    /// The hour picking stops; hours before it have capacity. At most 24.
    pub close_hour: u32,
    /// The capacity of each open hour, in items.
    pub items_per_hour: u64,
}

fn utc() -> String {
    "+00:00".to_owned()
}

/// What an order reserves.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Items to pick.
    pub items: u64,
    /// Picking must be done by `due_hour:00`, so only earlier hours are used.
    /// 1 to 24.
    pub due_hour: u32,
}

/// The planners' commands.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WarehouseCommand {
    /// Sets one hour's capacity.
    SetCapacity {
        /// 0 to 23.
        hour: u32,
        /// The new capacity in items.
        items: u64,
        /// Accept a capacity below the items already booked in the hour.
        #[serde(default)]
        force: bool,
    },
    /// Adds a shift's capacity to a range of hours.
    AddShift {
        /// The shift's first hour.
        from_hour: u32,
        /// The hour the shift ends; not included. At most 24.
        to_hour: u32,
        /// Items the shift adds to each of its hours.
        items_per_hour: u64,
    },
}

/// Items of an order picked in one hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourAllocation {
    /// The hour, 0 to 23.
    pub hour: u32,
    /// Items picked in it.
    pub items: u64,
}

/// What happened to a warehouse day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An order was placed into these hours.
    OrderPlaced {
        /// The caller's reservation id.
        reservation_id: String,
        /// Items of the order.
        items: u64,
        /// The hour picking had to be done by.
        due_hour: u32,
        /// Where the items are picked, by hour ascending; sums to `items`.
        allocation: Vec<HourAllocation>,
    },
    /// An order was released and its allocation freed.
    OrderReleased {
        /// The reservation id.
        reservation_id: String,
        /// Items of the order.
        items: u64,
        /// The allocation freed, as it was placed.
        allocation: Vec<HourAllocation>,
    },
    /// A planner set an hour's capacity.
    CapacitySet {
        /// The hour, 0 to 23.
        hour: u32,
        /// The new capacity.
        items: u64,
        /// True when the new capacity is below the items booked in the hour,
        /// which the planner had to force; the hour is then overbooked.
        forced: bool,
    },
    /// A planner added a shift.
    ShiftAdded {
        /// The shift's first hour.
        from_hour: u32,
        /// The hour the shift ends; not included.
        to_hour: u32,
        /// Items added to each hour of the shift.
        items_per_hour: u64,
    },
}

/// A warehouse day: its hours and the orders placed into them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    warehouse: String,
    /// The date as configured, for messages and the view.
    date: String,
    day: Day,
    hours: Grid,
    /// Placed orders by reservation id. Released orders are dropped, so their
    /// ids can be used again.
    orders: BTreeMap<String, Order>,
}

/// A placed order, kept so that its release frees exactly what it took.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Order {
    items: u64,
    allocation: Vec<HourAllocation>,
}

impl State {
    /// When an hour (0 to 24) starts, in ms since the Unix epoch. A day has a
    /// single UTC offset, so its hours are exactly an hour apart.
    fn hour_start(&self, hour: u32) -> i64 {
        self.day.midnight_ms + i64::from(hour) * HOUR_MS
    }

    /// The hours before `due_hour` that have not started at `now_ms`.
    fn usable_hours(&self, due_hour: u32, now_ms: i64) -> Range<u32> {
        let first = (0..due_hour)
            .find(|&h| self.hour_start(h) >= now_ms)
            .unwrap_or(due_hour);
        first..due_hour
    }
}

/// `13:00`: how planners write the start of an hour.
fn clock(hour: u32) -> String {
    format!("{hour:02}:00")
}

fn invalid_config(message: String) -> Problem {
    Problem::new("invalid_config", message)
}

impl CapacityType for Warehouse {
    const CAPACITY_TYPE: &'static str = "warehouse";
    type Config = Config;
    type Request = Request;
    type Command = WarehouseCommand;
    type Event = Event;
    type State = State;

    fn create(config: Config) -> Result<State, Problem> {
        if config.warehouse.trim().is_empty() {
            return Err(invalid_config("warehouse must not be empty".into()));
        }
        let day = Day::parse(&config.date, &config.utc_offset)?;
        if config.close_hour > HOURS_PER_DAY {
            return Err(invalid_config(format!(
                "close_hour {} is after the end of the day; use 24 at most",
                config.close_hour
            )));
        }
        if config.open_hour >= config.close_hour {
            return Err(invalid_config(format!(
                "open_hour {} must be before close_hour {}",
                config.open_hour, config.close_hour
            )));
        }
        if config.items_per_hour == 0 {
            return Err(invalid_config("items_per_hour must be at least 1".into()));
        }
        Ok(State {
            hours: Grid::opening(config.open_hour..config.close_hour, config.items_per_hour),
            warehouse: config.warehouse,
            date: config.date,
            day,
            orders: BTreeMap::new(),
        })
    }

    fn reserve(state: &State, context: &Context, id: &str, request: Request) -> Decision<Event> {
        let Request { items, due_hour } = request;
        if items == 0 {
            return Err(Failure::invalid(
                "invalid_items",
                "an order needs at least 1 item",
            ));
        }
        if !(1..=HOURS_PER_DAY).contains(&due_hour) {
            return Err(Failure::invalid(
                "invalid_due_hour",
                format!("due_hour {due_hour} is not between 1 and 24"),
            ));
        }
        if state.orders.contains_key(id) {
            return Err(Failure::rejected(
                "duplicate_reservation",
                format!("order {id} is already placed"),
            ));
        }
        // At the due hour itself nothing can be picked any more, so reaching
        // it counts as passed.
        if state.hour_start(due_hour) <= context.now_ms {
            return Err(Failure::rejected(
                "due_passed",
                format!(
                    "{} on {} has passed; picking can no longer finish in time",
                    clock(due_hour),
                    state.date
                ),
            ));
        }
        let usable = state.usable_hours(due_hour, context.now_ms);
        let allocation = state
            .hours
            .plan_backward(usable, items)
            .map_err(|available| {
                Failure::rejected(
                    "insufficient_capacity",
                    format!(
                        "only {available} of {items} items can be picked before {}",
                        clock(due_hour)
                    ),
                )
            })?;
        Ok(vec![Event::OrderPlaced {
            reservation_id: id.to_owned(),
            items,
            due_hour,
            allocation,
        }])
    }

    fn release(state: &State, _: &Context, id: &str) -> Decision<Event> {
        let order = state.orders.get(id).ok_or_else(|| {
            Failure::rejected("unknown_reservation", format!("no order {id} is placed"))
        })?;
        Ok(vec![Event::OrderReleased {
            reservation_id: id.to_owned(),
            items: order.items,
            allocation: order.allocation.clone(),
        }])
    }

    fn command(state: &State, _: &Context, command: WarehouseCommand) -> Decision<Event> {
        match command {
            WarehouseCommand::SetCapacity { hour, items, force } => {
                set_capacity(state, hour, items, force)
            }
            WarehouseCommand::AddShift {
                from_hour,
                to_hour,
                items_per_hour,
            } => add_shift(state, from_hour, to_hour, items_per_hour),
        }
    }

    fn apply(state: &mut State, event: Event) {
        match event {
            Event::OrderPlaced {
                reservation_id,
                items,
                allocation,
                ..
            } => {
                state.hours.book(&allocation);
                state
                    .orders
                    .insert(reservation_id, Order { items, allocation });
            }
            Event::OrderReleased {
                reservation_id,
                allocation,
                ..
            } => {
                state.hours.unbook(&allocation);
                state.orders.remove(&reservation_id);
            }
            Event::CapacitySet { hour, items, .. } => state.hours.set_capacity(hour, items),
            Event::ShiftAdded {
                from_hour,
                to_hour,
                items_per_hour,
            } => state.hours.add_capacity(from_hour..to_hour, items_per_hour),
        }
    }

    fn view(state: &State) -> View {
        view::view(state)
    }
}

fn set_capacity(state: &State, hour: u32, items: u64, force: bool) -> Decision<Event> {
    if hour >= HOURS_PER_DAY {
        return Err(Failure::invalid(
            "invalid_hour",
            format!("hour {hour} is not between 0 and 23"),
        ));
    }
    let booked = state.hours.hour(hour).allocated;
    let overbooks = items < booked;
    if overbooks && !force {
        return Err(Failure::rejected(
            "would_overbook",
            format!(
                "{} has {booked} items booked; set at least {booked} or force the reduction",
                clock(hour)
            ),
        ));
    }
    Ok(vec![Event::CapacitySet {
        hour,
        items,
        forced: overbooks,
    }])
}

fn add_shift(state: &State, from_hour: u32, to_hour: u32, items_per_hour: u64) -> Decision<Event> {
    if from_hour >= to_hour || to_hour > HOURS_PER_DAY {
        return Err(Failure::invalid(
            "invalid_hours",
            format!(
                "a shift from hour {from_hour} to {to_hour} is not within the day; \
                 need from_hour < to_hour <= 24"
            ),
        ));
    }
    if items_per_hour == 0 {
        return Err(Failure::invalid(
            "invalid_items",
            "a shift adds at least 1 item per hour",
        ));
    }
    if !state.hours.can_add(from_hour..to_hour, items_per_hour) {
        return Err(Failure::invalid(
            "invalid_items",
            format!("{items_per_hour} items per hour would overflow the hours' capacity"),
        ));
    }
    Ok(vec![Event::ShiftAdded {
        from_hour,
        to_hour,
        items_per_hour,
    }])
}

allot_sdk::export_capacity_type!(Warehouse);
