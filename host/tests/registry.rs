//! The plugin registry over the API: uploads are checked and stored by
//! digest, activations and rollbacks choose the version that decides, on
//! every node.

mod common;

use std::time::Duration;

use allot_host::ids::PoolId;
use allot_host::journal::Journal;
use allot_host::node::Node;
use common::another_build;
use common::api::{Api, CHECKOUT, OPERATOR, PLANNER, Reply, node, node_with};
use reqwest::Method;
use serde_json::{Value, json};

/// Uploads component bytes as an operator (or whoever `api` is).
async fn upload(api: &Api, bytes: Vec<u8>, capacity_type: Option<&str>) -> Reply {
    let path = match capacity_type {
        Some(t) => format!("/v1/plugins?capacity_type={t}"),
        None => "/v1/plugins".to_owned(),
    };
    let mut request = api
        .http
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/wasm")
        .body(bytes);
    if let Some(token) = api.token {
        request = request.bearer_auth(token);
    }
    Reply::read(request.send().await.unwrap()).await
}

fn component(package: &str) -> Vec<u8> {
    std::fs::read(common::component(package)).unwrap()
}

/// A node whose pools passivate after a second idle, with pool `q1` (a
/// quota of 5) holding reservation `r1`, and an operator's client.
async fn node_with_a_reservation() -> (Node, Api) {
    let node = node_with(
        None,
        allot_host::node::EntityConfig {
            idle_after_seconds: 1,
            ..Default::default()
        },
    )
    .await;
    let operator = Api::new(&node, Some(OPERATOR));
    operator
        .create("q1", "quota", json!({ "name": "q1", "units": 5 }))
        .await
        .ok(201);
    operator
        .reserve("q1", "r1", json!({ "units": 1 }))
        .await
        .ok(201);
    (node, operator)
}

