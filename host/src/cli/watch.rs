//! `allot dev`'s watcher: when a plugin crate's files change, it rebuilds
//! that plugin and swaps the new version in, or says why it did not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};

use crate::dev;
use crate::entity::Runtime;
use crate::registry::Registry;

/// Editors save in bursts (a temporary file, a rename): changes this close
/// together are one change.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `plugins/` of the checkout at `root` until the task is dropped.
pub(super) async fn watch(
    root: PathBuf,
    registry: Registry,
    runtime: Runtime,
) -> anyhow::Result<()> {
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = events.send(event);
    })?;
    let plugins = root.join("plugins");
    watcher.watch(&plugins, RecursiveMode::Recursive)?;
    loop {
        let Some(first) = received.recv().await else {
            return Ok(());
        };
        let mut changed = BTreeSet::new();
        collect(&first, &plugins, &mut changed);
        while let Ok(Some(event)) = tokio::time::timeout(SETTLE, received.recv()).await {
            collect(&event, &plugins, &mut changed);
        }
        for crate_dir in changed {
            reload(&root, &plugins.join(crate_dir), &registry, &runtime).await;
        }
    }
}

/// The plugin crates (folders under `plugins/`) an event touched.
fn collect(event: &notify::Result<notify::Event>, plugins: &Path, changed: &mut BTreeSet<String>) {
    let Ok(event) = event else { return };
    if matches!(event.kind, EventKind::Access(_)) {
        return;
    }
    for path in &event.paths {
        if let Some(first) = path
            .strip_prefix(plugins)
            .ok()
            .and_then(|p| p.components().next())
        {
            changed.insert(first.as_os_str().to_string_lossy().into_owned());
        }
    }
}

/// Rebuilds one plugin crate, stores the result, and activates it after the
/// replay check; anything that fails leaves the running version in place.
async fn reload(root: &Path, crate_dir: &Path, registry: &Registry, runtime: &Runtime) {
    let Some(package) = package_name(&crate_dir.join("Cargo.toml")) else {
        return;
    };
    eprintln!("{package}: changed, rebuilding …");
    let started = Instant::now();
    let built = {
        let (root, package) = (root.to_owned(), package.clone());
        tokio::task::spawn_blocking(move || dev::build_plugins(&root, &[&package])).await
    };
    let file = match built {
        Ok(Ok(mut files)) => files.remove(0),
        Ok(Err(error)) => {
            eprintln!("{package}: the build failed; the running version stays.\n{error}");
            return;
        }
        Err(error) => {
            eprintln!("{package}: the build did not finish: {error}");
            return;
        }
    };
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(error) => {
            eprintln!("{package}: cannot read {}: {error}", file.display());
            return;
        }
    };
    let version = match registry.upload(bytes, None, "dev").await {
        Ok((version, _)) => version,
        Err(error) => {
            eprintln!("{package}: {error}; the running version stays");
            return;
        }
    };
    let running = runtime.plugin(&version.capacity_type).ok();
    if running.is_some_and(|p| p.digest() == version.digest) {
        eprintln!("{package}: rebuilt, and the component is unchanged");
        return;
    }
    let activated = registry
        .activate_checked(
            runtime,
            &version.capacity_type,
            &version.digest,
            "dev",
            false,
        )
        .await;
    match activated {
        Ok((_, check)) => eprintln!(
            "{package}: {} {} is active after {:.1} s; the replay check rebuilt {} pools, {} with another view",
            version.version,
            &version.digest[..19.min(version.digest.len())],
            started.elapsed().as_secs_f64(),
            check.pools,
            check.differences.len()
        ),
        Err(error) => eprintln!("{package}: not activated, the running version stays: {error}"),
    }
}

/// The `[package] name` of a crate's manifest.
fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let table: toml::Table = toml::from_str(&text).ok()?;
    table
        .get("package")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}
