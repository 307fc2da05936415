//! The entity layer under load, against a real PostgreSQL: appended events per
//! second and per-command latency at a fixed offered rate, for reservations
//! spread over 1,000 pools and for one hot pool; then the recovery time of a
//! pool with 100,000 events, with and without a snapshot.
//!
//! `cargo bench -p allot-host --bench entity -- [--rate N] [--seconds S] [--shadow]`
//!
//! With `--shadow`, the quota type is shadowed by a second copy of its own
//! plugin, which decides every command too: the cost of shadow evaluation
//! on the real decision path.
//!
//! The load is open-loop: commands are sent on a fixed schedule and latency is
//! measured from when each was due, so a slow system cannot hide its queue.
//! Uses `DATABASE_URL` when set, else an embedded PostgreSQL in the system's
//! temporary folder.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use allot_host::dev;
use allot_host::entity::{Error, Outcome, Request, Runtime, Settings};
use allot_host::ids::PoolId;
use allot_host::journal::Journal;
use allot_host::sandbox::{Command, Context, Engine, Limits, Plugin, Role};
use hdrhistogram::Histogram;
use serde_json::json;
use serde_json::value::RawValue;
use sqlx::Connection;

mod support;
use tokio::time::Instant;

const RECOVERY_EVENTS: usize = 100_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let rate = arg("--rate", 4000.0);
    let seconds = arg("--seconds", 10.0);
    let shadow = args.iter().any(|a| a == "--shadow");

    eprintln!("building the quota plugin…");
    let path = dev::build_plugins(&dev::workspace_root(), &["allot-plugin-template"])?.remove(0);
    let plugin = Plugin::load(&Engine::new(Limits::default())?, &std::fs::read(path)?)?;

    let (admin, _server) = support::admin_url()?;

    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let url = fresh_database(&admin).await?;
            let runtime = Runtime::new(Journal::connect(&url, 16).await?, Settings::default());
            runtime.load_plugin(plugin.clone());
            if shadow {
                runtime.start_shadow(plugin);
            }

            println!(
                "offered {rate:.0} commands/s for {seconds:.0} s, open loop{}",
                if shadow { ", shadowed" } else { "" }
            );
            println!(
                "{:<22} {:>12} {:>10} {:>10} {:>10} {:>10}  errors",
                "scenario", "events/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
            );
            let pools = create_pools(&runtime, "spread", 1000).await?;
            let hot = create_pools(&runtime, "hot", 1).await?;
            // Activation (recovering each pool) is measured on its own, so
            // that the load figures are those of running pools.
            let started = Instant::now();
            activate(&runtime, pools.iter().chain(&hot)).await?;
            let activation = started.elapsed();
            load(&runtime, "1,000 pools", &pools, rate, seconds).await;
            load(&runtime, "one hot pool", &hot, rate, seconds).await;
            if let Some(report) = runtime.shadow_report("quota") {
                println!(
                    "shadow: {} decisions agreed, {} disagreed, {} failed",
                    report.agreements, report.disagreements, report.failures
                );
            }
            println!(
                "activating 1,001 pools (their first command after a start) took {:.0} ms",
                activation.as_secs_f64() * 1e3
            );

            recovery(&runtime, &url).await?;
            anyhow::Ok(())
        })
}

async fn fresh_database(admin: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(admin).await?;
    sqlx::query("DROP DATABASE IF EXISTS allot_bench")
        .execute(&mut conn)
        .await?;
    sqlx::query("CREATE DATABASE allot_bench")
        .execute(&mut conn)
        .await?;
    let (base, _) = admin
        .rsplit_once('/')
        .expect("a database URL ends in /<database>");
    Ok(format!("{base}/allot_bench"))
}

async fn create_pools(runtime: &Runtime, prefix: &str, n: usize) -> anyhow::Result<Vec<PoolId>> {
    let mut pools = Vec::with_capacity(n);
    for i in 0..n {
        let id = PoolId::new(&format!("{prefix}-{i}"))?;
        let config = RawValue::from_string(
            json!({ "name": id.as_str(), "units": 1_000_000_000_000u64 }).to_string(),
        )?;
        runtime.create_pool(&id, "quota", &config).await?;
        pools.push(id);
    }
    Ok(pools)
}