/// Waits until the node's pools, idle, have passivated (each leaving a
/// snapshot).
async fn until_passivated(node: &Node) {
    for _ in 0..100 {
        if node.runtime().active_pools() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pools still active: {}", node.runtime().active_pools());
}

fn active(versions: &Value, capacity_type: &str) -> String {
    versions
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["capacity_type"] == capacity_type && v["active"] == true)
        .map(|v| v["digest"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Garbage, a wrong contract, a trap at start-up and a type mismatch are refused; nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused() {
    let node = node().await;
    let operator = Api::new(&node, Some(OPERATOR));
    let before = operator.get("/v1/plugins").await.ok(200).clone();

    upload(&operator, b"not a component at all".to_vec(), None)
        .await
        .problem(422, "invalid_plugin");
    let wrong = upload(&operator, component("allot-test-wrong-contract"), None).await;
    wrong.problem(422, "invalid_plugin");
    let detail = wrong.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("0.9.0") && detail.contains("1.0.0"),
        "{detail}"
    );
    let trap = upload(&operator, component("allot-test-start-trap"), None).await;
    trap.problem(422, "invalid_plugin");
    assert!(
        trap.body["detail"]
            .as_str()
            .unwrap()
            .contains("failed to start"),
        "{}",
        trap.body
    );
    upload(&operator, component("allot-logistics"), Some("warehouse"))
        .await
        .problem(422, "capacity_type_mismatch");
    upload(
        &Api::new(&node, Some(PLANNER)),
        component("allot-plugin-template"),
        None,
    )
    .await
    .problem(403, "forbidden");

    let after = operator.get("/v1/plugins").await.ok(200).clone();
    assert_eq!(after, before);
    // The running versions still decide.
    operator
        .create("q1", "quota", json!({ "name": "q", "units": 1 }))
        .await
        .ok(201);
    operator
        .reserve("q1", "r1", json!({ "units": 1 }))
        .await
        .ok(201);
    node.stop().await;
}

/// A stored version is activated for its type, decides from then on, and one call rolls it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_and_roll_back() {
    let node = node().await;
    let operator = Api::new(&node, Some(OPERATOR));
    let versions = operator.get("/v1/plugins?capacity_type=quota").await;
    let first = active(versions.ok(200), "quota");
    assert!(first.starts_with("sha256:"));

    let second = upload(
        &operator,
        another_build(component("allot-plugin-template"), "2"),
        Some("quota"),
    )
    .await;
    let second = second.ok(201).clone();
    assert_eq!(second["active"], false);
    assert_eq!(second["uploaded_by"], "ops (operator)");
    let second = second["digest"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    // The same bytes again are stored already.
    upload(
        &operator,
        another_build(component("allot-plugin-template"), "2"),
        None,
    )
    .await
    .ok(200);

    let activated = operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": second }),
        )
        .await;
    let activated = activated.ok(200);
    assert_eq!(activated["activation"]["kind"], "activate");
    assert_eq!(activated["check"]["failures"], json!([]));
    let versions = operator.get("/v1/plugins").await;
    assert_eq!(active(versions.ok(200), "quota"), second);

    let decided_by = |pool: &'static str| {
        let operator = &operator;
        async move {
            operator
                .create(pool, "quota", json!({ "name": pool, "units": 5 }))
                .await
                .ok(201);
            operator
                .reserve(pool, "r1", json!({ "units": 1 }))
                .await
                .ok(201);
            let events = operator.get(&format!("/v1/pools/{pool}/events")).await;
            events.ok(200)["events"][0]["plugin_digest"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(decided_by("q-after-activate").await, second);

    let rolled = operator
        .send(Method::POST, "/v1/capacity-types/quota/rollback", None)
        .await;
    let rolled = rolled.ok(200);
    assert_eq!(
        (rolled["kind"].as_str(), rolled["digest"].as_str()),
        (Some("rollback"), Some(first.as_str()))
    );
    assert_eq!(decided_by("q-after-rollback").await, first);
    // Rolling back again returns to where it was.
    let again = operator
        .send(Method::POST, "/v1/capacity-types/quota/rollback", None)
        .await;
    assert_eq!(again.ok(200)["digest"], second.as_str());

    operator
        .send(Method::POST, "/v1/capacity-types/logistics/rollback", None)
        .await
        .problem(409, "no_previous_version");
    operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": "sha256:0000" }),
        )
        .await
        .problem(404, "unknown_plugin_version");
    let logistics = active(operator.get("/v1/plugins").await.ok(200), "logistics");
    operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": logistics }),
        )
        .await
        .problem(422, "capacity_type_mismatch");
    Api::new(&node, Some(PLANNER))
        .send(Method::POST, "/v1/capacity-types/quota/rollback", None)
        .await
        .problem(403, "forbidden");
    node.stop().await;
}

/// An activation made through one node reaches the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activations_reach_every_node() {
    let url = common::database().await;
    let a = node_with(Some(url.clone()), Default::default()).await;
    let b = node_with(Some(url), Default::default()).await;
    let on_a = Api::new(&a, Some(OPERATOR));
    let second = upload(
        &on_a,
        another_build(component("allot-plugin-template"), "b"),
        None,
    )
    .await;
    let second = second.ok(201)["digest"].as_str().unwrap().to_owned();
    on_a.post(
        "/v1/capacity-types/quota/activate",
        json!({ "digest": second }),
    )
    .await
    .ok(200);
    for _ in 0..500 {
        if b.runtime()
            .plugin("quota")
            .is_ok_and(|p| p.digest() == second)
        {
            a.stop().await;
            b.stop().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("node b never switched to {second}");
}

/// A node, and the `warehouse` type stored and then activated as if
/// through another node, with the activation's notification held back: the
/// node has not heard of it. Returns the node and its database's URL.
async fn warehouse_activated_unheard() -> (Node, String) {
    use sqlx::Connection;
    let url = common::database().await;
    let node = node_with(Some(url.clone()), Default::default()).await;
    let operator = Api::new(&node, Some(OPERATOR));
    let stored = upload(&operator, component("allot-warehouse"), None).await;
    let digest = stored.ok(201)["digest"].as_str().unwrap().to_owned();
    let (pool, config) = warehouse_pool();
    operator
        .create(&pool, "warehouse", config)
        .await
        .problem(422, "unknown_capacity_type");

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let trigger =
        |on| format!("ALTER TABLE plugin_activations {on} TRIGGER plugin_activations_notify");
    sqlx::raw_sql(sqlx::AssertSqlSafe(trigger("DISABLE")))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO plugin_activations (capacity_type, digest, activated_by, kind)
         VALUES ('warehouse', $1, 'another node', 'activate')",
    )
    .bind(&digest)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(trigger("ENABLE")))
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(node.runtime().plugin("warehouse").is_err(), "notified");
    (node, url)
}

