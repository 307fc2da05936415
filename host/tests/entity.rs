//! Pool entities on a real PostgreSQL with real plugins: no overbooking under
//! concurrency, nothing acknowledged lost, recovery, idempotency, conflicts.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use allot_host::entity::{Error, Outcome, Request, Runtime, Settings};
use allot_host::ids::PoolId;
use allot_host::journal::Journal;
use allot_host::sandbox::{Command, Context, Engine, Limits, Plugin, Role};
use serde_json::json;
use serde_json::value::RawValue;
use tokio::time::Instant;

fn raw(value: serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap()
}

fn request(command: Command) -> Request {
    Request {
        context: Context {
            now_ms: 0,
            request_id: "test".into(),
            role: Role::Checkout,
        },
        command,
        actor: "test (checkout)".into(),
        idempotency_key: None,
        deadline: Instant::now() + Duration::from_secs(10),
    }
}

fn reserve(id: &str, units: u64) -> Request {
    request(Command::Reserve {
        id: id.into(),
        request: raw(json!({ "units": units })),
    })
}

fn pool(id: &str) -> PoolId {
    PoolId::new(id).unwrap()
}

async fn runtime(url: &str, settings: Settings) -> Runtime {
    let journal = Journal::connect(url, 8).await.expect("journal");
    let runtime = Runtime::new(journal, settings);
    runtime.load_plugin(common::plugin("allot-plugin-template"));
    runtime.load_plugin(common::plugin("allot-test-unruly"));
    runtime
}

/// Default settings, but a snapshot once this many events are appended
/// (and outweigh the last one).
fn snapshotting_every(events: u64) -> Settings {
    Settings {
        snapshot_every: events,
        ..Settings::default()
    }
}

async fn quota(runtime: &Runtime, id: &str, units: u64) -> PoolId {
    let id = pool(id);
    let config = raw(json!({ "name": id.as_str(), "units": units }));
    assert!(runtime.create_pool(&id, "quota", &config).await.unwrap());
    id
}

/// (capacity, used) of a quota pool, read through its entity.
async fn usage(runtime: &Runtime, id: &PoolId) -> (u64, u64) {
    let (_, view) = runtime
        .view(id, Instant::now() + Duration::from_secs(10))
        .await
        .unwrap();
    (view.cells[0].capacity, view.cells[0].used)
}

async fn count(url: &str, sql: &'static str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
}

/// Sends `n` reservations of one unit at once, dealt to `pools` in turn;
/// (accepted, refused as exhausted). Any other outcome fails the test.
async fn reserve_at_once(runtime: &Runtime, pools: &[PoolId], n: usize) -> (usize, usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (runtime, id) = (runtime.clone(), pools[i % pools.len()].clone());
            tokio::spawn(async move { runtime.execute(&id, reserve(&format!("r{i}"), 1)).await })
        })
        .collect();
    let (mut accepted, mut full) = (0, 0);
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Outcome::Accepted { .. } => accepted += 1,
            Outcome::Rejected { problem } if problem.code == "quota_exhausted" => full += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    (accepted, full)
}

/// Hundreds of concurrent reservations against capacity K: exactly K succeed, the journal agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_never_overbook() {
    let url = common::database().await;
    let runtime = runtime(&url, Settings::default()).await;
    let id = quota(&runtime, "concurrent", 50).await;
    assert_eq!(
        reserve_at_once(&runtime, std::slice::from_ref(&id), 400).await,
        (50, 350)
    );
    assert_eq!(usage(&runtime, &id).await, (50, 50));
    assert_eq!(count(&url, "SELECT count(*) FROM events").await, 50);

    // A second runtime rebuilds the same state from the journal alone.
    runtime.shutdown().await;
    let fresh = runtime_without_snapshots(&url).await;
    assert_eq!(usage(&fresh, &id).await, (50, 50));
}

