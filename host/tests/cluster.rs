//! The cluster, as operators run it: real `allot serve` processes on one
//! real PostgreSQL, on loopback, crashed, paused and restarted under load.
//!
//! Every test ends with the same check, from the journal: no pool was ever
//! overbooked (at any point of its history), no reservation id was recorded
//! twice, and every reservation a client was told was accepted is recorded
//! exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const TOKEN: &str = "cluster-test-token";
const SECRET: &str = "cluster-test-secret-0123456789";
/// The default lease and tick, so that the failover measured is the one
/// operators get.
const LEASE_MS: u64 = 3000;
const TICK_MS: u64 = 500;

/// One `allot serve` process.
struct NodeProcess {
    id: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the node runs")
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.id);
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A cluster of nodes on one fresh database.
struct TestCluster {
    /// The nodes' configs and logs: removed after a test that passed.
    dir: PathBuf,
    database_url: String,
    nodes: Vec<NodeProcess>,
    client: Client,
}

impl TestCluster {
    async fn start(count: usize) -> Self {
        let database_url = common::database().await;
        let plugin = common::component("allot-plugin-template");
        let dir = std::env::temp_dir().join(format!(
            "allot-cluster-test-{}-{}",
            std::process::id(),
            database_url.rsplit('/').next().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for n in 1..=count {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.join(format!("n{n}.toml"));
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\n\
                     database_url = \"{database_url}\"\n\
                     plugins = [{plugin:?}]\n\
                     max_connections = 8\n\
                     [cluster]\n\
                     node_id = \"n{n}\"\n\
                     secret = \"{SECRET}\"\n\
                     lease_ms = {LEASE_MS}\n\
                     tick_ms = {TICK_MS}\n"
                ),
            )
            .unwrap();
            nodes.push(NodeProcess {
                id: format!("n{n}"),
                port,
                config,
                log: dir.join(format!("n{n}.log")),
                child: None,
            });
        }
        let mut cluster = Self {
            dir,
            database_url,
            nodes,
            client: Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
        };
        // One at a time: the first seeds the plugin registry.
        for i in 0..count {
            cluster.launch(i).await;
        }
        cluster.settled().await;
        cluster
    }