/// Tomorrow's picking hours in `ams-1`, and the pool's id.
fn warehouse_pool() -> (String, Value) {
    let date = time::OffsetDateTime::now_utc().date().next_day().unwrap();
    let config = json!({ "warehouse": "ams-1", "date": date.to_string(), "utc_offset": "+01:00",
                         "open_hour": 6, "close_hour": 22, "items_per_hour": 100 });
    (format!("ams-1.{date}"), config)
}

/// Makes [`warehouse_pool`] as another node would: in the journal, unheard
/// of by the node under test until it is asked for it.
async fn warehouse_pool_made_elsewhere(url: &str) -> PoolId {
    let (pool, config) = warehouse_pool();
    let pool = PoolId::new(&pool).unwrap();
    let config = serde_json::value::to_raw_value(&config).unwrap();
    let other_node = Journal::connect(url, 1).await.unwrap();
    assert!(
        other_node
            .create_pool(&pool, "warehouse", &config)
            .await
            .unwrap()
    );
    pool
}

/// A pool of a type activated through another node can be made at once,
/// before the activation's notification has reached the node asked; a type
/// with no active version is still unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_activated_elsewhere_takes_pools_before_its_notification_arrives() {
    let (node, _) = warehouse_activated_unheard().await;
    let planner = Api::new(&node, Some(PLANNER));
    let (pool, config) = warehouse_pool();
    planner.create(&pool, "warehouse", config).await.ok(201);
    planner
        .create("nowhere", "no-such-type", json!({}))
        .await
        .problem(422, "unknown_capacity_type");
    node.stop().await;
}

/// A pool of a type activated through another node, made there, takes
/// commands and reads on a node the activation's notification has not
/// reached yet, whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_a_type_activated_elsewhere_takes_commands_before_its_notification_arrives() {
    for first in ["reserve", "read", "state"] {
        let (node, url) = warehouse_activated_unheard().await;
        let pool = warehouse_pool_made_elsewhere(&url).await;

        let planner = Api::new(&node, Some(PLANNER));
        match first {
            "reserve" => {
                let placed = Api::new(&node, Some(CHECKOUT))
                    .reserve(pool.as_str(), "o1", json!({ "items": 150, "due_hour": 12 }))
                    .await;
                assert_eq!(placed.ok(201)["events"][0]["type"], "order_placed");
            }
            "read" => {
                let read = planner.get(&format!("/v1/pools/{pool}")).await;
                assert_eq!(read.ok(200)["capacity_type"], "warehouse");
            }
            _ => {
                let read = planner.get(&format!("/v1/pools/{pool}/state?seq=0")).await;
                assert_eq!(read.ok(200)["seq_nr"], 0);
            }
        }
        node.stop().await;
    }
}

/// A replay check, asked for or made before an activation, compares the
/// candidate with the version the registry has active, on a node that has
/// not heard of that version's activation too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_compare_with_an_activation_not_yet_heard_of() {
    for asked in ["check", "activate"] {
        let (node, url) = warehouse_activated_unheard().await;
        warehouse_pool_made_elsewhere(&url).await;
        let operator = Api::new(&node, Some(OPERATOR));
        let digest = active(operator.get("/v1/plugins").await.ok(200), "warehouse");
        let report = match asked {
            "check" => operator
                .post(
                    "/v1/capacity-types/warehouse/check",
                    json!({ "digest": digest }),
                )
                .await
                .ok(200)
                .clone(),
            _ => operator
                .post(
                    "/v1/capacity-types/warehouse/activate",
                    json!({ "digest": digest }),
                )
                .await
                .ok(200)["check"]
                .clone(),
        };
        assert_eq!(report["active"], digest.as_str(), "{asked}: {report}");
        assert_eq!(report["pools"], 1, "{asked}: {report}");
        assert_eq!(report["differences"], json!([]), "{asked}: {report}");
        node.stop().await;
    }
}