/// Appends on every group-commit writer at once (each starting beside the
/// others without waiting) lose no answer and overbook no pool, and the
/// extra writers, which write on connections taken from the pool for each
/// of their transactions, leave the journal's few connections usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_appends_on_every_writer_lose_nothing() {
    let url = common::database().await;
    let settings = Settings {
        writers: 4,
        overlap_after: Duration::ZERO,
        ..Settings::default()
    };
    let runtime = runtime(&url, settings).await;
    let overlapping = &allot_host::metrics::metrics().overlapping_appends;
    let overlapped_before = overlapping.get();
    let mut pools = Vec::new();
    for p in 0..40 {
        pools.push(quota(&runtime, &format!("overlap-{p}"), 5).await);
    }
    assert_eq!(reserve_at_once(&runtime, &pools, 400).await, (200, 200));
    assert!(
        overlapping.get() > overlapped_before,
        "no append overlapped"
    );
    for id in &pools {
        assert_eq!(usage(&runtime, id).await, (5, 5));
    }
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM events WHERE pool_id LIKE 'overlap-%'"
        )
        .await,
        200
    );
    runtime.shutdown().await;
}

async fn runtime_without_snapshots(url: &str) -> Runtime {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("DELETE FROM snapshots")
        .execute(&mut conn)
        .await
        .unwrap();
    runtime(url, Settings::default()).await
}

/// Killing the host mid-load loses no acknowledged reservation and leaves nothing half-written.
#[test]
fn a_crash_loses_nothing_acknowledged() {
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::database());
    // The "host" gets its own tokio runtime, torn down abruptly mid-load:
    // entity tasks and in-flight appends are dropped wherever they are.
    let host = tokio::runtime::Runtime::new().unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let id = host.block_on(async {
        let runtime = runtime(&url, snapshotting_every(7)).await;
        let id = quota(&runtime, "crashing", 1_000_000).await;
        for worker in 0..8 {
            let (runtime, id, acked) = (runtime.clone(), id.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let rid = format!("w{worker}-{i}");
                    if let Ok(Outcome::Accepted { .. }) =
                        runtime.execute(&id, reserve(&rid, 1)).await
                    {
                        acked.lock().unwrap().insert(rid);
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        id
    });
    host.shutdown_background();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the load made too little progress ({}) to prove anything",
        acked.len()
    );

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let runtime = runtime(&url, Settings::default()).await;
        let (_, used) = usage(&runtime, &id).await;
        let journal = runtime.journal();
        let events = journal.events(&id, Default::default(), i64::MAX).await.unwrap();
        let reserved: HashSet<String> = events
            .iter()
            .map(|e| serde_json::from_str::<serde_json::Value>(e.payload.get()).unwrap()["reservation_id"].as_str().unwrap().to_owned())
            .collect();
        assert!(acked.is_subset(&reserved), "{} acknowledged reservations are missing", acked.difference(&reserved).count());
        assert_eq!(used as usize, events.len(), "state and journal disagree");
        assert_eq!(reserved.len(), events.len(), "a reservation was recorded twice");
        // Every event completes its command: batches are all or nothing.
        assert_eq!(count(&url, "SELECT count(*) FROM events WHERE command_key IS NOT NULL").await as usize, events.len());
    });
}

/// Recovery from snapshot + tail gives the same state as a full replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_tail_equal_full_replay() {
    let url = common::database().await;
    let runtime = runtime(&url, snapshotting_every(10)).await;
    let id = quota(&runtime, "snapshots", 100).await;
    for i in 0..35 {
        runtime
            .execute(&id, reserve(&format!("r{i}"), 2))
            .await
            .unwrap();
    }
    runtime
        .execute(&id, request(Command::Release { id: "r3".into() }))
        .await
        .unwrap();
    runtime.shutdown().await;
    assert!(count(&url, "SELECT count(*) FROM snapshots").await >= 3);
    // The newest snapshot (taken on passivation) covers everything; without
    // it, recovery takes an older one and replays the events after it.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM snapshots WHERE seq_nr = (SELECT max(seq_nr) FROM snapshots)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    assert!(count(&url, "SELECT max(seq_nr) FROM snapshots").await < 36);

    let from_snapshot = runtime_view(&url).await;
    let fresh = runtime_without_snapshots(&url).await;
    let (_, full_replay) = fresh
        .view(&id, Instant::now() + Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(from_snapshot, serde_json::to_string(&full_replay).unwrap());
    assert_eq!(usage(&fresh, &id).await, (100, 68));
}

