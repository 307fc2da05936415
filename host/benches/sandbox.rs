//! What the sandbox costs, per capacity type: creating a pool (instantiate the
//! component + `create`), and one `decide` + `apply` round trip.
//!
//! Run with `cargo bench -p allot-host --bench sandbox`. Prints a table; asserts
//! nothing about the figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use allot_host::dev;
use allot_host::sandbox::{Command, Context, Engine, Limits, Plugin, PoolInstance, Role};
use serde_json::json;
use serde_json::value::RawValue;

const CREATES: usize = 2_000;
const ROUND_TRIPS: usize = 50_000;

struct Case {
    package: &'static str,
    config: serde_json::Value,
    request: serde_json::Value,
}

fn main() -> anyhow::Result<()> {
    let cases = [
        Case {
            package: "allot-logistics",
            config: json!({
                "area": "bench", "date": "2026-11-24", "utc_offset": "+01:00",
                "slots": [
                    { "id": "08-10", "start": "08:00", "end": "10:00" },
                    { "id": "10-12", "start": "10:00", "end": "12:00" },
                    { "id": "12-14", "start": "12:00", "end": "14:00" },
                    { "id": "14-16", "start": "14:00", "end": "16:00" },
                    { "id": "16-18", "start": "16:00", "end": "18:00" },
                    { "id": "18-20", "start": "18:00", "end": "20:00" },
                ],
                "vans": (0..20).map(|i| json!({
                    "id": format!("van-{i}"), "shift_start": "08:00", "shift_end": "20:00",
                    "stops_per_hour": 6, "max_weight_kg": 800,
                })).collect::<Vec<_>>(),
            }),
            request: json!({ "slot": "12-14", "stops": 1, "weight_kg": 5 }),
        },
        Case {
            package: "allot-warehouse",
            config: json!({
                "warehouse": "bench", "date": "2026-11-24", "utc_offset": "+01:00",
                "open_hour": 6, "close_hour": 22, "items_per_hour": 400,
            }),
            request: json!({ "items": 30, "due_hour": 18 }),
        },
        Case {
            package: "allot-vehicle-load",
            config: json!({
                "truck": "bench", "departure": "2026-11-24T18:00:00+01:00",
                "capacity": { "weight_kg": 12000, "volume_l": 40000, "pallets": 18 },
            }),
            request: json!({ "weight_kg": 100, "volume_l": 200, "pallets": 1, "hold_minutes": 15 }),
        },
    ];

    eprintln!("building plugins…");
    let packages: Vec<_> = cases.iter().map(|c| c.package).collect();
    let paths = dev::build_plugins(&dev::workspace_root(), &packages)?;
    let engine = Engine::new(Limits::default())?;
    let context = Context {
        now_ms: 1_795_492_800_000, // 2026-11-24T05:00+01:00, before every cut-off
        request_id: "bench".into(),
        role: Role::Checkout,
    };

    println!(
        "{:<20} {:>10} {:>14} {:>14} {:>14} {:>14}",
        "capacity type", "load ms", "create µs", "decide+apply µs", "p50 µs", "p99 µs"
    );
    for (case, path) in cases.iter().zip(paths) {
        let bytes = std::fs::read(&path)?;
        let started = Instant::now();
        let plugin = Plugin::load(&engine, &bytes)?;
        let load = started.elapsed();
        let config = case.config.to_string();

        let create = per_op(CREATES, || {
            let pool = PoolInstance::create(&plugin, "bench", &config)
                .unwrap()
                .unwrap();
            std::hint::black_box(pool);
        });

        let mut samples = round_trips(&plugin, &config, &context, &case.request)?;
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        samples.sort_unstable();
        let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        println!(
            "{:<20} {:>10.1} {:>14.1} {:>14.2} {:>14.2} {:>14.2}",
            plugin.info().capacity_type,
            load.as_secs_f64() * 1e3,
            micros(create),
            micros(mean),
            micros(pct(0.50)),
            micros(pct(0.99)),
        );
    }
    Ok(())
}

/// Alternates a reservation and its release, so the pool stays in a steady
/// state, and times each decide + apply.
fn round_trips(
    plugin: &Arc<Plugin>,
    config: &str,
    context: &Context,
    request: &serde_json::Value,
) -> anyhow::Result<Vec<Duration>> {
    let mut pool =
        PoolInstance::create(plugin, "bench", config)?.map_err(|p| anyhow::anyhow!("{p}"))?;
    let request = RawValue::from_string(request.to_string())?;
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + ROUND_TRIPS / 10 {
        let id = format!("r{}", i / 2);
        let command = if i % 2 == 0 {
            Command::Reserve {
                id,
                request: request.clone(),
            }
        } else {
            Command::Release { id }
        };
        let started = Instant::now();
        let events = pool
            .decide(context, &command)?
            .map_err(|f| anyhow::anyhow!("{f:?}"))?;
        for event in &events {
            pool.apply(event)?;
        }
        let took = started.elapsed();
        if i >= ROUND_TRIPS / 10 {
            samples.push(took);
        }
    }
    Ok(samples)
}

fn per_op(n: usize, mut f: impl FnMut()) -> Duration {
    let started = Instant::now();
    for _ in 0..n {
        f();
    }
    started.elapsed() / n as u32
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