/// A replay check reports pools a candidate cannot rebuild and views it rebuilds differently; activation refuses such a candidate unless forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_check_guards_activation() {
    let node = node().await;
    let operator = Api::new(&node, Some(OPERATOR));
    for pool in ["q-plain", "q-resized"] {
        operator
            .create(pool, "quota", json!({ "name": pool, "units": 5 }))
            .await
            .ok(201);
        operator
            .reserve(pool, "r1", json!({ "units": 2 }))
            .await
            .ok(201);
    }
    operator
        .post(
            "/v1/pools/q-resized/commands",
            json!({ "name": "set_units", "payload": { "units": 9 } }),
        )
        .await
        .ok(200);
    let v2 = upload(&operator, component("allot-test-quota-v2"), Some("quota")).await;
    let v2 = v2.ok(201)["digest"].as_str().unwrap().to_owned();

    let report = operator
        .post("/v1/capacity-types/quota/check", json!({ "digest": v2 }))
        .await;
    let report = report.ok(200).clone();
    assert_eq!(report["pools"], 2);
    assert_eq!(report["failures"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report["failures"][0]["pool"], "q-resized");
    assert!(
        report["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("event 2 cannot be replayed"),
        "{report}"
    );
    assert_eq!(
        report["differences"],
        json!([{ "pool": "q-plain", "cells": ["units"], "details": false }])
    );
    let sampled = operator
        .post(
            "/v1/capacity-types/quota/check",
            json!({ "digest": v2, "sample": 1 }),
        )
        .await;
    assert_eq!(sampled.ok(200)["pools"], 1);

    let refused = operator
        .post("/v1/capacity-types/quota/activate", json!({ "digest": v2 }))
        .await;
    refused.problem(409, "replay_check_failed");
    assert!(
        refused.body["detail"]
            .as_str()
            .unwrap()
            .contains("q-resized"),
        "{}",
        refused.body
    );
    let versions = operator.get("/v1/plugins?capacity_type=quota").await;
    assert_ne!(active(versions.ok(200), "quota"), v2);

    // Forced, it is activated, but the live pool `q-resized` cannot move to
    // it: the activation is undone as a whole, naming the pool.
    let before = active(operator.get("/v1/plugins").await.ok(200), "quota");
    let forced = operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": v2, "force": true }),
        )
        .await;
    forced.problem(409, "activation_rolled_back");
    let detail = forced.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("q-resized") && detail.contains("event 2"),
        "{detail}"
    );
    let versions = operator.get("/v1/plugins?capacity_type=quota").await;
    assert_eq!(active(versions.ok(200), "quota"), before);
    // Both pools decide on the version that is active again.
    for pool in ["q-plain", "q-resized"] {
        operator
            .reserve(pool, "r2", json!({ "units": 1 }))
            .await
            .ok(201);
        let events = operator.get(&format!("/v1/pools/{pool}/events")).await;
        let last = events.ok(200)["events"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["plugin_digest"], before.as_str(), "{pool}");
    }
    // The failed move leaves nothing behind: a good version activates.
    let good = upload(
        &operator,
        another_build(component("allot-plugin-template"), "good"),
        None,
    )
    .await;
    let good = good.ok(201)["digest"].as_str().unwrap().to_owned();
    let activated = operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": good }),
        )
        .await;
    assert_eq!(activated.ok(200)["activation"]["digest"], good.as_str());
    node.stop().await;
}

