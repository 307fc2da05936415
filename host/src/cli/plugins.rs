//! `allot plugins`: build this checkout's plugin crates and check components.

use std::path::PathBuf;
use std::time::Instant;

use clap::Subcommand;

use crate::dev;
use crate::sandbox::{Engine, Limits, Plugin};

/// The capacity types that ship with Allot.
pub(crate) const BUNDLED: &[&str] = &["allot-logistics", "allot-warehouse", "allot-vehicle-load"];

#[derive(Subcommand)]
pub(super) enum PluginsCommand {
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

pub(super) fn run(command: PluginsCommand) -> anyhow::Result<bool> {
    match command {
        PluginsCommand::Build { packages } => {
            let packages: Vec<&str> = if packages.is_empty() {
                BUNDLED.to_vec()
            } else {
                packages.iter().map(String::as_str).collect()
            };
            let files = build(&packages)?;
            inspect(&files)
        }
        PluginsCommand::Inspect { files } => inspect(&files),
    }
}

/// Builds plugin packages, saying so, and returns their component files.
pub(super) fn build(packages: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    eprintln!("building {} …", packages.join(", "));
    let started = Instant::now();
    let files = dev::build_plugins_showing_progress(&dev::workspace_root(), packages)?;
    eprintln!("built in {:.1} s", started.elapsed().as_secs_f64());
    Ok(files)
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
