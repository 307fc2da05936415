//! The REST API over real HTTP, against a node on a real PostgreSQL running
//! real plugins: every route, every error code, the roles.

mod common;

use std::time::Duration;

use allot_host::node::{ClusterConfig, EntityConfig, Node};
use common::api::{Api, CHECKOUT, OPERATOR, PLANNER, PLUGINS, node, node_in_cluster, node_with};
use reqwest::Method;
use serde_json::{Value, json};

/// A logistics pool config for a day far ahead, so that no cut-off has passed.
fn logistics(area: &str, stops_per_hour: u64) -> Value {
    json!({
        "area": area, "date": "2031-03-10", "utc_offset": "+00:00",
        "slots": [
            { "id": "08-10", "start": "08:00", "end": "10:00" },
            { "id": "16-18", "start": "16:00", "end": "18:00" },
        ],
        "vans": [{ "id": "van-1", "shift_start": "08:00", "shift_end": "18:00",
                   "stops_per_hour": stops_per_hour, "max_weight_kg": 500 }],
    })
}

/// The cell of a pool (a grid entry or a pool's state) with this key.
fn cell<'a>(pool: &'a Value, key: &str) -> &'a Value {
    pool["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == key)
        .unwrap_or_else(|| panic!("no cell {key} in {pool}"))
}

