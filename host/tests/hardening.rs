//! Answers that are true and limits no client can push past, on a real
//! node over real HTTP: a deadline refuses only what was not decided, an
//! outcome that cannot be known is said to be unknown, a retryable answer
//! can never apply a command twice (the journal is held still from outside,
//! by a table lock or a killed connection, at the moment that matters), and
//! a caller is refused before its body is read.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use allot_host::node::EntityConfig;
use common::api::{Api, CHECKOUT, OPERATOR, PLANNER, Reply, node, node_with};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A quota pool's `set_units` command.
fn set_units(units: u64) -> String {
    json!({ "name": "set_units", "payload": { "units": units } }).to_string()
}

/// Every event of a pool, in order.
async fn events(api: &Api, pool: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .get(&format!("/v1/pools/{pool}/events?after={after}&limit=1000"))
            .await;
        let page = page.ok(200).clone();
        all.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => return all,
        }
    }
}

/// How many events each request caused.
async fn events_by_request(api: &Api, pool: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for event in events(api, pool).await {
        *counts
            .entry(event["request_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

/// A connection that holds `events` locked against appends until dropped
/// or committed: commands are decided, and their batch waits to be written.
async fn hold_appends(url: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("LOCK TABLE events IN SHARE MODE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn release(mut conn: PgConnection) {
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
}

/// Waits until an append is waiting for the lock, and returns its backend.
async fn waiting_append(url: &str) -> i32 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    for _ in 0..500 {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND wait_event_type = 'Lock' AND query ILIKE '%WITH batch AS%'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no append ever waited for the lock");
}

async fn command(api: &Api, pool: &str, body: String, headers: &[(&str, &str)]) -> Reply {
    api.raw(
        Method::POST,
        &format!("/v1/pools/{pool}/commands"),
        Some(body),
        headers,
    )
    .await
}

/// A command taken for deciding before its deadline, whose append is slow,
/// is answered with its outcome after the deadline, not "not decided".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_decided_in_time_is_answered_past_its_deadline() {
    let url = common::database().await;
    let node = node_with(Some(url.clone()), EntityConfig::default()).await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("late", "quota", json!({ "name": "late", "units": 1 }))
        .await
        .ok(201);
    let lock = hold_appends(&url).await;
    let sent = tokio::spawn({
        let planner = Api::new(&node, Some(PLANNER));
        async move {
            command(
                &planner,
                "late",
                set_units(5),
                &[("allot-timeout-ms", "100"), ("x-request-id", "late-1")],
            )
            .await
        }
    });
    waiting_append(&url).await;
    // Well past the deadline, the append still waits.
    tokio::time::sleep(Duration::from_millis(400)).await;
    release(lock).await;
    let reply = sent.await.unwrap();
    let decided = reply.ok(200);
    assert_eq!(decided["events"][0]["units"], 5, "{decided}");
    assert!(reply.headers.contains_key("idempotency-key"));
    assert_eq!(
        events_by_request(&planner, "late").await.get("late-1"),
        Some(&1)
    );
    node.stop().await;
}

/// When the append outlasts the grace a caller waits past its deadline,
/// the answer is "outcome unknown": retryable for a reservation (its id
/// makes a retry safe), not for a command sent without a key, which gets
/// the key to retry with. Retried with their keys, both answer the first
/// outcome, and each took effect once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_says_so_and_how_to_retry() {
    let url = common::database().await;
    let node = node_with(Some(url.clone()), EntityConfig::default()).await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("slow", "quota", json!({ "name": "slow", "units": 1 }))
        .await
        .ok(201);
    let lock = hold_appends(&url).await;
    let api = || Api::new(&node, Some(PLANNER));
    let (keyless, reserved) = tokio::join!(
        {
            let api = api();
            async move {
                command(
                    &api,
                    "slow",
                    set_units(9),
                    &[("allot-timeout-ms", "50"), ("x-request-id", "keyless-1")],
                )
                .await
            }
        },
        {
            let api = api();
            async move {
                api.raw(
                    Method::POST,
                    "/v1/pools/slow/reservations",
                    Some(json!({ "id": "order-1", "request": { "units": 1 } }).to_string()),
                    &[("allot-timeout-ms", "50")],
                )
                .await
            }
        },
    );
    release(lock).await;

    keyless.problem(502, "outcome_unknown");
    assert_eq!(keyless.body["retryable"], false, "{}", keyless.body);
    let key = keyless.body["idempotency_key"].as_str().unwrap().to_owned();
    assert_eq!(keyless.headers["idempotency-key"], key.as_str());
    assert!(keyless.body["detail"].as_str().unwrap().contains(&key));
    reserved.problem(502, "outcome_unknown");
    assert_eq!(reserved.body["retryable"], true, "{}", reserved.body);

    let again = command(&planner, "slow", set_units(9), &[("idempotency-key", &key)]).await;
    let again = again.ok(200).clone();
    let retried = planner
        .reserve("slow", "order-1", json!({ "units": 1 }))
        .await;
    retried.ok(201);
    let by_request = events_by_request(&planner, "slow").await;
    assert_eq!(by_request.get("keyless-1"), Some(&1), "{by_request:?}");
    let units_set: Vec<Value> = events(&planner, "slow")
        .await
        .into_iter()
        .filter(|e| e["payload"]["type"] == "units_set")
        .collect();
    assert_eq!(units_set.len(), 1, "{units_set:?}");
    assert_eq!(again["seq_nr"], units_set[0]["seq_nr"]);
    node.stop().await;
}

/// An append whose connection dies while it waits has an unknown result to
/// its writer; the entity looks in the journal, finds it was not written,
/// and only then answers "retry", which is then safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_append_is_looked_for_before_retry_is_said() {
    let url = common::database().await;
    let node = node_with(Some(url.clone()), EntityConfig::default()).await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("lost", "quota", json!({ "name": "lost", "units": 2 }))
        .await
        .ok(201);
    let lock = hold_appends(&url).await;
    let sent = tokio::spawn({
        let api = Api::new(&node, Some(PLANNER));
        async move { api.reserve("lost", "order-1", json!({ "units": 1 })).await }
    });
    let writer = waiting_append(&url).await;
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(writer)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    release(lock).await;
    let reply = sent.await.unwrap();
    reply.problem(503, "journal_unavailable");
    assert_eq!(reply.body["retryable"], true);
    assert!(events_by_request(&planner, "lost").await.len() <= 1);
    assert!(
        events(&planner, "lost")
            .await
            .iter()
            .all(|e| e["payload"]["reservation_id"] != "order-1")
    );
    planner
        .reserve("lost", "order-1", json!({ "units": 1 }))
        .await
        .ok(201);
    node.stop().await;
}

/// Many commands with deadlines too short for all of them: every
/// "not decided" answer is true (its request left no event), and every
/// decided command was answered with its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_deadlines_under_load_refuse_only_what_was_not_decided() {
    let node = node_with(None, EntityConfig::default()).await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("busy", "quota", json!({ "name": "busy", "units": 1 }))
        .await
        .ok(201);
    let sends = (0..300).map(|i| {
        let planner = &planner;
        async move {
            let id = format!("busy-{i}");
            let reply = command(
                planner,
                "busy",
                set_units(i + 1),
                &[("allot-timeout-ms", "3"), ("x-request-id", &id)],
            )
            .await;
            (id, reply)
        }
    });
    let replies = futures::future::join_all(sends).await;
    let by_request = events_by_request(&planner, "busy").await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for (id, reply) in &replies {
        let code = reply.body["code"].as_str().unwrap_or("ok").to_owned();
        match code.as_str() {
            "ok" => assert_eq!(by_request.get(id), Some(&1), "{id} answered 200"),
            "deadline_passed" | "overloaded" => {
                assert_eq!(reply.body["retryable"], true);
                assert_eq!(
                    by_request.get(id),
                    None,
                    "{id} answered {code} yet took effect"
                );
            }
            "outcome_unknown" => assert_eq!(reply.body["retryable"], false),
            other => panic!("{id}: unexpected {other}: {}", reply.body),
        }
        *counts.entry(code).or_default() += 1;
    }
    println!("answers: {counts:?}");
    node.stop().await;
}

/// Sends a request's head and the first `sent` bytes of a body of
/// `length` bytes, and returns the connection, the rest unsent.
async fn start_upload(
    node: &allot_host::node::Node,
    path: &str,
    token: &str,
    length: usize,
    sent: usize,
) -> TcpStream {
    let address = node.url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\
         content-type: application/wasm\r\ncontent-length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![0u8; sent]).await.unwrap();
    stream
}

