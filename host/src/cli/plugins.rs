//! `allot plugins`: build this checkout's plugin crates and check components.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Subcommand;
use reqwest::Method;

use super::Remote;
use super::client::{Client, print, segment};

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
    /// Upload a component to a node's registry (operators). Nothing is activated.
    Upload {
        /// The component file (`.wasm`).
        file: PathBuf,
        /// The capacity type it must implement.
        #[arg(short = 't', long = "type")]
        capacity_type: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the registry's versions (operators).
    Versions {
        /// Only this capacity type.
        #[arg(short = 't', long = "type")]
        capacity_type: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Replay existing pools with a stored version and report (operators).
    Check {
        /// The capacity type.
        capacity_type: String,
        /// The version's digest (`sha256:…`).
        digest: String,
        /// Check a random sample of this many pools instead of all.
        #[arg(long)]
        sample: Option<usize>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a stored version the active one of its capacity type, after a
    /// replay check (operators).
    Activate {
        /// The capacity type.
        capacity_type: String,
        /// The version's digest (`sha256:…`), as `upload` printed it.
        digest: String,
        /// Activate even if it cannot replay existing pools' history.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Let a stored version decide every live command of its type beside
    /// the active one, on this node, for comparison only (operators).
    Shadow {
        /// The capacity type.
        capacity_type: String,
        /// The version's digest (`sha256:…`).
        digest: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show what the type's shadow found so far (operators).
    ShadowReport {
        /// The capacity type.
        capacity_type: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop the type's shadow and show its final report (operators).
    ShadowStop {
        /// The capacity type.
        capacity_type: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make the previously active version active again (operators).
    Rollback {
        /// The capacity type.
        capacity_type: String,
        /// Roll back even if the previous version cannot replay existing pools.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

impl PluginsCommand {
    /// Whether the command works on this checkout rather than a node.
    pub(super) fn is_local(&self) -> bool {
        matches!(self, Self::Build { .. } | Self::Inspect { .. })
    }
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
        _ => unreachable!("remote commands run in `remote`"),
    }
}

/// The commands that talk to a node's registry.
pub(super) async fn remote(command: PluginsCommand) -> anyhow::Result<bool> {
    match command {
        PluginsCommand::Upload {
            file,
            capacity_type,
            remote,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let path = plugins_path(capacity_type.as_deref());
            print(Client::new(remote).upload(&path, bytes).await?)
        }
        PluginsCommand::Versions {
            capacity_type,
            remote,
        } => {
            let path = plugins_path(capacity_type.as_deref());
            print(
                Client::new(remote)
                    .call(Method::GET, &path, None, &[])
                    .await?,
            )
        }
        PluginsCommand::Check {
            capacity_type,
            digest,
            sample,
            remote,
        } => {
            let path = type_path(&capacity_type, "check");
            let body = serde_json::json!({ "digest": digest, "sample": sample });
            print(
                Client::new(remote)
                    .call(Method::POST, &path, Some(body), &[])
                    .await?,
            )
        }
        PluginsCommand::Activate {
            capacity_type,
            digest,
            force,
            remote,
        } => {
            let path = type_path(&capacity_type, "activate");
            let body = serde_json::json!({ "digest": digest, "force": force });
            print(
                Client::new(remote)
                    .call(Method::POST, &path, Some(body), &[])
                    .await?,
            )
        }
        PluginsCommand::Shadow {
            capacity_type,
            digest,
            remote,
        } => {
            let path = type_path(&capacity_type, "shadow");
            let body = serde_json::json!({ "digest": digest });
            print(
                Client::new(remote)
                    .call(Method::POST, &path, Some(body), &[])
                    .await?,
            )
        }
        PluginsCommand::ShadowReport {
            capacity_type,
            remote,
        } => {
            let path = type_path(&capacity_type, "shadow");
            print(
                Client::new(remote)
                    .call(Method::GET, &path, None, &[])
                    .await?,
            )
        }
        PluginsCommand::ShadowStop {
            capacity_type,
            remote,
        } => {
            let path = type_path(&capacity_type, "shadow");
            print(
                Client::new(remote)
                    .call(Method::DELETE, &path, None, &[])
                    .await?,
            )
        }
        PluginsCommand::Rollback {
            capacity_type,
            force,
            remote,
        } => {
            let mut path = type_path(&capacity_type, "rollback");
            if force {
                path.push_str("?force=true");
            }
            print(
                Client::new(remote)
                    .call(Method::POST, &path, None, &[])
                    .await?,
            )
        }
        _ => unreachable!("local commands run in `run`"),
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

/// `/v1/capacity-types/{type}/{action}`.
fn type_path(capacity_type: &str, action: &str) -> String {
    format!("/v1/capacity-types/{}/{action}", segment(capacity_type))
}

/// `/v1/plugins`, of one capacity type or all.
fn plugins_path(capacity_type: Option<&str>) -> String {
    match capacity_type {
        Some(t) => format!("/v1/plugins?capacity_type={}", segment(t)),
        None => "/v1/plugins".to_owned(),
    }
}
