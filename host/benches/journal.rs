//! The group append alone: how long an append of N pools' batches takes
//! (one reservation each, its event carrying the reservation's key, under
//! a shard lease), closed loop on one connection, and how much CPU the
//! connection's PostgreSQL backend spends on it. The fixed cost of an
//! append against its cost per pool is what decides how much a larger
//! group saves.
//!
//! `cargo bench -p allot-host --bench journal -- [--seconds S]`
//!
//! Uses `DATABASE_URL` when set, else an embedded PostgreSQL in the
//! system's temporary folder; the backend's CPU is read from `/proc`, so
//! PostgreSQL must run on this machine for that column.

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_host::ids::{PoolId, SeqNr};
use allot_host::journal::{Append, Completion, Fence, Journal, NewEvent, PluginRef};
use serde_json::json;
use serde_json::value::RawValue;
use sqlx::Connection;

mod support;

const POOLS: usize = 1000;
const GROUPS: [usize; 4] = [1, 4, 16, 64];

fn main() -> anyhow::Result<()> {
    let seconds: f64 = support::arg("--seconds", 3.0);
    let (admin, _server) = support::admin_url()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(&admin, Duration::from_secs_f64(seconds)))
}

async fn run(admin: &str, each: Duration) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query("DROP DATABASE IF EXISTS allot_journal_bench")
        .execute(&mut conn)
        .await?;
    sqlx::query("CREATE DATABASE allot_journal_bench")
        .execute(&mut conn)
        .await?;
    let (base, _) = admin
        .rsplit_once('/')
        .expect("a database URL ends in /<database>");
    // One connection, so that every statement runs on the backend measured.
    let journal = Journal::connect(&format!("{base}/allot_journal_bench"), 1).await?;
    let mut pools = Pools::create(&journal).await?;
    let backend = Backend::of(&journal).await?;

    let (started, cpu) = (Instant::now(), backend.cpu());
    let mut trips = 0u64;
    while started.elapsed() < each {
        sqlx::query("SELECT 1").execute(journal.db()).await?;
        trips += 1;
    }
    println!(
        "a round trip (SELECT 1): {:.3} ms, {:.0} µs of the backend's CPU\n",
        started.elapsed().as_secs_f64() * 1e3 / trips as f64,
        (backend.cpu() - cpu) * 1e6 / trips as f64
    );
    println!(
        "{:>6} {:>9} {:>11} {:>10} {:>15} {:>14}",
        "pools", "appends", "ms/append", "µs/pool", "backend µs/app", "backend µs/pool"
    );
    for group in GROUPS {
        let (started, cpu) = (Instant::now(), backend.cpu());
        let mut appends = 0u64;
        while started.elapsed() < each {
            let batches = pools.next_group(group);
            for result in journal.append_many(&batches).await {
                result?;
            }
            appends += 1;
        }
        let ms = started.elapsed().as_secs_f64() * 1e3 / appends as f64;
        let backend_us = (backend.cpu() - cpu) * 1e6 / appends as f64;
        println!(
            "{group:>6} {appends:>9} {ms:>11.3} {:>10.1} {backend_us:>15.1} {:>14.1}",
            ms * 1e3 / group as f64,
            backend_us / group as f64
        );
    }
    Ok(())
}

/// The pools appended to, in turn, and where each one's history ends.
struct Pools {
    ids: Vec<PoolId>,
    ends: Vec<i64>,
    plugin: Arc<PluginRef>,
    next: usize,
    reservations: u64,
}

impl Pools {
    async fn create(journal: &Journal) -> anyhow::Result<Self> {
        let ids: Vec<PoolId> = (0..POOLS)
            .map(|i| PoolId::new(&format!("bench-spread-{i:05}")))
            .collect::<Result<_, _>>()?;
        for id in &ids {
            journal
                .create_pool(id, "quota", &RawValue::from_string("{}".into())?)
                .await?;
            sqlx::query(
                "INSERT INTO shard_leases (shard, owner_node, epoch, expires_at)
                 VALUES ($1, 'bench', 1, now() + interval '1 day') ON CONFLICT DO NOTHING",
            )
            .bind(id.shard() as i32)
            .execute(journal.db())
            .await?;
        }
        Ok(Self {
            ends: vec![0; ids.len()],
            ids,
            plugin: Arc::new(PluginRef {
                name: "allot-plugin-template".into(),
                version: "0.1.0".into(),
                digest: format!("sha256:{}", "0123456789abcdef".repeat(4)),
            }),
            next: 0,
            reservations: 0,
        })
    }

    /// A reservation for each of the next `size` pools.
    fn next_group(&mut self, size: usize) -> Vec<Append> {
        (0..size)
            .map(|_| {
                let p = self.next % self.ids.len();
                self.next += 1;
                self.reservations += 1;
                let id = format!("r-{}", self.reservations);
                let event = json!({ "reserved": { "reservation_id": id, "units": 1 } });
                let batch = Append {
                    pool: self.ids[p].clone(),
                    expected: SeqNr(self.ends[p]),
                    events: vec![NewEvent {
                        payload: RawValue::from_string(event.to_string()).expect("JSON"),
                        request_id: format!("{:032x}", self.reservations),
                        actor: "bench (operator)".into(),
                        completes: Some(Completion {
                            key: format!("reserve:{id}"),
                            events: 1,
                            request: None,
                        }),
                    }],
                    plugin: self.plugin.clone(),
                    commands: Vec::new(),
                    fence: Some(Fence {
                        shard: self.ids[p].shard(),
                        epoch: 1,
                    }),
                };
                self.ends[p] += 1;
                batch
            })
            .collect()
    }
}

/// The PostgreSQL backend serving the journal's one connection.
struct Backend {
    stat: String,
}

impl Backend {
    async fn of(journal: &Journal) -> anyhow::Result<Self> {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(journal.db())
            .await?;
        Ok(Self {
            stat: format!("/proc/{pid}/stat"),
        })
    }

    /// Seconds of CPU it has used (0 when it runs elsewhere).
    fn cpu(&self) -> f64 {
        let stat = std::fs::read_to_string(&self.stat).unwrap_or_default();
        // The fields after the command name; utime and stime are the 14th
        // and 15th of the line, in ticks of 1/100 s.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
        ticks(11).unwrap_or(0.0) / 100.0 + ticks(12).unwrap_or(0.0) / 100.0
    }
}
