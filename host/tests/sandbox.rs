//! The plugin sandbox: loading components, running decisions, and containing
//! plugins that misbehave.

mod common;

use allot_host::sandbox::{Command, Context, Error, Failure, LivePool, Plugin, PoolInstance, Role};
use common::{at, engine, plugin};
use serde_json::json;
use serde_json::value::RawValue;

fn raw(value: serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap()
}

fn reserve(id: &str, request: serde_json::Value) -> Command {
    Command::Reserve {
        id: id.into(),
        request: raw(request),
    }
}

fn custom(name: &str, payload: serde_json::Value) -> Command {
    Command::Custom {
        name: name.into(),
        payload: raw(payload),
    }
}

/// Before the cut-off of every slot in the tests' pools.
fn checkout() -> Context {
    at("2026-11-24T05:00:00+01:00", Role::Checkout)
}

fn logistics_config() -> String {
    json!({
        "area": "berlin-mitte",
        "date": "2026-11-24",
        "utc_offset": "+01:00",
        "slots": [
            { "id": "08-10", "start": "08:00", "end": "10:00" },
            { "id": "10-12", "start": "10:00", "end": "12:00" },
        ],
        "vans": [{ "id": "van-1", "shift_start": "08:00", "shift_end": "12:00", "stops_per_hour": 1, "max_weight_kg": 500 }],
    })
    .to_string()
}

fn unruly(id: &str, capacity: u64) -> LivePool {
    LivePool::create(
        &plugin("allot-test-unruly"),
        id,
        &json!({ "capacity": capacity }).to_string(),
    )
    .unwrap()
    .unwrap()
}

/// Everything that identifies a pool's state from outside: its snapshot and its view.
fn fingerprint(pool: &mut LivePool) -> (Vec<u8>, String) {
    let snapshot = pool.snapshot().expect("snapshot");
    let view = pool.view().expect("view");
    (snapshot.bytes, serde_json::to_string(&view).unwrap())
}

fn accepted(pool: &mut LivePool, command: &Command) -> Vec<serde_json::Value> {
    match pool.decide(&checkout(), command) {
        Ok(Ok(events)) => events
            .iter()
            .map(|e| serde_json::from_str(e.get()).unwrap())
            .collect(),
        other => panic!("expected events, got {other:?}"),
    }
}

/// The three capacity types load and describe themselves.
#[test]
fn capacity_types_load_and_describe_themselves() {
    for (package, capacity_type) in [
        ("allot-logistics", "logistics"),
        ("allot-warehouse", "warehouse"),
        ("allot-vehicle-load", "vehicle-load"),
        ("allot-plugin-template", "quota"),
    ] {
        let plugin = plugin(package);
        assert_eq!(plugin.info().name, package);
        assert_eq!(plugin.info().capacity_type, capacity_type);
        assert_eq!(plugin.info().version, env!("CARGO_PKG_VERSION"));
        assert_eq!(plugin.contract(), "1.0.0");
        assert!(plugin.digest().starts_with("sha256:") && plugin.digest().len() == 71);
    }
}

/// A logistics pool decides in the sandbox exactly as its native tests say.
#[test]
fn logistics_decides_in_the_sandbox() {
    let mut pool = LivePool::create(
        &plugin("allot-logistics"),
        "berlin-mitte/2026-11-24",
        &logistics_config(),
    )
    .unwrap()
    .unwrap();
    let events = accepted(
        &mut pool,
        &reserve(
            "r1",
            json!({ "slot": "08-10", "stops": 2, "weight_kg": 40 }),
        ),
    );
    assert_eq!(
        events,
        [
            json!({ "type": "reserved", "reservation_id": "r1", "slot": "08-10", "stops": 2, "weight_kg": 40 })
        ]
    );
    let full = pool
        .decide(&checkout(), &reserve("r2", json!({ "slot": "08-10" })))
        .unwrap();
    match full {
        Err(Failure::Rejected(p)) => {
            assert_eq!(p.code, "slot_full");
            assert!(p.message.contains("0 stops left"), "{}", p.message);
        }
        other => panic!("expected slot_full, got {other:?}"),
    }
    let late = at("2026-11-24T08:30:00+01:00", Role::Checkout);
    match pool
        .decide(&late, &reserve("r3", json!({ "slot": "10-12" })))
        .unwrap()
    {
        Err(Failure::Rejected(p)) => assert_eq!(p.code, "cutoff_passed"),
        other => panic!("expected cutoff_passed, got {other:?}"),
    }
    let view = pool.view().unwrap();
    let cell = view.cells.iter().find(|c| c.key == "08-10").unwrap();
    assert_eq!(
        (cell.capacity, cell.used, cell.unit.as_str()),
        (2, 2, "stops")
    );
    assert_eq!(cell.labels["slot"], "08-10");
    let details: serde_json::Value = serde_json::from_str(view.details.get()).unwrap();
    assert_eq!(details["reservations"], 1);
}