/// Versions swap many times under continuous reservations: no request fails, nothing is overbooked, and every event names the version that decided it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_lose_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let node = node().await;
    let operator = Api::new(&node, Some(OPERATOR));
    operator
        .create("hot", "quota", json!({ "name": "hot", "units": 1_000_000 }))
        .await
        .ok(201);
    let first = active(operator.get("/v1/plugins").await.ok(200), "quota");
    let second = upload(
        &operator,
        another_build(component("allot-plugin-template"), "swap"),
        Some("quota"),
    )
    .await;
    let second = second.ok(201)["digest"].as_str().unwrap().to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|client| {
            let (stop, base) = (stop.clone(), node.url());
            tokio::spawn(async move {
                let api = Api {
                    http: reqwest::Client::new(),
                    base,
                    token: Some(common::api::CHECKOUT),
                };
                let mut statuses = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let reply = api
                        .reserve("hot", &format!("c{client}-{n}"), json!({ "units": 1 }))
                        .await;
                    statuses.push((reply.status.as_u16(), reply.body["code"].clone()));
                    n += 1;
                }
                statuses
            })
        })
        .collect();

    for swap in 0..20 {
        let digest = if swap % 2 == 0 { &second } else { &first };
        let activated = operator
            .post(
                "/v1/capacity-types/quota/activate",
                json!({ "digest": digest }),
            )
            .await;
        assert_eq!(activated.ok(200)["check"]["failures"], json!([]));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut accepted = 0;
    for client in clients {
        for (status, code) in client.await.unwrap() {
            assert_eq!(status, 201, "a reservation failed during swaps: {code}");
            accepted += 1;
        }
    }
    assert!(
        accepted > 100,
        "the load was too light to prove anything: {accepted}"
    );

    let state = operator.get("/v1/pools/hot").await;
    assert_eq!(state.ok(200)["cells"][0]["used"], accepted);
    let mut digests = std::collections::BTreeMap::<String, u64>::new();
    let mut after = 0;
    loop {
        let page = operator
            .get(&format!("/v1/pools/hot/events?after={after}&limit=1000"))
            .await;
        let page = page.ok(200).clone();
        for event in page["events"].as_array().unwrap() {
            *digests
                .entry(event["plugin_digest"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(digests.values().sum::<u64>(), accepted);
    assert_eq!(
        digests.keys().cloned().collect::<Vec<_>>(),
        {
            let mut both = vec![first.clone(), second.clone()];
            both.sort();
            both
        },
        "both versions decided some of the events"
    );
    node.stop().await;
}

/// A shadowing version decides every live command beside the active one; agreements, disagreements with examples, and failures are reported, and nothing it decides is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_reports_disagreements() {
    let node = node().await;
    let operator = Api::new(&node, Some(OPERATOR));
    operator
        .create("q1", "quota", json!({ "name": "q1", "units": 5 }))
        .await
        .ok(201);
    operator
        .reserve("q1", "before", json!({ "units": 1 }))
        .await
        .ok(201);
    let v2 = upload(&operator, component("allot-test-quota-v2"), Some("quota")).await;
    let v2 = v2.ok(201)["digest"].as_str().unwrap().to_owned();
    operator
        .get("/v1/capacity-types/quota/shadow")
        .await
        .problem(404, "no_shadow");
    let started = operator
        .post("/v1/capacity-types/quota/shadow", json!({ "digest": v2 }))
        .await;
    assert_eq!(started.ok(200)["agreements"], 0);

    // Both versions decide these alike.
    operator
        .reserve("q1", "a", json!({ "units": 2 }))
        .await
        .ok(201);
    operator
        .reserve("q1", "b", json!({ "units": 10 }))
        .await
        .problem(409, "quota_exhausted");
    // The active version refuses zero units, the candidate takes them: the
    // caller gets the active version's answer.
    operator
        .reserve("q1", "zero", json!({ "units": 0 }))
        .await
        .problem(422, "invalid_units");
    // The candidate has no commands, and then cannot apply the event the
    // active version decided: it stops following the pool.
    operator
        .post(
            "/v1/pools/q1/commands",
            json!({ "name": "set_units", "payload": { "units": 8 } }),
        )
        .await
        .ok(200);
    operator
        .reserve("q1", "c", json!({ "units": 1 }))
        .await
        .ok(201);

    let report = operator.get("/v1/capacity-types/quota/shadow").await;
    let report = report.ok(200).clone();
    assert_eq!(report["digest"], v2.as_str());
    assert_eq!(report["agreements"], 2, "{report}");
    assert_eq!(report["disagreements"], 2, "{report}");
    assert_eq!(report["failures"], 1, "{report}");
    let examples = report["examples"].as_array().unwrap();
    assert_eq!(examples[0]["command"]["id"], "zero");
    assert_eq!(examples[0]["active"]["problem"]["code"], "invalid_units");
    assert_eq!(examples[0]["shadow"]["events"][0]["units"], 0);
    assert_eq!(examples[1]["shadow"]["problem"]["code"], "unknown_command");

    // Nothing the shadow decided was recorded.
    let events = operator.get("/v1/pools/q1/events").await;
    let events = events.ok(200)["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e["plugin_digest"] != v2.as_str()));
    let metrics = reqwest::get(format!("{}/metrics", node.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "allot_shadow_decisions_total{capacity_type=\"quota\",result=\"disagree\"} 2"
        ),
        "{metrics}"
    );

    let stopped = operator
        .send(Method::DELETE, "/v1/capacity-types/quota/shadow", None)
        .await;
    assert_eq!(stopped.ok(200)["disagreements"], 2);
    operator
        .get("/v1/capacity-types/quota/shadow")
        .await
        .problem(404, "no_shadow");
    node.stop().await;
}

/// Pools a forced version cannot replay fail under that version only: a rollback brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_version_fails_pools_only_until_rolled_back() {
    let (node, operator) = node_with_a_reservation().await;
    operator
        .post(
            "/v1/pools/q1/commands",
            json!({ "name": "set_units", "payload": { "units": 9 } }),
        )
        .await
        .ok(200);
    let v2 = upload(&operator, component("allot-test-quota-v2"), Some("quota")).await;
    let v2 = v2.ok(201)["digest"].as_str().unwrap().to_owned();
    // Idle, the pool passivates: no live pool is there to refuse the version.
    until_passivated(&node).await;
    operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": v2, "force": true }),
        )
        .await
        .ok(200);
    operator
        .reserve("q1", "r2", json!({ "units": 1 }))
        .await
        .problem(500, "pool_failed");
    operator
        .send(Method::POST, "/v1/capacity-types/quota/rollback", None)
        .await
        .ok(200);
    operator
        .reserve("q1", "r2", json!({ "units": 1 }))
        .await
        .ok(201);
    node.stop().await;
}

/// Concurrent activations and rollbacks of a type take turns and all finish; the lock is released after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_activations_take_turns() {
    let node = node().await;
    let operator = Api::new(&node, Some(OPERATOR));
    let mut digests = Vec::new();
    for tag in ["x", "y"] {
        let reply = upload(
            &operator,
            another_build(component("allot-plugin-template"), tag),
            None,
        )
        .await;
        digests.push(reply.ok(201)["digest"].as_str().unwrap().to_owned());
    }
    // Two versions in the history before the race, so that every rollback
    // in it has one to go back to whichever call goes first.
    operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": digests[1] }),
        )
        .await
        .ok(200);
    let calls = (0..8).map(|i| {
        let operator = &operator;
        let digest = digests[i % 2].clone();
        async move {
            if i % 4 == 3 {
                operator
                    .send(Method::POST, "/v1/capacity-types/quota/rollback", None)
                    .await
            } else {
                operator
                    .post(
                        "/v1/capacity-types/quota/activate",
                        json!({ "digest": digest }),
                    )
                    .await
            }
        }
    });
    let replies = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(calls))
        .await
        .expect("activations do not wait on each other forever");
    for reply in &replies {
        reply.ok(200);
    }
    // Nothing is left holding the lock.
    operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": digests[0] }),
        )
        .await
        .ok(200);
    let versions = operator.get("/v1/plugins?capacity_type=quota").await;
    assert_eq!(active(versions.ok(200), "quota"), digests[0]);
    node.stop().await;
}

