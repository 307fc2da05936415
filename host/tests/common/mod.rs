//! Shared test helpers: built plugins, loaded once per test binary.

#![allow(dead_code)]

pub mod api;

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
    "allot-test-start-trap",
    "allot-test-quota-v2",
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

/// A fresh, empty database on a real PostgreSQL: the server at `DATABASE_URL`
/// when set, else an embedded one private to this test binary.
pub async fn database() -> String {
    use sqlx::Connection;
    static SERVER: OnceLock<Option<allot_host::pg::EmbeddedPostgres>> = OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let admin = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            let server = SERVER.get_or_init(|| {
                let binary = std::env::current_exe().unwrap();
                let name = binary.file_stem().unwrap().to_string_lossy().into_owned();
                let dir = dev::scratch_postgres_dir(&name);
                Some(
                    allot_host::pg::EmbeddedPostgres::start(&dir).unwrap_or_else(|e| panic!("{e}")),
                )
            });
            server.as_ref().unwrap().url("postgres")
        }
    };
    let name = format!(
        "allot_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("a database URL ends in /<database>");
    format!("{base}/{name}")
}