/// A snapshot waits until the events since the last one outweigh it, so a
/// large state is not written out again every `snapshot_every` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_wait_for_events_that_outweigh_the_last() {
    use sqlx::Connection;
    let url = common::database().await;
    let runtime = runtime(&url, snapshotting_every(1)).await;
    // Each reservation adds to the state, so the state soon outweighs an event.
    let id = quota(&runtime, "outweighed", 1_000).await;
    for i in 0..150 {
        let outcome = runtime
            .execute(&id, reserve(&format!("reservation-{i}"), 1))
            .await
            .unwrap();
        assert!(outcome.is_accepted(), "{outcome:?}");
    }
    runtime.shutdown().await;

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let snapshots: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT seq_nr, length(state) FROM snapshots WHERE pool_id = $1 ORDER BY seq_nr",
    )
    .bind(id.as_str())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let events: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT seq_nr, length(payload::text) FROM events WHERE pool_id = $1 ORDER BY seq_nr",
    )
    .bind(id.as_str())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(events.len(), 150);
    // Older snapshots are thinned as new ones come, so fewer are left than
    // were taken; the pairs below would still show a snapshot taken too soon.
    assert!(
        snapshots.len() >= 3,
        "{snapshots:?}: periodic snapshots and the passivation's"
    );
    assert_eq!(
        snapshots.last().unwrap().0,
        150,
        "passivation snapshots the end"
    );
    // Every periodic snapshot came after events that outweighed the one before.
    for pair in snapshots.windows(2).take(snapshots.len() - 2) {
        let ((from, size), (to, _)) = (pair[0], pair[1]);
        let tail: i64 = events
            .iter()
            .filter(|(seq, _)| *seq > from && *seq <= to)
            .map(|(_, bytes)| i64::from(*bytes))
            .sum();
        assert!(
            tail >= i64::from(size),
            "a snapshot at {to} after {tail} bytes of events, the last one of {size} bytes"
        );
    }
    // And the pool recovers from them as from its whole history.
    drop(conn);
    let fresh = runtime_without_snapshots(&url).await;
    assert_eq!(usage(&fresh, &id).await, (1_000, 150));
}

/// The events a recovery replays after its snapshot count towards the
/// next one: a pool that recovers far behind its snapshot takes a new one
/// at its next command, not only once as many events again are appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_tail_counts_towards_the_next_snapshot() {
    use sqlx::Connection;
    let url = common::database().await;
    let rarely = snapshotting_every(1_000_000);
    let reserve_from = |runtime: Runtime, id: PoolId, range: std::ops::Range<u32>| async move {
        for i in range {
            let outcome = runtime.execute(&id, reserve(&format!("r{i}"), 1)).await;
            assert!(outcome.unwrap().is_accepted());
        }
        runtime.shutdown().await;
    };
    // A snapshot of 20 reservations, then 130 events after it, whose own
    // snapshot (taken when the pool passivated) is lost.
    let first = runtime(&url, rarely.clone()).await;
    let id = quota(&first, "recovered-tail", 1_000).await;
    reserve_from(first, id.clone(), 0..20).await;
    reserve_from(runtime(&url, rarely).await, id.clone(), 20..150).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM snapshots WHERE pool_id = $1 AND seq_nr = 150")
        .bind(id.as_str())
        .execute(&mut conn)
        .await
        .unwrap();

    let runtime = runtime(&url, snapshotting_every(1)).await;
    let outcome = runtime.execute(&id, reserve("r150", 1)).await.unwrap();
    assert!(outcome.is_accepted());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let newest: i64 =
            sqlx::query_scalar("SELECT max(seq_nr) FROM snapshots WHERE pool_id = $1")
                .bind(id.as_str())
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if newest == 151 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot after the recovered tail (newest at {newest})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runtime.shutdown().await;
}

async fn runtime_view(url: &str) -> String {
    let runtime = runtime(url, Settings::default()).await;
    let (_, view) = runtime
        .view(&pool("snapshots"), Instant::now() + Duration::from_secs(10))
        .await
        .unwrap();
    runtime.shutdown().await;
    serde_json::to_string(&view).unwrap()
}