/// Waits until this node's read model holds the pool at `seq` or later.
async fn read_model_reaches(node: &Node, pool: &str, seq: i64) {
    let id = allot_host::ids::PoolId::new(pool).unwrap();
    for _ in 0..500 {
        if node
            .read_model()
            .get(&id)
            .is_some_and(|view| view.seq_nr.0 >= seq)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the read model never reached seq {seq} of {pool}");
}

/// A read-model row that falls behind its pool's history while the node
/// keeps the pool (here: deleted and set back from outside) is written
/// again by the node's periodic look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_rows_behind_their_history_are_written_again() {
    let url = common::database().await;
    let cluster = ClusterConfig {
        view_repair_seconds: 1,
        ..ClusterConfig::default()
    };
    let node = node_in_cluster(Some(url.clone()), EntityConfig::default(), cluster).await;
    let planner = Api::new(&node, Some(PLANNER));
    let checkout = Api::new(&node, Some(CHECKOUT));
    for pool in ["lost", "behind"] {
        planner
            .create(pool, "quota", json!({ "name": pool, "units": 5 }))
            .await
            .ok(201);
        checkout
            .reserve(pool, &format!("{pool}-1"), json!({ "units": 2 }))
            .await
            .ok(201);
        read_model_reaches(&node, pool, 1).await;
    }
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let rows = || async {
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT pool_id, seq_nr, (view->'cells'->0->>'used')::bigint FROM pool_views
              WHERE pool_id IN ('lost', 'behind') ORDER BY pool_id",
        )
        .fetch_all(&db)
        .await
        .unwrap()
    };
    // Both rows are current, written by the view writer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rows().await != [("behind".into(), 1, 2), ("lost".into(), 1, 2)] {
        assert!(std::time::Instant::now() < deadline, "{:?}", rows().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("DELETE FROM pool_views WHERE pool_id = 'lost'")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE pool_views SET seq_nr = 0, view = '{\"cells\": [{\"used\": 0}]}'
          WHERE pool_id = 'behind'",
    )
    .execute(&db)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while rows().await != [("behind".into(), 1, 2), ("lost".into(), 1, 2)] {
        assert!(
            std::time::Instant::now() < deadline,
            "not repaired: {:?}",
            rows().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reserve, retry, read the outcome, release: the checkout flow, with the audit trail it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_flow_with_audit_trail() {
    let node = node().await;
    let planner = Api::new(&node, Some(PLANNER));
    let checkout = Api::new(&node, Some(CHECKOUT));
    planner
        .create("q1", "quota", json!({ "name": "q1", "units": 5 }))
        .await
        .ok(201);

    let first = checkout
        .reserve("q1", "order-1", json!({ "units": 2 }))
        .await;
    let body = first.ok(201).clone();
    assert_eq!(body["seq_nr"], 1);
    assert_eq!(body["events"][0]["type"], "reserved");
    assert!(first.headers.contains_key("x-request-id"));
    // A retry with the same id answers the first outcome and takes nothing more.
    let again = checkout
        .reserve("q1", "order-1", json!({ "units": 2 }))
        .await;
    assert_eq!(again.ok(201), &body);

    let status = checkout.get("/v1/pools/q1/reservations/order-1").await;
    assert_eq!(status.ok(200)["status"], "reserved");

    let released = checkout
        .send(
            Method::POST,
            "/v1/pools/q1/reservations/order-1/release",
            None,
        )
        .await;
    assert_eq!(released.ok(200)["seq_nr"], 2);
    let status = checkout.get("/v1/pools/q1/reservations/order-1").await;
    assert_eq!(status.ok(200)["status"], "released");

    let history = planner.get("/v1/pools/q1/events").await;
    let events = history.ok(200)["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["actor"], "checkout-web (checkout)");
    assert_eq!(events[0]["plugin_name"], "allot-plugin-template");
    assert_eq!(
        events[0]["request_id"],
        first.headers["x-request-id"].to_str().unwrap()
    );
    assert!(events[0]["recorded_at"].as_str().unwrap().contains('T'));
    node.stop().await;
}

/// Outcomes and events read back from the journal are the very bytes the
/// command answered first: a retry on a restarted node, the reservation's
/// status and the pool's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_outcomes_come_back_as_answered() {
    let url = common::database().await;
    let node = node_with(Some(url.clone()), EntityConfig::default()).await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("q1", "quota", json!({ "name": "q1", "units": 2 }))
        .await
        .ok(201);
    let first = planner.reserve("q1", "a", json!({ "units": 2 })).await;
    first.ok(201);
    // The plugin's own order, which is not the one `jsonb` sorts keys into.
    let event = r#"{"type":"reserved","reservation_id":"a","units":2}"#;
    assert_eq!(
        first.text,
        format!(r#"{{"pool":"q1","seq_nr":1,"events":[{event}]}}"#)
    );
    planner
        .reserve("q1", "b", json!({ "units": 1 }))
        .await
        .problem(409, "quota_exhausted");
    node.stop().await;

    let node = node_with(Some(url), EntityConfig::default()).await;
    let planner = Api::new(&node, Some(PLANNER));
    let again = planner.reserve("q1", "a", json!({ "units": 2 })).await;
    assert_eq!(again.ok(201), &first.body);
    assert_eq!(again.text, first.text);
    let status = planner.get("/v1/pools/q1/reservations/a").await;
    assert!(
        status.text.contains(&format!("\"events\":[{event}]")),
        "{}",
        status.text
    );
    let history = planner.get("/v1/pools/q1/events").await;
    assert!(
        history.text.contains(&format!("\"payload\":{event}")),
        "{}",
        history.text
    );
    // A refusal's outcome, kept in a row of its own, reads back as the
    // node wrote it too (`jsonb` would have put a space after each colon).
    let refused = planner.get("/v1/pools/q1/reservations/b").await;
    assert_eq!(refused.ok(200)["status"], "rejected");
    assert!(
        refused
            .text
            .contains(r#""reserve":{"rejected":{"problem":{"#),
        "{}",
        refused.text
    );
    node.stop().await;
}

/// A business rejection is a 409 carrying the plugin's code; an invalid request is a 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_and_invalid_commands() {
    let node = node().await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("q1", "quota", json!({ "name": "q1", "units": 2 }))
        .await
        .ok(201);
    planner
        .reserve("q1", "a", json!({ "units": 2 }))
        .await
        .ok(201);
    planner
        .reserve("q1", "b", json!({ "units": 1 }))
        .await
        .problem(409, "quota_exhausted");
    planner
        .reserve("q1", "c", json!({ "units": "many" }))
        .await
        .problem(422, "invalid_request");
    let status = planner.get("/v1/pools/q1/reservations/b").await;
    assert_eq!(status.ok(200)["status"], "rejected");
    planner
        .send(Method::POST, "/v1/pools/q1/reservations/a/confirm", None)
        .await
        .problem(422, "holds_unsupported");
    planner
        .post(
            "/v1/pools/q1/commands",
            json!({ "name": "paint", "payload": {} }),
        )
        .await
        .problem(422, "unknown_command");
    planner
        .post(
            "/v1/pools/q1/commands",
            json!({ "name": "set_units", "payload": { "units": 1 } }),
        )
        .await
        .problem(409, "would_overbook");
    node.stop().await;
}

/// Malformed or out-of-bounds input always gets a problem with a stable code, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problems() {
    let node = node().await;
    let api = Api::new(&node, Some(OPERATOR));
    api.create("q1", "quota", json!({ "name": "q1", "units": 2 }))
        .await
        .ok(201);
    let reserve = "/v1/pools/q1/reservations";

    api.raw(Method::POST, reserve, Some("{\"id\": ".into()), &[])
        .await
        .problem(400, "malformed_json");
    api.post(reserve, json!({ "request": {} }))
        .await
        .problem(422, "invalid_body");
    api.post(reserve, json!({ "id": "x", "request": {}, "extra": 1 }))
        .await
        .problem(422, "invalid_body");
    let mut request = api.http.post(format!("{}{reserve}", api.base));
    request = request.bearer_auth(OPERATOR).body("{}");
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 415);
    let big = format!(
        "{{\"id\": \"x\", \"request\": \"{}\"}}",
        "x".repeat(300_000)
    );
    api.raw(Method::POST, reserve, Some(big), &[])
        .await
        .problem(413, "payload_too_large");
    api.post(
        reserve,
        json!({ "id": "x\u{0}y", "request": { "units": 1 } }),
    )
    .await
    .problem(400, "nul_character");
    api.post(
        reserve,
        json!({ "id": "has space", "request": { "units": 1 } }),
    )
    .await
    .problem(400, "invalid_id");
    api.post(
        reserve,
        json!({ "id": "x".repeat(129), "request": { "units": 1 } }),
    )
    .await
    .problem(400, "invalid_id");
    api.reserve("no-such-pool", "x", json!({ "units": 1 }))
        .await
        .problem(404, "unknown_pool");
    api.reserve("bad%20id", "x", json!({ "units": 1 }))
        .await
        .problem(400, "invalid_id");
    api.get("/v1/pools/q1/reservations/never")
        .await
        .problem(404, "unknown_reservation");
    api.raw(
        Method::POST,
        reserve,
        Some(json!({ "id": "t", "request": { "units": 1 } }).to_string()),
        &[("allot-timeout-ms", "0")],
    )
    .await
    .problem(400, "invalid_timeout");
    api.get("/v1/pools/q1/events?limit=0")
        .await
        .problem(400, "invalid_query");
    api.get("/v1/pools/q1/events?limit=lots")
        .await
        .problem(400, "invalid_query");
    api.get("/v1/pools/q1/state")
        .await
        .problem(400, "invalid_query");
    api.get("/v1/pools/q1/state?at=yesterday")
        .await
        .problem(400, "invalid_query");
    api.get("/v1/grid?from=soon")
        .await
        .problem(400, "invalid_query");
    api.post(
        "/v1/pools/q1/commands",
        json!({ "name": "set units!", "payload": {} }),
    )
    .await
    .problem(400, "invalid_command_name");
    api.raw(
        Method::POST,
        "/v1/pools/q1/commands",
        Some(json!({ "name": "set_units", "payload": { "units": 9 } }).to_string()),
        &[("idempotency-key", "not valid")],
    )
    .await
    .problem(400, "invalid_id");
    api.get("/v1/nowhere").await.problem(404, "not_found");
    api.send(Method::DELETE, "/v1/pools/q1", None)
        .await
        .problem(405, "method_not_allowed");

    api.create("q2", "no-such-type", json!({}))
        .await
        .problem(422, "unknown_capacity_type");
    api.create("q2", "quota", json!({ "name": "q2" }))
        .await
        .problem(422, "invalid_config");
    api.create("q1", "quota", json!({ "name": "q1", "units": 2 }))
        .await
        .ok(200);
    api.create("q1", "quota", json!({ "name": "q1", "units": 3 }))
        .await
        .problem(409, "pool_exists");

    // None of it changed the pool.
    let state = api.get("/v1/pools/q1").await;
    assert_eq!(state.ok(200)["seq_nr"], 0);
    node.stop().await;
}

/// Tokens map to roles: checkout reserves and reads, planners shape capacity, operators see plugins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced() {
    let node = node().await;
    let anonymous = Api::new(&node, None);
    let stranger = Api::new(&node, Some("not-a-known-token-at-all"));
    let checkout = Api::new(&node, Some(CHECKOUT));
    let planner = Api::new(&node, Some(PLANNER));
    let operator = Api::new(&node, Some(OPERATOR));

    let missing = anonymous.get("/v1/grid").await;
    missing.problem(401, "unauthenticated");
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    stranger
        .get("/v1/grid")
        .await
        .problem(401, "unauthenticated");
    // The scheme is case-insensitive (RFC 7235); other schemes are not tokens.
    let lowercase = format!("bearer {CHECKOUT}");
    anonymous
        .raw(
            Method::GET,
            "/v1/grid",
            None,
            &[("authorization", &lowercase)],
        )
        .await
        .ok(200);
    let basic = format!("Basic {CHECKOUT}");
    anonymous
        .raw(Method::GET, "/v1/grid", None, &[("authorization", &basic)])
        .await
        .problem(401, "unauthenticated");

    let config = json!({ "name": "q1", "units": 2 });
    checkout
        .create("q1", "quota", config.clone())
        .await
        .problem(403, "forbidden");
    planner.create("q1", "quota", config).await.ok(201);
    checkout
        .post(
            "/v1/pools/q1/commands",
            json!({ "name": "set_units", "payload": { "units": 9 } }),
        )
        .await
        .problem(403, "forbidden");
    checkout
        .get("/v1/pools/q1/events")
        .await
        .problem(403, "forbidden");
    checkout
        .get("/v1/pools/q1/state?seq=0")
        .await
        .problem(403, "forbidden");
    checkout
        .reserve("q1", "a", json!({ "units": 1 }))
        .await
        .ok(201);
    checkout.get("/v1/pools/q1").await.ok(200);
    checkout.get("/v1/grid").await.ok(200);
    checkout.get("/v1/capacity-types").await.ok(200);
    checkout.get("/v1/plugins").await.problem(403, "forbidden");
    planner.get("/v1/plugins").await.problem(403, "forbidden");
    let plugins = operator.get("/v1/plugins").await;
    let plugins = plugins.ok(200).as_array().unwrap().clone();
    assert_eq!(plugins.len(), PLUGINS.len());
    assert!(
        plugins
            .iter()
            .all(|p| p["digest"].as_str().unwrap().starts_with("sha256:"))
    );
    node.stop().await;
}

