//! The baseline design answers the API as Allot does, on a real
//! PostgreSQL: what the benchmark compares must be the same requests with
//! the same answers.

mod common;

use std::time::Duration;

use allot_host::api::TokenConfig;
use allot_host::baseline;
use allot_host::node::Config;
use allot_host::sandbox::Role;
use common::api::{Api, PLANNER};
use serde_json::{Value, json};

/// Starts the baseline on a fresh database; it serves until the test ends.
async fn start() -> Api {
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = Config {
        listen,
        database_url: Some(common::database().await),
        tokens: vec![TokenConfig {
            name: "planning".into(),
            role: Role::Planner,
            token: PLANNER.into(),
        }],
        ..Config::default()
    };
    tokio::spawn(async move {
        baseline::serve(config, std::future::pending())
            .await
            .expect("the baseline serves")
    });
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{listen}"),
        token: Some(PLANNER),
    };
    for _ in 0..200 {
        if let Ok(ready) = api.http.get(format!("{}/readyz", api.base)).send().await
            && ready.status().is_success()
        {
            return api;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the baseline was not ready within 10 s");
}

fn pool_ids(page: &Value) -> Vec<&str> {
    page["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pool"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn the_baseline_pages_its_grid_as_allot_does() {
    let api = start().await;
    for id in [
        "area-01", "area-02", "area-03", "area-04", "area-05", "other",
    ] {
        api.create(id, "quota", json!({ "name": id, "units": 2 }))
            .await
            .ok(201);
    }
    api.reserve("area-02", "r1", json!({ "units": 1 }))
        .await
        .ok(201);

    // Pages of a prefix, each starting after the last of the one before.
    let mut pages = Vec::new();
    let mut path = "/v1/grid?prefix=area-&limit=2".to_owned();
    loop {
        let reply = api.get(&path).await;
        let page = reply.ok(200);
        pages.push(pool_ids(page).join(","));
        let Some(next) = page["next"].as_str() else {
            break;
        };
        path = format!("/v1/grid?prefix=area-&limit=2&after={next}");
    }
    assert_eq!(pages, ["area-01,area-02", "area-03,area-04", "area-05"]);

    // `after` alone starts the page, within the prefix or before it.
    let reply = api.get("/v1/grid?limit=3&after=area-03").await;
    assert_eq!(pool_ids(reply.ok(200)), ["area-04", "area-05", "other"]);
    let reply = api.get("/v1/grid?prefix=area-&limit=3&after=a").await;
    assert_eq!(pool_ids(reply.ok(200)), ["area-01", "area-02", "area-03"]);

    let reply = api.get("/v1/grid?prefix=area-02&limit=1").await;
    let one = reply.ok(200);
    assert_eq!(pool_ids(one), ["area-02"]);
    let cell = &one["pools"][0]["cells"][0];
    assert_eq!(
        (&cell["capacity"], &cell["used"], &cell["free"]),
        (&json!(2), &json!(1), &json!(1))
    );

    api.get("/v1/grid?after=not%20an%20id")
        .await
        .problem(400, "invalid_id");
}
