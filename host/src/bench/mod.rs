//! `allot bench`: Allot against the classical design it replaces, side by
//! side, over real HTTP, on one PostgreSQL.
//!
//! Both targets are `allot serve` processes of this binary (the baseline
//! with `--baseline`), each with a database of its own on the same server.
//! Every scenario runs on both, one after the other, at the same offered
//! rate; the rate sweep then finds the highest rate each sustains within
//! the latency objective. At the end each target's database is checked:
//! no pool over capacity, every acknowledged reservation recorded once.

mod check;
mod disk;
mod load;
mod targets;

use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use reqwest::{Client, Method};

use crate::dev;
use crate::pg::EmbeddedPostgres;
use disk::{DiskFigures, DiskProbe};
use load::{Plan, Report, Shot};
use targets::{Design, Server, Target};

/// What `allot bench` takes.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Scenarios to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "spread,hot,grid,mixed,sellout,sweep"
    )]
    scenarios: Vec<Scenario>,
    /// Targets to run them on.
    #[arg(long, value_delimiter = ',', default_value = "allot,baseline")]
    targets: Vec<TargetName>,
    /// How long each fixed-rate scenario runs (`30s`, `10m`, `1h`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Reservations per second offered in `spread` and `hot`.
    #[arg(long, default_value_t = 2_000.0)]
    write_rate: f64,
    /// Grid reads per second offered in `grid`, for each page size; where
    /// the sweeps of the grid start.
    #[arg(long, default_value_t = 10_000.0)]
    read_rate: f64,
    /// Pools in each grid read, comma-separated sizes: 1 reads a single
    /// pool, more read a page of neighbouring spread pools (a checkout page:
    /// a week of slots; a planner's grid: the API's default page of 100).
    /// The grid scenario and its sweep run once for each size, in order;
    /// mixed load reads pages of the first size (rows `mixed×N` when over 1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,100",
        value_parser = clap::value_parser!(u64).range(1..=1000)
    )]
    grid_pools: Vec<u64>,
    /// Requests per second offered in `mixed` (75 % reads, 25 % reservations).
    #[arg(long, default_value_t = 4_000.0)]
    mixed_rate: f64,
    /// Release each reservation after this many more (every other write
    /// is then a release), so that pools stop growing: for soak runs. 0
    /// never releases.
    #[arg(long, default_value_t = 0)]
    churn: u64,
    /// Pools the spread load goes over.
    #[arg(long, default_value_t = 1_000)]
    pools: usize,
    /// The loads the sweep runs.
    #[arg(long, value_delimiter = ',', default_value = "spread,hot,grid,mixed")]
    sweep: Vec<SweepLoad>,
    /// How long each step of the sweep runs.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    step: Duration,
    /// Most steps of each sweep (of a load, and for the grid of a page
    /// size) per target; a step that misses and is tried again counts once.
    #[arg(long, default_value_t = 14)]
    steps: usize,
    /// The p99 objective of reservations and mixed load, in ms.
    #[arg(long, default_value_t = 10.0)]
    write_p99_ms: f64,
    /// The p99 objective of grid reads, in ms.
    #[arg(long, default_value_t = 2.0)]
    read_p99_ms: f64,
    /// Print figures this often during long runs (soak tests).
    #[arg(long, value_parser = parse_duration)]
    report_every: Option<Duration>,
    /// Allot's group-commit writers (`[entities] writers`); its default
    /// when not given.
    #[arg(long)]
    writers: Option<usize>,
    /// How long one of Allot's appends runs before a further one may start
    /// beside it (`[entities] overlap_after_ms`); its default when not given.
    #[arg(long, value_parser = parse_millis)]
    overlap_after: Option<Duration>,
    /// Most pools' batches in one of Allot's group commits (`[entities]
    /// max_group`); its default when not given.
    #[arg(long)]
    max_group: Option<usize>,
    /// How often at most a busy pool's read-model row is written
    /// (`[entities] view_row_interval_ms`); its default when not given.
    /// Longer writes less to PostgreSQL, and other nodes' grids lag more.
    #[arg(long, value_parser = parse_millis)]
    view_row_interval: Option<Duration>,
    /// How long Allot honours retries (`[entities]
    /// idempotency_window_seconds`); its default when not given. Its memory
    /// follows reservations per window.
    #[arg(long, value_parser = parse_duration)]
    idempotency_window: Option<Duration>,
    /// Worker threads of each target's runtime (TOKIO_WORKER_THREADS);
    /// one per core when not given. On a machine shared with PostgreSQL and
    /// the load generator, fewer threads wake each other less often.
    #[arg(long)]
    server_threads: Option<usize>,
    /// Threads of the load generator that send requests and read answers,
    /// each with its own connections.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Database connections each target may open.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// PostgreSQL to create the targets' databases on (a URL with rights to
    /// create databases); without it (or empty), an embedded PostgreSQL is
    /// started.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// A server setting of the embedded PostgreSQL, on top of its defaults
    /// (repeatable): to measure both designs on a server tuned as in
    /// production, such as `--postgres-setting shared_buffers=2GB`. The
    /// settings that make commits durable cannot be changed.
    #[arg(long = "postgres-setting", value_name = "NAME=VALUE", value_parser = parse_setting)]
    postgres_settings: Vec<(String, String)>,
    /// Measure an Allot that is already running here instead of starting
    /// one; for a cluster, every node's URL, comma-separated: requests go to
    /// them in turn.
    #[arg(long, requires = "token")]
    allot_url: Option<String>,
    /// Its database, for the final check.
    #[arg(long)]
    allot_database_url: Option<String>,
    /// Measure a baseline that is already running here instead of starting one.
    #[arg(long, requires = "token")]
    baseline_url: Option<String>,
    /// Its database, for the final check.
    #[arg(long)]
    baseline_database_url: Option<String>,
    /// A folder on the disk PostgreSQL commits to, where a probe measures
    /// how long a flush takes during each run (printed as `fsync ms`). By
    /// default the embedded PostgreSQL's folder, or the system's temporary
    /// folder when PostgreSQL is given by URL.
    #[arg(long)]
    disk_probe: Option<std::path::PathBuf>,
    /// An operator token of the running targets.
    #[arg(long, env = "ALLOT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Reservations spread over `--pools` pools.
    Spread,
    /// Every reservation to one pool.
    Hot,
    /// Grid reads, once for each size of `--grid-pools`.
    Grid,
    /// 75 % grid reads, 25 % reservations.
    Mixed,
    /// Pools of 100 units offered twice that: exactly 100 must be taken.
    Sellout,
    /// The highest rate within the p99 objective of each load in `--sweep`.
    Sweep,
}

