use allot_sdk::testkit::Scenario;
use allot_sdk::time::{ClockTime, Timestamp};
use serde_json::json;

use super::*;

type Pool = Scenario<Logistics>;

/// 2026-11-24 06:00 in Berlin: before every cut-off of the test day.
fn early() -> i64 {
    Timestamp::parse("2026-11-24T06:00:00+01:00").unwrap().0
}

fn config() -> serde_json::Value {
    json!({
        "area": "berlin-mitte",
        "date": "2026-11-24",
        "utc_offset": "+01:00",
        "cutoff_minutes": 60,
        "slots": [
            { "id": "08-10", "start": "08:00", "end": "10:00" },
            { "id": "10-12", "start": "10:00", "end": "12:00" },
            { "id": "16-18", "start": "16:00", "end": "18:00" },
        ],
        "vans": [
            { "id": "van-1", "shift_start": "08:00", "shift_end": "12:00", "stops_per_hour": 2, "max_weight_kg": 100 },
        ],
    })
}

fn pool() -> Pool {
    Pool::new(config()).at(early())
}

fn reserve(id: &str, slot: &str, stops: u64, weight_kg: u64) -> Command<Request, PlannerCommand> {
    Command::reserve(
        id,
        Request {
            slot: slot.into(),
            stops,
            weight_kg,
        },
    )
}

fn reserved(id: &str, slot: &str, stops: u64, weight_kg: u64) -> Event {
    Event::Reserved {
        reservation_id: id.into(),
        slot: slot.into(),
        stops,
        weight_kg,
    }
}

fn van(id: &str, start: &str, end: &str, stops_per_hour: u32) -> Van {
    Van {
        id: id.into(),
        shift_start: ClockTime::parse(start).unwrap(),
        shift_end: ClockTime::parse(end).unwrap(),
        stops_per_hour,
        max_weight_kg: 100,
    }
}

/// Capacity comes from the vans whose shifts overlap a slot.
#[test]
fn slot_capacity_is_what_the_vans_can_do() {
    let view = pool().view();
    assert_eq!(view.cell("08-10").unwrap().capacity, 4);
    assert_eq!(view.cell("10-12").unwrap().capacity, 4);
    assert_eq!(view.cell("16-18").unwrap().capacity, 0);
    assert_eq!(view.cell("08-10/weight").unwrap().capacity, 100);
    let start = view.cell("08-10").unwrap().start_ms.unwrap();
    assert_eq!(
        Timestamp(start),
        Timestamp::parse("2026-11-24T08:00:00+01:00").unwrap()
    );
}

/// A half-overlapping shift gives capacity for the overlapping part only.
#[test]
fn partial_shifts_count_pro_rata() {
    let view = pool()
        .as_role(Role::Planner)
        .when(Command::Custom(PlannerCommand::AddVan {
            van: van("van-2", "09:00", "17:00", 4),
        }))
        .then([Event::VanAdded {
            van: van("van-2", "09:00", "17:00", 4),
            slots: vec!["08-10".into(), "10-12".into(), "16-18".into()],
        }])
        .view();
    assert_eq!(view.cell("08-10").unwrap().capacity, 4 + 4);
    assert_eq!(view.cell("10-12").unwrap().capacity, 4 + 8);
    assert_eq!(view.cell("16-18").unwrap().capacity, 4);
}

/// Reservations fill a slot and the next one is refused as full.
#[test]
fn a_full_slot_refuses_more_stops() {
    let pool = pool()
        .when(reserve("r1", "08-10", 3, 10))
        .then([reserved("r1", "08-10", 3, 10)])
        .when(reserve("r2", "08-10", 2, 10))
        .then_rejected("slot_full")
        .when(reserve("r3", "08-10", 1, 10))
        .then([reserved("r3", "08-10", 1, 10)]);
    let cell = pool.view().cell("08-10").cloned().unwrap();
    assert_eq!((cell.capacity, cell.used), (4, 4));
}