/// The status line of the answer on a connection, if one comes in time.
async fn status_line(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
            if answer.windows(2).any(|w| w == b"\r\n") {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.split("\r\n")
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

/// A caller whose role may not upload, or a node without the cluster's
/// secret, is refused from the request's head: the answer comes while
/// almost all of a 33 MB body is still unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_refused_before_their_body_is_read() {
    let node = node().await;
    let length = 33 * 1024 * 1024;
    let mut upload = start_upload(&node, "/v1/plugins", CHECKOUT, length, 64 * 1024).await;
    let status = status_line(&mut upload, Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 403 Forbidden"));
    let mut command = start_upload(&node, "/v1/pools/p/commands", CHECKOUT, 200 * 1024, 1024).await;
    let status = status_line(&mut command, Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 403 Forbidden"));
    let mut forward = start_upload(
        &node,
        allot_host::cluster::FORWARD_PATH,
        "not-the-cluster-secret",
        length,
        64 * 1024,
    )
    .await;
    let status = status_line(&mut forward, Duration::from_secs(5)).await;
    assert_eq!(status.as_deref(), Some("HTTP/1.1 401 Unauthorized"));
    node.stop().await;
}

/// Uploads read at once are capped per node: with two slow uploads in
/// progress, a third waits its turn, then is told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_flight_are_capped() {
    let node = node().await;
    let length = 1024 * 1024;
    let slow = [
        start_upload(&node, "/v1/plugins", OPERATOR, length, 1024).await,
        start_upload(&node, "/v1/plugins", OPERATOR, length, 1024).await,
    ];
    // Both have their turn once their head is read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let operator = Api::new(&node, Some(OPERATOR));
    let third = operator
        .http
        .post(format!("{}/v1/plugins", operator.base))
        .bearer_auth(OPERATOR)
        .body(vec![0u8; 16])
        .send()
        .await
        .unwrap();
    let third = Reply::read(third).await;
    third.problem(503, "uploads_busy");
    assert_eq!(third.body["retryable"], true);
    drop(slow);
    node.stop().await;
}

/// A NUL in a path or query is the caller's mistake: 400, never a
/// retryable 503 from the database refusing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_path_or_query_is_bad_input() {
    let node = node().await;
    let operator = Api::new(&node, Some(OPERATOR));
    let digest = json!({ "digest": "sha256:00" });
    for path in [
        "/v1/capacity-types/a%00b/activate",
        "/v1/capacity-types/a%00b/check",
        "/v1/capacity-types/a%00b/rollback",
    ] {
        let reply = operator.post(path, digest.clone()).await;
        reply.problem(400, "nul_character");
        assert_eq!(reply.body["retryable"], false);
    }
    for path in [
        "/v1/plugins?capacity_type=a%00b",
        "/v1/capacity-types/a%00b/shadow",
    ] {
        operator.get(path).await.problem(400, "nul_character");
    }
    node.stop().await;
}

/// A value PostgreSQL refuses (here a NUL in text, sent past every check
/// of the API) is an error of the input, never one a retry can fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_database_refuses_are_not_retryable() {
    let url = common::database().await;
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let error = sqlx::query("SELECT $1::text")
        .bind("a\0b")
        .execute(&db)
        .await
        .unwrap_err();
    let error = allot_host::journal::Error::Database(error);
    assert!(error.is_caused_by_input(), "{error}");
    assert!(!error.is_retryable());
    let lost = allot_host::journal::Error::Database(sqlx::Error::PoolTimedOut);
    assert!(!lost.is_caused_by_input());
    assert!(lost.is_retryable());
}

