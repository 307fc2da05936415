//! The cluster, as operators run it: real `allot serve` processes on one
//! real PostgreSQL, on loopback, crashed, paused and restarted under load.
//!
//! Every test ends with the same check, from the journal: no pool was ever
//! overbooked (at any point of its history), no reservation id was recorded
//! twice, and every reservation a client was told was accepted is recorded
//! exactly once.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Behaviour, LEASE_MS, Load, TICK_MS, TOKEN, TestCluster};
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_any_pool() {
    let cluster = TestCluster::start(3).await;
    let pools = cluster.create_pools(12, 5).await;
    // Every pool reserved through every node: most of them are forwarded.
    for pool in &pools {
        for (n, url) in cluster.urls().iter().enumerate() {
            let response = cluster
                .client
                .post(format!("{url}/v1/pools/{pool}/reservations"))
                .bearer_auth(TOKEN)
                .json(&json!({ "id": format!("via-{n}"), "request": { "units": 1 } }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED, "{pool} via {url}");
        }
        // Read through the entity, from a node that does not own it.
        let owner = cluster.owner_of(pool).await;
        let other = cluster.nodes.iter().find(|n| n.id != owner).unwrap();
        let state = cluster
            .get_json(&other.url(), &format!("/v1/pools/{pool}"))
            .await;
        assert_eq!(state["seq_nr"], 3, "{state}");
        // A retry through another node answers the first outcome.
        let again = cluster
            .client
            .post(format!("{}/v1/pools/{pool}/reservations", other.url()))
            .bearer_auth(TOKEN)
            .json(&json!({ "id": "via-0", "request": { "units": 1 } }))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::CREATED);
    }
    // The cluster as the API shows it.
    let status = cluster.get_json(&cluster.urls()[0], "/v1/cluster").await;
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{status}");
    let shards: i64 = nodes.iter().map(|n| n["shards"].as_i64().unwrap()).sum();
    assert_eq!(shards, 256, "{status}");
    assert!(nodes.iter().all(|n| n["live"] == true), "{status}");
    // The internal route refuses users' tokens.
    let refused = cluster
        .client
        .post(format!("{}/internal/v1/forward", cluster.urls()[0]))
        .bearer_auth(TOKEN)
        .body(vec![0u8; 4])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let acknowledged = pools
        .iter()
        .flat_map(|p| (0..3).map(move |n| (p.clone(), format!("via-{n}"))))
        .collect();
    cluster.verify(&pools, 5, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_pools_move_within_seconds() {
    let mut cluster = TestCluster::start(3).await;
    // Small pools: they sell out during the run, so the check at the end
    // sees pools at their capacity.
    let units = 40;
    let pools = cluster.create_pools(30, units).await;
    let mut affected = Vec::new();
    for pool in &pools {
        if cluster.owner_of(pool).await == "n3" {
            affected.push(pool.clone());
        }
    }
    assert!(!affected.is_empty(), "n3 owns none of the pools");
    let survivors: Vec<String> = cluster.urls()[..2].to_vec();
    let load = Load::start(&cluster.client, survivors, &pools, 8);
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.kill(2).await;
    let killed = load.mark();
    // Until every affected pool took a reservation again.
    loop {
        let recovered = {
            let seen = load.seen.lock().unwrap();
            affected
                .iter()
                .filter(|p| seen.recovered.contains_key(*p))
                .count()
        };
        if recovered == affected.len() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "{recovered} of {} pools recovered",
            affected.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = load.finish().await;
    let recovery = affected
        .iter()
        .map(|p| seen.recovered[p].duration_since(killed))
        .max()
        .unwrap();
    eprintln!(
        "kill -9: the dead node's {} pools took reservations again after {:.2} s \
         ({} acknowledged, {} refused as full, failures {:?})",
        affected.len(),
        recovery.as_secs_f64(),
        seen.acknowledged.len(),
        seen.refused,
        seen.failed
    );
    // A 3 s lease; the shards are taken within a tick of its end.
    assert!(
        recovery < Duration::from_secs(5),
        "recovery took {recovery:?}"
    );
    cluster.verify(&pools, units, &seen.acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_request() {
    let mut cluster = TestCluster::start(3).await;
    let units = 120;
    let pools = cluster.create_pools(30, units).await;
    let load = Load::start(&cluster.client, cluster.urls(), &pools, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..cluster.nodes.len() {
        // As a load balancer does once readiness goes: the node leaves the
        // rotation, then stops; requests already sent to it still finish.
        let others: Vec<String> = cluster
            .urls()
            .into_iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, url)| url)
            .collect();
        load.set_rotation(others);
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.term(i).await;
        cluster.launch(i).await;
        load.set_rotation(cluster.urls());
        cluster.settled().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = load.finish().await;
    eprintln!(
        "rolling restart: {} acknowledged, {} refused as full, failures {:?}",
        seen.acknowledged.len(),
        seen.refused,
        seen.failed
    );
    assert!(!seen.acknowledged.is_empty());
    assert!(seen.failed.is_empty(), "failed requests: {:?}", seen.failed);
    cluster.verify(&pools, units, &seen.acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_lease_is_fenced() {
    let cluster = TestCluster::start(3).await;
    let units = 30;
    let pools = cluster.create_pools(30, units).await;
    // Everyone sends to the node that will be paused too, with deadlines
    // that outlast the pause.
    let load = Load::start_with(
        &cluster.client,
        cluster.urls(),
        &pools,
        8,
        Behaviour {
            timeout_ms: 30_000,
            retry_for: None,
        },
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Appends wait behind a lock until one of the node to be paused is
    // waiting: the node has decided a batch and sent its append, under
    // the leases it holds now. It is paused there.
    let db = cluster.db().await;
    let mut holder = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    // The load's clients may all be waiting on other nodes' appends by
    // now: one more request goes straight to a pool of n3's.
    let mut on_n3 = None;
    for pool in &pools {
        if cluster.owner_of(pool).await == "n3" {
            on_n3 = Some(pool.clone());
            break;
        }
    }
    let on_n3 = on_n3.expect("a pool on n3");
    let sent = cluster
        .client
        .post(format!(
            "{}/v1/pools/{on_n3}/reservations",
            cluster.nodes[2].url()
        ))
        .bearer_auth(TOKEN)
        .header("allot-timeout-ms", "30000")
        .json(&json!({ "id": "during-the-pause", "request": { "units": 1 } }))
        .send();
    let sent = tokio::spawn(sent);
    let started = Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE application_name = 'n3' AND wait_event_type = 'Lock'
                AND query ILIKE '%WITH batch AS%'",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "n3 never appended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.nodes[2].signal("-STOP");
    // Past the lease: the others take its shards.
    tokio::time::sleep(Duration::from_millis(LEASE_MS * 2)).await;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM shard_leases WHERE owner_node = 'n3'")
        .fetch_one(&cluster.db().await)
        .await
        .unwrap();
    assert_eq!(kept, 0, "the paused node's shards were not all taken");
    // The paused node's append goes on in PostgreSQL, under leases that
    // have moved on: it must be refused.
    holder.commit().await.unwrap();
    cluster.nodes[2].signal("-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.settled().await;
    // The woken node found its leases taken, and stopped those pools.
    let metrics = cluster
        .get(&cluster.nodes[2].url(), "/metrics")
        .await
        .text()
        .await
        .unwrap();
    let lost: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("allot_cluster_leases_lost_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lease-loss count in:\n{metrics}"));
    assert!(lost > 0.0, "the paused node lost no lease");
    let fenced_appends: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("allot_appends_fenced_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no fenced-append count in:\n{metrics}"));
    assert!(
        fenced_appends > 0.0,
        "the woken node never tried to append under a lost lease"
    );
    // Its append refused, the request is answered (retry, or by the new
    // owner); whatever it says, the audit below holds.
    let _ = sent.await;
    let seen = load.finish().await;
    let fenced: i64 = sqlx::query_scalar("SELECT count(*) FROM shard_leases WHERE epoch > 1")
        .fetch_one(&cluster.db().await)
        .await
        .unwrap();
    eprintln!(
        "pause: {} acknowledged, {} refused as full, failures {:?}, {fenced} shards re-leased",
        seen.acknowledged.len(),
        seen.refused,
        seen.failed
    );
    assert!(fenced > 0);
    assert!(!seen.acknowledged.is_empty());
    cluster.verify(&pools, units, &seen.acknowledged).await;
    // The woken node serves again.
    let response = cluster
        .client
        .post(format!(
            "{}/v1/pools/pool-0/reservations",
            cluster.nodes[2].url()
        ))
        .bearer_auth(TOKEN)
        .json(&json!({ "id": "after-pause", "request": { "units": 1 } }))
        .send()
        .await
        .unwrap();
    assert!(
        [StatusCode::CREATED, StatusCode::CONFLICT].contains(&response.status()),
        "{}",
        response.text().await.unwrap()
    );
}

/// Leases last as long as their owner's heartbeat: an idle cluster writes
/// its heartbeats and nothing else, however many leases it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_leases_writes_only_heartbeats() {
    let cluster = TestCluster::start(2).await;
    let db = cluster.db().await;
    let leases = async || -> Vec<(i32, String, i64, String)> {
        sqlx::query_as(
            "SELECT shard, owner_node, epoch, xmin::text FROM shard_leases ORDER BY shard",
        )
        .fetch_all(&db)
        .await
        .unwrap()
    };
    let heartbeats = async || -> Vec<(String, f64)> {
        sqlx::query_as(
            "SELECT node_id, extract(epoch FROM heartbeat_at)::float8 FROM nodes ORDER BY node_id",
        )
        .fetch_all(&db)
        .await
        .unwrap()
    };
    let (leases_before, beats_before) = (leases().await, heartbeats().await);
    assert_eq!(leases_before.len(), 256);
    tokio::time::sleep(Duration::from_millis(TICK_MS * 4)).await;
    let (leases_after, beats_after) = (leases().await, heartbeats().await);
    // No lease row was written (a write gives the row a new `xmin`)…
    assert_eq!(
        leases_before, leases_after,
        "leases were written while held"
    );
    // …while every node heartbeat, and the leases stayed in force.
    for ((node, before), (_, after)) in beats_before.iter().zip(&beats_after) {
        assert!(after > before, "{node} did not heartbeat");
    }
    let in_force: i64 = sqlx::query_scalar("SELECT count(*) FROM leases_in_force")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(in_force, 256);
    let status = cluster.get_json(&cluster.urls()[1], "/v1/cluster").await;
    let shards: Vec<i64> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["shards"].as_i64().unwrap())
        .collect();
    assert_eq!(shards.iter().sum::<i64>(), 256, "{status}");
    assert!(shards.iter().all(|&s| s > 0), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_under_a_taken_name_is_refused() {
    let cluster = TestCluster::start(1).await;
    let first = &cluster.nodes[0];
    let config = std::fs::read_to_string(&first.config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let twin = first.config.with_file_name("twin.toml");
    std::fs::write(
        &twin,
        config.replace(&format!(":{}\"", first.port), &format!(":{port}\"")),
    )
    .unwrap();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_allot"))
        .args(["serve", "--config"])
        .arg(&twin)
        .env("ALLOT_TOKENS", format!("test=operator:{TOKEN}"))
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("a node named `n1` is running"), "{stderr}");
    // It waited for the name's heartbeat to end (a crashed run's would).
    assert!(started.elapsed() >= Duration::from_millis(LEASE_MS));
    // The first node was not disturbed.
    let status = cluster.get_json(&first.url(), "/v1/cluster").await;
    assert_eq!(status["nodes"][0]["shards"], 256, "{status}");
}
