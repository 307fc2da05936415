use allot_sdk::Command;
use allot_sdk::testkit::{Outcome, Scenario};
use allot_sdk::time::{MINUTE_MS, Timestamp};
use serde_json::{Value, json};

use crate::{Event, Load, LoadCommand, Request, VehicleLoad};

/// An instant on departure day, given as local `HH:MM` (UTC+1).
fn at(clock: &str) -> i64 {
    Timestamp::parse(&format!("2026-11-24T{clock}:00+01:00"))
        .expect("valid test time")
        .0
}

fn config() -> Value {
    json!({
        "truck": "B-AL-123",
        "departure": "2026-11-24T18:00:00+01:00",
        "capacity": {"weight_kg": 12000, "volume_l": 40000, "pallets": 18},
    })
}

/// The standard truck, deciding at noon.
fn truck() -> Scenario<VehicleLoad> {
    Scenario::new(config()).at(at("12:00"))
}

fn load(weight_kg: u64, volume_l: u64, pallets: u64) -> Load {
    Load {
        weight_kg,
        volume_l,
        pallets,
    }
}

fn book(id: &str, load: Load) -> Command<Request, LoadCommand> {
    Command::reserve(id, request(load, None))
}

fn hold(id: &str, load: Load, minutes: u64) -> Command<Request, LoadCommand> {
    Command::reserve(id, request(load, Some(minutes)))
}

fn request(load: Load, hold_minutes: Option<u64>) -> Request {
    Request {
        weight_kg: load.weight_kg,
        volume_l: load.volume_l,
        pallets: load.pallets,
        hold_minutes,
    }
}

fn booked(id: &str, load: Load) -> Event {
    Event::Booked {
        reservation_id: id.into(),
        load,
    }
}

fn held(id: &str, load: Load, expires_ms: i64) -> Event {
    Event::Held {
        reservation_id: id.into(),
        load,
        expires_ms,
    }
}

fn expired(id: &str, load: Load) -> Event {
    Event::HoldExpired {
        reservation_id: id.into(),
        load,
    }
}

fn message(outcome: &Outcome<VehicleLoad>) -> String {
    match outcome.result() {
        Err(failure) => failure.problem().message.clone(),
        Ok(events) => panic!("expected a refusal, got {events:?}"),
    }
}

/// (used, held, capacity) of a view cell, for compact assertions.
fn cell(scenario: &Scenario<VehicleLoad>, key: &str) -> (u64, u64, u64) {
    let view = scenario.view();
    let cell = view.cell(key).expect("cell exists");
    (cell.used, cell.held, cell.capacity)
}

fn config_problem(config: Value) -> String {
    match Scenario::<VehicleLoad>::create(config) {
        Ok(_) => panic!("config accepted"),
        Err(problem) => {
            assert_eq!(problem.code, "invalid_config", "{problem}");
            problem.message
        }
    }
}

/// A config without cutoff and hold limits gets 60 and 30 minutes.
#[test]
fn config_defaults_cutoff_and_max_hold() {
    let scenario = truck();
    let view = scenario.view();
    let weight = view.cell("weight").unwrap();
    assert_eq!(weight.start_ms, Some(at("17:00")));
    assert_eq!(weight.end_ms, Some(at("18:00")));

    truck()
        .when(hold("a", load(1, 0, 0), 30))
        .then_accepted()
        .when(hold("b", load(1, 0, 0), 31))
        .then_invalid("invalid_hold");
}

/// Every config field that must be positive or non-empty is named when it is not.
#[test]
fn config_refusals_name_the_field() {
    let mut c = config();
    c["truck"] = json!("  ");
    assert_eq!(config_problem(c), "truck must not be empty");

    let mut c = config();
    c["capacity"]["volume_l"] = json!(0);
    assert_eq!(
        config_problem(c),
        "capacity.volume_l must be greater than 0"
    );

    let mut c = config();
    c["capacity"] = json!({"weight_kg": 12000, "volume_l": 40000});
    assert_eq!(config_problem(c), "capacity.pallets must be greater than 0");

    let mut c = config();
    c["max_hold_minutes"] = json!(0);
    assert_eq!(config_problem(c), "max_hold_minutes must be greater than 0");

    let mut c = config();
    c["cutoff_minutes"] = json!(u64::MAX);
    assert_eq!(config_problem(c), "cutoff_minutes is too large");
}

