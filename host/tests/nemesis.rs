//! Faults under load on a cluster of real `allot serve` processes: the
//! database ends the nodes' connections again and again; a new plugin
//! version is activated and rolled back while checkout traffic flows.
//! Clients retry as a real checkout does (the same reservation id after
//! any answer that says a retry is safe, or after no answer). Each run
//! prints what the clients saw and ends with the whole audit: no pool over
//! its capacity at any seq, seqs contiguous, no reservation recorded twice,
//! every acknowledged one recorded, none refused as full recorded as
//! reserved, recorded outcomes agreeing with the events, and every node's
//! read model converging to the journal.
//!
//! `ALLOT_NEMESIS_SECONDS` makes each fault last longer than CI's short run.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Behaviour, Link, Load, TOKEN, TestCluster};
use serde_json::json;

const POOLS: usize = 24;
/// Enough for reservations to go on through most of a run, and to run
/// out in some pools towards its end, so that refusals are audited too.
const UNITS: u64 = 1500;
const WORKERS: usize = 8;

/// How long each fault goes on.
fn fault_time() -> Duration {
    let seconds = std::env::var("ALLOT_NEMESIS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    Duration::from_secs(seconds)
}

/// Clients that retry unknown outcomes and refusals to decide, under the
/// same reservation id, for up to half a minute.
fn retrying() -> Behaviour {
    Behaviour {
        timeout_ms: 2000,
        retry_for: Some(Duration::from_secs(30)),
    }
}

/// PostgreSQL ends every connection of the nodes, every 300 ms: the nodes
/// reconnect on their own, retries are safe, and nothing acknowledged is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_ends_the_nodes_connections_under_load() {
    let cluster = TestCluster::start(3).await;
    let pools = cluster.create_pools(POOLS, UNITS).await;
    let load = Load::start_with(&cluster.client, cluster.urls(), &pools, WORKERS, retrying());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db = cluster.db().await;
    let until = Instant::now() + fault_time();
    let mut ended = 0;
    while Instant::now() < until {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&db)
        .await
        .unwrap();
        ended += killed.len();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The cluster recovers without a restart of its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.finish().await;
    eprintln!(
        "{} ({ended} connections ended)",
        seen.report("connections ended")
    );
    assert!(ended > 0);
    assert!(!seen.acknowledged.is_empty());
    assert_eq!(seen.abandoned, 0, "reservations never decided");
    cluster.audit(&pools, UNITS, &seen).await;
}

/// A new version of the pools' type is activated through one node and
/// rolled back through another while reservations flow: within a few
/// seconds of each, every node's pools decide with it (the events'
/// provenance says so), and nothing is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_and_a_rollback_under_load() {
    let cluster = TestCluster::start(3).await;
    // Room for every reservation: each must be decided by a version.
    let units = 1_000_000;
    let pools = cluster.create_pools(POOLS, units).await;
    let urls = cluster.urls();
    let first: String = sqlx::query_scalar(
        "SELECT digest FROM plugin_activations WHERE capacity_type = 'quota'
          ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&cluster.db().await)
    .await
    .unwrap();
    let uploaded = cluster
        .client
        .post(format!("{}/v1/plugins", urls[0]))
        .bearer_auth(TOKEN)
        .header("content-type", "application/wasm")
        .body(common::another_build(
            std::fs::read(common::component("allot-plugin-template")).unwrap(),
            "nemesis",
        ))
        .send()
        .await
        .unwrap();
    assert!(uploaded.status().is_success());
    let uploaded: serde_json::Value = uploaded.json().await.unwrap();
    let second = uploaded["digest"].as_str().unwrap().to_owned();

    let load = Load::start_with(&cluster.client, urls.clone(), &pools, WORKERS, retrying());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let switches = [
        (&urls[0], "activate", second.clone()),
        (&urls[1], "rollback", first.clone()),
    ];
    for (url, how, digest) in switches {
        let response = cluster
            .client
            .post(format!("{url}/v1/capacity-types/quota/{how}"))
            .bearer_auth(TOKEN)
            .json(&json!({ "digest": digest }))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{how}: {}",
            response.text().await.unwrap()
        );
        // Every node has moved within this bound.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let since = std::time::SystemTime::now();
        tokio::time::sleep(fault_time() / 2).await;
        let (others, total): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE p.digest <> $1), count(*)
               FROM events e JOIN event_plugins p ON p.id = e.plugin
              WHERE e.recorded_at > $2",
        )
        .bind(&digest)
        .bind(time::OffsetDateTime::from(since))
        .fetch_one(&cluster.db().await)
        .await
        .unwrap();
        assert!(total > 0, "no events after the {how}");
        assert_eq!(
            others, 0,
            "{others} of {total} events decided by another version 2 s after the {how}"
        );
    }
    let seen = load.finish().await;
    eprintln!("{}", seen.report("activation and rollback"));
    assert!(!seen.acknowledged.is_empty());
    assert_eq!(seen.abandoned, 0, "reservations never decided");
    cluster.audit(&pools, units, &seen).await;
}