async fn activate(runtime: &Runtime, pools: impl Iterator<Item = &PoolId>) -> anyhow::Result<()> {
    let tasks: Vec<_> = pools
        .map(|id| {
            let (runtime, id) = (runtime.clone(), id.clone());
            tokio::spawn(async move {
                runtime
                    .view(&id, Instant::now() + Duration::from_secs(60))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

fn reserve(id: String, deadline: Instant) -> Request {
    Request {
        context: Context {
            now_ms: 0,
            request_id: id.clone(),
            role: Role::Checkout,
        },
        command: Command::Reserve {
            id,
            request: RawValue::from_string(r#"{"units": 1}"#.into()).expect("JSON"),
        },
        actor: "bench (checkout)".into(),
        idempotency_key: None,
        deadline,
    }
}

/// Sends reservations round-robin over `pools` at `rate` per second.
async fn load(runtime: &Runtime, name: &str, pools: &[PoolId], rate: f64, seconds: f64) {
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let errors = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let total = (rate * seconds) as u64;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while sent < total {
        tick.tick().await;
        let due_by_now = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        while sent < due_by_now {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            let pool = pools[sent as usize % pools.len()].clone();
            let (runtime, histogram, errors) = (runtime.clone(), histogram.clone(), errors.clone());
            let id = format!("{name}-{sent}").replace([' ', ','], "");
            tasks.push(tokio::spawn(async move {
                let result = runtime
                    .execute(&pool, reserve(id, due + Duration::from_secs(1)))
                    .await;
                let micros = due.elapsed().as_micros() as u64;
                histogram.lock().unwrap().saturating_record(micros.max(1));
                let kind = match result {
                    Ok(Outcome::Accepted { .. }) => return,
                    Ok(other) => format!("{other:?}")
                        .split_whitespace()
                        .next()
                        .unwrap_or("?")
                        .to_owned(),
                    Err(Error::Overloaded(_)) => "overloaded".into(),
                    Err(Error::DeadlinePassed) => "deadline".into(),
                    Err(e) => e.to_string(),
                };
                *errors.lock().unwrap().entry(kind).or_default() += 1;
            }));
            sent += 1;
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = histogram.lock().unwrap();
    let errors = errors.lock().unwrap();
    let failed: u64 = errors.values().sum();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{:<22} {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>10.2}  {}",
        name,
        (total - failed) as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        if errors.is_empty() {
            "none".to_owned()
        } else {
            format!("{errors:?}")
        }
    );
}

/// Fills one pool with 100,000 events as fast as the entity takes them, then
/// times its recovery from a snapshot and from events alone.
async fn recovery(runtime: &Runtime, url: &str) -> anyhow::Result<()> {
    let id = create_pools(runtime, "recovery", 1).await?.remove(0);
    let started = Instant::now();
    let mut written = 0;
    while written < RECOVERY_EVENTS {
        // Stay under the mailbox size: the fill wants throughput, not refusals.
        let batch: Vec<_> = (written..(written + 1_000).min(RECOVERY_EVENTS))
            .map(|i| {
                let (runtime, id) = (runtime.clone(), id.clone());
                tokio::spawn(async move {
                    runtime
                        .execute(
                            &id,
                            reserve(format!("rec-{i}"), Instant::now() + Duration::from_secs(30)),
                        )
                        .await
                })
            })
            .collect();
        for task in batch {
            task.await??;
            written += 1;
        }
    }
    let fill = started.elapsed().as_secs_f64();
    println!(
        "filled a pool with {RECOVERY_EVENTS} events in {fill:.1} s ({:.0} events/s, closed loop)",
        RECOVERY_EVENTS as f64 / fill
    );
    runtime.shutdown().await;

    let with_snapshot = time_recovery(url, &id).await?;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query("DELETE FROM snapshots")
        .execute(&mut conn)
        .await?;
    let without = time_recovery(url, &id).await?;
    println!(
        "recovery of {RECOVERY_EVENTS} events: {with_snapshot:.1} ms from the latest snapshot, {without:.1} ms by full replay"
    );
    Ok(())
}

async fn time_recovery(url: &str, id: &PoolId) -> anyhow::Result<f64> {
    let runtime = Runtime::new(Journal::connect(url, 4).await?, Settings::default());
    let path = dev::build_plugins(&dev::workspace_root(), &["allot-plugin-template"])?.remove(0);
    runtime.load_plugin(Plugin::load(
        &Engine::new(Limits::default())?,
        &std::fs::read(path)?,
    )?);
    let started = Instant::now();
    let (seq, _) = runtime
        .view(id, Instant::now() + Duration::from_secs(600))
        .await?;
    let took = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(seq.0 as usize, RECOVERY_EVENTS);
    runtime.shutdown().await;
    Ok(took)
}