/// Unknown fields and unreadable departures are refused before any check.
#[test]
fn config_must_parse() {
    let mut c = config();
    c["trailer"] = json!("none");
    assert!(config_problem(c).contains("unknown field `trailer`"));

    let mut c = config();
    c["departure"] = json!("24.11.2026 18:00");
    assert!(config_problem(c).contains("not an RFC 3339 timestamp"));
}

/// A load that fits every dimension is booked and shows as used.
#[test]
fn booking_that_fits_every_dimension_is_booked() {
    let full = load(12000, 40000, 18);
    let scenario = truck().when(book("a", full)).then([booked("a", full)]);
    assert_eq!(cell(&scenario, "weight"), (12000, 0, 12000));
    assert_eq!(cell(&scenario, "volume"), (40000, 0, 40000));
    assert_eq!(cell(&scenario, "pallets"), (18, 0, 18));
    assert!(!scenario.view().cell("pallets").unwrap().overbooked());
}

/// A load too big in one dimension is refused naming only that dimension, and changes nothing.
#[test]
fn one_dimension_too_big_is_refused() {
    let scenario = truck().given([booked("a", load(11200, 1000, 17))]);
    let outcome = scenario.when(book("b", load(800, 2000, 2)));
    assert_eq!(message(&outcome), "pallets: 2 needed, 1 free");
    let scenario = outcome.then_rejected("capacity_exceeded");
    assert_eq!(cell(&scenario, "pallets"), (17, 0, 18));
    assert_eq!(scenario.state().bookings.len(), 1);
}

/// A refusal lists every dimension that does not fit, with needed and free amounts.
#[test]
fn capacity_refusal_lists_each_short_dimension() {
    let outcome = truck()
        .given([booked("a", load(11700, 39000, 17))])
        .when(book("b", load(800, 2000, 2)));
    assert_eq!(
        message(&outcome),
        "weight: 800 kg needed, 300 free; volume: 2000 l needed, 1000 free; \
         pallets: 2 needed, 1 free"
    );
    outcome.then_rejected("capacity_exceeded");
}

/// Empty loads and holds of zero or beyond the maximum are invalid.
#[test]
fn empty_loads_and_bad_holds_are_invalid() {
    truck()
        .when(book("a", Load::ZERO))
        .then_invalid("empty_load")
        .when(hold("a", load(1, 1, 1), 0))
        .then_invalid("invalid_hold");
    let outcome = truck().when(hold("a", load(1, 1, 1), 45));
    assert_eq!(
        message(&outcome),
        "hold_minutes must be between 1 and 30 (max_hold_minutes), got 45"
    );
    outcome.then_invalid("invalid_hold");
}

/// A reservation id already booked or held cannot be reserved again.
#[test]
fn reservation_ids_are_unique() {
    let noon = at("12:00");
    truck()
        .given([
            booked("a", load(100, 0, 0)),
            held("b", load(100, 0, 0), noon + MINUTE_MS),
        ])
        .when(book("a", load(1, 0, 0)))
        .then_rejected("duplicate_reservation")
        .when(hold("b", load(1, 0, 0), 5))
        .then_rejected("duplicate_reservation");
}

/// An unexpired hold takes capacity like a booking.
#[test]
fn hold_counts_against_capacity_before_expiry() {
    let noon = at("12:00");
    let scenario = truck().when(hold("a", load(12000, 0, 0), 15)).then([held(
        "a",
        load(12000, 0, 0),
        noon + 15 * MINUTE_MS,
    )]);
    assert_eq!(cell(&scenario, "weight"), (0, 12000, 12000));

    let outcome = scenario
        .at(noon + 15 * MINUTE_MS - 1)
        .when(book("b", load(1, 0, 0)));
    assert_eq!(message(&outcome), "weight: 1 kg needed, 0 free");
    outcome.then_rejected("capacity_exceeded");
}

/// Once expired a hold frees its capacity, and the next reservation sweeps it.
#[test]
fn expired_hold_is_swept_by_next_reservation() {
    let expiry = at("12:15");
    let all = load(12000, 40000, 18);
    let scenario = truck()
        .given([
            held("a", all, expiry),
            held("later", load(0, 0, 1), at("13:00")),
        ])
        // A hold is over at the very millisecond it expires.
        .at(expiry)
        .when(book("b", load(500, 100, 1)))
        .then([expired("a", all), booked("b", load(500, 100, 1))]);
    assert_eq!(cell(&scenario, "weight"), (500, 0, 12000));
    assert_eq!(cell(&scenario, "pallets"), (1, 1, 18));
    assert!(!scenario.state().holds.contains_key("a"));
    assert!(scenario.state().holds.contains_key("later"));
}