/// Type-specific commands change capacity; an idempotency key makes a retry answer the first outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planner_commands_are_idempotent_with_a_key() {
    let node = node().await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("berlin", "logistics", logistics("berlin", 1))
        .await
        .ok(201);
    let add_van = json!({ "name": "add_van", "payload": { "van": {
        "id": "van-2", "shift_start": "16:00", "shift_end": "18:00",
        "stops_per_hour": 2, "max_weight_kg": 300 } } })
    .to_string();
    let headers = [("idempotency-key", "add-van-2")];
    let path = "/v1/pools/berlin/commands";
    let first = planner
        .raw(Method::POST, path, Some(add_van.clone()), &headers)
        .await;
    let first = first.ok(200).clone();
    let again = planner
        .raw(Method::POST, path, Some(add_van.clone()), &headers)
        .await;
    assert_eq!(again.ok(200), &first);
    // Without the key, the same command is a new one, refused by the rules.
    planner
        .raw(Method::POST, path, Some(add_van), &[])
        .await
        .problem(409, "duplicate_van");

    let state = planner.get("/v1/pools/berlin").await;
    assert_eq!(cell(state.ok(200), "16-18")["capacity"], 2 + 4);
    node.stop().await;
}

/// The pool read goes through its entity and sees the caller's own write at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_state_includes_own_writes() {
    let node = node().await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("berlin", "logistics", logistics("berlin", 2))
        .await
        .ok(201);
    for i in 0..3 {
        planner
            .reserve(
                "berlin",
                &format!("o{i}"),
                json!({ "slot": "08-10", "stops": 1 }),
            )
            .await
            .ok(201);
        let state = planner.get("/v1/pools/berlin").await;
        let state = state.ok(200);
        assert_eq!(state["seq_nr"], i + 1);
        assert_eq!(state["capacity_type"], "logistics");
        let slot = &state["cells"][0];
        assert_eq!(
            (slot["key"].as_str(), slot["used"].as_i64()),
            (Some("08-10"), Some(i + 1))
        );
        assert_eq!(slot["free"], 4 - (i + 1));
    }
    planner
        .reserve("berlin", "big", json!({ "slot": "08-10", "stops": 2 }))
        .await
        .problem(409, "slot_full");
    node.stop().await;
}