    async fn launch(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["serve", "--config"])
            .arg(&node.config)
            .env("ALLOT_TOKENS", format!("test=operator:{TOKEN}"))
            .env("RUST_LOG", "allot_host=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("allot starts");
        node.child = Some(child);
        let url = format!("{}/readyz", node.url());
        let started = Instant::now();
        loop {
            if let Ok(response) = self.client.get(&url).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            let node = &mut self.nodes[i];
            if let Ok(Some(status)) = node.child.as_mut().unwrap().try_wait() {
                panic!("{} exited ({status}):\n{}", node.id, node.log_tail());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} did not become ready:\n{}",
                node.id,
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every shard is leased and the leases are spread over the
    /// running nodes as placement says.
    async fn settled(&self) {
        let running: usize = self.nodes.iter().filter(|n| n.child.is_some()).count();
        let started = Instant::now();
        loop {
            let per_node: Vec<(String, i64)> = sqlx::query_as(
                "SELECT owner_node, count(*) FROM leases_in_force GROUP BY owner_node",
            )
            .fetch_all(&self.db().await)
            .await
            .unwrap();
            let leased: i64 = per_node.iter().map(|(_, c)| c).sum();
            if leased == 256 && per_node.len() == running {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "shards did not settle: {per_node:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn db(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .unwrap()
    }

    /// A GET with the test's token, answered 200.
    async fn get(&self, url: &str, path: &str) -> reqwest::Response {
        let response = self
            .client
            .get(format!("{url}{path}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {url}{path}");
        response
    }

    async fn get_json(&self, url: &str, path: &str) -> Value {
        self.get(url, path).await.json().await.unwrap()
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NodeProcess::url).collect()
    }

    async fn create_pools(&self, count: usize, units: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for n in 0..count {
            let id = format!("pool-{n}");
            // Created through every node in turn: any node can.
            let url = &self.urls()[n % self.nodes.len()];
            let response = self
                .client
                .post(format!("{url}/v1/pools"))
                .bearer_auth(TOKEN)
                .json(&json!({
                    "id": id,
                    "capacity_type": "quota",
                    "config": { "name": id, "units": units },
                }))
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "{}",
                response.text().await.unwrap()
            );
            ids.push(id);
        }
        ids
    }

    /// The node owning a pool's shard, from the lease table.
    async fn owner_of(&self, pool: &str) -> String {
        let shard = allot_host::ids::PoolId::new(pool).unwrap().shard();
        sqlx::query_scalar("SELECT owner_node FROM shard_leases WHERE shard = $1")
            .bind(shard as i32)
            .fetch_one(&self.db().await)
            .await
            .unwrap()
    }

    async fn term(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.signal("-TERM");
        let child = node.child.as_mut().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop:\n{}", node.id, node.log_tail()))
            .unwrap();
        assert!(status.success(), "{}:\n{}", node.id, node.log_tail());
        node.child = None;
    }

    async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = node.child.as_mut().unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        node.child = None;
    }

    /// Checks the journal against what clients were told.
    async fn verify(&self, pools: &[String], units: u64, acknowledged: &HashSet<(String, String)>) {
        let rows: Vec<(String, i64, Value)> = sqlx::query_as(
            "SELECT pool_id, seq_nr, payload FROM events
              WHERE pool_id = ANY($1) ORDER BY pool_id, seq_nr",
        )
        .bind(pools)
        .fetch_all(&self.db().await)
        .await
        .unwrap();
        let mut held: HashMap<String, u64> = HashMap::new();
        let mut last_seq: HashMap<String, i64> = HashMap::new();
        let mut recorded: HashMap<(String, String), usize> = HashMap::new();
        for (pool, seq_nr, event) in rows {
            let previous = last_seq.insert(pool.clone(), seq_nr).unwrap_or(0);
            assert_eq!(
                seq_nr,
                previous + 1,
                "{pool}: a gap or a repeat at {seq_nr}"
            );
            let amount = event["units"].as_u64().unwrap_or(0);
            let id = event["reservation_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let total = held.entry(pool.clone()).or_default();
            match event["type"].as_str() {
                Some("reserved") => {
                    *total += amount;
                    assert!(
                        *total <= units,
                        "{pool} overbooked at seq {seq_nr}: {total} of {units} units"
                    );
                    *recorded.entry((pool.clone(), id)).or_default() += 1;
                }
                Some("released") => *total -= amount,
                other => panic!("unexpected event {other:?}"),
            }
        }
        for (key, count) in &recorded {
            assert_eq!(*count, 1, "reservation {key:?} recorded {count} times");
        }
        for key in acknowledged {
            assert!(
                recorded.contains_key(key),
                "reservation {key:?} was acknowledged but is not in the journal"
            );
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A paused node must be woken to die.
        for node in &self.nodes {
            if let Some(pid) = node.child.as_ref().and_then(Child::id) {
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
        }
        if !std::thread::panicking() {
            for node in &mut self.nodes {
                if let Some(child) = node.child.as_mut() {
                    let _ = child.start_kill();
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    acknowledged: HashSet<(String, String)>,
    /// Business refusals: the pool was full.
    refused: u64,
    /// Anything else, by code, with the node it went to.
    failed: HashMap<String, u64>,
    /// The first decision (accepted or refused as full) per pool after `mark`.
    recovered: HashMap<String, Instant>,
}

/// Reservation traffic: workers each send one reservation at a time to the
/// nodes in rotation, over the pools.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    rotation: Arc<Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    /// Successes are timed only after this moment.
    mark: Arc<Mutex<Option<Instant>>>,
}

impl Load {
    fn start(client: &Client, urls: Vec<String>, pools: &[String], workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let rotation = Arc::new(Mutex::new(urls));
        let mark = Arc::new(Mutex::new(None));
        let counter = Arc::new(AtomicU64::new(0));
        let pools = Arc::new(pools.to_vec());
        let workers = (0..workers)
            .map(|_| {
                let (client, stop, seen, rotation, mark, counter, pools) = (
                    client.clone(),
                    stop.clone(),
                    seen.clone(),
                    rotation.clone(),
                    mark.clone(),
                    counter.clone(),
                    pools.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let pool = &pools[(n as usize * 7919) % pools.len()];
                        let url = {
                            let rotation = rotation.lock().unwrap();
                            rotation[n as usize % rotation.len()].clone()
                        };
                        let id = format!("r-{n}");
                        let sent = client
                            .post(format!("{url}/v1/pools/{pool}/reservations"))
                            .bearer_auth(TOKEN)
                            .header("allot-timeout-ms", "5000")
                            .json(&json!({ "id": id, "request": { "units": 1 } }))
                            .send()
                            .await;
                        let result = match sent {
                            Ok(response) => {
                                let status = response.status();
                                let body: Value = response.json().await.unwrap_or(Value::Null);
                                Ok((status, body["code"].as_str().unwrap_or("").to_owned()))
                            }
                            Err(error) => Err(error),
                        };
                        let mut seen = seen.lock().unwrap();
                        let decided = match result {
                            Ok((StatusCode::CREATED, _)) => {
                                seen.acknowledged.insert((pool.clone(), id));
                                true
                            }
                            Ok((StatusCode::CONFLICT, code)) if code == "quota_exhausted" => {
                                seen.refused += 1;
                                // A refusal is a decision too: the pool is back.
                                true
                            }
                            Ok((status, code)) => {
                                *seen.failed.entry(format!("{status} {code}")).or_default() += 1;
                                false
                            }
                            Err(error) => {
                                let kind = if error.is_connect() {
                                    "connect"
                                } else {
                                    "transport"
                                };
                                *seen.failed.entry(format!("{kind} via {url}")).or_default() += 1;
                                false
                            }
                        };
                        if let Some(mark) = *mark.lock().unwrap() {
                            let now = Instant::now();
                            if decided && now > mark {
                                seen.recovered.entry(pool.clone()).or_insert(now);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            seen,
            rotation,
            workers,
            mark,
        }
    }

    fn set_rotation(&self, urls: Vec<String>) {
        *self.rotation.lock().unwrap() = urls;
    }

    fn mark(&self) -> Instant {
        let now = Instant::now();
        *self.mark.lock().unwrap() = Some(now);
        now
    }

    async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        Arc::into_inner(self.seen).unwrap().into_inner().unwrap()
    }
}

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
    // Everyone sends to the node that will be paused too: those requests
    // are held in its queues while it sleeps, and decided when it wakes.
    let load = Load::start(&cluster.client, cluster.urls(), &pools, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nodes[2].signal("-STOP");
    // Past the lease: the others take its shards.
    tokio::time::sleep(Duration::from_millis(LEASE_MS * 2)).await;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM shard_leases WHERE owner_node = 'n3'")
        .fetch_one(&cluster.db().await)
        .await
        .unwrap();
    assert_eq!(kept, 0, "the paused node's shards were not all taken");
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
