//! The two systems under test: started as `allot serve` processes of this
//! binary on one PostgreSQL (or reached at given URLs), their pools, and
//! the check, from their databases, that nothing was overbooked or lost.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use reqwest::{Client, StatusCode};
use serde_json::json;
use sqlx::{ConnectOptions as _, Connection, Row as _};
use tokio::process::{Child, Command};

use super::check::{Tally, Verified};
use super::load::{Caller, Ledger};

/// The design a target runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    /// Allot: pool entities, wasm rules, event journal, read model.
    Allot,
    /// The classical design: a counter row per pool, a conditional update
    /// per request.
    Baseline,
}

impl Design {
    /// As the tables name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allot => "allot",
            Self::Baseline => "baseline",
        }
    }
}

/// A process this benchmark started.
pub struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Starts `allot serve` with a config, and waits until it is ready.
    pub async fn start(
        design: Design,
        dir: &Path,
        config: &str,
        token: &str,
        threads: Option<usize>,
        client: &Client,
    ) -> anyhow::Result<(Self, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = format!("listen = \"127.0.0.1:{port}\"\n{config}");
        let path = dir.join(format!("{}.toml", design.name()));
        std::fs::write(&path, config)?;
        let log = dir.join(format!("{}.log", design.name()));
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("serve").arg("--config").arg(&path);
        if design == Design::Baseline {
            command.arg("--baseline");
        }
        if let Some(threads) = threads {
            command.env("TOKIO_WORKER_THREADS", threads.max(1).to_string());
        }
        let child = command
            .env("ALLOT_TOKENS", format!("bench=operator:{token}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting `allot serve`")?;
        let mut server = Self { child, log };
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/readyz");
        for _ in 0..1200 {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "the {} server exited ({status}) while starting; its log:\n{}",
                    design.name(),
                    server.log_tail()
                );
            }
            let answer = client.get(&ready).send().await;
            if answer.is_ok_and(|r| r.status() == StatusCode::OK) {
                return Ok((server, url));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the {} server was not ready within 2 minutes; its log:\n{}",
            design.name(),
            server.log_tail()
        )
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops it as an operator would (SIGTERM) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
        let Ok(status) = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await
        else {
            bail!("the server did not stop within 30 s");
        };
        let status = status?;
        if !status.success() {
            bail!("the server exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// Resident memory of a process, in MiB, from `/proc`.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Makes a fresh, empty database on a server and returns its URL.
pub async fn fresh_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let (base, _) = admin_url
        .split('?')
        .next()
        .unwrap_or(admin_url)
        .rsplit_once('/')
        .context("a database URL ends in /<database>")?;
    Ok(format!("{base}/{name}"))
}

/// One system under test, as the load generator sees it.
pub struct Target {
    /// Its design.
    pub design: Design,
    /// Its database, for the final check; none when it was not given.
    pub database_url: Option<String>,
    /// The process, when this benchmark started it.
    pub server: Option<Server>,
    /// Sends requests as the benchmark's caller, to its nodes (one, or
    /// every node of a cluster, in turn).
    pub caller: Caller,
    /// The pools made so far, with their capacities, by ledger index.
    pools: Vec<(String, u64)>,
    index: HashMap<String, usize>,
}

/// Most pools one benchmark run makes on a target.
const MAX_POOLS: usize = 100_000;

impl Target {
    /// A target at `urls` (the nodes of one system).
    pub fn new(
        design: Design,
        urls: Vec<String>,
        database_url: Option<String>,
        server: Option<Server>,
        client: Client,
        token: &str,
    ) -> Self {
        Self {
            design,
            database_url,
            server,
            caller: Caller {
                client,
                nodes: urls.into(),
                token: token.into(),
                ledger: Arc::new(Ledger::new(MAX_POOLS)),
            },
            pools: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Makes quota pools with these ids and capacity, a few at a time,
    /// and returns their ledger indexes.
    pub async fn create_pools(&mut self, ids: &[String], units: u64) -> anyhow::Result<Vec<usize>> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut made = Vec::with_capacity(ids.len());
        for id in ids {
            if self.pools.len() >= MAX_POOLS {
                bail!("a benchmark run makes at most {MAX_POOLS} pools per target");
            }
            let index = self.pools.len();
            self.pools.push((id.clone(), units));
            self.index.insert(id.clone(), index);
            made.push(index);
            if tasks.len() >= 16 {
                tasks.join_next().await.expect("a task is running")??;
            }
            let (client, token) = (self.caller.client.clone(), self.caller.token.clone());
            let nodes = &self.caller.nodes;
            let url = format!("{}/v1/pools", nodes[index % nodes.len()]);
            let body = json!({
                "id": id,
                "capacity_type": "quota",
                "config": { "name": id, "units": units },
            });
            tasks.spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(&*token)
                    .json(&body)
                    .send()
                    .await?;
                let status = response.status();
                if !status.is_success() {
                    bail!("creating a pool: {status} {}", response.text().await?);
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(made)
    }

    /// A pool's id by ledger index.
    pub fn pool(&self, index: usize) -> &str {
        &self.pools[index].0
    }

    /// The process's resident memory, when this benchmark started it.
    pub fn rss_mib(&self) -> Option<f64> {
        rss_mib(self.server.as_ref()?.pid()?)
    }

    /// How far its PostgreSQL server's write-ahead log has come, in bytes;
    /// none without a database URL or when the server does not answer. The
    /// log is the server's, so what other databases on it write counts too.
    pub async fn wal_position(&self) -> Option<u64> {
        let options = self
            .database_url
            .as_ref()?
            .parse::<sqlx::postgres::PgConnectOptions>()
            .ok()?;
        let mut conn = sqlx::PgConnection::connect_with(&options).await.ok()?;
        let position: i64 =
            sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8")
                .fetch_one(&mut conn)
                .await
                .ok()?;
        let _ = conn.close().await;
        u64::try_from(position).ok()
    }

    /// Has the target's database finish the upkeep that earlier runs left
    /// it (vacuum, a checkpoint), so that it does not land in the next
    /// measurement. Best effort: without the rights, the database is
    /// measured as it is.
    pub async fn settle(&self) {
        let Some(url) = &self.database_url else {
            return;
        };
        let Ok(options) = url.parse::<sqlx::postgres::PgConnectOptions>() else {
            return;
        };
        if let Ok(mut conn) = sqlx::PgConnection::connect_with(&options).await {
            for statement in ["VACUUM (ANALYZE)", "CHECKPOINT"] {
                if let Err(e) = sqlx::query(statement).execute(&mut conn).await {
                    eprintln!(
                        "{}: {statement} before the next run: {e}",
                        self.design.name()
                    );
                }
            }
        }
    }

    /// Checks from the target's database that no pool holds more than its
    /// capacity, that its count matches its reservations, that no
    /// reservation id was recorded twice, and that every reservation a
    /// client was told was accepted is recorded.
    ///
    /// It reads every record once, in one pass over the table in its order
    /// on disk, and adds them up here: the database neither sorts the
    /// records nor looks them up pool by pool, so the check takes about as
    /// long as reading the table, however long the run was.
    pub async fn verify(&self) -> anyhow::Result<Verified> {
        let Some(url) = &self.database_url else {
            bail!("no database URL to check {} against", self.design.name());
        };
        let options = url
            .parse::<sqlx::postgres::PgConnectOptions>()?
            .disable_statement_logging();
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let mut tally = Tally::new(self.pools.len());
        // Each pool's capacity, and the count kept beside its records (the
        // baseline's counter; Allot keeps none).
        let pools = match self.design {
            Design::Allot => {
                "SELECT pool_id, (config->>'units')::bigint, NULL::bigint
                   FROM pools WHERE capacity_type = 'quota'"
            }
            Design::Baseline => "SELECT pool_id, capacity, used FROM baseline.pools",
        };
        let pools: Vec<(String, Option<i64>, Option<i64>)> =
            sqlx::query_as(pools).fetch_all(&mut conn).await?;
        for (pool, capacity, counted) in pools {
            if let Some(&index) = self.index.get(&pool) {
                match capacity {
                    Some(capacity) => tally.pool(index, capacity, counted),
                    None => tally.malformed(format!("{pool}: no capacity in its config")),
                }
            }
        }
        // Every reservation (the units it holds, its id) and every release.
        let records = match self.design {
            Design::Allot => {
                "SELECT pool_id, (payload->>'units')::bigint, payload->>'reservation_id',
                        payload->>'type' = 'released'
                   FROM events WHERE payload->>'type' IN ('reserved', 'released')"
            }
            Design::Baseline => {
                "SELECT pool_id, units, reservation_id, released FROM baseline.reservations"
            }
        };
        let mut rows = sqlx::query(records).fetch(&mut conn);
        while let Some(row) = rows.try_next().await? {
            let pool: &str = row.try_get(0)?;
            let Some(&index) = self.index.get(pool) else {
                continue;
            };
            let units: Option<i64> = row.try_get(1)?;
            let reservation: Option<&str> = row.try_get(2)?;
            let released: bool = row.try_get(3)?;
            let (Some(units), Some(reservation)) = (units, reservation) else {
                tally.malformed(format!(
                    "{pool}: a record without its units or reservation id"
                ));
                continue;
            };
            match (self.design, released) {
                (Design::Allot, true) => tally.released(index, units),
                (Design::Allot, false) => tally.reserved(index, reservation, units),
                // The baseline keeps one row per reservation, marked when
                // it is released.
                (Design::Baseline, released) => {
                    tally.reserved(index, reservation, units);
                    if released {
                        tally.released(index, units);
                    }
                }
            }
        }
        drop(rows);
        // Where a fingerprint came twice, the pool's ids are counted exactly.
        let repeated = match self.design {
            Design::Allot => {
                "SELECT count(*) - count(DISTINCT payload->>'reservation_id') FROM events
                  WHERE pool_id = $1 AND payload->>'type' = 'reserved'"
            }
            Design::Baseline => {
                "SELECT count(*) - count(DISTINCT reservation_id) FROM baseline.reservations
                  WHERE pool_id = $1"
            }
        };
        for index in tally.suspects() {
            let (count,): (i64,) = sqlx::query_as(repeated)
                .bind(self.pool(index))
                .fetch_one(&mut conn)
                .await?;
            tally.repeated(index, count as u64);
        }
        let ledger = &self.caller.ledger;
        Ok(tally.finish(|index| self.pool(index), |index| ledger.accepted(index)))
    }
}
