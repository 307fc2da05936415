//! The `allot` binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use allot_host::dev;
use allot_host::sandbox::{Engine, Limits, Plugin};
use clap::{Parser, Subcommand};

/// Allot: capacity pools with rules in WebAssembly.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build and check capacity-type plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Build this checkout's plugin crates to components and load each into the sandbox.
    Build {
        /// Plugin packages to build (default: the bundled capacity types).
        #[arg(short, long = "package")]
        packages: Vec<String>,
    },
    /// Load component files into the sandbox and show what they are.
    Inspect {
        /// Component files (`.wasm`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// The capacity types that ship with Allot.
const BUNDLED: &[&str] = &["allot-logistics", "allot-warehouse", "allot-vehicle-load"];

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; `Ok(false)` when it reported failures of its own.
fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Plugins(PluginsCommand::Build { packages }) => {
            let packages: Vec<&str> = if packages.is_empty() {
                BUNDLED.to_vec()
            } else {
                packages.iter().map(String::as_str).collect()
            };
            eprintln!("building {} …", packages.join(", "));
            let started = Instant::now();
            let files = dev::build_plugins(&dev::workspace_root(), &packages)?;
            eprintln!("built in {:.1} s", started.elapsed().as_secs_f64());
            inspect(&files)
        }
        Command::Plugins(PluginsCommand::Inspect { files }) => inspect(&files),
    }
}

fn inspect(files: &[PathBuf]) -> anyhow::Result<bool> {
    let engine = Engine::new(Limits::default())?;
    let mut all_loaded = true;
    for file in files {
        let bytes = match std::fs::read(file) {
            Ok(bytes) => bytes,
            Err(e) => {
                println!("{}: cannot read: {e}", file.display());
                all_loaded = false;
                continue;
            }
        };
        let started = Instant::now();
        match Plugin::load(&engine, &bytes) {
            Ok(plugin) => {
                let info = plugin.info();
                println!("{}", file.display());
                println!("  capacity type  {}", info.capacity_type);
                println!("  plugin         {} {}", info.name, info.version);
                println!("  contract       allot:capacity@{}", plugin.contract());
                println!("  state version  {}", info.state_version);
                println!("  digest         {}", plugin.digest());
                println!(
                    "  size           {} KiB, compiled in {} ms",
                    bytes.len() / 1024,
                    started.elapsed().as_millis()
                );
            }
            Err(e) => {
                println!("{}: refused: {e}", file.display());
                all_loaded = false;
            }
        }
    }
    Ok(all_loaded)
}
