//! A cluster of real `allot serve` processes on one real PostgreSQL, on
//! loopback: starting, stopping, killing and pausing nodes, reservation
//! traffic that retries as a real checkout does, and the audit of the
//! journal against what the clients were told.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

pub const TOKEN: &str = "cluster-test-token";
pub const SECRET: &str = "cluster-test-secret-0123456789";
/// The default lease and tick, so that the failover measured is the one
/// operators get.
pub const LEASE_MS: u64 = 3000;
pub const TICK_MS: u64 = 500;

/// One `allot serve` process.
pub struct NodeProcess {
    pub id: String,
    pub port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl NodeProcess {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("the node runs")
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.id);
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A cluster of nodes on one fresh database.
pub struct TestCluster {
    /// The nodes' configs and logs: removed after a test that passed.
    pub dir: PathBuf,
    pub database_url: String,
    pub nodes: Vec<NodeProcess>,
    pub client: Client,
    /// The proxies the other nodes reach these nodes through, by index.
    pub proxies: HashMap<usize, Proxy>,
}

impl TestCluster {
    pub async fn start(count: usize) -> Self {
        Self::start_on(count, super::database().await).await
    }

    /// A cluster on this database.
    pub async fn start_on(count: usize, database_url: String) -> Self {
        Self::start_behind(count, database_url, &[]).await
    }