/// A retried command returns its accepted outcome and changes nothing, also after a restart; the same key with another request is refused; a refused one is decided again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_idempotent_across_restarts() {
    let url = common::database().await;
    let runtime = runtime(&url, Settings::default()).await;
    let id = quota(&runtime, "idempotent", 3).await;
    let first = runtime.execute(&id, reserve("r1", 2)).await.unwrap();
    let full = runtime.execute(&id, reserve("r2", 2)).await.unwrap();
    assert!(matches!(&full, Outcome::Rejected { problem } if problem.code == "quota_exhausted"));
    runtime.shutdown().await;

    let runtime = runtime_without_snapshots(&url).await;
    // The same request again: the first outcome, and nothing changes.
    let again = runtime.execute(&id, reserve("r1", 2)).await.unwrap();
    assert_eq!(same(&again), same(&first));
    // Same id, another request: refused, as it is not a retry.
    let other = runtime.execute(&id, reserve("r1", 1)).await.unwrap_err();
    assert!(
        matches!(other, allot_host::entity::Error::KeyReused),
        "{other}"
    );
    runtime
        .execute(&id, request(Command::Release { id: "r1".into() }))
        .await
        .unwrap();
    // A refusal took no effect: the same id is decided afresh, and there is room now.
    let again = runtime.execute(&id, reserve("r2", 2)).await.unwrap();
    assert!(again.is_accepted(), "{again:?}");
    let once_more = runtime.execute(&id, reserve("r2", 2)).await.unwrap();
    assert_eq!(same(&once_more), same(&again));
    assert_eq!(usage(&runtime, &id).await, (3, 2));
    assert_eq!(count(&url, "SELECT count(*) FROM events").await, 3);
}

/// A retry of a command that decided several events is answered with all
/// of them, as first: what a pool remembers of a command is where its
/// events are, and they are read back from the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_answered_with_every_event_of_its_command() {
    let url = common::database().await;
    let runtime = runtime(&url, Settings::default()).await;
    runtime.load_plugin(common::plugin("allot-vehicle-load"));
    let id = pool("truck-retried");
    let truck = json!({
        "truck": "B-AL-7", "departure": "2031-03-10T18:00:00Z",
        "capacity": { "weight_kg": 1000, "volume_l": 4000, "pallets": 4 },
    });
    assert!(
        runtime
            .create_pool(&id, "vehicle-load", &raw(truck))
            .await
            .unwrap()
    );
    // Minutes after 09:00 on the day of departure.
    let at = |minutes: i64, id: &str, load: serde_json::Value| {
        let mut reservation = request(Command::Reserve {
            id: id.into(),
            request: raw(load),
        });
        reservation.context.now_ms = 1_930_899_600_000 + minutes * 60_000;
        reservation
    };
    let hold = json!({ "weight_kg": 800, "pallets": 1, "hold_minutes": 15 });
    let held = runtime.execute(&id, at(0, "h1", hold)).await.unwrap();
    assert!(held.is_accepted(), "{held:?}");
    // The hold has run out by then: the booking decides its expiry too.
    let load = json!({ "weight_kg": 300 });
    let booked = runtime
        .execute(&id, at(20, "b1", load.clone()))
        .await
        .unwrap();
    match &booked {
        Outcome::Accepted { events, .. } => assert_eq!(events.len(), 2, "{events:?}"),
        other => panic!("{other:?}"),
    }
    let events = count(&url, "SELECT count(*) FROM events").await;
    let again = runtime.execute(&id, at(21, "b1", load)).await.unwrap();
    assert_eq!(same(&again), same(&booked));
    assert_eq!(count(&url, "SELECT count(*) FROM events").await, events);
    runtime.shutdown().await;
}

/// An outcome as a JSON value, to compare (its events are raw JSON text).
fn same(outcome: &Outcome) -> serde_json::Value {
    serde_json::to_value(outcome).unwrap()
}