/// An activation whose client goes away half-way finishes all the same and
/// lets go of the type's lock: the version is active, and the next
/// activation is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_outlives_its_client() {
    use sqlx::Connection;
    let url = common::database().await;
    let node = node_with(Some(url.clone()), Default::default()).await;
    let operator = Api::new(&node, Some(OPERATOR));
    let digest = upload(
        &operator,
        another_build(component("allot-plugin-template"), "left"),
        None,
    )
    .await
    .ok(201)["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    // The activation's record waits behind this lock, after the activation
    // has taken the type's lock; meanwhile its client gives up.
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE plugin_activations IN EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!(
            "{}/v1/capacity-types/quota/activate",
            operator.base
        ))
        .bearer_auth(OPERATOR)
        .json(&json!({ "digest": digest }))
        .send()
        .await;
    assert!(gave_up.is_err(), "the activation answered while blocked");
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    let mut lock_free = false;
    for _ in 0..200 {
        let free: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('allot:activation:quota'))")
                .fetch_one(&mut holder)
                .await
                .unwrap();
        if free {
            sqlx::query("SELECT pg_advisory_unlock(hashtext('allot:activation:quota'))")
                .execute(&mut holder)
                .await
                .unwrap();
            lock_free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(lock_free, "the abandoned activation kept the type's lock");
    let versions = operator.get("/v1/plugins?capacity_type=quota").await;
    assert_eq!(active(versions.ok(200), "quota"), digest, "it finished");
    node.stop().await;
}

