//! The embedded PostgreSQL launcher, and the tests' databases on it.

mod common;

use std::path::PathBuf;

use allot_host::dev;
use allot_host::pg::{EmbeddedPostgres, Error};
use sqlx::Connection;

fn folder(name: &str) -> PathBuf {
    dev::scratch_postgres_dir(name)
}

/// A test's folder, emptied of what an earlier run left.
fn empty_folder(name: &str) -> PathBuf {
    let dir = folder(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn query_one(url: &str, sql: &'static str) -> sqlx::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query_scalar(sql).fetch_one(&mut conn).await
}

/// A fresh folder is initialised, served on loopback, stopped on drop, and reused with its data.
#[tokio::test]
async fn starts_stops_and_reuses_its_data() {
    let dir = empty_folder("reuse");

    let pg = EmbeddedPostgres::start(&dir).expect("first start");
    let url = pg.url("postgres");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE TABLE kept (n int)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let port = pg.port();
    drop(pg);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server still listens after being dropped"
    );

    let initialised = std::fs::metadata(dir.join("data/PG_VERSION"))
        .unwrap()
        .modified()
        .unwrap();
    let pg = EmbeddedPostgres::start(&dir).expect("second start");
    let kept = query_one(&pg.url("postgres"), "SELECT n::bigint FROM kept")
        .await
        .unwrap();
    assert_eq!(kept, 42);
    let again = std::fs::metadata(dir.join("data/PG_VERSION"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(initialised, again, "the data folder was initialised again");
}

/// Without server binaries the error says what is missing.
#[test]
fn missing_binaries_are_named() {
    let empty = folder("no-binaries");
    std::fs::create_dir_all(&empty).unwrap();
    let error = EmbeddedPostgres::start_with(&folder("unused"), &empty)
        .err()
        .expect("refused");
    assert!(
        matches!(error, Error::MissingTool(_, "postgres")),
        "{error}"
    );
    assert!(
        error.to_string().contains("PostgreSQL server package"),
        "{error}"
    );
}

/// Settings given at a start apply to that start only; one the server refuses
/// is reported with what its log says.
#[tokio::test]
async fn settings_apply_to_their_start_only_and_a_refused_one_is_reported() {
    let dir = empty_folder("settings");
    let work_mem = |pg: &EmbeddedPostgres| {
        let url = pg.url("postgres");
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, String>("SHOW work_mem")
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    };
    let set = [("work_mem".to_owned(), "12MB".to_owned())];
    let pg = EmbeddedPostgres::start_with_settings(&dir, &set).expect("start with a setting");
    assert_eq!(work_mem(&pg).await, "12MB");
    drop(pg);

    let pg = EmbeddedPostgres::start(&dir).expect("start without");
    assert_eq!(work_mem(&pg).await, "4MB", "the setting outlived its start");
    drop(pg);

    let refused = [("work_mem".to_owned(), "plenty".to_owned())];
    let error = EmbeddedPostgres::start_with_settings(&dir, &refused)
        .err()
        .expect("an invalid value is refused");
    assert!(matches!(error, Error::Start(_)), "{error}");
    assert!(error.to_string().contains("work_mem"), "{error}");
}

/// Each test makes a database of its own; those of a run that has ended are
/// dropped when the next run starts, and those of a running one are kept.
#[tokio::test]
async fn test_databases_of_ended_runs_are_dropped_and_of_running_ones_kept() {
    let dir = empty_folder("cleanup");
    let pg = EmbeddedPostgres::start(&dir).expect("start");
    let admin = pg.url("postgres");
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let ended_pid = ended.id();
    ended.wait().unwrap();
    let gone = format!("allot_test_{ended_pid}_0");
    let kept = format!("allot_test_{}_0", std::process::id());
    let other = "allot_other".to_owned();
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    for name in [&gone, &kept, &other] {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    let dropped = common::drop_databases_of_ended_runs(&admin).await;

    assert_eq!(dropped, std::slice::from_ref(&gone));
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'allot%' ORDER BY datname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(left, [other, kept]);
    conn.close().await.unwrap();
    drop(pg);
    std::fs::remove_dir_all(&dir).unwrap();
}