/// The grid answers from the read model: filters by type, prefix and time, pages, and reports its lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_filters_and_pages() {
    let node = node().await;
    let planner = Api::new(&node, Some(PLANNER));
    for area in ["berlin-mitte", "berlin-pankow", "hamburg"] {
        planner
            .create(area, "logistics", logistics(area, 2))
            .await
            .ok(201);
    }
    planner
        .create("quota-1", "quota", json!({ "name": "q", "units": 2 }))
        .await
        .ok(201);
    planner
        .reserve("berlin-mitte", "o1", json!({ "slot": "16-18", "stops": 3 }))
        .await
        .ok(201);
    read_model_reaches(&node, "berlin-mitte", 1).await;
    read_model_reaches(&node, "quota-1", 0).await;

    let grid = planner.get("/v1/grid").await;
    let grid = grid.ok(200);
    let ids: Vec<&str> = grid["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pool"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["berlin-mitte", "berlin-pankow", "hamburg", "quota-1"]);
    assert!(grid["read_model"]["lag_ms"].is_u64());
    assert_eq!(grid["read_model"]["listening"], true);

    let berlin = planner
        .get("/v1/grid?prefix=berlin-&capacity_type=logistics")
        .await;
    let berlin = berlin.ok(200);
    assert_eq!(berlin["pools"].as_array().unwrap().len(), 2);
    let mitte = &berlin["pools"][0];
    assert_eq!(mitte["seq_nr"], 1);
    assert_eq!(cell(mitte, "16-18")["used"], 3);

    // A pool's grid entry is encoded at its first read and kept with its
    // view: the next change is shown, not the kept encoding.
    planner
        .reserve("berlin-mitte", "o2", json!({ "slot": "08-10", "stops": 1 }))
        .await
        .ok(201);
    read_model_reaches(&node, "berlin-mitte", 2).await;
    let changed = planner.get("/v1/grid?prefix=berlin-mitte").await;
    let changed = changed.ok(200);
    assert_eq!(changed["pools"][0]["seq_nr"], 2);
    assert_eq!(cell(&changed["pools"][0], "08-10")["used"], 1);

    // Only the cells that overlap the afternoon; cells without a time range
    // (the quota's) hold at any time and stay.
    let afternoon = planner
        .get("/v1/grid?from=2031-03-10T15:00:00Z&to=2031-03-10T17:00:00Z")
        .await;
    let afternoon = afternoon.ok(200);
    let pools = afternoon["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 4);
    for pool in pools.iter().filter(|p| p["capacity_type"] == "logistics") {
        assert!(
            pool["cells"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["key"].as_str().unwrap().starts_with("16-18")),
            "{pool}"
        );
    }
    // A range with no logistics cell leaves only the timeless pool.
    let night = planner
        .get("/v1/grid?from=2031-03-10T20:00:00Z&to=2031-03-10T23:00:00Z")
        .await;
    let night = night.ok(200);
    assert_eq!(night["pools"].as_array().unwrap().len(), 1);
    assert_eq!(night["pools"][0]["pool"], "quota-1");

    let first = planner.get("/v1/grid?limit=2").await;
    let first = first.ok(200);
    assert_eq!(first["pools"].as_array().unwrap().len(), 2);
    assert_eq!(first["next"], "berlin-pankow");
    let rest = planner.get("/v1/grid?limit=2&after=berlin-pankow").await;
    let rest = rest.ok(200);
    assert_eq!(rest["pools"][0]["pool"], "hamburg");
    assert_eq!(rest["next"], Value::Null);
    node.stop().await;
}