/// A load the sweep can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SweepLoad {
    Spread,
    Hot,
    Grid,
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TargetName {
    Allot,
    Baseline,
}

/// The load a scenario puts on a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Load {
    Spread,
    Hot,
    /// Grid reads of pages of this many pools.
    Grid(usize),
    /// Grid reads of pages of this many pools, and reservations.
    Mixed(usize),
}

/// `spread`, `hot`, `grid` for reads of one pool, `grid×100` for pages of
/// 100, and `mixed` or `mixed×100` likewise.
impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spread => f.write_str("spread"),
            Self::Hot => f.write_str("hot"),
            Self::Grid(1) => f.write_str("grid"),
            Self::Grid(page) => write!(f, "grid×{page}"),
            Self::Mixed(1) => f.write_str("mixed"),
            Self::Mixed(page) => write!(f, "mixed×{page}"),
        }
    }
}

/// One target's search for the highest rate within the objective: up by
/// half while it holds, then halving the gap to the lowest rate that missed.
struct Search {
    /// The rate of the next step; `None` once the gap is within 5 %.
    next: Option<f64>,
    passed: f64,
    failed: f64,
}

impl Search {
    fn new(start: f64) -> Self {
        Self {
            next: Some(start),
            passed: 0.0,
            failed: f64::INFINITY,
        }
    }

    fn record(&mut self, rate: f64, within: bool) {
        if within {
            self.passed = self.passed.max(rate);
        } else {
            self.failed = self.failed.min(rate);
        }
        self.next = if !self.failed.is_finite() {
            Some(rate * 1.5)
        } else if self.passed == 0.0 {
            Some(self.failed / 2.0)
        } else if self.failed / self.passed <= 1.05 + 1e-9 {
            None
        } else {
            Some((self.passed + self.failed) / 2.0)
        };
    }
}