    /// A cluster on this database whose nodes numbered in `proxied` (from
    /// 0) are reached by the others through a [`Proxy`] of their own.
    pub async fn start_behind(count: usize, database_url: String, proxied: &[usize]) -> Self {
        let plugin = super::component("allot-plugin-template");
        let mut proxies = HashMap::new();
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
            let advertised = match proxied.contains(&(n - 1)) {
                true => {
                    let proxy = Proxy::start(port).await;
                    let url = format!("http://127.0.0.1:{}", proxy.port);
                    proxies.insert(n - 1, proxy);
                    url
                }
                false => format!("http://127.0.0.1:{port}"),
            };
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\n\
                     database_url = \"{database_url}?application_name=n{n}\"\n\
                     plugins = [{plugin:?}]\n\
                     max_connections = 8\n\
                     [cluster]\n\
                     node_id = \"n{n}\"\n\
                     advertise_url = \"{advertised}\"\n\
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
            proxies,
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

    pub async fn launch(&mut self, i: usize) {
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
    pub async fn settled(&self) {
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

    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await
            .unwrap()
    }

    /// A GET with the test's token, answered 200.
    pub async fn get(&self, url: &str, path: &str) -> reqwest::Response {
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

    pub async fn get_json(&self, url: &str, path: &str) -> Value {
        self.get(url, path).await.json().await.unwrap()
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NodeProcess::url).collect()
    }

    pub async fn create_pools(&self, count: usize, units: u64) -> Vec<String> {
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
    pub async fn owner_of(&self, pool: &str) -> String {
        let shard = allot_host::ids::PoolId::new(pool).unwrap().shard();
        sqlx::query_scalar("SELECT owner_node FROM shard_leases WHERE shard = $1")
            .bind(shard as i32)
            .fetch_one(&self.db().await)
            .await
            .unwrap()
    }

    pub async fn term(&mut self, i: usize) {
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

    pub async fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = node.child.as_mut().unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        node.child = None;
    }

    /// The whole audit of a run: [`TestCluster::verify`], and that no
    /// reservation refused as full was recorded as reserved, that the
    /// recorded outcomes agree with the events, and that every node's read
    /// model converges to each pool's history.
    pub async fn audit(&self, pools: &[String], units: u64, seen: &Seen) {
        let held = self.verify(pools, units, &seen.acknowledged).await;
        let db = self.db().await;
        let reserved: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT pool_id, payload->>'reservation_id', seq_nr FROM events
              WHERE pool_id = ANY($1) AND payload->>'type' = 'reserved'",
        )
        .bind(pools)
        .fetch_all(&db)
        .await
        .unwrap();
        let reserved: HashMap<(String, String), i64> = reserved
            .into_iter()
            .map(|(pool, id, seq)| ((pool, id), seq))
            .collect();
        for key in &seen.refused_ids {
            assert!(
                !reserved.contains_key(key),
                "reservation {key:?} was refused as full but is recorded as reserved"
            );
        }
        // A refusal recorded for a reservation is its latest outcome
        // unless the reservation was made after it, under the same id.
        let refusals: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT pool_id, substr(idempotency_key, 9), seq_nr FROM commands
              WHERE pool_id = ANY($1) AND starts_with(idempotency_key, 'reserve:')
                AND outcome::jsonb ? 'rejected'",
        )
        .bind(pools)
        .fetch_all(&db)
        .await
        .unwrap();
        for (pool, id, refused_at) in refusals {
            if let Some(reserved_at) = reserved.get(&(pool.clone(), id.clone())) {
                assert!(
                    *reserved_at > refused_at,
                    "{pool}: `{id}` recorded as refused at {refused_at} after being reserved at {reserved_at}"
                );
            }
        }
        // Every node's grid reaches each pool's last event, and shows what
        // the events hold.
        for url in self.urls() {
            let started = Instant::now();
            loop {
                let grid = self
                    .get_json(&url, "/v1/grid?capacity_type=quota&limit=1000")
                    .await;
                let behind: Vec<String> = pools
                    .iter()
                    .filter(|pool| {
                        let shown = grid["pools"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .find(|p| p["pool"] == pool.as_str());
                        let (seq, used) = held.get(*pool).copied().unwrap_or((0, 0));
                        shown.is_none_or(|p| {
                            p["seq_nr"].as_i64() != Some(seq)
                                || p["cells"][0]["used"].as_u64() != Some(used)
                        })
                    })
                    .cloned()
                    .collect();
                if behind.is_empty() {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "{url}'s read model did not converge for {behind:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Checks the journal against what clients were told.
    /// Returns each pool's last seq and the units it holds.
    pub async fn verify(
        &self,
        pools: &[String],
        units: u64,
        acknowledged: &HashSet<(String, String)>,
    ) -> HashMap<String, (i64, u64)> {
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
        last_seq
            .into_iter()
            .map(|(pool, seq)| {
                let units = held.get(&pool).copied().unwrap_or(0);
                (pool, (seq, units))
            })
            .collect()
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
pub struct Seen {
    pub acknowledged: HashSet<(String, String)>,
    /// Business refusals: the pool was full.
    pub refused: u64,
    /// The reservations refused as full, a final answer.
    pub refused_ids: HashSet<(String, String)>,
    /// Anything else, by code, with the node it went to.
    pub failed: HashMap<String, u64>,
    /// The first decision (accepted or refused as full) per pool after `mark`.
    pub recovered: HashMap<String, Instant>,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Reservations given up on after their retries.
    pub abandoned: u64,
    /// When each pool last had a decision, and the longest time any pool
    /// went without one while traffic was sent to it.
    pub last_decided: HashMap<String, Instant>,
    pub longest_gap: Duration,
}

impl Seen {
    /// One line for a run's report.
    pub fn report(&self, fault: &str) -> String {
        let failed: u64 = self.failed.values().sum();
        format!(
            "{fault}: {} requests, {} acknowledged, {} refused as full, {failed} failed \
             ({:?}), {} abandoned, longest a pool went without a decision: {} ms",
            self.requests,
            self.acknowledged.len(),
            self.refused,
            self.failed,
            self.abandoned,
            self.longest_gap.as_millis()
        )
    }
}

/// How the load's clients behave.
#[derive(Clone, Copy)]
pub struct Behaviour {
    /// The deadline each request asks for.
    pub timeout_ms: u64,
    /// Send a reservation again, under the same id, after an answer that
    /// says a retry is safe (or after no answer), as a real checkout does,
    /// until it is decided or this long has passed.
    pub retry_for: Option<Duration>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            timeout_ms: 5000,
            retry_for: None,
        }
    }
}

/// Reservation traffic: workers each send one reservation at a time to the
/// nodes in rotation, over the pools.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Seen>>,
    pub rotation: Arc<Mutex<Vec<String>>>,
    pub workers: Vec<tokio::task::JoinHandle<()>>,
    /// Successes are timed only after this moment.
    pub mark: Arc<Mutex<Option<Instant>>>,
}

/// What one attempt got.
enum Answer {
    Reserved,
    Full,
    /// Not decided, or unknown: a retry under the same id is safe.
    Retry(String),
    /// Anything else: final, and a failure.
    Failed(String),
}

impl Load {
    pub fn start(client: &Client, urls: Vec<String>, pools: &[String], workers: usize) -> Self {
        Self::start_with(client, urls, pools, workers, Behaviour::default())
    }

    pub fn start_with(
        client: &Client,
        urls: Vec<String>,
        pools: &[String],
        workers: usize,
        behaviour: Behaviour,
    ) -> Self {
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
                        let id = format!("r-{n}");
                        let first_try = Instant::now();
                        let mut attempt = 0;
                        loop {
                            let url = {
                                let rotation = rotation.lock().unwrap();
                                rotation[(n as usize + attempt) % rotation.len()].clone()
                            };
                            attempt += 1;
                            let answer =
                                reserve(&client, &url, pool, &id, behaviour.timeout_ms).await;
                            let retry = {
                                let now = Instant::now();
                                let mut seen = seen.lock().unwrap();
                                seen.requests += 1;
                                let decided = matches!(answer, Answer::Reserved | Answer::Full);
                                let gap = seen
                                    .last_decided
                                    .get(pool)
                                    .map(|last| now.duration_since(*last))
                                    .unwrap_or_default();
                                if decided {
                                    seen.longest_gap = seen.longest_gap.max(gap);
                                    seen.last_decided.insert(pool.clone(), now);
                                }
                                if let Some(mark) = *mark.lock().unwrap()
                                    && decided
                                    && now > mark
                                {
                                    seen.recovered.entry(pool.clone()).or_insert(now);
                                }
                                match answer {
                                    Answer::Reserved => {
                                        seen.acknowledged.insert((pool.clone(), id.clone()));
                                        false
                                    }
                                    Answer::Full => {
                                        seen.refused += 1;
                                        seen.refused_ids.insert((pool.clone(), id.clone()));
                                        false
                                    }
                                    Answer::Retry(what) => {
                                        *seen.failed.entry(what).or_default() += 1;
                                        match behaviour.retry_for {
                                            Some(limit) if first_try.elapsed() < limit => true,
                                            Some(_) => {
                                                seen.abandoned += 1;
                                                false
                                            }
                                            None => false,
                                        }
                                    }
                                    Answer::Failed(what) => {
                                        *seen.failed.entry(what).or_default() += 1;
                                        false
                                    }
                                }
                            };
                            if !retry || stop.load(Ordering::Relaxed) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
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

    pub fn set_rotation(&self, urls: Vec<String>) {
        *self.rotation.lock().unwrap() = urls;
    }

    pub fn mark(&self) -> Instant {
        let now = Instant::now();
        *self.mark.lock().unwrap() = Some(now);
        now
    }

    pub async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        Arc::into_inner(self.seen).unwrap().into_inner().unwrap()
    }
}

/// One reservation attempt.
async fn reserve(client: &Client, url: &str, pool: &str, id: &str, timeout_ms: u64) -> Answer {
    let sent = client
        .post(format!("{url}/v1/pools/{pool}/reservations"))
        .bearer_auth(TOKEN)
        .header("allot-timeout-ms", timeout_ms.to_string())
        .json(&json!({ "id": id, "request": { "units": 1 } }))
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let code = body["code"].as_str().unwrap_or("").to_owned();
            match status {
                StatusCode::CREATED => Answer::Reserved,
                StatusCode::CONFLICT if code == "quota_exhausted" => Answer::Full,
                _ if body["retryable"] == true => Answer::Retry(format!("{status} {code}")),
                _ => Answer::Failed(format!("{status} {code}")),
            }
        }
        // No answer: whatever happened, the same id makes a retry safe.
        Err(error) => {
            let kind = if error.is_connect() {
                "connect"
            } else {
                "transport"
            };
            Answer::Retry(format!("{kind} via {url}"))
        }
    }
}

/// What a [`Proxy`] does with the traffic between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Passes it.
    Up,
    /// Closes every connection, open or new: a partition the senders see.
    Dropped,
    /// Takes new connections and passes nothing on them: a partition the
    /// senders only notice by waiting.
    Stalled,
}

/// A TCP proxy in front of one node, on the way the other nodes reach it.
pub struct Proxy {
    pub port: u16,
    link: tokio::sync::watch::Sender<Link>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, links) = tokio::sync::watch::channel(Link::Up);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut links = links.clone();
                tokio::spawn(async move {
                    let state = *links.borrow_and_update();
                    match state {
                        Link::Dropped => {}
                        Link::Stalled => {
                            // Held, unread, until the link changes.
                            let _ = links.changed().await;
                        }
                        Link::Up => {
                            let Ok(mut outbound) =
                                tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = links.wait_for(|link| *link != Link::Up) => {}
                            }
                        }
                    }
                });
            }
        });
        Self { port, link, task }
    }

    /// Sets what the proxy does from now on, with open connections too.
    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
