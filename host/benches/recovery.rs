//! What a pool's recovery reads of its recorded outcomes, with many
//! refusals recorded: a pool refused a million reservations within the
//! idempotency window, and took effect for a few hundred commands
//! without events. Times the journal's read of the outcomes a recovery
//! needs (`Journal::command_outcomes`), and in the same run the read the
//! previous build made (every outcome of the window, refusals included),
//! on the same table.
//!
//! `cargo bench -p allot-host --bench recovery -- [--refusals N]`
//!
//! Uses `DATABASE_URL` when set, else an embedded PostgreSQL in the
//! system's temporary folder.

use std::time::{Duration, Instant};

use allot_host::ids::PoolId;
use allot_host::journal::Journal;
use serde_json::json;
use serde_json::value::RawValue;
use sqlx::Connection;

mod support;

/// Outcomes without events that took effect (a zero-event acceptance).
const TAKEN: i64 = 300;
const RUNS: usize = 7;
const WINDOW: Duration = Duration::from_secs(3600);

fn main() -> anyhow::Result<()> {
    let refusals: i64 = support::arg("--refusals", 1_000_000);
    let (admin, _server) = support::admin_url()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(&admin, refusals))
}

async fn run(admin: &str, refusals: i64) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query("DROP DATABASE IF EXISTS allot_recovery_bench")
        .execute(&mut conn)
        .await?;
    sqlx::query("CREATE DATABASE allot_recovery_bench")
        .execute(&mut conn)
        .await?;
    let (base, _) = admin
        .rsplit_once('/')
        .expect("a database URL ends in /<database>");
    let url = format!("{base}/allot_recovery_bench");
    let journal = Journal::connect(&url, 4).await?;
    let pool = PoolId::new("refused-a-lot")?;
    journal
        .create_pool(
            &pool,
            "quota",
            &RawValue::from_string(json!({}).to_string())?,
        )
        .await?;
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO commands (pool_id, idempotency_key, seq_nr, outcome, accepted)
         SELECT $1, 'reserve:refused-' || n, 0,
                '{\"rejected\":{\"problem\":{\"code\":\"full\",\"message\":\"no units left\"}}}'::json,
                false
           FROM generate_series(1, $2) n
         UNION ALL
         SELECT $1, 'custom:noop:' || n, 0, '{\"accepted\":{\"seq_nr\":0,\"events\":[]}}'::json, true
           FROM generate_series(1, $3) n",
    )
    .bind(pool.as_str())
    .bind(refusals)
    .bind(TAKEN)
    .execute(journal.db())
    .await?;
    sqlx::query("ANALYZE commands")
        .execute(journal.db())
        .await?;
    println!(
        "pool with {refusals} refusals and {TAKEN} outcomes that took effect, written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut now = Vec::new();
    let mut before = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let read = journal.command_outcomes(&pool, WINDOW).await?;
        now.push(started.elapsed());
        assert_eq!(read.len() as i64, TAKEN);
        let started = Instant::now();
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT idempotency_key, seq_nr, outcome::text FROM commands
              WHERE pool_id = $1 AND recorded_at > now() - make_interval(secs => $2)",
        )
        .bind(pool.as_str())
        .bind(WINDOW.as_secs_f64())
        .fetch_all(journal.db())
        .await?;
        before.push(started.elapsed());
        assert_eq!(rows.len() as i64, refusals + TAKEN);
    }
    let median = |mut times: Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (now, before) = (median(now), median(before));
    println!(
        "outcomes read by a recovery, median of {RUNS}: {:.2} ms now, {:.1} ms as before \
         (every outcome of the window): {:.0}x less",
        now.as_secs_f64() * 1e3,
        before.as_secs_f64() * 1e3,
        before.as_secs_f64() / now.as_secs_f64()
    );
    Ok(())
}