/// A duration for a setting kept in whole milliseconds.
fn parse_millis(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "`{text}` is finer than the whole milliseconds this setting takes"
        ));
    }
    Ok(duration)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |at| text.split_at(at));
    let number = f64::from_str(number)
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("`{text}` is not a duration such as 30s, 10m or 1h"))?;
    let seconds = match unit {
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("`{text}`: the unit must be ms, s, m or h")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Settings that would let a commit be acknowledged before it is on disk,
/// or leave a crash able to corrupt pages: every figure of the benchmark is
/// of durable commits.
const DURABILITY_SETTINGS: [&str; 3] = ["fsync", "synchronous_commit", "full_page_writes"];

/// Settings through which the benchmark reaches its PostgreSQL.
const LAUNCHER_SETTINGS: [&str; 4] = [
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "data_directory",
];

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE, such as shared_buffers=2GB"))?;
    let (name, value) = (name.trim(), value.trim());
    let mut chars = name.chars();
    let named = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !named {
        return Err(format!("`{name}` is not the name of a PostgreSQL setting"));
    }
    if value.is_empty() {
        return Err(format!("`{name}` needs a value"));
    }
    let lower = name.to_ascii_lowercase();
    if DURABILITY_SETTINGS.contains(&lower.as_str()) {
        return Err(format!(
            "`{name}` cannot be changed: the benchmark measures durable commits"
        ));
    }
    if LAUNCHER_SETTINGS.contains(&lower.as_str()) {
        return Err(format!(
            "`{name}` cannot be changed: the benchmark sets it to reach its PostgreSQL"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Capacity of the pools whose load is measured: never reached.
const AMPLE: u64 = 1_000_000_000_000;

/// The `sellout` scenario: this many pools of this many units.
const SELLOUT_POOLS: usize = 20;
const SELLOUT_UNITS: u64 = 100;

/// Runs the benchmark; `Ok(false)` when a check failed.
pub async fn run(args: BenchArgs) -> anyhow::Result<bool> {
    for (name, rate) in [
        ("--write-rate", args.write_rate),
        ("--read-rate", args.read_rate),
        ("--mixed-rate", args.mixed_rate),
    ] {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("{name} must be a positive number of requests per second");
        }
    }
    if args.pools == 0 {
        bail!("--pools must be at least 1");
    }
    let client = Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut bench = Bench::start(&args, client).await?;
    let outcome = bench.run_scenarios(&args).await;
    let verified = bench.verify().await;
    bench.stop().await;
    let ok = outcome? & verified?;
    Ok(ok)
}

struct Bench {
    targets: Vec<Target>,
    /// Spread pools of each target, by ledger index.
    spread: Vec<Vec<usize>>,
    /// Makes reservation and pool ids unique across runs on the same targets.
    session: String,
    runs: u64,
    churn: u64,
    /// Pools per grid read, one size per grid run; mixed load reads pages
    /// of the first.
    grid_pools: Vec<usize>,
    client_threads: usize,
    comparisons: Vec<Comparison>,
    /// What the comparison table's reader should know about its rows.
    notes: Vec<String>,
    disk: Option<DiskProbe>,
    /// Every flush the probe measured during runs.
    disk_total: DiskFigures,
    _postgres: Option<EmbeddedPostgres>,
    _dir: TempDir,
}

/// One row of the comparison table: a figure of each target.
struct Comparison {
    what: String,
    figures: Vec<f64>,
    /// Rates: higher is better; latencies and bytes written: lower is better.
    higher_is_better: bool,
    unit: &'static str,
}

impl Bench {
    async fn start(args: &BenchArgs, client: Client) -> anyhow::Result<Self> {
        let session = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let dir = TempDir::new(&format!("allot-bench-{session}"))?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let needs_server = args.targets.iter().any(|t| match t {
            TargetName::Allot => args.allot_url.is_none(),
            TargetName::Baseline => args.baseline_url.is_none(),
        });
        let mut postgres = None;
        let given = args.database_url.as_deref().filter(|url| !url.is_empty());
        if !args.postgres_settings.is_empty() && (given.is_some() || !needs_server) {
            bail!(
                "--postgres-setting is for the embedded PostgreSQL; \
                 set it on the server of the database URL instead"
            );
        }
        let admin = match (given, needs_server) {
            (_, false) => None,
            (Some(url), true) => Some(url.to_owned()),
            (None, true) => {
                let pg_dir = dev::scratch_postgres_dir("bench");
                let settings = args.postgres_settings.clone();
                if !settings.is_empty() {
                    let listed: Vec<String> =
                        settings.iter().map(|(n, v)| format!("{n}={v}")).collect();
                    println!("PostgreSQL settings: {}", listed.join(", "));
                }
                let server = tokio::task::spawn_blocking(move || {
                    EmbeddedPostgres::start_with_settings(&pg_dir, &settings)
                })
                .await??;
                let url = server.url("postgres");
                postgres = Some(server);
                Some(url)
            }
        };
        let mut targets = Vec::new();
        for name in dedup(&args.targets) {
            let design = match name {
                TargetName::Allot => Design::Allot,
                TargetName::Baseline => Design::Baseline,
            };
            let (given_url, given_db) = match design {
                Design::Allot => (&args.allot_url, &args.allot_database_url),
                Design::Baseline => (&args.baseline_url, &args.baseline_database_url),
            };
            let target = match (given_url, &admin) {
                (Some(url), _) => {
                    let token = args.token.as_deref().context("--token is needed")?;
                    Target::new(
                        design,
                        url.split(',')
                            .map(|u| u.trim().trim_end_matches('/').to_owned())
                            .collect(),
                        given_db.clone(),
                        None,
                        client.clone(),
                        token,
                    )
                }
                (None, Some(admin)) => {
                    let db =
                        targets::fresh_database(admin, &format!("bench_{}", design.name())).await?;
                    let mut config = format!(
                        "database_url = {db:?}\nmax_connections = {}\n",
                        args.connections
                    );
                    if design == Design::Allot {
                        eprintln!("building the quota plugin …");
                        let root = dev::workspace_root();
                        let plugin = tokio::task::spawn_blocking(move || {
                            dev::build_plugins(&root, &["allot-plugin-template"])
                        })
                        .await??
                        .remove(0);
                        writeln!(config, "plugins = [{:?}]\nactivate_plugins = true", plugin)?;
                        config.push_str("[entities]\n");
                        if let Some(writers) = args.writers {
                            writeln!(config, "writers = {writers}")?;
                        }
                        if let Some(overlap) = args.overlap_after {
                            writeln!(config, "overlap_after_ms = {}", overlap.as_millis())?;
                        }
                        if let Some(max_group) = args.max_group {
                            writeln!(config, "max_group = {max_group}")?;
                        }
                        if let Some(interval) = args.view_row_interval {
                            writeln!(config, "view_row_interval_ms = {}", interval.as_millis())?;
                        }
                        if let Some(window) = args.idempotency_window {
                            let seconds = window.as_secs().max(1);
                            writeln!(config, "idempotency_window_seconds = {seconds}")?;
                        }
                    }
                    eprintln!("starting the {} server …", design.name());
                    let (server, url) = Server::start(
                        design,
                        dir.path(),
                        &config,
                        &token,
                        args.server_threads,
                        &client,
                    )
                    .await?;
                    Target::new(
                        design,
                        vec![url],
                        Some(db),
                        Some(server),
                        client.clone(),
                        &token,
                    )
                }
                (None, None) => unreachable!("a database is started for servers to start"),
            };
            targets.push(target);
        }
        let probe_dir = match (&args.disk_probe, &postgres) {
            (Some(dir), _) => dir.clone(),
            (None, Some(server)) => server.dir().to_owned(),
            (None, None) => std::env::temp_dir(),
        };
        let disk = match DiskProbe::start(&probe_dir) {
            Ok(probe) => {
                eprintln!("the disk probe flushes in {}", probe_dir.display());
                Some(probe)
            }
            // A folder asked for must work.
            Err(e) if args.disk_probe.is_some() => {
                bail!("--disk-probe {}: {e}", probe_dir.display())
            }
            Err(e) => {
                eprintln!(
                    "no disk probe ({}: {e}); runs are measured without it",
                    probe_dir.display()
                );
                None
            }
        };
        let mut bench = Self {
            spread: Vec::new(),
            targets,
            session,
            runs: 0,
            churn: args.churn,
            // A page cannot hold more pools than there are.
            grid_pools: dedup(
                &(args.grid_pools.iter())
                    .map(|&pools| (pools as usize).min(args.pools))
                    .collect::<Vec<_>>(),
            ),
            client_threads: args.client_threads,
            comparisons: Vec::new(),
            notes: Vec::new(),
            disk_total: DiskFigures::default(),
            disk,
            _postgres: postgres,
            _dir: dir,
        };
        bench.prepare(args).await?;
        Ok(bench)
    }

    /// Makes the spread pools on every target and warms them up: one
    /// reservation and one grid read each, so that Allot's pools are
    /// running and every connection pool is full before anything is measured.
    async fn prepare(&mut self, args: &BenchArgs) -> anyhow::Result<()> {
        let ids: Vec<String> = (0..args.pools)
            .map(|i| format!("bench-{}-spread-{i:05}", self.session))
            .collect();
        for t in 0..self.targets.len() {
            eprintln!(
                "making {} pools on {} …",
                ids.len(),
                self.targets[t].design.name()
            );
            let pools = self.targets[t].create_pools(&ids, AMPLE).await?;
            self.spread.push(pools);
            let n = ids.len() as u64;
            let rate = (n as f64 / 2.0).max(100.0);
            let warm = Plan {
                rate,
                duration: Duration::from_secs_f64(2.0 * n as f64 / rate),
                shot: self.shots(t, Load::Mixed(1), &[], 2),
                report_every: None,
            };
            let report = load::run(
                &self.targets[t].caller,
                warm,
                self.client_threads,
                async |_| {},
            )
            .await?;
            if report.error_count() > 0 {
                bail!(
                    "warming up {} failed: {:?}",
                    self.targets[t].design.name(),
                    report.errors
                );
            }
        }
        Ok(())
    }

    async fn run_scenarios(&mut self, args: &BenchArgs) -> anyhow::Result<bool> {
        println!(
            "{:<10} {:<9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>9}  errors",
            "scenario",
            "target",
            "offered/s",
            "answered/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "rss MiB",
            "cpu t/g",
            "fsync ms",
            "WAL B/req"
        );
        let mut ok = true;
        for scenario in &args.scenarios {
            match scenario {
                Scenario::Spread => self.fixed(Load::Spread, args.write_rate, args).await?,
                Scenario::Hot => self.fixed(Load::Hot, args.write_rate, args).await?,
                Scenario::Grid => {
                    for page in self.grid_pools.clone() {
                        self.fixed(Load::Grid(page), args.read_rate, args).await?;
                    }
                }
                Scenario::Mixed => {
                    let load = Load::Mixed(self.grid_pools[0]);
                    self.fixed(load, args.mixed_rate, args).await?;
                }
                Scenario::Sellout => ok &= self.sellout(args).await?,
                Scenario::Sweep => self.sweep(args).await?,
            }
        }
        self.print_comparison();
        self.print_disk();
        Ok(ok)
    }

    /// Runs a load at one rate on every target and compares their p99.
    async fn fixed(&mut self, load: Load, rate: f64, args: &BenchArgs) -> anyhow::Result<()> {
        let mut p99 = Vec::new();
        let mut wal = Vec::new();
        for t in 0..self.targets.len() {
            let report = self
                .measure(t, load, rate, args.duration, args.report_every)
                .await?;
            p99.push(report.ms(0.99));
            wal.push(report.wal_per_request());
            // A target that cannot keep up builds a queue for as long as
            // the run lasts: its p99 is then that queue's.
            if report.fell_behind(args.duration) {
                self.notes.push(format!(
                    "{} answered {} of the {} {load} requests/s offered: more than it \
                     can serve, so its p99 in that row is the wait in a growing queue",
                    self.targets[t].design.name(),
                    thousands(report.achieved()),
                    thousands(rate),
                ));
            }
        }
        self.comparisons.push(Comparison {
            what: format!("{load} p99 at {}/s", thousands(rate)),
            figures: p99,
            higher_is_better: false,
            unit: "ms",
        });
        // What each design writes for the same work; reads write nothing.
        if !matches!(load, Load::Grid(_))
            && let Some(wal) = wal.into_iter().collect::<Option<Vec<f64>>>()
        {
            self.comparisons.push(Comparison {
                what: format!("{load} WAL per request"),
                figures: wal,
                higher_is_better: false,
                unit: "B",
            });
        }
        Ok(())
    }

    /// One run of a load on one target, printed as a row.
    async fn measure(
        &mut self,
        t: usize,
        load: Load,
        rate: f64,
        duration: Duration,
        report_every: Option<Duration>,
    ) -> anyhow::Result<Report> {
        let hot = if load == Load::Hot {
            let id = format!("bench-{}-hot-{}", self.session, self.runs);
            self.targets[t].create_pools(&[id], AMPLE).await?
        } else {
            Vec::new()
        };
        self.runs += 1;
        let plan = Plan {
            rate,
            duration,
            shot: self.shots(t, load, &hot, 0),
            report_every,
        };
        let target = &self.targets[t];
        let name = target.design.name();
        let pid = target.server.as_ref().and_then(Server::pid);
        let wal_before = target.wal_position().await;
        let cpu_before = pid.and_then(load::cpu_seconds);
        let disk = self.disk.as_ref();
        if let Some(probe) = disk {
            probe.take();
        }
        let mut flushes = disk.map(|_| DiskFigures::default());
        let mut wal_mark = wal_before;
        let mut report = load::run(
            &target.caller,
            plan,
            self.client_threads,
            async |interval| {
                let recent = disk.map(DiskProbe::take);
                if let (Some(run), Some(recent)) = (&mut flushes, &recent) {
                    run.add(recent);
                }
                let wal_now = target.wal_position().await;
                if let (Some(before), Some(after)) = (wal_mark, wal_now) {
                    interval.wal_bytes = Some(after.saturating_sub(before));
                }
                wal_mark = wal_now;
                print_row(
                    &format!("{load} …"),
                    name,
                    interval,
                    target.rss_mib(),
                    recent.as_ref(),
                );
            },
        )
        .await?;
        if let (Some(run), Some(probe)) = (&mut flushes, disk) {
            run.add(&probe.take());
        }
        if let Some(run) = &flushes {
            self.disk_total.add(run);
        }
        report.disk = flushes;
        report.target_cpu = pid.and_then(|pid| load::cores(cpu_before, pid, report.elapsed));
        if let (Some(before), Some(after)) = (wal_before, target.wal_position().await) {
            report.wal_bytes = Some(after.saturating_sub(before));
        }
        print_row(
            &load.to_string(),
            name,
            &report,
            target.rss_mib(),
            report.disk.as_ref(),
        );
        // Let the target finish what it queued before the next run.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(report)
    }

    /// The requests of a load on target `t`; reservation ids carry the run
    /// number. With `warm_up` > 0, every pool gets `warm_up` requests in
    /// turn, one of them a reservation.
    fn shots(
        &mut self,
        t: usize,
        load: Load,
        hot: &[usize],
        warm_up: u64,
    ) -> Arc<dyn Fn(u64) -> Shot + Send + Sync> {
        let target = &self.targets[t];
        let pools: Vec<(usize, String)> = match load {
            Load::Hot => hot.to_vec(),
            _ => self.spread[t].clone(),
        }
        .into_iter()
        .map(|i| (i, target.pool(i).to_owned()))
        .collect();
        let run = format!("{}-{}", self.session, self.runs);
        let churn = if warm_up > 0 { 0 } else { self.churn };
        let page = match load {
            Load::Grid(page) | Load::Mixed(page) => page,
            Load::Spread | Load::Hot => 1,
        }
        .min(pools.len())
        .max(1);
        let common = format!("bench-{}-spread-", self.session);
        // Every `stride`-th request writes; the rest of a mixed load reads.
        let stride = match load {
            Load::Mixed(_) if warm_up > 0 => warm_up,
            Load::Mixed(_) => 4,
            _ => 1,
        };
        Arc::new(move |i| {
            let n = pools.len() as u64;
            // Warming up visits every pool in turn; the load picks at random.
            let at = |i: u64| match i.checked_div(warm_up) {
                Some(turn) => (turn % n) as usize,
                None => (load::spread(i) % n) as usize,
            };
            let pick = |i: u64| &pools[at(i)];
            if matches!(load, Load::Grid(_)) || i % stride != 0 {
                // A page of the picked pool and its next neighbours (the
                // last page when too few follow): the spread pools' ids
                // sort in the order they were made.
                let path = match at(i).min(pools.len() - page) {
                    _ if page == 1 => format!("/v1/grid?prefix={}&limit=1", pick(i).1),
                    0 => format!("/v1/grid?prefix={common}&limit={page}"),
                    first => format!(
                        "/v1/grid?prefix={common}&after={}&limit={page}",
                        pools[first - 1].1
                    ),
                };
                return Shot {
                    method: Method::GET,
                    path,
                    body: None,
                    pool: None,
                };
            }
            // With churn, every other write releases the reservation made
            // `churn` reservations before, so pools stop growing.
            let write = i / stride;
            if churn > 0 && write % 2 == 1 && write > 2 * churn {
                let made = (write - 2 * churn - 1) * stride;
                let (_, id) = pick(made);
                return Shot {
                    method: Method::POST,
                    path: format!("/v1/pools/{id}/reservations/r{run}-{made}/release"),
                    body: None,
                    pool: None,
                };
            }
            let (pool, id) = pick(i);
            Shot {
                method: Method::POST,
                path: format!("/v1/pools/{id}/reservations"),
                body: Some(format!(r#"{{"id":"r{run}-{i}","request":{{"units":1}}}}"#)),
                pool: Some(*pool),
            }
        })
    }

    /// Pools of 100 units, offered 200 reservations each at the write
    /// rate: each must end with exactly 100 taken, the rest refused.
    async fn sellout(&mut self, args: &BenchArgs) -> anyhow::Result<bool> {
        let mut ok = true;
        for t in 0..self.targets.len() {
            let ids: Vec<String> = (0..SELLOUT_POOLS)
                .map(|i| format!("bench-{}-sellout-{}-{i}", self.session, self.runs))
                .collect();
            let pools = self.targets[t].create_pools(&ids, SELLOUT_UNITS).await?;
            let offered = 2 * SELLOUT_UNITS * SELLOUT_POOLS as u64;
            let rate = args.write_rate.min(offered as f64);
            let run = format!("{}-{}", self.session, self.runs);
            self.runs += 1;
            let target = &self.targets[t];
            let named: Vec<(usize, String)> = pools
                .iter()
                .map(|&i| (i, target.pool(i).to_owned()))
                .collect();
            let plan = Plan {
                rate,
                duration: Duration::from_secs_f64(offered as f64 / rate),
                shot: Arc::new(move |i| {
                    let (pool, id) = &named[(i % named.len() as u64) as usize];
                    Shot {
                        method: Method::POST,
                        path: format!("/v1/pools/{id}/reservations"),
                        body: Some(format!(r#"{{"id":"s{run}-{i}","request":{{"units":1}}}}"#)),
                        pool: Some(*pool),
                    }
                }),
                report_every: None,
            };
            let report = load::run(&target.caller, plan, self.client_threads, async |_| {}).await?;
            print_row(
                "sellout",
                target.design.name(),
                &report,
                target.rss_mib(),
                None,
            );
            let taken: u64 = pools
                .iter()
                .map(|&i| target.caller.ledger.accepted(i))
                .sum();
            let expected = SELLOUT_UNITS * SELLOUT_POOLS as u64;
            let refused = report.rejected.get("quota_exhausted").copied().unwrap_or(0);
            if taken > expected {
                println!(
                    "  FAILED: {} accepted {taken} reservations of {expected} units: overbooked",
                    target.design.name()
                );
                ok = false;
            } else if report.error_count() == 0 && (taken != expected || taken + refused != offered)
            {
                println!(
                    "  FAILED: {} accepted {taken} and refused {refused} of {offered}; \
                     expected {expected} accepted",
                    target.design.name()
                );
                ok = false;
            }
        }
        Ok(ok)
    }

    /// Finds, for each load and target, the highest rate whose p99 stays
    /// within the objective with under 0.1 % errors (in one of two tries):
    /// up by half while it does, then halving the gap to the first rate that
    /// did not.
    async fn sweep(&mut self, args: &BenchArgs) -> anyhow::Result<()> {
        let loads = dedup(&args.sweep)
            .into_iter()
            .flat_map(|chosen| match chosen {
                SweepLoad::Spread => vec![(Load::Spread, args.write_rate, args.write_p99_ms)],
                SweepLoad::Hot => vec![(Load::Hot, args.write_rate, args.write_p99_ms)],
                SweepLoad::Grid => (self.grid_pools.iter())
                    .map(|&page| (Load::Grid(page), args.read_rate, args.read_p99_ms))
                    .collect(),
                SweepLoad::Mixed => vec![(
                    Load::Mixed(self.grid_pools[0]),
                    args.mixed_rate,
                    args.write_p99_ms,
                )],
            });
        for (load, start, objective) in loads.collect::<Vec<_>>() {
            // Each sweep starts on quiet databases, not in the vacuum and
            // checkpoint that the writes before it call for.
            for target in &self.targets {
                target.settle().await;
            }
            // The targets take turns, step by step, so that a spell of a
            // slow disk or a busy host falls on both rather than on one
            // target's whole sweep.
            let mut searches: Vec<Search> =
                self.targets.iter().map(|_| Search::new(start)).collect();
            for _ in 0..args.steps {
                for (t, search) in searches.iter_mut().enumerate() {
                    let Some(rate) = search.next else { continue };
                    // A step that misses is run once more: one stall of a
                    // shared machine should not decide a target's capacity.
                    let mut within = false;
                    for _ in 0..2 {
                        let report = self.measure(t, load, rate, args.step, None).await?;
                        let errors = report.error_count() as f64 / report.sent.max(1) as f64;
                        within = report.ms(0.99) <= objective && errors <= 0.001;
                        if within {
                            break;
                        }
                    }
                    search.record(rate, within);
                }
            }
            for (target, search) in self.targets.iter().zip(&searches) {
                if search.next.is_some() {
                    self.notes.push(format!(
                        "the sweep of {load} on {} ran out of steps (--steps {}) before closing \
                         in to 5 %: its rate is at least the one shown",
                        target.design.name(),
                        args.steps
                    ));
                }
            }
            let best = searches.iter().map(|s| s.passed).collect();
            self.comparisons.push(Comparison {
                what: format!("{load} rate, p99 ≤ {objective} ms"),
                figures: best,
                higher_is_better: true,
                unit: "/s",
            });
        }
        Ok(())
    }

    fn print_comparison(&self) {
        if self.comparisons.is_empty() {
            return;
        }
        let names: Vec<_> = self.targets.iter().map(|t| t.design.name()).collect();
        println!();
        let mut header = format!("{:<30}", "comparison");
        for name in &names {
            write!(header, " {name:>12}").expect("writing to a string");
        }
        if names.len() == 2 {
            write!(header, "  {:>14}", format!("{}'s edge", names[0]))
                .expect("writing to a string");
        }
        println!("{header}");
        for row in &self.comparisons {
            let mut line = format!("{:<30}", row.what);
            for figure in &row.figures {
                let shown = match row.unit {
                    "ms" => format!("{figure:.2} ms"),
                    "B" => format!("{} B", thousands(*figure)),
                    _ => format!("{}/s", thousands(*figure)),
                };
                write!(line, " {shown:>12}").expect("writing to a string");
            }
            if let [a, b] = row.figures[..] {
                // How many times better the first target is: a higher rate,
                // or a lower latency.
                let edge = if row.higher_is_better { a / b } else { b / a };
                let shown = if edge.is_finite() && edge > 0.0 {
                    format!("{edge:.1}×")
                } else {
                    "-".to_owned()
                };
                write!(line, "  {shown:>14}").expect("writing to a string");
            }
            println!("{line}");
        }
        if names.len() == 2 {
            println!(
                "(edge: how many times {0}'s rate is higher, or its p99 or WAL lower, than {1}'s)",
                names[0], names[1]
            );
        }
        for note in &self.notes {
            println!("({note})");
        }
    }

    /// The disk probe's flushes over every run.
    fn print_disk(&self) {
        let disk = &self.disk_total;
        if disk.count() > 0 {
            println!(
                "disk, during the runs: {} flushes of 4 KiB, p50 {:.2} ms, p99 {:.2} ms, \
                 {} over 10 ms, longest {:.0} ms",
                disk.count(),
                disk.ms(0.5),
                disk.ms(0.99),
                disk.over(10.0),
                disk.max_ms()
            );
        }
    }

    /// Checks every target's database; prints what it found.
    async fn verify(&self) -> anyhow::Result<bool> {
        println!();
        let mut ok = true;
        for target in &self.targets {
            let name = target.design.name();
            if target.database_url.is_none() {
                println!("{name}: not checked (give its database URL to check it)");
                continue;
            }
            let started = std::time::Instant::now();
            let verified = target.verify().await?;
            if verified.failures.is_empty() {
                println!(
                    "{name}: checked {} pools and {} reservations in {:.1} s: none over capacity, \
                     every acknowledged reservation recorded once{}",
                    verified.pools,
                    verified.reservations,
                    started.elapsed().as_secs_f64(),
                    if verified.unacknowledged > 0 {
                        format!(
                            " ({} recorded whose answer the client did not get)",
                            verified.unacknowledged
                        )
                    } else {
                        String::new()
                    }
                );
            } else {
                ok = false;
                println!("{name}: FAILED the check:");
                for failure in verified.failures.iter().take(20) {
                    println!("  {failure}");
                }
            }
        }
        Ok(ok)
    }

    async fn stop(self) {
        for target in self.targets {
            if let Some(server) = target.server
                && let Err(e) = server.stop().await
            {
                eprintln!("stopping {}: {e:#}", target.design.name());
            }
        }
    }
}

fn print_row(
    scenario: &str,
    target: &str,
    report: &Report,
    rss: Option<f64>,
    disk: Option<&DiskFigures>,
) {
    let errors = if report.errors.is_empty() {
        "none".to_owned()
    } else {
        report
            .errors
            .iter()
            .map(|(what, n)| format!("{what}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "{:<10} {:<9} {:>10} {:>10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>9} {:>10} {:>9}  {}",
        scenario,
        target,
        thousands(report.offered),
        thousands(report.achieved()),
        report.ms(0.5),
        report.ms(0.9),
        report.ms(0.99),
        report.ms(0.999),
        report.max_ms(),
        rss.map_or("-".to_owned(), |mib| format!("{mib:.0}")),
        match (report.target_cpu, report.generator_cpu) {
            (Some(t), Some(g)) => format!("{t:.2}/{g:.2}"),
            (None, Some(g)) => format!("-/{g:.2}"),
            _ => "-".to_owned(),
        },
        match disk {
            Some(flushes) if flushes.count() > 0 =>
                format!("{:.1}/{:.0}", flushes.ms(0.99), flushes.max_ms()),
            _ => "-".to_owned(),
        },
        report
            .wal_per_request()
            .map_or("-".to_owned(), |bytes| format!("{bytes:.0}")),
        errors
    );
}

/// `12345.6` as `12,346`.
fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dedup<T: Copy + PartialEq>(names: &[T]) -> Vec<T> {
    let mut unique = Vec::new();
    for name in names {
        if !unique.contains(name) {
            unique.push(*name);
        }
    }
    unique
}

/// A folder removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::Search;

    /// The search goes up by half while the objective holds, then halves
    /// the gap to the lowest rate that missed, and stops within 5 %.
    #[test]
    fn the_sweep_closes_in_on_the_highest_rate_within_the_objective() {
        let capacity = 5_000.0;
        let mut search = Search::new(2_000.0);
        let mut steps = Vec::new();
        while let Some(rate) = search.next {
            steps.push(rate);
            search.record(rate, rate <= capacity);
        }
        assert_eq!(
            steps,
            [
                2_000.0, 3_000.0, 4_500.0, 6_750.0, 5_625.0, 5_062.5, 4_781.25, 4_921.875
            ]
        );
        assert_eq!(search.passed, 4_921.875);
    }

    /// A gap of exactly 5 % is within 5 %.
    #[test]
    fn the_sweep_stops_at_a_gap_of_five_percent() {
        let mut search = Search::new(16_875.0);
        search.record(16_875.0, true);
        search.record(17_718.75, false);
        assert_eq!(search.next, None);
        assert_eq!(search.passed, 16_875.0);
    }

    /// A target that misses from the first step is tried at half the rate,
    /// again and again.
    #[test]
    fn a_sweep_that_never_holds_halves_the_rate() {
        let mut search = Search::new(2_000.0);
        for _ in 0..3 {
            let rate = search.next.unwrap();
            search.record(rate, false);
        }
        assert_eq!(search.next, Some(250.0));
        assert_eq!(search.passed, 0.0);
    }
}
