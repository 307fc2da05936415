use allot_sdk::prelude::*;
use allot_sdk::testkit::{Outcome, Scenario};
use allot_sdk::time::Timestamp;
use serde_json::{Value, json};

use crate::{Event, HourAllocation, Request, Warehouse, WarehouseCommand};

fn config() -> Value {
    json!({
        "warehouse": "ams-1",
        "date": "2026-11-24",
        "utc_offset": "+01:00",
        "open_hour": 6,
        "close_hour": 22,
        "items_per_hour": 400,
    })
}

fn pool() -> Scenario<Warehouse> {
    Scenario::new(config())
}

/// The config with some fields replaced (or removed, for `null`).
fn config_with(changes: Value) -> Value {
    let mut config = config();
    for (field, value) in changes.as_object().unwrap() {
        if value.is_null() {
            config.as_object_mut().unwrap().remove(field);
        } else {
            config[field] = value.clone();
        }
    }
    config
}

fn refusal(config: Value) -> Problem {
    Scenario::<Warehouse>::create(config)
        .err()
        .expect("the config should be refused")
}

/// An instant on the pool's day, local time (+01:00).
fn local(time: &str) -> i64 {
    Timestamp::parse(&format!("2026-11-24T{time}:00+01:00"))
        .unwrap()
        .0
}

fn order(id: &str, items: u64, due_hour: u32) -> Command<Request, WarehouseCommand> {
    Command::reserve(id, Request { items, due_hour })
}

fn allocation(shares: &[(u32, u64)]) -> Vec<HourAllocation> {
    shares
        .iter()
        .map(|&(hour, items)| HourAllocation { hour, items })
        .collect()
}

fn placed(id: &str, items: u64, due_hour: u32, shares: &[(u32, u64)]) -> Event {
    Event::OrderPlaced {
        reservation_id: id.into(),
        items,
        due_hour,
        allocation: allocation(shares),
    }
}

fn add_shift_event(from_hour: u32, to_hour: u32, items_per_hour: u64) -> Event {
    Event::ShiftAdded {
        from_hour,
        to_hour,
        items_per_hour,
    }
}

fn set_capacity(hour: u32, items: u64, force: bool) -> Command<Request, WarehouseCommand> {
    Command::Custom(WarehouseCommand::SetCapacity { hour, items, force })
}

fn add_shift(
    from_hour: u32,
    to_hour: u32,
    items_per_hour: u64,
) -> Command<Request, WarehouseCommand> {
    Command::Custom(WarehouseCommand::AddShift {
        from_hour,
        to_hour,
        items_per_hour,
    })
}

/// The refusal's message, after checking it is a refusal at all.
fn message(outcome: &Outcome<Warehouse>) -> String {
    match outcome.result() {
        Ok(events) => panic!("expected a refusal, got {events:?}"),
        Err(failure) => failure.problem().message.clone(),
    }
}

/// (key, capacity, used) of every cell, for compact assertions on the grid.
fn grid(scenario: &Scenario<Warehouse>) -> Vec<(String, u64, u64)> {
    scenario
        .view()
        .cells
        .iter()
        .map(|c| (c.key.clone(), c.capacity, c.used))
        .collect()
}

fn cell(scenario: &Scenario<Warehouse>, key: &str) -> (u64, u64) {
    let view = scenario.view();
    let cell = view.cell(key).unwrap_or_else(|| panic!("no cell {key}"));
    (cell.capacity, cell.used)
}

// Config

/// An empty warehouse code is refused, naming the field.
#[test]
fn config_refuses_an_empty_warehouse() {
    let problem = refusal(config_with(json!({ "warehouse": "  " })));
    assert_eq!(problem.code, "invalid_config");
    assert!(problem.message.contains("warehouse"), "{problem}");
}

/// A date that is not YYYY-MM-DD is refused, quoting it.
#[test]
fn config_refuses_a_malformed_date() {
    let problem = refusal(config_with(json!({ "date": "24.11.2026" })));
    assert_eq!(problem.code, "invalid_config");
    assert!(problem.message.contains("date `24.11.2026`"), "{problem}");
}