/// Every node's read model follows writes made through another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_follows_other_nodes() {
    let url = common::database().await;
    let a = node_with(Some(url.clone()), EntityConfig::default()).await;
    let b = node_with(Some(url), EntityConfig::default()).await;
    let on_a = Api::new(&a, Some(PLANNER));
    on_a.create("q1", "quota", json!({ "name": "q", "units": 9 }))
        .await
        .ok(201);
    for i in 0..5 {
        on_a.reserve("q1", &format!("r{i}"), json!({ "units": 1 }))
            .await
            .ok(201);
    }
    read_model_reaches(&b, "q1", 5).await;
    let grid = Api::new(&b, Some(CHECKOUT)).get("/v1/grid").await;
    assert_eq!(grid.ok(200)["pools"][0]["cells"][0]["used"], 5);
    a.stop().await;
    b.stop().await;
}

/// Past states are rebuilt from events, by sequence number or by time; history pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_and_time_travel() {
    let node = node().await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("q1", "quota", json!({ "name": "q", "units": 10 }))
        .await
        .ok(201);
    for i in 0..3 {
        planner
            .reserve("q1", &format!("r{i}"), json!({ "units": 2 }))
            .await
            .ok(201);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    planner
        .reserve("q1", "r3", json!({ "units": 2 }))
        .await
        .ok(201);

    let used = |state: &Value| state["cells"][0]["used"].as_i64().unwrap();
    let at_two = planner.get("/v1/pools/q1/state?seq=2").await;
    assert_eq!(
        (at_two.ok(200)["seq_nr"].as_i64(), used(&at_two.body)),
        (Some(2), 4)
    );
    let created = planner.get("/v1/pools/q1/state?seq=0").await;
    assert_eq!(used(created.ok(200)), 0);
    let beyond = planner.get("/v1/pools/q1/state?seq=99").await;
    assert_eq!(beyond.ok(200)["seq_nr"], 4);
    let at = between
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let then = planner
        .get(&format!("/v1/pools/q1/state?at={}", at.replace('+', "%2B")))
        .await;
    assert_eq!(
        (then.ok(200)["seq_nr"].as_i64(), used(&then.body)),
        (Some(3), 6)
    );

    let page = planner.get("/v1/pools/q1/events?limit=3").await;
    let page = page.ok(200);
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    assert_eq!(page["next_after"], 3);
    let rest = planner.get("/v1/pools/q1/events?after=3&limit=3").await;
    let rest = rest.ok(200);
    assert_eq!(rest["events"][0]["seq_nr"], 4);
    assert_eq!(rest["next_after"], Value::Null);
    planner
        .get("/v1/pools/nope/events")
        .await
        .problem(404, "unknown_pool");
    node.stop().await;
}