/// A version activated through one node (forced past its replay check)
/// that a live pool on another node cannot move to is undone by that
/// node: meanwhile the pool decides nothing, with either version; then the
/// previous version is active again on every node and decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_pool_that_cannot_follow_an_activation_undoes_it() {
    let cluster = TestCluster::start(2).await;
    let pools = cluster.create_pools(8, 100).await;
    let mut on_n2 = None;
    for pool in &pools {
        if cluster.owner_of(pool).await == "n2" {
            on_n2 = Some(pool.clone());
            break;
        }
    }
    let pool = on_n2.expect("a pool on n2");
    let (n1, n2) = (cluster.nodes[0].url(), cluster.nodes[1].url());
    let send = |url: String, path: String, body: serde_json::Value| {
        let client = cluster.client.clone();
        async move {
            let response = client
                .post(format!("{url}{path}"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    // Live on n2, with a history the next version cannot replay.
    let reservations = format!("/v1/pools/{pool}/reservations");
    let (status, _) = send(
        n2.clone(),
        reservations.clone(),
        json!({ "id": "before", "request": { "units": 1 } }),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = send(
        n2.clone(),
        format!("/v1/pools/{pool}/commands"),
        json!({ "name": "set_units", "payload": { "units": 50 } }),
    )
    .await;
    assert_eq!(status, 200);
    let db = cluster.db().await;
    let first: String = sqlx::query_scalar(
        "SELECT digest FROM plugin_activations WHERE capacity_type = 'quota'
          ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let uploaded: serde_json::Value = cluster
        .client
        .post(format!("{n1}/v1/plugins?capacity_type=quota"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/wasm")
        .body(std::fs::read(common::component("allot-test-quota-v2")).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second = uploaded["digest"].as_str().unwrap().to_owned();
    // n1 has no live pool of the type: nothing there refuses the version.
    let (status, body) = send(
        n1.clone(),
        "/v1/capacity-types/quota/activate".into(),
        json!({ "digest": second, "force": true }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // n2 hears of the activation (a notification) well within this.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A reservation through n1 reaches the pool on n2, which cannot move:
    // the pool decides nothing until the activation is undone, then the
    // retry is decided by the first version.
    let started = Instant::now();
    let mut pending = 0;
    loop {
        let (status, body) = send(
            n1.clone(),
            reservations.clone(),
            json!({ "id": "after", "request": { "units": 1 } }),
        )
        .await;
        if status == 201 {
            break;
        }
        assert_eq!(body["retryable"], true, "{body}");
        pending += 1;
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never decided: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (kind, digest, by): (String, String, String) = sqlx::query_as(
        "SELECT kind, digest, activated_by FROM plugin_activations
          WHERE capacity_type = 'quota' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), digest.as_str()),
        ("rollback", first.as_str())
    );
    assert!(by.contains("cannot move"), "{by}");
    let deciders: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT p.digest FROM events e JOIN event_plugins p ON p.id = e.plugin
          WHERE e.pool_id = $1",
    )
    .bind(&pool)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        deciders,
        [first],
        "no event was decided by the refused version"
    );
    eprintln!(
        "undone by the pool's node after {} ms ({pending} answers to retry)",
        started.elapsed().as_millis()
    );
}

/// PostgreSQL restarts twice (a fast shutdown: every connection ended and
/// every transaction in flight rolled back, then up again on the same
/// port) under load: the nodes ride it out without a restart of their own,
/// and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarts_under_load() {
    use allot_host::pg::EmbeddedPostgres;
    use sqlx::Connection;
    // A server of this test's own: the other tests keep theirs running.
    let dir = std::env::temp_dir().join(format!("allot-nemesis-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir))
            .await
            .unwrap()
            .unwrap()
    };
    let mut admin = sqlx::PgConnection::connect(&server.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE nemesis")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let cluster = TestCluster::start_on(3, server.url("nemesis")).await;
    let pools = cluster.create_pools(POOLS, UNITS).await;
    let load = Load::start_with(&cluster.client, cluster.urls(), &pools, WORKERS, retrying());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut server = server;
    let mut down = Duration::ZERO;
    for _ in 0..2 {
        let started = Instant::now();
        server = tokio::task::spawn_blocking(move || {
            server.restart().expect("PostgreSQL starts again");
            server
        })
        .await
        .unwrap();
        down = down.max(started.elapsed());
        tokio::time::sleep(fault_time() / 2).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.finish().await;
    eprintln!(
        "{} (PostgreSQL down for up to {} ms a restart)",
        seen.report("database restarts"),
        down.as_millis()
    );
    assert!(!seen.acknowledged.is_empty());
    assert_eq!(seen.abandoned, 0, "reservations never decided");
    cluster.audit(&pools, UNITS, &seen).await;
    drop(cluster);
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The other nodes lose their way to one node (their forwards to it are
/// dropped, then stalled) while clients keep sending to every node: a
/// forward that never arrived is retried until its deadline, one that may
/// have arrived is answered "outcome unknown", and the clients' retries
/// under the same ids, to every node in turn, leave nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_nodes_under_load() {
    let cluster = TestCluster::start_behind(3, common::database().await, &[2]).await;
    let pools = cluster.create_pools(POOLS, UNITS).await;
    let load = Load::start_with(&cluster.client, cluster.urls(), &pools, WORKERS, retrying());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let proxy = &cluster.proxies[&2];
    for link in [Link::Dropped, Link::Stalled] {
        proxy.set(link);
        tokio::time::sleep(fault_time() / 2).await;
    }
    proxy.set(Link::Up);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.finish().await;
    eprintln!("{}", seen.report("partition from one node"));
    assert!(!seen.acknowledged.is_empty());
    assert_eq!(seen.abandoned, 0, "reservations never decided");
    cluster.audit(&pools, UNITS, &seen).await;
}