/// A UTC offset that is not ±HH:MM is refused, naming the field.
#[test]
fn config_refuses_a_malformed_utc_offset() {
    let problem = refusal(config_with(json!({ "utc_offset": "CET" })));
    assert_eq!(problem.code, "invalid_config");
    assert!(problem.message.contains("utc_offset"), "{problem}");
}

/// Opening at or after closing is refused, naming both hours.
#[test]
fn config_refuses_open_hour_not_before_close_hour() {
    for open_hour in [22, 23] {
        let problem = refusal(config_with(json!({ "open_hour": open_hour })));
        assert_eq!(problem.code, "invalid_config");
        assert_eq!(
            problem.message,
            format!("open_hour {open_hour} must be before close_hour 22")
        );
    }
}

/// Closing after the end of the day is refused, naming close_hour.
#[test]
fn config_refuses_close_hour_after_midnight() {
    let problem = refusal(config_with(json!({ "close_hour": 25 })));
    assert_eq!(problem.code, "invalid_config");
    assert!(problem.message.starts_with("close_hour 25"), "{problem}");
}

/// Zero items per hour is refused, naming items_per_hour.
#[test]
fn config_refuses_zero_items_per_hour() {
    let problem = refusal(config_with(json!({ "items_per_hour": 0 })));
    assert_eq!(problem.code, "invalid_config");
    assert!(problem.message.contains("items_per_hour"), "{problem}");
}

/// Unknown and missing fields are refused rather than ignored or guessed.
#[test]
fn config_refuses_unknown_and_missing_fields() {
    let problem = refusal(config_with(json!({ "items_per_hr": 10 })));
    assert_eq!(problem.code, "invalid_config");
    assert!(problem.message.contains("items_per_hr"), "{problem}");

    let problem = refusal(config_with(json!({ "warehouse": null })));
    assert_eq!(problem.code, "invalid_config");
    assert!(problem.message.contains("warehouse"), "{problem}");
}

/// Without utc_offset the day is a UTC day, and close_hour may be 24.
#[test]
fn config_defaults_to_utc_and_allows_closing_at_midnight() {
    let scenario =
        Scenario::<Warehouse>::new(config_with(json!({ "utc_offset": null, "close_hour": 24 })));
    let view = scenario.view();
    let six = view.cell("06").unwrap();
    assert_eq!(
        six.start_ms,
        Timestamp::parse("2026-11-24T06:00:00Z").map(|t| t.0)
    );
    let last = view.cell("23").unwrap();
    assert_eq!(
        last.end_ms,
        Timestamp::parse("2026-11-25T00:00:00Z").map(|t| t.0)
    );
}

// View

/// A new day shows one open cell per opening hour, in local time.
#[test]
fn a_new_day_shows_its_opening_hours() {
    let view = pool().view();
    let keys: Vec<_> = view.cells.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "06", "07", "08", "09", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19",
            "20", "21"
        ]
    );
    let six = view.cell("06").unwrap();
    assert_eq!(
        six.labels,
        [
            ("warehouse".to_owned(), "ams-1".to_owned()),
            ("hour".to_owned(), "06:00-07:00".to_owned())
        ]
    );
    assert_eq!(six.start_ms, Some(local("06:00")));
    assert_eq!(six.end_ms, Some(local("07:00")));
    assert_eq!(
        (six.unit.as_str(), six.capacity, six.used),
        ("items", 400, 0)
    );
    assert!(six.open);
}

/// The details sum up the day: orders, totals and overbooked hours.
#[test]
fn details_summarise_the_day() {
    let scenario = pool()
        .given([placed("a", 500, 14, &[(12, 100), (13, 400)])])
        .given([Event::CapacitySet {
            hour: 13,
            items: 300,
            forced: true,
        }]);
    assert_eq!(
        scenario.view().details,
        json!({
            "warehouse": "ams-1",
            "date": "2026-11-24",
            "orders": 1,
            "total_capacity": 15 * 400 + 300,
            "total_allocated": 500,
            "overbooked_hours": [13],
        })
    );
}