/// Holds are confirmed through the API where the capacity type has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_confirmed() {
    let node = node().await;
    let planner = Api::new(&node, Some(PLANNER));
    let truck = json!({
        "truck": "B-AL-1", "departure": "2031-03-10T18:00:00Z",
        "capacity": { "weight_kg": 1000, "volume_l": 4000, "pallets": 4 },
    });
    planner
        .create("truck-1", "vehicle-load", truck)
        .await
        .ok(201);
    let load = json!({ "weight_kg": 100, "volume_l": 200, "pallets": 1, "hold_minutes": 15 });
    planner.reserve("truck-1", "h1", load).await.ok(201);
    let held = planner.get("/v1/pools/truck-1").await;
    let pallets = |state: &Value| cell(state, "pallets").clone();
    assert_eq!(pallets(held.ok(200))["held"], 1);
    planner
        .send(
            Method::POST,
            "/v1/pools/truck-1/reservations/h1/confirm",
            None,
        )
        .await
        .ok(200);
    let status = planner.get("/v1/pools/truck-1/reservations/h1").await;
    assert_eq!(status.ok(200)["status"], "confirmed");
    let confirmed = planner.get("/v1/pools/truck-1").await;
    let cell = pallets(confirmed.ok(200));
    assert_eq!(
        (cell["held"].as_i64(), cell["used"].as_i64()),
        (Some(0), Some(1))
    );
    node.stop().await;
}

