//! Shared test helpers: built plugins, loaded once per test binary.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use allot_host::dev;
use allot_host::sandbox::{Context, Engine, Limits, Plugin, Role};

/// Every plugin crate the tests load; built together in one cargo run.
const PACKAGES: &[&str] = &[
    "allot-logistics",
    "allot-warehouse",
    "allot-vehicle-load",
    "allot-plugin-template",
    "allot-test-unruly",
    "allot-test-garbage-output",
    "allot-test-wrong-contract",
];

/// Path of a plugin package's component, building all of them on first use.
pub fn component(package: &str) -> PathBuf {
    static BUILT: OnceLock<HashMap<&'static str, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let paths =
            dev::build_plugins(&dev::workspace_root(), PACKAGES).unwrap_or_else(|e| panic!("{e}"));
        PACKAGES.iter().copied().zip(paths).collect()
    });
    built
        .get(package)
        .unwrap_or_else(|| panic!("{package} is not in the test plugins"))
        .clone()
}

/// The engine the tests share, with default limits.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::new(Limits::default()).expect("engine"))
        .clone()
}

/// A loaded plugin, compiled once per test binary.
pub fn plugin(package: &str) -> Arc<Plugin> {
    static LOADED: OnceLock<Mutex<HashMap<String, Arc<Plugin>>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(Default::default);
    if let Some(plugin) = loaded.lock().unwrap().get(package) {
        return plugin.clone();
    }
    let bytes = std::fs::read(component(package)).expect("component file");
    let plugin = Plugin::load(&engine(), &bytes).unwrap_or_else(|e| panic!("{package}: {e}"));
    loaded
        .lock()
        .unwrap()
        .insert(package.to_owned(), plugin.clone());
    plugin
}

/// A context at a time given in RFC 3339.
pub fn at(rfc3339: &str, role: Role) -> Context {
    Context {
        now_ms: allot_sdk::time::Timestamp::parse(rfc3339)
            .expect("RFC 3339 time")
            .0,
        request_id: "test".into(),
        role,
    }
}