/// The id of an expired hold may be reserved again, replacing the stale hold.
#[test]
fn expired_hold_id_can_be_reserved_again() {
    let l = load(800, 2000, 2);
    let scenario = truck()
        .given([held("a", l, at("11:30"))])
        .when(hold("a", l, 10))
        .then([expired("a", l), held("a", l, at("12:10"))]);
    assert_eq!(cell(&scenario, "weight"), (0, 800, 12000));
}

/// A hold confirmed before it expires becomes a booking.
#[test]
fn confirm_before_expiry_books_the_hold() {
    let l = load(800, 2000, 2);
    let scenario = truck()
        .given([held("a", l, at("12:15"))])
        .at(at("12:14"))
        .when(Command::confirm("a"))
        .then([Event::HoldConfirmed {
            reservation_id: "a".into(),
            load: l,
        }]);
    assert_eq!(cell(&scenario, "volume"), (2000, 0, 40000));
    // Confirmed loads no longer expire.
    let scenario = scenario
        .at(at("13:00"))
        .when_command("expire_holds", json!({}))
        .then([]);
    assert_eq!(cell(&scenario, "pallets"), (2, 0, 18));
}

/// A hold confirmed at or after its expiry is refused.
#[test]
fn confirm_after_expiry_is_refused() {
    let outcome = truck()
        .given([held("a", load(800, 0, 0), at("11:45"))])
        .when(Command::confirm("a"));
    assert_eq!(
        message(&outcome),
        "the hold on reservation a expired at 2026-11-24T10:45:00Z"
    );
    outcome.then_rejected("hold_expired");
}

/// Confirming a booking or an unknown id is refused.
#[test]
fn confirm_needs_a_hold() {
    truck()
        .given([booked("a", load(800, 0, 0))])
        .when(Command::confirm("a"))
        .then_rejected("already_confirmed")
        .when(Command::confirm("nope"))
        .then_rejected("unknown_reservation");
}

/// Releasing a hold or a booking gives its capacity back.
#[test]
fn release_frees_capacity() {
    let half = load(6000, 20000, 9);
    let scenario = truck()
        .given([booked("a", half), held("b", half, at("12:20"))])
        .when(book("c", load(1, 0, 0)))
        .then_rejected("capacity_exceeded")
        .when(Command::release("b"))
        .then([Event::Released {
            reservation_id: "b".into(),
            load: half,
            was_hold: true,
        }])
        .when(Command::release("a"))
        .then([Event::Released {
            reservation_id: "a".into(),
            load: half,
            was_hold: false,
        }]);
    assert_eq!(cell(&scenario, "weight"), (0, 0, 12000));
    scenario
        .when(book("c", load(12000, 40000, 18)))
        .then_accepted()
        .when(Command::release("gone"))
        .then_rejected("unknown_reservation");
}

/// Reservations close `cutoff_minutes` before departure, to the millisecond.
#[test]
fn reservations_close_at_cutoff() {
    let mut c = config();
    c["cutoff_minutes"] = json!(90);
    let closes = at("16:30");
    let scenario = Scenario::<VehicleLoad>::new(c)
        .at(closes - 1)
        .when(book("a", load(1, 0, 0)))
        .then_accepted();
    let outcome = scenario.at(closes).when(book("b", load(1, 0, 0)));
    assert_eq!(
        message(&outcome),
        "reservations for truck B-AL-123 closed at 2026-11-24T15:30:00Z \
         (departure 2026-11-24T17:00:00Z)"
    );
    outcome.then_rejected("cutoff_passed");
}

/// `expire_holds` sweeps exactly the holds expired at the command's time.
#[test]
fn expire_holds_sweeps_expired_holds() {
    let (l1, l2, l3) = (load(1, 0, 0), load(2, 0, 0), load(4, 0, 0));
    let scenario = truck()
        .given([
            held("a", l1, at("12:05")),
            held("b", l2, at("12:10")),
            held("c", l3, at("12:20")),
        ])
        .at(at("12:10"))
        .when_command("expire_holds", json!({}))
        .then([expired("a", l1), expired("b", l2)]);
    assert_eq!(cell(&scenario, "weight"), (0, 4, 12000));
    scenario.when_command("expire_holds", json!({})).then([]);
}