/// A full mailbox and a passed deadline are 503s with Retry-After; a plugin fault is a 500 without internals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_deadline_and_plugin_faults() {
    let node = node_with(
        None,
        EntityConfig {
            mailbox: 2,
            ..EntityConfig::default()
        },
    )
    .await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("u1", "unruly", json!({ "capacity": 100 }))
        .await
        .ok(201);
    // Active, so that the spin below starts at once.
    planner.reserve("u1", "warm", json!({})).await.ok(201);
    let spin = || async {
        planner
            .raw(
                Method::POST,
                "/v1/pools/u1/commands",
                Some(json!({ "name": "spin", "payload": {} }).to_string()),
                &[],
            )
            .await
    };
    // The spinning command holds the entity for its whole call deadline;
    // what arrives meanwhile queues, overflows or runs out of time. Waves of
    // reservations go out from shortly after the spin until it is answered.
    // On a loaded machine the spin may reach the pool late; then it is tried
    // again.
    let mut seen = Vec::new();
    let mut wave = 0;
    let mut overlapped = false;
    for _attempt in 0..10 {
        let spun = spin();
        tokio::pin!(spun);
        let mut replies = Vec::new();
        let early = tokio::select! {
            reply = &mut spun => Some(reply),
            _ = tokio::time::sleep(Duration::from_millis(30)) => None,
        };
        let spun = match early {
            Some(reply) => reply,
            None => loop {
                wave += 1;
                let sends = (0..8).map(|i| {
                    planner.raw(
                        Method::POST,
                        "/v1/pools/u1/reservations",
                        Some(json!({ "id": format!("r{wave}-{i}"), "request": {} }).to_string()),
                        &[("allot-timeout-ms", "30")],
                    )
                });
                tokio::select! {
                    reply = &mut spun => break reply,
                    wave_replies = futures::future::join_all(sends) => replies.extend(wave_replies),
                }
            },
        };
        let codes: Vec<String> = replies
            .iter()
            .map(|r| r.body["code"].as_str().unwrap_or("accepted").to_owned())
            .collect();
        seen.push((spun.body["code"].clone(), codes.clone()));
        if spun.body["code"] == "plugin_timeout"
            && codes.iter().any(|c| c == "overloaded")
            && codes.iter().any(|c| c == "deadline_passed")
        {
            spun.problem(503, "plugin_timeout");
            for reply in replies.iter().filter(|r| r.status == 503) {
                assert_eq!(reply.headers["retry-after"], "1");
                assert_eq!(reply.body["retryable"], true);
            }
            overlapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        overlapped,
        "never saw a spin overlap overload and deadlines: {seen:?}"
    );

    // Reservations of the last wave may still be queued: retry as a client would.
    let mut boom = None;
    for _ in 0..100 {
        let reply = planner
            .post(
                "/v1/pools/u1/commands",
                json!({ "name": "explode", "payload": {} }),
            )
            .await;
        if reply.status != 503 {
            boom = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let boom = boom.expect("the pool drains its mailbox");
    boom.problem(500, "plugin_fault");
    assert!(!boom.body["detail"].as_str().unwrap().contains("panicked"));
    // The pool is rebuilt and keeps working.
    planner.reserve("u1", "after", json!({})).await.ok(201);
    node.stop().await;
}

/// A pool whose capacity type has no loaded version is unavailable, not unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_a_loaded_capacity_type_is_503() {
    use sqlx::Connection;
    let url = common::database().await;
    let node = node_with(Some(url.clone()), EntityConfig::default()).await;
    // A pool of a type whose plugin was never registered, as a newer node
    // of a rolling upgrade might leave behind.
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO pools (pool_id, capacity_type, config, shard) VALUES ('ghost-1', 'ghost', '{}', 0)",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let reply = Api::new(&node, Some(CHECKOUT))
        .reserve("ghost-1", "r1", json!({ "units": 1 }))
        .await;
    reply.problem(503, "capacity_type_not_loaded");
    assert_eq!(reply.body["retryable"], true);
    node.stop().await;
}

/// Losing the database makes commands answer retryable errors at once, and readiness 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_is_503() {
    use sqlx::Connection;
    let url = common::database().await;
    let node = node_with(Some(url.clone()), EntityConfig::default()).await;
    let api = Api::new(&node, Some(PLANNER));
    api.create("q1", "quota", json!({ "name": "q", "units": 9 }))
        .await
        .ok(201);
    api.reserve("q1", "r1", json!({ "units": 1 })).await.ok(201);

    let (base, name) = url.rsplit_once('/').unwrap();
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .unwrap();

    // Not written, or (the connection lost under the append, and the
    // journal gone, so nothing can tell) unknown: either way a retry under
    // the same reservation id is safe.
    let reply = api.reserve("q1", "r2", json!({ "units": 1 })).await;
    assert_eq!(reply.body["retryable"], true, "{}", reply.body);
    match reply.body["code"].as_str() {
        Some("journal_unavailable" | "deadline_passed") => {
            assert_eq!(reply.status, 503);
            assert_eq!(reply.headers["retry-after"], "1");
        }
        Some("outcome_unknown") => assert_eq!(reply.status, 502),
        _ => panic!("{}", reply.body),
    }
    Api::new(&node, None)
        .get("/readyz")
        .await
        .problem(503, "journal_unavailable");
    node.stop().await;
}

