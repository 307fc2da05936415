//! The `allot` command line: run a node (`serve`, `dev`), build plugins, and
//! talk to a running node's API (pools, commands, reservations, the grid).

mod client;
mod dev;
mod plugins;
mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Allot: capacity pools with rules in WebAssembly.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Subcommands,
}

#[derive(Subcommand)]
enum Subcommands {
    /// Run a node from a config file (and ALLOT_* environment variables).
    Serve {
        /// The node's TOML config.
        #[arg(short, long, env = "ALLOT_CONFIG")]
        config: Option<PathBuf>,
        /// Serve the classical design instead, for comparison: a counter
        /// row per pool in PostgreSQL and a conditional update per request
        /// (pools of the `quota` type only; see `allot bench`).
        #[arg(long)]
        baseline: bool,
    },
    /// Run a local setup: build the plugins, start an embedded PostgreSQL and
    /// a node, load the bundled capacity types, create example pools.
    Dev(dev::DevArgs),
    /// Build and check capacity-type plugins.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Create and inspect pools.
    #[command(subcommand)]
    Pools(client::PoolsCommand),
    /// Send a type-specific command to a pool (planners and operators).
    Command(client::CommandArgs),
    /// Reserve capacity in a pool.
    Reserve(client::ReserveArgs),
    /// Release a reservation.
    Release(client::ReservationArgs),
    /// Confirm a held reservation.
    Confirm(client::ReservationArgs),
    /// Show what became of a reservation.
    Reservation(client::ReservationArgs),
    /// Show the capacity grid as a table.
    Grid(client::GridArgs),
    /// Measure Allot against the classical design (a counter row per pool
    /// in PostgreSQL) over HTTP, side by side, with open-loop load.
    Bench(Box<crate::bench::BenchArgs>),
}

/// Where the API is and who is calling: for the commands that talk to a node.
#[derive(Args, Clone)]
pub struct Remote {
    /// The node's URL.
    #[arg(long, env = "ALLOT_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A bearer token (`allot dev` prints some).
    #[arg(long, env = "ALLOT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Runs a command line. `Ok(false)` means the command reported a failure of
/// its own (a refused reservation, a plugin that does not load).
pub fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Subcommands::Plugins(command) if command.is_local() => plugins::run(command),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run_async(command)),
    }
}

async fn run_async(command: Subcommands) -> anyhow::Result<bool> {
    match command {
        Subcommands::Serve { config, baseline } => serve(config, baseline).await,
        Subcommands::Dev(args) => dev::run(args).await,
        Subcommands::Plugins(command) => plugins::remote(command).await,
        Subcommands::Pools(command) => client::pools(command).await,
        Subcommands::Command(args) => client::command(args).await,
        Subcommands::Reserve(args) => client::reserve(args).await,
        Subcommands::Release(args) => client::reservation_verb("release", args).await,
        Subcommands::Confirm(args) => client::reservation_verb("confirm", args).await,
        Subcommands::Reservation(args) => client::reservation(args).await,
        Subcommands::Grid(args) => client::grid(args).await,
        // On Ctrl-C or SIGTERM the run is dropped, which kills the servers
        // it started and stops its PostgreSQL instead of leaving them; a
        // second signal ends the process without waiting for that.
        Subcommands::Bench(args) => tokio::select! {
            done = crate::bench::run(*args) => done,
            () = shutdown_signal() => {
                eprintln!("stopping the servers the benchmark started …");
                tokio::spawn(async {
                    shutdown_signal().await;
                    std::process::exit(130);
                });
                anyhow::bail!("stopped by a signal before the run ended")
            }
        },
    }
}

async fn serve(config: Option<PathBuf>, baseline: bool) -> anyhow::Result<bool> {
    let config = match config {
        Some(path) => crate::node::Config::load(&path)?,
        None => crate::node::Config::default(),
    }
    .with_env()?;
    crate::api::Tokens::check_secret(&config.tokens, &dev::published_tokens())?;
    if baseline {
        crate::baseline::serve(config, shutdown_signal()).await?;
        return Ok(true);
    }
    let node = crate::node::Node::start(config).await?;
    eprintln!("allot is serving on {}", node.url());
    shutdown_signal().await;
    eprintln!("shutting down …");
    node.stop().await;
    Ok(true)
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