/// Invalid commands and bad configs come back as the plugin's problems, not as faults.
#[test]
fn invalid_input_is_reported_with_the_plugins_codes() {
    let logistics = plugin("allot-logistics");
    let refused = PoolInstance::create(&logistics, "p", r#"{"area": "x"}"#)
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(refused.code, "invalid_config");
    assert!(refused.message.contains("date"), "{}", refused.message);

    let mut pool = LivePool::create(&logistics, "p", &logistics_config())
        .unwrap()
        .unwrap();
    for (command, code) in [
        (reserve("r1", json!({ "slot": "06-08" })), "unknown_slot"),
        (reserve("r1", json!({ "slot": 8 })), "invalid_request"),
        (
            reserve("", json!({ "slot": "08-10" })),
            "invalid_reservation_id",
        ),
        (custom("paint_vans", json!({})), "unknown_command"),
        (Command::Confirm { id: "r1".into() }, "holds_unsupported"),
    ] {
        match pool.decide(&checkout(), &command).unwrap() {
            Err(Failure::Invalid(p)) => assert_eq!(p.code, code, "{command:?}"),
            other => panic!("{command:?}: expected invalid {code}, got {other:?}"),
        }
    }
}

/// A warehouse order is allocated by the plugin, latest hours first, and recorded in the event.
#[test]
fn warehouse_allocates_orders_in_the_sandbox() {
    let config = json!({ "warehouse": "ams-1", "date": "2026-11-24", "utc_offset": "+01:00", "open_hour": 6, "close_hour": 22, "items_per_hour": 100 });
    let mut pool = LivePool::create(
        &plugin("allot-warehouse"),
        "ams-1/2026-11-24",
        &config.to_string(),
    )
    .unwrap()
    .unwrap();
    let events = accepted(
        &mut pool,
        &reserve("o1", json!({ "items": 150, "due_hour": 12 })),
    );
    assert_eq!(events[0]["type"], "order_placed");
    assert_eq!(
        events[0]["allocation"],
        json!([{ "hour": 10, "items": 50 }, { "hour": 11, "items": 100 }])
    );
    let view = pool.view().unwrap();
    let hour = view.cells.iter().find(|c| c.key == "11").unwrap();
    assert_eq!((hour.capacity, hour.used), (100, 100));
}

/// A vehicle-load hold counts until it expires, judged from the command's time.
#[test]
fn vehicle_load_holds_expire_by_command_time() {
    let config = json!({
        "truck": "B-AL-123",
        "departure": "2026-11-24T18:00:00+01:00",
        "capacity": { "weight_kg": 1000, "volume_l": 5000, "pallets": 4 },
    });
    let mut pool = LivePool::create(
        &plugin("allot-vehicle-load"),
        "truck-1",
        &config.to_string(),
    )
    .unwrap()
    .unwrap();
    let nine = at("2026-11-24T09:00:00+01:00", Role::Checkout);
    let held = pool
        .decide(
            &nine,
            &reserve(
                "h1",
                json!({ "weight_kg": 800, "pallets": 1, "hold_minutes": 15 }),
            ),
        )
        .unwrap()
        .unwrap();
    assert!(held[0].get().contains("\"held\""));
    let too_heavy = pool
        .decide(&nine, &reserve("b1", json!({ "weight_kg": 300 })))
        .unwrap();
    assert_eq!(too_heavy.unwrap_err().problem().code, "capacity_exceeded");
    let later = at("2026-11-24T09:20:00+01:00", Role::Checkout);
    let booked = pool
        .decide(&later, &reserve("b1", json!({ "weight_kg": 300 })))
        .unwrap()
        .unwrap();
    assert!(booked[0].get().contains("hold_expired") && booked[1].get().contains("booked"));
    let confirm = pool
        .decide(&later, &Command::Confirm { id: "h1".into() })
        .unwrap();
    assert_eq!(confirm.unwrap_err().problem().code, "unknown_reservation");
}

/// A snapshot restored into a fresh instance gives the same state and view.
#[test]
fn snapshots_restore_the_same_state() {
    let logistics = plugin("allot-logistics");
    let mut pool = LivePool::create(&logistics, "p", &logistics_config())
        .unwrap()
        .unwrap();
    accepted(&mut pool, &reserve("r1", json!({ "slot": "10-12" })));
    let before = fingerprint(&mut pool);
    let snapshot = pool.snapshot().unwrap();
    let mut restored = PoolInstance::restore(&logistics, "p", &snapshot)
        .unwrap()
        .unwrap();
    assert_eq!(restored.snapshot().unwrap().bytes, before.0);
    assert_eq!(
        serde_json::to_string(&restored.view().unwrap()).unwrap(),
        before.1
    );

    let wrong_version = allot_host::sandbox::Snapshot {
        state_version: 99,
        ..snapshot
    };
    let refused = PoolInstance::restore(&logistics, "p", &wrong_version)
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(refused.code, "snapshot_version");
}

/// An endless loop is stopped at the deadline; the pool is as before and others keep working.
#[test]
fn an_endless_loop_times_out() {
    let mut pool = unruly("spinner", 3);
    let mut other = unruly("bystander", 1);
    accepted(&mut pool, &reserve("a", json!({})));
    let before = fingerprint(&mut pool);
    let started = std::time::Instant::now();
    let error = pool
        .decide(&checkout(), &custom("spin", json!({})))
        .unwrap_err();
    assert!(
        matches!(error, Error::Timeout { call: "decide", .. }),
        "{error}"
    );
    assert!(error.to_string().contains("deadline of 100ms"), "{error}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(fingerprint(&mut pool), before);
    accepted(&mut pool, &reserve("b", json!({})));
    accepted(&mut other, &reserve("x", json!({})));
}

/// A memory bomb hits the cap with a clear error; the pool is as before.
#[test]
fn a_memory_bomb_hits_the_cap() {
    let mut pool = unruly("hog", 3);
    accepted(&mut pool, &reserve("a", json!({})));
    let before = fingerprint(&mut pool);
    let error = pool
        .decide(&checkout(), &custom("hog", json!({})))
        .unwrap_err();
    assert!(
        matches!(error, Error::MemoryLimit { call: "decide", limit } if limit == 64 << 20),
        "{error}"
    );
    assert_eq!(fingerprint(&mut pool), before);
    accepted(&mut pool, &reserve("b", json!({})));
}

/// A panic while deciding fails that command with the panic message; the pool is as before.
#[test]
fn a_panic_while_deciding_fails_that_command_only() {
    let mut pool = unruly("panicky", 2);
    accepted(&mut pool, &reserve("a", json!({})));
    let before = fingerprint(&mut pool);
    let error = pool
        .decide(&checkout(), &custom("explode", json!({})))
        .unwrap_err();
    match &error {
        Error::Trap {
            call: "decide",
            message,
        } => assert!(message.contains("boom: told to explode"), "{message}"),
        other => panic!("expected a trap, got {other}"),
    }
    assert_eq!(fingerprint(&mut pool), before);
    accepted(&mut pool, &reserve("b", json!({})));
    let full = pool.decide(&checkout(), &reserve("c", json!({}))).unwrap();
    assert_eq!(full.unwrap_err().problem().code, "full");
}

/// A panic while applying its own event rejects the command and rebuilds the pool as before.
#[test]
fn a_panic_while_applying_rebuilds_the_pool() {
    let mut pool = unruly("apply-panic", 2);
    accepted(&mut pool, &reserve("a", json!({})));
    let before = fingerprint(&mut pool);
    let error = pool
        .decide(&checkout(), &custom("explode_on_apply", json!({})))
        .unwrap_err();
    assert!(
        matches!(&error, Error::Trap { call: "apply", message } if message.contains("exploded while applying")),
        "{error}"
    );
    assert_eq!(fingerprint(&mut pool), before);
    assert_eq!(pool.uncheckpointed(), 1);
}

/// Recovery after a fault also works from a checkpoint snapshot plus later events.
#[test]
fn recovery_uses_the_checkpoint_and_the_tail() {
    let mut pool = unruly("checkpointed", 5);
    accepted(&mut pool, &reserve("a", json!({})));
    pool.checkpoint().unwrap();
    accepted(&mut pool, &reserve("b", json!({})));
    let before = fingerprint(&mut pool);
    pool.decide(&checkout(), &custom("explode", json!({})))
        .unwrap_err();
    assert_eq!(fingerprint(&mut pool), before);
    assert_eq!(pool.uncheckpointed(), 1);
}

/// A pool whose plugin cannot even start again is marked failed and says why.
#[test]
fn a_pool_that_cannot_start_is_refused_with_the_reason() {
    let error = PoolInstance::create(
        &plugin("allot-test-unruly"),
        "p",
        r#"{"capacity": 1, "panic_on_create": true}"#,
    )
    .err()
    .unwrap();
    assert!(
        matches!(&error, Error::Trap { call: "create", message } if message.contains("told to panic on create")),
        "{error}"
    );
}

/// The sandbox grants nothing: no files, no environment, no clock, no network.
#[test]
fn plugins_see_nothing_of_the_machine() {
    let mut pool = unruly("snoop", 1);
    let events = accepted(&mut pool, &custom("snoop", json!({})));
    let seen = &events[0];
    assert!(
        seen["root"].as_str().unwrap().starts_with("refused"),
        "{seen}"
    );
    assert_eq!(seen["env_vars"], 0, "{seen}");
    assert_eq!(seen["clock_secs"], 0, "{seen}");
    // Refused by policy, before any packet: not "connected", nor the
    // "connection refused" that only a real attempt could produce.
    assert_eq!(seen["network"], "PermissionDenied", "{seen}");
}

/// A component built for another contract version is refused, naming both versions.
#[test]
fn a_component_for_another_contract_is_refused() {
    let bytes = std::fs::read(common::component("allot-test-wrong-contract")).unwrap();
    let error = Plugin::load(&engine(), &bytes).unwrap_err();
    assert!(
        matches!(&error, Error::WrongContract { found } if found == "0.9.0"),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("allot:capacity@0.9.0") && message.contains("1.0.0"),
        "{message}"
    );
}

/// Bytes that are no component are refused before anything runs.
#[test]
fn garbage_bytes_are_refused() {
    let error = Plugin::load(&engine(), b"definitely not wasm").unwrap_err();
    assert!(
        matches!(&error, Error::NotAComponent(m) if m.contains("magic number")),
        "{error}"
    );
    let error = Plugin::load(&engine(), b"\0asm\x01\0\0\0").unwrap_err();
    assert!(
        matches!(&error, Error::NotAComponent(m) if m.contains("core WebAssembly module")),
        "{error}"
    );
    // A component header followed by junk is refused by the parser.
    let error = Plugin::load(&engine(), b"\0asm\x0d\0\x01\0\xff\xff\xff").unwrap_err();
    assert!(matches!(error, Error::NotAComponent(_)), "{error}");
}

/// Output that breaks the contract is caught at the boundary and named.
#[test]
fn garbage_output_is_caught() {
    let garbage = plugin("allot-test-garbage-output");
    let mut pool = LivePool::create(&garbage, "g", "{}").unwrap().unwrap();
    let error = pool
        .decide(&checkout(), &reserve("r", json!({})))
        .unwrap_err();
    assert!(error.to_string().contains("event 1 is not JSON"), "{error}");
    let error = pool
        .decide(&checkout(), &Command::Release { id: "r".into() })
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("`Not A Code!` is not a problem code"),
        "{error}"
    );
    let error = pool.view().unwrap_err();
    assert!(
        matches!(&error, Error::BadOutput { call: "view", .. }),
        "{error}"
    );
    assert!(
        pool.decide(&checkout(), &Command::Confirm { id: "r".into() })
            .unwrap()
            .is_ok()
    );
}

/// Plugin log lines reach the host's log, tagged with the pool.
#[test]
fn plugin_logs_carry_the_pool_id() {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut pool = unruly("logged-pool", 1);
        pool.decide(&checkout(), &custom("explode", json!({})))
            .unwrap_err();
    });
    let log = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("allot::plugin"))
        .unwrap_or_else(|| panic!("no plugin line in:\n{log}"));
    assert!(
        line.contains("logged-pool") && line.contains("boom: told to explode"),
        "{line}"
    );
}