/// Health, readiness, metrics and the OpenAPI document; every documented operation is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_routes_and_openapi_document() {
    let node = node().await;
    let anonymous = Api::new(&node, None);
    assert_eq!(anonymous.get("/healthz").await.ok(200)["status"], "ok");
    assert_eq!(anonymous.get("/readyz").await.ok(200)["status"], "ok");
    Api::new(&node, Some(CHECKOUT))
        .get("/v1/pools/none")
        .await
        .problem(404, "unknown_pool");

    let metrics = anonymous
        .http
        .get(format!("{}/metrics", node.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "allot_http_request_duration_seconds",
        "allot_entity_mailbox_depth",
        "allot_entity_batch_size",
        "allot_journal_append_duration_seconds",
        "allot_view_rows_written",
        "allot_view_write_duration_seconds",
        "allot_view_rows_refused",
        "allot_view_rows_pending",
        "allot_plugin_call_duration_seconds",
        "allot_read_model_lag_seconds",
        "allot_cluster_shards_held",
        "allot_cluster_nodes_live",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
    assert!(metrics.contains("route=\"/v1/pools/{pool}\""), "{metrics}");

    let document = anonymous.get("/openapi.json").await;
    let document = document.ok(200).clone();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 21);
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let concrete = path.replace("{pool}", "p1").replace("{reservation}", "r1");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let reply = anonymous.raw(method.clone(), &concrete, None, &[]).await;
            assert!(
                !matches!(
                    reply.body["code"].as_str(),
                    Some("not_found" | "method_not_allowed")
                ),
                "{method} {path} is documented but not routed"
            );
            let documented = operations[method.as_str().to_lowercase()]["responses"]
                .as_object()
                .unwrap();
            assert!(
                documented.contains_key(reply.status.as_str()),
                "{method} {path} answered {} which is not documented",
                reply.status
            );
        }
    }

    node.stop().await;
}