/// A rollback goes through the replay check and the move of live pools: a
/// previous version that cannot rebuild the pools' history is refused,
/// and forced, it is undone when a live pool cannot move to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_checked_like_an_activation() {
    let node = node().await;
    let operator = Api::new(&node, Some(OPERATOR));
    let versions = operator.get("/v1/plugins?capacity_type=quota").await;
    let v1 = active(versions.ok(200), "quota");
    let v2 = upload(&operator, component("allot-test-quota-v2"), Some("quota")).await;
    let v2 = v2.ok(201)["digest"].as_str().unwrap().to_owned();
    operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": v2, "force": true }),
        )
        .await
        .ok(200);
    operator
        .post("/v1/capacity-types/quota/activate", json!({ "digest": v1 }))
        .await
        .ok(200);
    // History the previous version (v2) cannot replay.
    operator
        .create("q1", "quota", json!({ "name": "q1", "units": 5 }))
        .await
        .ok(201);
    operator
        .reserve("q1", "r1", json!({ "units": 1 }))
        .await
        .ok(201);
    operator
        .post(
            "/v1/pools/q1/commands",
            json!({ "name": "set_units", "payload": { "units": 9 } }),
        )
        .await
        .ok(200);
    operator
        .send(Method::POST, "/v1/capacity-types/quota/rollback", None)
        .await
        .problem(409, "replay_check_failed");
    let versions = operator.get("/v1/plugins?capacity_type=quota").await;
    assert_eq!(active(versions.ok(200), "quota"), v1, "nothing changed");
    // Forced past the check, it still cannot move the live pool: undone
    // as a whole, never half-applied.
    operator
        .send(
            Method::POST,
            "/v1/capacity-types/quota/rollback?force=true",
            None,
        )
        .await
        .problem(409, "activation_rolled_back");
    let versions = operator.get("/v1/plugins?capacity_type=quota").await;
    assert_eq!(active(versions.ok(200), "quota"), v1);
    operator
        .reserve("q1", "r2", json!({ "units": 1 }))
        .await
        .ok(201);
    node.stop().await;
}

/// A version whose state layout changed under the same state version
/// would restore the pools' snapshots to garbage: the replay check
/// restores each pool's latest snapshot with it, finds the state unlike
/// what the events give, and the activation is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_changed_under_the_same_state_version_is_refused() {
    let (node, operator) = node_with_a_reservation().await;
    // Idle, the pool passivates and leaves a snapshot.
    until_passivated(&node).await;
    let relayout = upload(
        &operator,
        component("allot-test-quota-relayout"),
        Some("quota"),
    )
    .await;
    let relayout = relayout.ok(201)["digest"].as_str().unwrap().to_owned();
    let report = operator
        .post(
            "/v1/capacity-types/quota/check",
            json!({ "digest": relayout }),
        )
        .await;
    let report = report.ok(200);
    assert_eq!(report["failed"], 1, "{report}");
    let reason = report["failures"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("STATE_VERSION"), "{reason}");
    operator
        .post(
            "/v1/capacity-types/quota/activate",
            json!({ "digest": relayout }),
        )
        .await
        .problem(409, "replay_check_failed");
    let state = operator.get("/v1/pools/q1").await;
    let cell = &state.ok(200)["cells"][0];
    assert_eq!(
        (cell["capacity"].as_u64(), cell["used"].as_u64()),
        (Some(5), Some(1))
    );
    node.stop().await;
}