/// A reduction below the load is refused, then accepted with force and shown overbooked.
#[test]
fn set_capacity_below_load_needs_force() {
    let scenario = truck().given([
        booked("a", load(9000, 10000, 10)),
        held("b", load(1000, 0, 2), at("12:30")),
    ]);
    let outcome = scenario.when_command("set_capacity", json!({"weight_kg": 8000, "pallets": 16}));
    assert_eq!(
        message(&outcome),
        "weight: new capacity 8000 kg is below the 10000 kg booked and held; \
         send force: true to overbook"
    );
    let scenario = outcome
        .then_rejected("would_overbook")
        .when_command(
            "set_capacity",
            json!({"weight_kg": 8000, "pallets": 16, "force": true}),
        )
        .then([Event::CapacityChanged {
            capacity: load(8000, 40000, 16),
            forced: true,
        }]);
    let view = scenario.view();
    let weight = view.cell("weight").unwrap();
    assert_eq!(
        (weight.used, weight.held, weight.capacity),
        (9000, 1000, 8000)
    );
    assert!(weight.overbooked());
    assert!(!view.cell("pallets").unwrap().overbooked());
}

/// A change that still fits is not forced; expired holds do not block it.
#[test]
fn set_capacity_within_load_changes_only_given_dimensions() {
    truck()
        .given([
            booked("a", load(5000, 0, 0)),
            held("b", load(5000, 0, 0), at("11:00")),
        ])
        .when_command("set_capacity", json!({"weight_kg": 5000}))
        .then([Event::CapacityChanged {
            capacity: load(5000, 40000, 18),
            forced: false,
        }]);
}

/// Zero, missing or misspelt capacities are invalid.
#[test]
fn set_capacity_validates_its_payload() {
    truck()
        .when_command("set_capacity", json!({"volume_l": 0}))
        .then_invalid("invalid_capacity")
        .when_command("set_capacity", json!({"force": true}))
        .then_invalid("invalid_capacity")
        .when_command("set_capacity", json!({"weight": 100}))
        .then_invalid("invalid_command");
}

/// A command the type does not have is refused as unknown.
#[test]
fn unknown_command_is_invalid() {
    truck()
        .when_command("load_forklift", json!({}))
        .then_invalid("unknown_command");
}

/// Requests that do not parse, including misspelt dimensions, are invalid.
#[test]
fn malformed_request_is_invalid() {
    truck()
        .when_reserve_json("a", json!({"weight_kg": "heavy"}))
        .then_invalid("invalid_request")
        .when_reserve_json("a", json!({"weight": 800}))
        .then_invalid("invalid_request")
        .when_reserve_json("a", json!({"pallets": 2, "hold_minutes": 5}))
        .then([held("a", load(0, 0, 2), at("12:05"))]);
}

/// The view labels cells and details the truck, cutoff, holds and bookings.
#[test]
fn view_shows_cells_and_details() {
    let scenario = truck().given([
        booked("a", load(800, 2000, 2)),
        booked("b", load(200, 0, 1)),
        held("c", load(100, 50, 0), at("12:15")),
    ]);
    let view = scenario.view();
    let keys: Vec<_> = view
        .cells
        .iter()
        .map(|c| (c.key.as_str(), c.unit.as_str()))
        .collect();
    assert_eq!(
        keys,
        [("weight", "kg"), ("volume", "l"), ("pallets", "pallets")]
    );
    let volume = view.cell("volume").unwrap();
    assert_eq!(
        volume.labels,
        [
            ("truck".to_string(), "B-AL-123".to_string()),
            ("dimension".to_string(), "volume".to_string())
        ]
    );
    assert_eq!(
        (volume.used, volume.held, volume.capacity),
        (2000, 50, 40000)
    );
    assert!(volume.open);
    assert_eq!(
        view.details,
        json!({
            "truck": "B-AL-123",
            "departure": "2026-11-24T17:00:00Z",
            "cutoff_ms": at("17:00"),
            "holds": [{"reservation_id": "c", "expires_ms": at("12:15")}],
            "bookings": 2,
        })
    );
}

/// Events keep the JSON shape readers query.
#[test]
fn events_serialize_with_type_tags() {
    let event = Event::Released {
        reservation_id: "a".into(),
        load: load(800, 2000, 2),
        was_hold: true,
    };
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({
            "type": "released",
            "reservation_id": "a",
            "load": {"weight_kg": 800, "volume_l": 2000, "pallets": 2},
            "was_hold": true,
        })
    );
}