// Reservations

/// An order fills the hour just before its due hour first.
#[test]
fn orders_are_placed_latest_first() {
    let scenario = pool()
        .when(order("a", 300, 14))
        .then([placed("a", 300, 14, &[(13, 300)])]);
    assert_eq!(cell(&scenario, "13"), (400, 300));
    assert_eq!(cell(&scenario, "12"), (400, 0));
}

/// An order larger than one hour spills backwards over several hours.
#[test]
fn large_orders_spill_over_earlier_hours() {
    pool().when(order("a", 1000, 10)).then([placed(
        "a",
        1000,
        10,
        &[(7, 200), (8, 400), (9, 400)],
    )]);
}

/// A later order takes what is left of the latest hour before spilling over.
#[test]
fn orders_fill_the_remainder_of_partly_booked_hours() {
    let scenario = pool()
        .given([placed("a", 300, 14, &[(13, 300)])])
        .when(order("b", 250, 14))
        .then([placed("b", 250, 14, &[(12, 150), (13, 100)])]);
    assert_eq!(cell(&scenario, "13"), (400, 400));
    assert_eq!(cell(&scenario, "12"), (400, 150));
}

/// Hours without capacity before opening are never used.
#[test]
fn closed_hours_take_no_items() {
    let outcome = pool().when(order("a", 500, 7));
    assert_eq!(
        message(&outcome),
        "only 400 of 500 items can be picked before 07:00"
    );
    outcome.then_rejected("insufficient_capacity");
}

/// An hour that has started is skipped; one starting right now is usable.
#[test]
fn hours_already_started_are_skipped() {
    let outcome = pool().at(local("10:30")).when(order("a", 500, 12));
    assert_eq!(
        message(&outcome),
        "only 400 of 500 items can be picked before 12:00"
    );
    outcome
        .then_rejected("insufficient_capacity")
        .at(local("10:00"))
        .when(order("a", 500, 12))
        .then([placed("a", 500, 12, &[(10, 100), (11, 400)])]);
}

/// An order whose due hour has been reached is rejected.
#[test]
fn orders_due_in_the_past_are_rejected() {
    let scenario = pool()
        .at(local("14:20"))
        .when(order("a", 10, 14))
        .then_rejected("due_passed")
        .at(local("14:00"))
        .when(order("a", 10, 14))
        .then_rejected("due_passed")
        .at(local("13:59"))
        .when(order("a", 10, 14))
        .then_rejected("insufficient_capacity");
    assert_eq!(scenario.view().details["orders"], 0);
}

/// A refused order leaves every hour as it was.
#[test]
fn insufficient_capacity_leaves_the_day_untouched() {
    let scenario = pool().given([placed("a", 300, 14, &[(13, 300)])]);
    let before = scenario.view();
    let outcome = scenario.when(order("b", 6500, 22));
    assert_eq!(
        message(&outcome),
        "only 6100 of 6500 items can be picked before 22:00"
    );
    let scenario = outcome.then_rejected("insufficient_capacity");
    assert_eq!(scenario.view(), before);
}

/// Absurdly large orders are refused with the real figures.
#[test]
fn huge_orders_are_refused() {
    let outcome = pool().when(order("a", u64::MAX, 24));
    assert_eq!(
        message(&outcome),
        format!("only 6400 of {} items can be picked before 24:00", u64::MAX)
    );
    outcome.then_rejected("insufficient_capacity");
}

/// Capacities near the limit of u64 add up without overflowing.
#[test]
fn huge_capacities_do_not_overflow() {
    let scenario = pool()
        .given([add_shift_event(0, 24, u64::MAX - 400)])
        .when(order("a", u64::MAX, 24))
        .then([placed(
            "a",
            u64::MAX,
            24,
            &[(22, 400), (23, u64::MAX - 400)],
        )]);
    let details = scenario.view().details;
    assert_eq!(details["total_capacity"], u64::MAX);
    assert_eq!(details["total_allocated"], u64::MAX);
}