/// A reservation id or idempotency key that took effect, sent again with
/// another request, is refused (422); the same request, even written in
/// other bytes, is a retry and answers the first outcome; and the node
/// still tells them apart after a restart, from the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_refused() {
    let url = common::database().await;
    let node = node_with(Some(url.clone()), EntityConfig::default()).await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("keys", "quota", json!({ "name": "keys", "units": 10 }))
        .await
        .ok(201);
    let first = planner
        .reserve("keys", "order-1", json!({ "units": 1 }))
        .await
        .ok(201)
        .clone();
    check_keys(&planner, &first).await;
    node.stop().await;
    let node = node_with(Some(url), EntityConfig::default()).await;
    check_keys(&Api::new(&node, Some(PLANNER)), &first).await;
    let state = Api::new(&node, Some(PLANNER)).get("/v1/pools/keys").await;
    assert_eq!(state.ok(200)["cells"][0]["capacity"], 20, "{}", state.body);
    node.stop().await;
}

/// The same reservation, sent in other bytes, answers `first`; another
/// request under its id, or under the planner's key, is refused.
async fn check_keys(planner: &Api, first: &Value) {
    let same_in_other_bytes = r#"{ "request" : { "units" : 1 }, "id" : "order-1" }"#;
    let again = planner
        .raw(
            Method::POST,
            "/v1/pools/keys/reservations",
            Some(same_in_other_bytes.into()),
            &[],
        )
        .await;
    assert_eq!(again.ok(201), first);
    let other = planner
        .reserve("keys", "order-1", json!({ "units": 2 }))
        .await;
    other.problem(422, "idempotency_key_reused");
    assert_eq!(other.body["retryable"], false);
    let key = [("idempotency-key", "shift-1")];
    command(planner, "keys", set_units(20), &key).await.ok(200);
    command(planner, "keys", set_units(30), &key)
        .await
        .problem(422, "idempotency_key_reused");
}