/// Two runtimes that both believe they own a pool: one history survives, the loser rebuilds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_cannot_both_extend_a_history() {
    let url = common::database().await;
    let a = runtime(&url, Settings::default()).await;
    let b = runtime(&url, Settings::default()).await;
    let id = quota(&a, "split-brain", 30).await;
    // Both entities are live and at the same seq before the race starts.
    usage(&a, &id).await;
    usage(&b, &id).await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let runtime = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            // Retry conflicts, as a caller would, with the same reservation id.
            let mut conflicts = 0;
            for _ in 0..50 {
                match runtime.execute(&id, reserve(&format!("r{i}"), 1)).await {
                    Err(Error::Journal(allot_host::journal::Error::Conflict { .. })) => {
                        conflicts += 1
                    }
                    Err(e) if e.is_retryable() => {}
                    Ok(outcome) => return (outcome, conflicts),
                    Err(e) => panic!("{e}"),
                }
            }
            panic!("no outcome after 50 tries");
        }));
    }
    let (mut accepted, mut conflicts) = (0, 0);
    for task in tasks {
        let (outcome, seen) = task.await.unwrap();
        conflicts += seen;
        if let Outcome::Accepted { .. } = outcome {
            accepted += 1;
        }
    }
    assert!(
        conflicts > 0,
        "the two owners never collided, so this proved nothing"
    );
    assert_eq!(accepted, 30, "capacity 30 must be taken exactly");
    assert_eq!(
        count(
            &url,
            "SELECT count(DISTINCT payload->>'reservation_id') FROM events"
        )
        .await,
        30
    );
    assert_eq!(usage(&a, &id).await, (30, 30));
    assert_eq!(usage(&b, &id).await, (30, 30));
}