/// Weight is a second limit of its own.
#[test]
fn weight_is_limited_too() {
    pool()
        .when(reserve("r1", "08-10", 1, 90))
        .then_accepted()
        .when(reserve("r2", "08-10", 1, 20))
        .then_rejected("weight_exceeded");
}

/// A slot closes at its cut-off, judged from the command's time.
#[test]
fn the_cutoff_closes_a_slot() {
    let before = Timestamp::parse("2026-11-24T06:59:59+01:00").unwrap().0;
    let at = Timestamp::parse("2026-11-24T07:00:00+01:00").unwrap().0;
    pool()
        .at(at)
        .when(reserve("late", "08-10", 1, 0))
        .then_rejected("cutoff_passed")
        .when(reserve("later-slot", "10-12", 1, 0))
        .then_accepted()
        .at(before)
        .when(reserve("early", "08-10", 1, 0))
        .then_accepted();
}

/// Planners close and reopen slots.
#[test]
fn closed_slots_refuse_reservations() {
    let pool = pool()
        .when(Command::Custom(PlannerCommand::CloseSlot {
            slot: "08-10".into(),
        }))
        .then([Event::SlotClosed {
            slot: "08-10".into(),
        }]);
    assert!(!pool.view().cell("08-10").unwrap().open);
    pool.when(reserve("r1", "08-10", 1, 0))
        .then_rejected("slot_closed")
        .when(Command::Custom(PlannerCommand::CloseSlot {
            slot: "08-10".into(),
        }))
        .then([])
        .when(Command::Custom(PlannerCommand::OpenSlot {
            slot: "08-10".into(),
        }))
        .then([Event::SlotOpened {
            slot: "08-10".into(),
        }])
        .when(reserve("r1", "08-10", 1, 0))
        .then_accepted();
}

/// Releasing gives the stops back, and only known reservations can be released.
#[test]
fn release_frees_capacity() {
    pool()
        .given([reserved("r1", "08-10", 4, 0)])
        .when(reserve("r2", "08-10", 1, 0))
        .then_rejected("slot_full")
        .when(Command::release("r1"))
        .then([Event::Released {
            reservation_id: "r1".into(),
            slot: "08-10".into(),
            stops: 4,
            weight_kg: 0,
        }])
        .when(reserve("r2", "08-10", 1, 0))
        .then_accepted()
        .when(Command::release("nope"))
        .then_rejected("unknown_reservation");
}

/// A reservation id can only be used once.
#[test]
fn reservation_ids_are_unique() {
    pool()
        .given([reserved("r1", "10-12", 1, 0)])
        .when(reserve("r1", "08-10", 1, 0))
        .then_rejected("duplicate_reservation");
}

/// Unknown slots and empty reservations are invalid, not rejections.
#[test]
fn malformed_requests_are_invalid() {
    pool()
        .when(reserve("r1", "07-08", 1, 0))
        .then_invalid("unknown_slot")
        .when(reserve("r1", "08-10", 0, 0))
        .then_invalid("invalid_stops")
        .when_reserve_json("r1", json!({ "slot": "08-10", "stops": "two" }))
        .then_invalid("invalid_request")
        .when_reserve_json("r1", json!({ "slot": "08-10", "colour": "red" }))
        .then_invalid("invalid_request")
        .when_command("paint_van", json!({}))
        .then_invalid("unknown_command")
        .when_command("close_slot", json!({ "slot_id": "08-10" }))
        .then_invalid("invalid_command");
}

/// Removing a van below the booked load is refused unless forced; forced, the slot shows overbooked.
#[test]
fn removing_capacity_below_bookings_needs_force() {
    let pool = pool()
        .given([reserved("r1", "08-10", 2, 0)])
        .as_role(Role::Planner)
        .when_command("remove_van", json!({ "van_id": "van-1" }))
        .then_rejected("would_overbook")
        .when_command("remove_van", json!({ "van_id": "van-1", "force": true }))
        .then([Event::VanRemoved {
            van_id: "van-1".into(),
            forced: true,
        }]);
    let view = pool.view();
    let cell = view.cell("08-10").unwrap();
    assert_eq!((cell.capacity, cell.used), (0, 2));
    assert!(cell.overbooked());
    assert_eq!(view.details["overbooked_slots"], json!(["08-10"]));
}

