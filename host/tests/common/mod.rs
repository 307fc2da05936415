//! Shared test helpers: built plugins, loaded once per test binary.

#![allow(dead_code)]

pub mod api;
pub mod cluster;

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
    "allot-test-quota-relayout",
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

/// The same component with a custom section appended: other bytes, so
/// another digest, and the same behaviour — a second version to switch to.
pub fn another_build(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    let name = b"allot-test-build";
    let payload = tag.as_bytes();
    let size = 1 + name.len() + payload.len();
    assert!(size < 128 && name.len() < 128, "one-byte LEB128 sizes");
    bytes.push(0);
    bytes.push(size as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    bytes
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

/// Test databases are named `allot_test_<process id>_<n>`.
const DATABASE_PREFIX: &str = "allot_test_";

/// A fresh, empty database on a real PostgreSQL (see [`admin_url`]).
pub async fn database() -> String {
    use sqlx::Connection;
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let admin = admin_url().await;
    let name = format!(
        "{DATABASE_PREFIX}{}_{}",
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

/// The URL of the `postgres` database of the server the tests use: the one
/// at `DATABASE_URL` when set, else an embedded one private to this test
/// target. The first call of a process on the embedded server drops the
/// test databases of runs that have ended, so that they do not pile up,
/// while the last run's stay for a look after a failure. A server at
/// `DATABASE_URL` may be shared, and its databases are left alone.
pub async fn admin_url() -> String {
    static SERVER: OnceLock<allot_host::pg::EmbeddedPostgres> = OnceLock::new();
    static ADMIN: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    ADMIN
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("DATABASE_URL")
                && !url.is_empty()
            {
                return url;
            }
            let server = SERVER.get_or_init(|| {
                let dir = dev::scratch_postgres_dir(&test_target());
                allot_host::pg::EmbeddedPostgres::start(&dir).unwrap_or_else(|e| panic!("{e}"))
            });
            let admin = server.url("postgres");
            drop_databases_of_ended_runs(&admin).await;
            admin
        })
        .await
        .clone()
}

/// Drops the test databases whose process has ended, and returns their
/// names: for a server that only this machine's tests use.
pub async fn drop_databases_of_ended_runs(admin: &str) -> Vec<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to PostgreSQL");
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(DATABASE_PREFIX)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut dropped = Vec::new();
    for name in names {
        let pid = name[DATABASE_PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        let ended = pid.is_some_and(|pid| {
            pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        let drop = format!("DROP DATABASE IF EXISTS \"{}\"", name.replace('"', "\"\""));
        if ended
            && sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await
                .is_ok()
        {
            dropped.push(name);
        }
    }
    dropped
}

/// This test binary's target and profile, such as `journal.debug`: cargo
/// names the binary `<target>-<hash>` in `<profile>/deps`, and the hash
/// changes with the dependencies and flags, so the embedded server's folder
/// is named without it and a rebuild reuses it.
fn test_target() -> String {
    let binary = std::env::current_exe().unwrap();
    let stem = binary.file_stem().unwrap().to_string_lossy();
    let target = match stem.rsplit_once('-') {
        Some((target, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            target
        }
        _ => &stem,
    };
    let profile = binary
        .parent()
        .and_then(|deps| deps.parent())
        .and_then(|profile| profile.file_name())
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    format!("{target}.{profile}")
}
