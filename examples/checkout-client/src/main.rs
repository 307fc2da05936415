//! An example checkout client: places orders into the delivery slots of
//! Allot's logistics pools the way a web shop's checkout would.
//!
//! For each order it offers the customer's preferred slot first and the
//! next one when that is full (`409 slot_full`). It sends a reservation
//! again, with the same id, after any answer that says a retry is safe
//! (`"retryable": true`): a `503` (not decided; after the `Retry-After` the
//! node asks for) or a `502 outcome_unknown` (decided, its recording
//! unknown: the retry answers the first outcome). So a retry can never
//! book twice, and an order moves to another slot only once its last
//! answer says nothing was booked.
//!
//! ```sh
//! cargo run -p allot-checkout-client -- --orders 200 --concurrency 8
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// Places orders against a running Allot node.
#[derive(Parser)]
struct Args {
    /// The node's URL.
    #[arg(long, env = "ALLOT_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A checkout (or planner) token.
    #[arg(
        long,
        env = "ALLOT_CHECKOUT_TOKEN",
        default_value = "dev-checkout-token"
    )]
    token: String,
    /// Orders to place.
    #[arg(long, default_value_t = 100)]
    orders: usize,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Only pools whose id starts with this.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// One deliverable slot: a pool and a slot id.
#[derive(Clone, Debug)]
struct Slot {
    pool: String,
    slot: String,
}

/// What happened to the orders.
#[derive(Default)]
struct Tally {
    placed: usize,
    /// Orders no slot could take.
    unplaced: usize,
    /// Orders whose outcome stayed unknown after every retry.
    unresolved: usize,
    /// Refusals seen on the way, by code.
    refusals: BTreeMap<String, usize>,
    retries: usize,
    latencies: Vec<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::new();
    let slots = slots(&http, &args).await?;
    if slots.is_empty() {
        bail!(
            "no open logistics slots under prefix `{}`: is `allot dev` running?",
            args.prefix
        );
    }
    println!("{} slots in {} pools", slots.len(), {
        let mut pools: Vec<&str> = slots.iter().map(|s| s.pool.as_str()).collect();
        pools.dedup();
        pools.len()
    });

    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (http, slots, tally, next) =
                (http.clone(), slots.clone(), tally.clone(), next.clone());
            let (url, token, orders) = (args.url.clone(), args.token.clone(), args.orders);
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= orders {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let id = format!("order-{run}-{n}");
                    place(&http, &url, &token, &slots, n, &id, &tally).await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();

    let mut tally = tally.lock().await;
    tally.latencies.sort();
    let quantile = |q: f64| {
        let i = ((tally.latencies.len() as f64 - 1.0) * q).round() as usize;
        tally
            .latencies
            .get(i)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{} orders in {:.1} s: {} placed, {} found no slot, {} unresolved, {} retries",
        args.orders,
        elapsed.as_secs_f64(),
        tally.placed,
        tally.unplaced,
        tally.unresolved,
        tally.retries
    );
    for (code, count) in &tally.refusals {
        println!("  refused {count} times: {code}");
    }
    println!(
        "reservation latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        quantile(0.5),
        quantile(0.99),
        quantile(1.0)
    );
    Ok(())
}

/// The open slots of the logistics pools, from the capacity grid.
async fn slots(http: &reqwest::Client, args: &Args) -> anyhow::Result<Vec<Slot>> {
    let grid: Value = http
        .get(format!("{}/v1/grid", args.url))
        .query(&[
            ("capacity_type", "logistics"),
            ("prefix", &args.prefix),
            ("limit", "1000"),
        ])
        .bearer_auth(&args.token)
        .send()
        .await
        .with_context(|| format!("cannot reach {}", args.url))?
        .error_for_status()?
        .json()
        .await?;
    let mut slots = Vec::new();
    for pool in grid["pools"].as_array().into_iter().flatten() {
        for cell in pool["cells"].as_array().into_iter().flatten() {
            // Stops cells are the slots; weight cells share their slot's id.
            if cell["unit"] == "stops"
                && cell["open"] == true
                && cell["capacity"].as_u64() > Some(0)
            {
                slots.push(Slot {
                    pool: pool["pool"].as_str().unwrap_or_default().to_owned(),
                    slot: cell["key"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    Ok(slots)
}

/// Places one order: the preferred slot, then the following ones.
async fn place(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    slots: &[Slot],
    n: usize,
    id: &str,
    tally: &Mutex<Tally>,
) -> anyhow::Result<()> {
    for offset in 0..slots.len().min(4) {
        let slot = &slots[(n * 7 + offset) % slots.len()];
        let body = json!({
            "id": id,
            "request": { "slot": slot.slot, "stops": 1, "weight_kg": 5 + (n % 20) as u64 },
        });
        let started = Instant::now();
        // Whether an attempt was decided without its recording known: it
        // may have booked this slot until a later answer says otherwise.
        let mut maybe_booked = false;
        for attempt in 0.. {
            let response = http
                .post(format!(
                    "{url}/v1/pools/{}/reservations",
                    slot.pool.replace('/', "%2F")
                ))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let answer: Value = response.json().await?;
            let mut tally = tally.lock().await;
            maybe_booked |= answer["code"] == "outcome_unknown";
            match status {
                StatusCode::CREATED => {
                    tally.placed += 1;
                    tally.latencies.push(started.elapsed());
                    return Ok(());
                }
                _ if answer["retryable"] == true && attempt >= 5 && maybe_booked => {
                    // It may have booked this slot: another slot could
                    // book twice. What became of it is asked later.
                    tally.unresolved += 1;
                    return Ok(());
                }
                // Never decided: nothing was booked, so the next slot is
                // safe to try.
                _ if answer["retryable"] == true && attempt >= 5 => break,
                _ if answer["retryable"] == true => {
                    tally.retries += 1;
                    drop(tally);
                    // Same reservation id: if an attempt did take effect,
                    // the retry answers its outcome.
                    tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
                }
                _ => {
                    let code = answer["code"].as_str().unwrap_or("unknown").to_owned();
                    *tally.refusals.entry(code).or_default() += 1;
                    break;
                }
            }
        }
    }
    tally.lock().await.unplaced += 1;
    Ok(())
}