/// Moving a van shifts its capacity between slots within its shift.
#[test]
fn vans_move_between_slots() {
    let pool = pool()
        .given([Event::VanAdded {
            van: van("van-2", "08:00", "18:00", 3),
            slots: vec!["08-10".into()],
        }])
        .when_command(
            "move_van",
            json!({ "van_id": "van-2", "from": "08-10", "to": "16-18" }),
        )
        .then([Event::VanMoved {
            van_id: "van-2".into(),
            from: "08-10".into(),
            to: "16-18".into(),
            forced: false,
        }]);
    let view = pool.view();
    assert_eq!(view.cell("08-10").unwrap().capacity, 4);
    assert_eq!(view.cell("16-18").unwrap().capacity, 6);
    assert_eq!(view.details["vans"][1]["slots"], json!(["16-18"]));
    pool.when_command(
        "move_van",
        json!({ "van_id": "van-1", "from": "08-10", "to": "16-18" }),
    )
    .then_invalid("outside_shift")
    .when_command(
        "move_van",
        json!({ "van_id": "van-2", "from": "08-10", "to": "10-12" }),
    )
    .then_invalid("not_serving")
    .when_command(
        "move_van",
        json!({ "van_id": "van-1", "from": "08-10", "to": "10-12" }),
    )
    .then_invalid("already_serving");
}

/// Moving a van away from a booked slot is refused unless forced.
#[test]
fn moving_capacity_away_from_bookings_needs_force() {
    pool()
        .given([
            Event::VanAdded {
                van: van("van-2", "08:00", "18:00", 1),
                slots: vec!["08-10".into(), "10-12".into()],
            },
            reserved("r1", "08-10", 5, 0),
        ])
        .when_command(
            "move_van",
            json!({ "van_id": "van-2", "from": "08-10", "to": "16-18" }),
        )
        .then_rejected("would_overbook")
        .when_command(
            "move_van",
            json!({ "van_id": "van-2", "from": "08-10", "to": "16-18", "force": true }),
        )
        .then_accepted();
}

/// Bad configs are refused with a message naming the problem.
#[test]
fn configs_are_validated() {
    let refused = |patch: serde_json::Value| {
        let mut config = config();
        for (k, v) in patch.as_object().unwrap() {
            config[k] = v.clone();
        }
        Pool::create(config)
            .err()
            .expect("config should be refused")
    };
    assert!(refused(json!({ "area": "" })).message.contains("area"));
    assert!(
        refused(json!({ "date": "24.11.2026" }))
            .message
            .contains("24.11.2026")
    );
    assert!(refused(json!({ "slots": [] })).message.contains("slot"));
    let p = refused(json!({ "slots": [{ "id": "a", "start": "10:00", "end": "08:00" }] }));
    assert!(p.message.contains("slot a"), "{p}");
    let p = refused(json!({ "slots": [{ "id": "a", "start": "25:00", "end": "26:00" }] }));
    assert_eq!(p.code, "invalid_config");
    let p = refused(
        json!({ "vans": [{ "id": "v", "shift_start": "08:00", "shift_end": "10:00", "stops_per_hour": 0, "max_weight_kg": 1 }] }),
    );
    assert!(p.message.contains("stops_per_hour"), "{p}");
    let p = refused(json!({ "slots": [
        { "id": "a", "start": "08:00", "end": "10:00" },
        { "id": "b", "start": "09:00", "end": "11:00" },
    ] }));
    assert!(p.message.contains("slots a and b overlap"), "{p}");
    let p = refused(
        json!({ "vans": [{ "id": "v", "shift_start": "08:00", "shift_end": "10:00", "stops_per_hour": 1, "max_weight_kg": u64::MAX }] }),
    );
    assert!(p.message.contains("max_weight_kg"), "{p}");
    let p = refused(json!({ "colour": "red" }));
    assert!(p.message.contains("colour"), "{p}");
}