/// A passed deadline and a full mailbox are immediate, retryable refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_and_full_mailboxes_fail_fast() {
    let url = common::database().await;
    let runtime = runtime(
        &url,
        Settings {
            mailbox: 1,
            ..Settings::default()
        },
    )
    .await;
    // An unruly plugin whose endless loop lasts a full second keeps the
    // entity busy long enough for the burst below, however loaded the machine.
    let patient = Engine::new(Limits {
        call_timeout: Duration::from_secs(1),
        ..Limits::default()
    })
    .unwrap();
    let bytes = std::fs::read(common::component("allot-test-unruly")).unwrap();
    runtime.load_plugin(Plugin::load(&patient, &bytes).unwrap());
    let id = pool("busy");
    runtime
        .create_pool(&id, "unruly", &raw(json!({ "capacity": 5 })))
        .await
        .unwrap();
    runtime.execute(&id, reserve("warm-up", 1)).await.unwrap();

    let mut late = reserve("late", 1);
    late.deadline = Instant::now();
    let error = runtime.execute(&id, late).await.unwrap_err();
    assert!(
        matches!(error, Error::DeadlinePassed) && error.is_retryable(),
        "{error}"
    );

    // While the entity is busy with an endless loop (until the plugin's
    // deadline), a mailbox of one holds one command; the others sent at the
    // same moment are refused at once.
    let spin = {
        let (runtime, id) = (runtime.clone(), id.clone());
        tokio::spawn(async move {
            runtime
                .execute(
                    &id,
                    request(Command::Custom {
                        name: "spin".into(),
                        payload: raw(json!({})),
                    }),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let burst: Vec<_> = (0..3)
        .map(|i| {
            let (runtime, id) = (runtime.clone(), id.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let result = runtime
                    .execute(&id, reserve(&format!("burst-{i}"), 1))
                    .await;
                (result, started.elapsed())
            })
        })
        .collect();
    let mut overloaded = 0;
    for task in burst {
        match task.await.unwrap() {
            (Err(error @ Error::Overloaded(_)), took) => {
                assert!(error.is_retryable());
                assert!(
                    took < Duration::from_millis(500),
                    "an overload took {took:?}"
                );
                overloaded += 1;
            }
            (Ok(Outcome::Accepted { .. }), _) => {}
            (other, _) => panic!("unexpected {:?}", other.map(|_| ())),
        }
    }
    assert!(overloaded >= 2, "only {overloaded} of 3 were refused");
    let spun = spin.await.unwrap().unwrap_err();
    assert!(spun.to_string().contains("deadline of 1s"), "{spun}");
}

/// A pool whose events cannot be replayed is marked failed; other pools keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreplayable_pool_fails_alone() {
    use sqlx::Connection;
    let url = common::database().await;
    let runtime = runtime(&url, Settings::default()).await;
    let broken = quota(&runtime, "broken", 5).await;
    let healthy = quota(&runtime, "healthy", 5).await;
    runtime.execute(&broken, reserve("a", 1)).await.unwrap();
    runtime.shutdown().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO events (pool_id, seq_nr, payload, plugin_name, plugin_version, plugin_digest, request_id)
         VALUES ('broken', 2, '{\"type\": \"meteor_strike\"}', 'x', 'x', 'x', 'x')",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let runtime = runtime_without_snapshots(&url).await;
    let error = runtime.execute(&broken, reserve("b", 1)).await.unwrap_err();
    match &error {
        Error::PoolFailed { reason, .. } => {
            assert!(reason.contains("event 2 cannot be replayed"), "{reason}")
        }
        other => panic!("expected a failed pool, got {other}"),
    }
    assert!(!error.is_retryable());
    let again = runtime.execute(&broken, reserve("c", 1)).await.unwrap_err();
    assert!(matches!(again, Error::PoolFailed { .. }), "{again}");
    assert!(matches!(
        runtime.execute(&healthy, reserve("a", 1)).await.unwrap(),
        Outcome::Accepted { .. }
    ));
}

/// Idle pools passivate with a snapshot and come back on the next command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pools_passivate_and_return() {
    let url = common::database().await;
    let runtime = runtime(
        &url,
        Settings {
            idle_after: Duration::from_millis(100),
            ..Settings::default()
        },
    )
    .await;
    let id = quota(&runtime, "sleepy", 5).await;
    runtime.execute(&id, reserve("a", 2)).await.unwrap();
    assert_eq!(runtime.active_pools(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while runtime.active_pools() > 0 || count(&url, "SELECT count(*) FROM snapshots").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never passivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    runtime.execute(&id, reserve("b", 2)).await.unwrap();
    assert_eq!(usage(&runtime, &id).await, (5, 4));
}

/// A plugin trap while deciding rejects that command only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_rejects_only_its_command() {
    let url = common::database().await;
    let runtime = runtime(&url, Settings::default()).await;
    let id = pool("trap");
    runtime
        .create_pool(&id, "unruly", &raw(json!({ "capacity": 2 })))
        .await
        .unwrap();
    runtime.execute(&id, reserve("a", 1)).await.unwrap();
    let error = runtime
        .execute(
            &id,
            request(Command::Custom {
                name: "explode".into(),
                payload: raw(json!({})),
            }),
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("told to explode") && !error.is_retryable(),
        "{error}"
    );
    assert!(matches!(
        runtime.execute(&id, reserve("b", 1)).await.unwrap(),
        Outcome::Accepted { .. }
    ));
    assert!(matches!(
        runtime.execute(&id, reserve("c", 1)).await.unwrap(),
        Outcome::Rejected { .. }
    ));
}

/// The pool's read-model row as (seq, used units).
async fn stored_view(url: &str, id: &PoolId) -> (i64, i64) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_as(
        "SELECT seq_nr, (view->'cells'->0->>'used')::bigint FROM pool_views WHERE pool_id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Views reach the read model's table after their appends; one left behind its history is written again by whoever repairs the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_follow_appends_and_stale_rows_are_repaired() {
    let url = common::database().await;
    let runtime = runtime(&url, Settings::default()).await;
    let id = quota(&runtime, "repaired", 10).await;
    for n in 0..4 {
        let outcome = runtime.execute(&id, reserve(&format!("r{n}"), 2)).await;
        assert!(outcome.unwrap().is_accepted());
    }
    // Stopping writes what is pending: the next owner finds the row current.
    runtime.shutdown().await;
    assert_eq!(stored_view(&url, &id).await, (4, 8));

    // As a node that died between its last append and that append's view
    // leaves it: the row is behind the history.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(
            "UPDATE pool_views SET seq_nr = 1, view = jsonb_set(view, '{cells,0,used}', '2')
              WHERE pool_id = $1",
        )
        .bind(id.as_str())
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let runtime = runtime_without_snapshots(&url).await;
    let all: Vec<u32> = (0..allot_host::ids::SHARDS).collect();
    assert_eq!(runtime.repair_views(&all).await.unwrap(), 1);
    runtime.shutdown().await;
    assert_eq!(stored_view(&url, &id).await, (4, 8));
    // Nothing is behind any more.
    let runtime = runtime_without_snapshots(&url).await;
    assert_eq!(runtime.repair_views(&all).await.unwrap(), 0);
}
