//! `allot dev`: the whole product on one machine, from a fresh clone, with
//! one command.

use std::net::SocketAddr;
use std::time::Instant;

use clap::Args;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use super::plugins::{BUNDLED, build};
use crate::api::TokenConfig;
use crate::dev;
use crate::ids::PoolId;
use crate::node::{ClusterConfig, Config, Node};
use crate::sandbox::Role;

#[derive(Args)]
pub(super) struct DevArgs {
    /// The port the API listens on (loopback only); with `--nodes`, the
    /// first node's, and the others take the ports after it.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Nodes to run as one cluster on the one PostgreSQL.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    nodes: u16,
    /// Start from an empty database: delete the dev PostgreSQL's data first.
    #[arg(long)]
    fresh: bool,
}

/// The dev setup's tokens: well known, which is fine on loopback and nowhere else.
const TOKENS: &[(&str, Role, &str)] = &[
    ("dev-checkout", Role::Checkout, "dev-checkout-token"),
    ("dev-planner", Role::Planner, "dev-planner-token"),
    ("dev-operator", Role::Operator, "dev-operator-token"),
];

/// The dev setup's tokens, which `allot serve` refuses.
pub(super) fn published_tokens() -> Vec<&'static str> {
    TOKENS.iter().map(|(_, _, token)| *token).collect()
}

pub(super) async fn run(args: DevArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let plugins = tokio::task::spawn_blocking(|| build(BUNDLED)).await??;

    let data_dir = dev::scratch_postgres_dir("dev");
    if args.fresh && data_dir.exists() {
        eprintln!("deleting the dev database in {} …", data_dir.display());
        std::fs::remove_dir_all(&data_dir)?;
    }
    eprintln!("starting PostgreSQL (data in {}) …", data_dir.display());
    if u32::from(args.port) + u32::from(args.nodes) > 65536 {
        anyhow::bail!(
            "--port {} leaves no room for {} nodes",
            args.port,
            args.nodes
        );
    }
    // The nodes of a dev cluster forward to each other with this secret.
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], args.port)),
        data_dir: Some(data_dir),
        plugins,
        activate_plugins: true,
        tokens: TOKENS
            .iter()
            .map(|(name, role, token)| TokenConfig {
                name: (*name).to_owned(),
                role: *role,
                token: (*token).to_owned(),
            })
            .collect(),
        cluster: ClusterConfig {
            node_id: Some("dev-1".to_owned()),
            secret: Some(secret.clone()),
            ..ClusterConfig::default()
        },
        ..Config::default()
    };
    // The first node runs PostgreSQL; the others use it.
    let node = Node::start(config.clone()).await?;
    let mut others = Vec::new();
    for n in 1..args.nodes {
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], args.port + n)),
            data_dir: None,
            database_url: node.embedded_database_url(),
            cluster: ClusterConfig {
                node_id: Some(format!("dev-{}", n + 1)),
                ..config.cluster.clone()
            },
            ..config.clone()
        };
        others.push(Node::start(config).await?);
    }

    let tomorrow = (OffsetDateTime::now_utc() + Duration::days(1)).date();
    let mut pools = Vec::new();
    for (id, capacity_type, config) in examples(tomorrow) {
        let pool = PoolId::new(&id)?;
        let raw = serde_json::value::to_raw_value(&config)?;
        node.runtime()
            .create_pool(&pool, capacity_type, &raw)
            .await?;
        pools.push((id, capacity_type));
    }

    let url = node.url();
    println!();
    println!(
        "Allot is running at {url}  (ready in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    if !others.is_empty() {
        println!("Every node serves the whole API; the cluster:");
        println!("  dev-1  {url}");
        for (n, other) in others.iter().enumerate() {
            println!("  dev-{}  {}", n + 2, other.url());
        }
        println!("  curl -H 'Authorization: Bearer dev-operator-token' {url}/v1/cluster");
    }
    if let Some(database) = node.embedded_database_url() {
        println!("PostgreSQL: {database}");
    }
    println!();
    println!("Tokens (send as `Authorization: Bearer <token>`):");
    for (name, _, token) in TOKENS {
        println!("  {name:<14} {token}");
    }
    println!();
    println!("Example pools:");
    for (id, capacity_type) in &pools {
        println!("  {id:<34} {capacity_type}");
    }
    let (first, _) = &pools[0];
    println!();
    println!("Try:");
    println!("  export ALLOT_URL={url} ALLOT_TOKEN=dev-planner-token");
    println!("  cargo run -p allot-host -- grid");
    println!(
        "  cargo run -p allot-host -- reserve {first} order-1 '{{\"slot\": \"08-10\", \"stops\": 1, \"weight_kg\": 12}}'"
    );
    println!("  curl -H 'Authorization: Bearer dev-checkout-token' {url}/v1/grid");
    println!("  API reference: {url}/openapi.json");
    println!();
    println!("Watching plugins/: a saved change is rebuilt, checked and swapped in.");
    println!("Ctrl-C stops it; the data stays for the next run (`--fresh` starts over).");

    let mut watcher = tokio::spawn(super::watch::watch(
        dev::workspace_root(),
        node.registry().clone(),
        node.runtime().clone(),
    ));
    tokio::select! {
        _ = super::shutdown_signal() => {}
        stopped = &mut watcher => {
            if let Ok(Err(error)) = stopped {
                eprintln!("the plugin watcher stopped: {error:#}");
            }
            super::shutdown_signal().await;
        }
    }
    watcher.abort();
    eprintln!("shutting down …");
    // The others first: the first node runs PostgreSQL.
    stop_all(others).await;
    node.stop().await;
    Ok(true)
}