/// Zero items and due hours outside 1..=24 are invalid.
#[test]
fn malformed_orders_are_invalid() {
    pool()
        .when(order("a", 0, 14))
        .then_invalid("invalid_items")
        .when(order("a", 10, 0))
        .then_invalid("invalid_due_hour")
        .when(order("a", 10, 25))
        .then_invalid("invalid_due_hour");
}

/// An order is checked before its id: a malformed duplicate is invalid.
#[test]
fn orders_are_validated_before_the_id_is_checked() {
    pool()
        .given([placed("a", 300, 14, &[(13, 300)])])
        .when(order("a", 0, 14))
        .then_invalid("invalid_items");
}

/// Placing an id that is already placed is rejected.
#[test]
fn duplicate_reservations_are_rejected() {
    let scenario = pool()
        .when(order("a", 300, 14))
        .then_accepted()
        .when(order("a", 10, 20))
        .then_rejected("duplicate_reservation");
    assert_eq!(cell(&scenario, "19"), (400, 0));
}

/// Release frees exactly the recorded allocation, which can then be booked again.
#[test]
fn release_frees_exactly_the_allocation() {
    let scenario = pool()
        .given([placed("a", 300, 14, &[(13, 300)])])
        .when(order("b", 600, 14))
        .then([placed("b", 600, 14, &[(11, 100), (12, 400), (13, 100)])])
        .when(Command::release("a"))
        .then([Event::OrderReleased {
            reservation_id: "a".into(),
            items: 300,
            allocation: allocation(&[(13, 300)]),
        }]);
    assert_eq!(cell(&scenario, "13"), (400, 100));
    assert_eq!(cell(&scenario, "12"), (400, 400));
    assert_eq!(cell(&scenario, "11"), (400, 100));
    assert_eq!(scenario.view().details["orders"], 1);

    scenario
        .when(order("a", 300, 14))
        .then([placed("a", 300, 14, &[(13, 300)])]);
}

/// Releasing an order that is not placed is rejected.
#[test]
fn releasing_an_unknown_order_is_rejected() {
    pool()
        .given([
            placed("a", 300, 14, &[(13, 300)]),
            Event::OrderReleased {
                reservation_id: "a".into(),
                items: 300,
                allocation: allocation(&[(13, 300)]),
            },
        ])
        .when(Command::release("a"))
        .then_rejected("unknown_reservation")
        .when(Command::release("b"))
        .then_rejected("unknown_reservation");
}

/// A request missing a field or with the wrong type is invalid.
#[test]
fn malformed_request_json_is_invalid() {
    pool()
        .when_reserve_json("a", json!({ "items": "many", "due_hour": 14 }))
        .then_invalid("invalid_request")
        .when_reserve_json("a", json!({ "items": 10 }))
        .then_invalid("invalid_request")
        .when_reserve_json("a", json!({ "items": 10, "due_hour": 14, "due": 12 }))
        .then_invalid("invalid_request")
        .when_reserve_json("a", json!({ "items": 10, "due_hour": 14 }))
        .then([placed("a", 10, 14, &[(13, 10)])]);
}

// Planner commands

/// Cutting an hour below its bookings is refused unless forced, then shows overbooked.
#[test]
fn set_capacity_below_bookings_needs_force() {
    let outcome = pool()
        .given([placed("a", 300, 14, &[(13, 300)])])
        .when(set_capacity(13, 250, false));
    assert_eq!(
        message(&outcome),
        "13:00 has 300 items booked; set at least 300 or force the reduction"
    );
    let scenario = outcome
        .then_rejected("would_overbook")
        .when(set_capacity(13, 250, true))
        .then([Event::CapacitySet {
            hour: 13,
            items: 250,
            forced: true,
        }]);
    let view = scenario.view();
    let thirteen = view.cell("13").unwrap();
    assert_eq!((thirteen.capacity, thirteen.used), (250, 300));
    assert!(thirteen.overbooked());
    assert_eq!(view.details["overbooked_hours"], json!([13]));

    // The overbooked hour has nothing free, so new orders go earlier.
    scenario
        .when(order("b", 10, 14))
        .then([placed("b", 10, 14, &[(12, 10)])]);
}

