//! What the benchmarks share: their PostgreSQL and their arguments. Each
//! benchmark takes the parts it needs.

#![allow(dead_code)]

use allot_host::dev;
use allot_host::pg::EmbeddedPostgres;

/// The URL of the `postgres` database to benchmark on: the server at
/// `DATABASE_URL` when set, else an embedded one in the system's temporary
/// folder, returned too, to be kept running for the benchmark.
pub fn admin_url() -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    Ok(match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = EmbeddedPostgres::start(&dev::scratch_postgres_dir("bench"))?;
            (server.url("postgres"), Some(server))
        }
    })
}

/// The value after `--name` on the command line, or `default`.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}