/// Stops nodes at once, each handing its shards to the ones still running.
async fn stop_all(nodes: Vec<Node>) {
    let mut stopping = tokio::task::JoinSet::new();
    for node in nodes {
        stopping.spawn(node.stop());
    }
    while stopping.join_next().await.is_some() {}
}

/// A handful of pools of each bundled type, for tomorrow.
fn examples(day: time::Date) -> Vec<(String, &'static str, Value)> {
    let date = format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    );
    let slots = json!([
        { "id": "08-10", "start": "08:00", "end": "10:00" },
        { "id": "10-12", "start": "10:00", "end": "12:00" },
        { "id": "12-14", "start": "12:00", "end": "14:00" },
        { "id": "16-18", "start": "16:00", "end": "18:00" },
        { "id": "18-20", "start": "18:00", "end": "20:00" },
    ]);
    let van = |id: &str, start: &str, end: &str| json!({ "id": id, "shift_start": start, "shift_end": end, "stops_per_hour": 3, "max_weight_kg": 400 });
    vec![
        (
            format!("berlin-mitte.{date}"),
            "logistics",
            json!({
                "area": "berlin-mitte", "date": date, "utc_offset": "+01:00",
                "slots": slots,
                "vans": [van("van-1", "08:00", "14:00"), van("van-2", "16:00", "20:00")],
            }),
        ),
        (
            format!("berlin-pankow.{date}"),
            "logistics",
            json!({
                "area": "berlin-pankow", "date": date, "utc_offset": "+01:00",
                "slots": slots,
                "vans": [van("van-3", "08:00", "12:00")],
            }),
        ),
        (
            format!("hamburg-altona.{date}"),
            "logistics",
            json!({
                "area": "hamburg-altona", "date": date, "utc_offset": "+01:00",
                "slots": slots,
                "vans": [van("van-4", "10:00", "20:00"), van("van-5", "08:00", "12:00")],
            }),
        ),
        (
            format!("ams-1.{date}"),
            "warehouse",
            json!({
                "warehouse": "ams-1", "date": date, "utc_offset": "+01:00",
                "open_hour": 6, "close_hour": 22, "items_per_hour": 400,
            }),
        ),
        (
            format!("truck-b-al-123.{date}"),
            "vehicle-load",
            json!({
                "truck": "B-AL-123", "departure": format!("{date}T18:00:00+01:00"),
                "capacity": { "weight_kg": 12000, "volume_l": 40000, "pallets": 18 },
            }),
        ),
    ]
}