/// A refusal's message, which can echo what the caller sent, is kept cut
/// to a kilobyte however long the caller made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_recorded_cut_to_size() {
    let url = common::database().await;
    let node = node_with(Some(url.clone()), EntityConfig::default()).await;
    let planner = Api::new(&node, Some(PLANNER));
    planner
        .create("echo", "quota", json!({ "name": "echo", "units": 1 }))
        .await
        .ok(201);
    let long_name = "x".repeat(150 * 1024);
    let reply = planner
        .reserve(
            "echo",
            "order-1",
            json!({ "units": 1, long_name.as_str(): 1 }),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", &reply.text[..200]);
    let mut db = PgConnection::connect(&url).await.unwrap();
    let stored: i32 = sqlx::query_scalar(
        "SELECT octet_length(outcome::text) FROM commands WHERE pool_id = 'echo'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(stored < 2048, "{stored} bytes stored");
    node.stop().await;
}

/// A client that sends its request's head a byte at a time, or keeps a
/// connection without using it, is closed after the header timeout; past
/// the connection limit, a new connection is served only once another
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_cannot_hold_the_node() {
    use allot_host::node::{ClusterConfig, HttpLimits};
    let node = common::api::node_from(
        None,
        EntityConfig::default(),
        ClusterConfig::default(),
        HttpLimits {
            header_timeout_seconds: 1,
            max_connections: 2,
        },
    )
    .await;
    let address = node.url().trim_start_matches("http://").to_owned();
    // A byte every 200 ms: the head never completes, and the node closes.
    let mut slow = TcpStream::connect(&address).await.unwrap();
    let started = std::time::Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed = false;
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        let mut buffer = [0u8; 256];
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(200), slow.read(&mut buffer)).await
        {
            // An answer (408) or the end of the connection, before the head.
            assert!(read == 0 || buffer.starts_with(b"HTTP/1.1 408"), "{read}");
            closed = true;
            break;
        }
    }
    assert!(closed, "a head sent a byte at a time was waited for");
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(slow);

    // Two idle connections take the limit; a third waits until one closes.
    let idle = [
        TcpStream::connect(&address).await.unwrap(),
        TcpStream::connect(&address).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(&address).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        status_line(&mut third, Duration::from_millis(300)).await,
        None,
        "served past the connection limit"
    );
    drop(idle);
    assert_eq!(
        status_line(&mut third, Duration::from_secs(5))
            .await
            .as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    node.stop().await;
}