/// Setting capacity at or above the bookings needs no force and is not marked forced.
#[test]
fn set_capacity_within_bookings_is_not_forced() {
    pool()
        .given([placed("a", 300, 14, &[(13, 300)])])
        .when(set_capacity(13, 300, true))
        .then([Event::CapacitySet {
            hour: 13,
            items: 300,
            forced: false,
        }]);
}

/// Capacity set on a closed hour opens it for orders and shows it.
#[test]
fn set_capacity_opens_a_closed_hour() {
    let scenario = pool()
        .when_command("set_capacity", json!({ "hour": 5, "items": 120 }))
        .then([Event::CapacitySet {
            hour: 5,
            items: 120,
            forced: false,
        }]);
    assert_eq!(cell(&scenario, "05"), (120, 0));
    scenario
        .when(order("a", 520, 7))
        .then([placed("a", 520, 7, &[(5, 120), (6, 400)])]);
}

/// Hours outside 0..=23 cannot be set.
#[test]
fn set_capacity_refuses_hours_outside_the_day() {
    pool()
        .when(set_capacity(24, 100, false))
        .then_invalid("invalid_hour");
}

/// A shift adds its items to each of its hours and nowhere else.
#[test]
fn add_shift_adds_capacity_to_its_hours() {
    let scenario = pool()
        .when_command(
            "add_shift",
            json!({ "from_hour": 20, "to_hour": 24, "items_per_hour": 150 }),
        )
        .then([add_shift_event(20, 24, 150)]);
    assert_eq!(
        grid(&scenario)[13..],
        [
            ("19".to_owned(), 400, 0),
            ("20".to_owned(), 550, 0),
            ("21".to_owned(), 550, 0),
            ("22".to_owned(), 150, 0),
            ("23".to_owned(), 150, 0),
        ]
    );
    assert_eq!(
        scenario.view().details["total_capacity"],
        16 * 400 + 4 * 150
    );
}

/// Shifts with an empty or out-of-day range, no items, or overflowing items are invalid.
#[test]
fn add_shift_refuses_bad_ranges_and_items() {
    pool()
        .when(add_shift(8, 8, 100))
        .then_invalid("invalid_hours")
        .when(add_shift(9, 8, 100))
        .then_invalid("invalid_hours")
        .when(add_shift(20, 25, 100))
        .then_invalid("invalid_hours")
        .when(add_shift(8, 12, 0))
        .then_invalid("invalid_items")
        .when(add_shift(8, 12, u64::MAX - 399))
        .then_invalid("invalid_items")
        .when(add_shift(0, 6, u64::MAX))
        .then([add_shift_event(0, 6, u64::MAX)]);
}

/// A command name the type does not have is an unknown command.
#[test]
fn unknown_commands_are_invalid() {
    pool()
        .when_command("close_early", json!({ "hour": 18 }))
        .then_invalid("unknown_command");
}

// Contract

/// Events are stored in the documented JSON shape.
#[test]
fn events_have_the_documented_json_shape() {
    let event = placed("o-1", 500, 14, &[(12, 100), (13, 400)]);
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({
            "type": "order_placed",
            "reservation_id": "o-1",
            "items": 500,
            "due_hour": 14,
            "allocation": [{ "hour": 12, "items": 100 }, { "hour": 13, "items": 400 }],
        })
    );
    let event = Event::CapacitySet {
        hour: 13,
        items: 250,
        forced: true,
    };
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({ "type": "capacity_set", "hour": 13, "items": 250, "forced": true })
    );
}
