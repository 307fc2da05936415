use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";
/// The cargo profile plugins are built with (see the workspace `Cargo.toml`).
pub const PLUGIN_PROFILE: &str = "plugin";

/// Why plugins could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A tool could not be run at all.
    #[error("could not run `{tool}`: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// Why.
        source: std::io::Error,
    },
    /// The wasm target is missing and could not be installed.
    #[error(
        "the {WASM_TARGET} target is not installed and `rustup target add {WASM_TARGET}` failed:\n{output}"
    )]
    Target {
        /// What rustup said.
        output: String,
    },
    /// Cargo failed, usually a compile error in a plugin.
    #[error("building plugins failed:\n{output}")]
    Cargo {
        /// What cargo said.
        output: String,
    },
}

/// A folder for a private PostgreSQL of tests and benchmarks, per checkout.
///
/// Under the system's temporary folder rather than `target/`: when the host
/// runs as root the server runs as another user, who may not be able to
/// reach a checkout inside a private home directory.
pub fn scratch_postgres_dir(name: &str) -> PathBuf {
    let checkout = crate::ids::fnv1a(workspace_root().as_os_str().as_encoded_bytes());
    std::env::temp_dir()
        .join(format!("allot-pg-{checkout:016x}"))
        .join(name)
}

/// The root of this source checkout (the directory of the workspace `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate lives one level below the workspace root")
        .to_path_buf()
}

/// Builds the given plugin packages of the workspace at `root` and returns the
/// path of each component, in the order given.
///
/// Installs the wasm target with rustup first if it is missing. Components go
/// to their own target directory (`target/plugins`), so a build started from a
/// test or a running `cargo run` never waits on the lock of the outer build.
pub fn build_plugins(root: &Path, packages: &[&str]) -> Result<Vec<PathBuf>, BuildError> {
    build(root, packages, false)
}

/// [`build_plugins`], with rustup's and cargo's progress shown on this
/// process's terminal: for people waiting on a first build.
pub fn build_plugins_showing_progress(
    root: &Path,
    packages: &[&str],
) -> Result<Vec<PathBuf>, BuildError> {
    build(root, packages, true)
}

fn build(root: &Path, packages: &[&str], progress: bool) -> Result<Vec<PathBuf>, BuildError> {
    ensure_wasm_target(progress)?;
    let target_dir = root.join("target").join("plugins");
    let mut cargo = Command::new(cargo_binary());
    cargo
        .current_dir(root)
        .args([
            "build",
            if progress { "--color=auto" } else { "--quiet" },
            "--profile",
            PLUGIN_PROFILE,
            "--target",
            WASM_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for package in packages {
        cargo.args(["--package", package]);
    }
    cargo.stdin(Stdio::null());
    if progress {
        cargo.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    }
    let output = cargo.output().map_err(|source| BuildError::Spawn {
        tool: "cargo".into(),
        source,
    })?;
    if !output.status.success() {
        return Err(BuildError::Cargo {
            output: if progress {
                "cargo's messages are above".into()
            } else {
                String::from_utf8_lossy(&output.stderr).into_owned()
            },
        });
    }
    let out = target_dir.join(WASM_TARGET).join(PLUGIN_PROFILE);
    Ok(packages
        .iter()
        .map(|p| out.join(format!("{}.wasm", p.replace('-', "_"))))
        .collect())
}

fn cargo_binary() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn ensure_wasm_target(progress: bool) -> Result<(), BuildError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|source| BuildError::Spawn {
            tool: "rustc".into(),
            source,
        })?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    tracing::info!("installing the {WASM_TARGET} target with rustup");
    let mut rustup = Command::new("rustup");
    rustup
        .args(["target", "add", WASM_TARGET])
        .stdin(Stdio::null());
    if progress {
        eprintln!("installing the {WASM_TARGET} target with rustup …");
        rustup.stderr(Stdio::inherit());
    }
    let output = rustup.output().map_err(|source| BuildError::Spawn {
        tool: "rustup".into(),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BuildError::Target {
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}
