//! The journal's append contract on a real PostgreSQL.

mod common;

use std::sync::Arc;

use allot_host::ids::{PoolId, SeqNr};
use allot_host::journal::{
    Append, CommandRecord, Completion, Error, Fence, Journal, KeptOutcome, NewEvent, PluginRef,
    PoolViewRow, ViewWriter, WindowedCommand,
};
use serde_json::json;
use serde_json::value::RawValue;
use sqlx::Connection;

fn raw(value: serde_json::Value) -> Box<RawValue> {
    RawValue::from_string(value.to_string()).unwrap()
}

fn plugin() -> Arc<PluginRef> {
    Arc::new(PluginRef {
        name: "allot-test".into(),
        version: "1.2.3".into(),
        digest: "sha256:abc".into(),
    })
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            payload: raw(json!({ "n": i })),
            request_id: format!("req-{i}"),
            actor: "test (checkout)".into(),
            completes: None,
        })
        .collect()
}

fn append(pool: &PoolId, expected: i64, events: Vec<NewEvent>) -> Append {
    Append {
        pool: pool.clone(),
        expected: SeqNr(expected),
        events,
        plugin: plugin(),
        commands: Vec::new(),
        fence: None,
    }
}

async fn journal_with_pool(id: &str) -> (Journal, PoolId, String) {
    let url = common::database().await;
    let journal = Journal::connect(&url, 4).await.unwrap();
    let id = PoolId::new(id).unwrap();
    assert!(
        journal
            .create_pool(&id, "test", &raw(json!({ "size": 1 })))
            .await
            .unwrap()
    );
    (journal, id, url)
}

/// Older snapshots are thinned as newer ones are written: a pool keeps a
/// few, spread over its history, the newest two among them, and those of
/// another state version are left alone.
#[tokio::test]
async fn old_snapshots_are_thinned_as_new_ones_are_written() {
    use allot_host::sandbox::Snapshot;
    let (journal, id, url) = journal_with_pool("thinned").await;
    let snapshot = |state_version, seq: i64| Snapshot {
        state_version,
        bytes: seq.to_le_bytes().to_vec(),
    };
    journal
        .save_snapshot(&id, SeqNr(500), &snapshot(2, 500), "sha256:old")
        .await
        .unwrap();
    for seq in (1..=64).map(|n| n * 1_000) {
        journal
            .save_snapshot(&id, SeqNr(seq), &snapshot(1, seq), "sha256:abc")
            .await
            .unwrap();
    }
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let kept: Vec<i64> = sqlx::query_scalar(
        "SELECT seq_nr FROM snapshots WHERE pool_id = $1 AND state_version = 1 ORDER BY seq_nr DESC",
    )
    .bind(id.as_str())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(kept[..2], [64_000, 63_000], "the newest two stay");
    assert!(kept.len() <= 8, "{kept:?}");
    assert!(
        kept.last().unwrap() <= &32_000,
        "the early history keeps one: {kept:?}"
    );
    for point in (0..64_000).step_by(500) {
        let from = journal
            .snapshot_before(&id, 1, SeqNr(point))
            .await
            .unwrap()
            .map_or(0, |stored| {
                assert_eq!(stored.snapshot, snapshot(1, stored.seq_nr.0));
                stored.seq_nr.0
            });
        assert!(
            point - from < 2 * (64_000 - point) + 1_000,
            "{point} from {from}"
        );
    }
    let other = journal.latest_snapshot(&id, 2).await.unwrap().unwrap();
    assert_eq!(
        (other.seq_nr, other.plugin_digest.as_str()),
        (SeqNr(500), "sha256:old")
    );
}

/// Appends continue the history; a writer behind it (or ahead of it) gets a
/// distinct, retryable conflict.
#[tokio::test]
async fn an_append_from_behind_is_a_conflict() {
    let (journal, id, _) = journal_with_pool("p").await;
    assert_eq!(
        journal.append(&append(&id, 0, events(3))).await.unwrap(),
        SeqNr(3)
    );
    // Behind the history, and ahead of it (a writer that believes it longer
    // than it is).
    for expected in [2, 5] {
        let error = journal
            .append(&append(&id, expected, events(1)))
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Conflict { expected: SeqNr(e), .. } if e == expected)
                && error.is_retryable(),
            "{error}"
        );
    }
    // Nothing of the refused batches was written.
    assert_eq!(journal.last_seq(&id).await.unwrap(), SeqNr(3));
    assert_eq!(
        journal.append(&append(&id, 3, events(1))).await.unwrap(),
        SeqNr(4)
    );
}

/// A batch is all or nothing: a duplicate command key rolls back its events too.
#[tokio::test]
async fn batches_are_all_or_nothing() {
    let (journal, id, _) = journal_with_pool("atomic").await;
    let record = |seq| CommandRecord {
        key: "reserve:r1".into(),
        seq_nr: SeqNr(seq),
        outcome: raw(json!({ "ok": true })),
        accepted: true,
        request: None,
    };
    let mut batch = append(&id, 0, events(1));
    batch.commands = vec![record(1)];
    journal.append(&batch).await.unwrap();
    // The command's outcome cannot be stored (the batch records the key
    // twice, and one statement cannot write a row twice), after the
    // batch's events were written in the same transaction.
    let mut batch = append(&id, 1, events(2));
    batch.commands = vec![record(2), record(3)];
    assert!(journal.append(&batch).await.is_err());
    assert_eq!(journal.last_seq(&id).await.unwrap(), SeqNr(1));
    assert_eq!(journal.events(&id, SeqNr(0), 10).await.unwrap().len(), 1);
}

/// An append made under a lease epoch succeeds only while that epoch is current.
#[tokio::test]
async fn appends_are_fenced_by_the_lease_epoch() {
    let (journal, id, url) = journal_with_pool("fenced").await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO shard_leases (shard, owner_node, epoch, expires_at) VALUES ($1, 'node-b', 8, now() + interval '10 s')")
        .bind(id.shard() as i32)
        .execute(&mut conn)
        .await
        .unwrap();
    let mut stale = append(&id, 0, events(1));
    stale.fence = Some(Fence {
        shard: id.shard(),
        epoch: 7,
    });
    let error = journal.append(&stale).await.unwrap_err();
    assert!(matches!(error, Error::Fenced { epoch: 7, .. }), "{error}");
    assert_eq!(journal.last_seq(&id).await.unwrap(), SeqNr(0));
    let mut current = append(&id, 0, events(1));
    current.fence = Some(Fence {
        shard: id.shard(),
        epoch: 8,
    });
    assert_eq!(journal.append(&current).await.unwrap(), SeqNr(1));
}

/// An append neither waits for a release of its lease nor holds one up; it
/// waits for a take of the lease, and is fenced once the take commits.
#[tokio::test]
async fn appends_wait_for_takes_of_their_lease_but_not_for_releases() {
    let (journal, id, url) = journal_with_pool("released").await;
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO shard_leases (shard, owner_node, epoch, expires_at) VALUES ($1, 'node-a', 3, now() + interval '10 s')")
        .bind(id.shard() as i32)
        .execute(&mut other)
        .await
        .unwrap();
    let fenced = |expected: i64| {
        let mut batch = append(&id, expected, events(1));
        batch.fence = Some(Fence {
            shard: id.shard(),
            epoch: 3,
        });
        batch
    };

    // A release, as the cluster makes it, left uncommitted.
    let mut release = other.begin().await.unwrap();
    sqlx::query(
        "UPDATE shard_leases SET expires_at = '-infinity'
          WHERE shard = (SELECT shard FROM shard_leases WHERE shard = $1 FOR NO KEY UPDATE)",
    )
    .bind(id.shard() as i32)
    .execute(&mut *release)
    .await
    .unwrap();
    let written = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        journal.append(&fenced(0)),
    )
    .await
    .expect("the append waited for the release");
    assert_eq!(written.unwrap(), SeqNr(1));
    release.commit().await.unwrap();

    // A take, as the cluster makes it: the append waits, then is fenced.
    let mut take = other.begin().await.unwrap();
    sqlx::query("SELECT shard FROM shard_leases WHERE shard = $1 FOR UPDATE")
        .bind(id.shard() as i32)
        .execute(&mut *take)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let journal = journal.clone();
        let batch = fenced(1);
        async move { journal.append(&batch).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the append did not wait for the take"
    );
    sqlx::query(
        "UPDATE shard_leases SET owner_node = 'node-b', epoch = epoch + 1 WHERE shard = $1",
    )
    .bind(id.shard() as i32)
    .execute(&mut *take)
    .await
    .unwrap();
    take.commit().await.unwrap();
    let error = waiting.await.unwrap().unwrap_err();
    assert!(matches!(error, Error::Fenced { epoch: 3, .. }), "{error}");
    assert_eq!(journal.last_seq(&id).await.unwrap(), SeqNr(1));
}

/// Every event records which plugin build decided it, for which request
/// and whom. A build is stored once, whichever node writes it first, and
/// event rows name it by its key; rows written before builds had keys are
/// read as they are.
#[tokio::test]
async fn events_carry_their_provenance() {
    let (journal, id, url) = journal_with_pool("provenance").await;
    journal.append(&append(&id, 0, events(2))).await.unwrap();
    let other_node = Journal::connect(&url, 2).await.unwrap();
    other_node.append(&append(&id, 2, events(1))).await.unwrap();
    let later = Arc::new(PluginRef {
        version: "1.2.4".into(),
        digest: "sha256:def".into(),
        ..(*plugin()).clone()
    });
    other_node
        .append(&Append {
            plugin: later,
            ..append(&id, 3, events(1))
        })
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO events (pool_id, seq_nr, payload, plugin_name, plugin_version, plugin_digest, request_id)
         VALUES ('provenance', 5, '{}', 'allot-older', '0.9.0', 'sha256:old', 'req-old')",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let audited = journal.audit(&id, SeqNr(0), 10).await.unwrap();
    let provenance: Vec<_> = audited
        .iter()
        .map(|e| {
            (
                e.seq_nr.0,
                e.plugin_name.as_str(),
                e.plugin_version.as_str(),
                e.plugin_digest.as_str(),
                e.request_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        provenance,
        [
            (1, "allot-test", "1.2.3", "sha256:abc", "req-0"),
            (2, "allot-test", "1.2.3", "sha256:abc", "req-1"),
            (3, "allot-test", "1.2.3", "sha256:abc", "req-0"),
            (4, "allot-test", "1.2.4", "sha256:def", "req-0"),
            (5, "allot-older", "0.9.0", "sha256:old", "req-old"),
        ]
    );
    assert!(audited[..4].iter().all(|e| e.actor == "test (checkout)"));
    assert!(audited[0].recorded_at <= time::OffsetDateTime::now_utc());

    let rows: Vec<(Option<i32>, String)> = sqlx::query_as(
        "SELECT plugin, plugin_name || plugin_version || plugin_digest FROM events
          WHERE pool_id = 'provenance' ORDER BY seq_nr",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let keys: Vec<Option<i32>> = rows.iter().map(|(key, _)| *key).collect();
    assert!(keys[..4].iter().all(Option::is_some), "{keys:?}");
    assert_eq!(keys[0], keys[2], "one key for one build, from either node");
    assert_ne!(keys[0], keys[3]);
    assert_eq!(keys[4], None);
    assert!(
        rows[..4].iter().all(|(_, text)| text.is_empty()),
        "{rows:?}"
    );
    let builds: i64 = sqlx::query_scalar("SELECT count(*) FROM event_plugins")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(builds, 2);

    let stored = journal.events(&id, SeqNr(1), 10).await.unwrap();
    assert_eq!(stored.len(), 4);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(stored[0].payload.get()).unwrap(),
        json!({ "n": 1 })
    );
}

/// Creating a pool twice is fine with the same config and refused with another.
#[tokio::test]
async fn pools_are_created_once() {
    let (journal, id, _) = journal_with_pool("once").await;
    assert!(
        !journal
            .create_pool(&id, "test", &raw(json!({ "size": 1 })))
            .await
            .unwrap()
    );
    let error = journal
        .create_pool(&id, "test", &raw(json!({ "size": 2 })))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::PoolExists(_)), "{error}");
    let missing = PoolId::new("missing").unwrap();
    assert!(matches!(
        journal.pool(&missing).await.unwrap_err(),
        Error::UnknownPool(_)
    ));
}

/// In a group of pools sharing a transaction, a batch that is behind its
/// pool's history is refused alone; the others are written.
#[tokio::test]
async fn a_group_refuses_only_the_conflicting_batch() {
    let (journal, first, _) = journal_with_pool("group-a").await;
    let second = PoolId::new("group-b").unwrap();
    let third = PoolId::new("group-c").unwrap();
    for id in [&second, &third] {
        journal
            .create_pool(id, "test", &raw(json!({ "size": 1 })))
            .await
            .unwrap();
    }
    journal
        .append(&append(&second, 0, events(1)))
        .await
        .unwrap();
    let results = journal
        .append_many(&[
            append(&first, 0, events(2)),
            append(&second, 0, events(1)),
            append(&third, 0, events(3)),
        ])
        .await;
    assert_eq!(results[0].as_ref().unwrap(), &SeqNr(2));
    assert!(
        matches!(results[1], Err(Error::Conflict { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().unwrap(), &SeqNr(3));
    assert_eq!(journal.last_seq(&second).await.unwrap(), SeqNr(1));
    assert_eq!(journal.last_seq(&third).await.unwrap(), SeqNr(3));
}

/// A writer that extends a history at the same moment as another is
/// refused by the `(pool_id, seq_nr)` key once the other commits; in a
/// group, only its batch is, and the others are written.
#[tokio::test]
async fn a_writer_racing_another_is_refused() {
    let (journal, id, url) = journal_with_pool("racing").await;
    let bystander = PoolId::new("racing-bystander").unwrap();
    journal
        .create_pool(&bystander, "test", &raw(json!({ "size": 1 })))
        .await
        .unwrap();
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (pool_id, seq_nr, payload, plugin_name, plugin_version, plugin_digest, request_id)
         VALUES ('racing', 1, '{}', 'x', 'x', 'x', 'the other writer')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();

    let waiting = tokio::spawn({
        let journal = journal.clone();
        let batches = [append(&id, 0, events(2)), append(&bystander, 0, events(1))];
        async move { journal.append_many(&batches).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the append should wait for the other writer's number"
    );
    tx.commit().await.unwrap();

    let results = waiting.await.unwrap();
    assert!(
        matches!(results[0], Err(Error::Conflict { .. })),
        "{:?}",
        results[0]
    );
    assert_eq!(results[1].as_ref().unwrap(), &SeqNr(1));
    let stored = journal.events(&id, SeqNr(0), 10).await.unwrap();
    assert_eq!(stored.len(), 1, "only the other writer's event is recorded");
}

/// An outcome decided on a history that has moved on is not recorded, even
/// a refusal that would change nothing.
#[tokio::test]
async fn a_refusal_decided_behind_the_history_is_not_recorded() {
    let (journal, id, url) = journal_with_pool("behind-refusal").await;
    journal.append(&append(&id, 0, events(1))).await.unwrap();
    let mut stale = append(&id, 0, Vec::new());
    stale.commands = vec![CommandRecord {
        key: "release:r1".into(),
        seq_nr: SeqNr(0),
        outcome: raw(json!({ "rejected": { "code": "unknown_reservation" } })),
        accepted: false,
        request: None,
    }];
    let error = journal.append(&stale).await.unwrap_err();
    assert!(matches!(error, Error::Conflict { .. }), "{error}");
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM commands")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        recorded, 0,
        "a refusal decided on a stale state was recorded"
    );
}

/// An accepted command's outcome is read back from its events, the last
/// of which carries its key; outcomes without events are kept as recorded,
/// and an acceptance is preferred to a later refusal of the same key. The
/// same key in another pool is another command.
#[tokio::test]
async fn accepted_outcomes_are_their_events() {
    let (journal, id, url) = journal_with_pool("outcomes").await;
    // Another pool, whose id is this one's and more, with the same key.
    let other = PoolId::new("outcomes.b").unwrap();
    journal
        .create_pool(&other, "test", &raw(json!({ "size": 1 })))
        .await
        .unwrap();
    let mut elsewhere = append(&other, 0, vec![events(2).remove(1)]);
    elsewhere.events[0].completes = Some(Completion {
        key: "reserve:one".into(),
        events: 1,
        request: None,
    });
    journal.append(&elsewhere).await.unwrap();

    let mut batch = append(&id, 0, events(3));
    batch.events[0].completes = Some(Completion {
        key: "reserve:one".into(),
        events: 1,
        request: None,
    });
    batch.events[2].completes = Some(Completion {
        key: "reserve:two".into(),
        events: 2,
        request: None,
    });
    batch.commands = vec![CommandRecord {
        key: "reserve:refused".into(),
        seq_nr: SeqNr(3),
        outcome: raw(json!({ "rejected": { "code": "full" } })),
        accepted: false,
        request: None,
    }];
    journal.append(&batch).await.unwrap();
    // A retry of `reserve:one` long after, refused this time.
    let mut retry = append(&id, 3, Vec::new());
    retry.commands = vec![CommandRecord {
        key: "reserve:one".into(),
        seq_nr: SeqNr(3),
        outcome: raw(json!({ "rejected": { "code": "duplicate" } })),
        accepted: false,
        request: None,
    }];
    journal.append(&retry).await.unwrap();

    let payloads = |events: &[Box<RawValue>]| -> Vec<serde_json::Value> {
        events
            .iter()
            .map(|e| serde_json::from_str(e.get()).unwrap())
            .collect()
    };
    let keys: Vec<String> = [
        "reserve:one",
        "reserve:two",
        "reserve:refused",
        "reserve:none",
    ]
    .map(String::from)
    .to_vec();
    match journal
        .outcomes_of(&other, &keys)
        .await
        .unwrap()
        .remove("reserve:one")
    {
        Some(KeptOutcome::Accepted { seq_nr, events }) => {
            assert_eq!(seq_nr, SeqNr(1));
            assert_eq!(payloads(&events), [json!({ "n": 1 })]);
        }
        other => panic!("{other:?}"),
    }
    let mut kept = journal.outcomes_of(&id, &keys).await.unwrap();
    assert_eq!(kept.len(), 3);
    match kept.remove("reserve:one").unwrap() {
        KeptOutcome::Accepted { seq_nr, events } => {
            assert_eq!(seq_nr, SeqNr(1));
            assert_eq!(payloads(&events), [json!({ "n": 0 })]);
        }
        other => panic!("{other:?}"),
    }
    match kept.remove("reserve:two").unwrap() {
        KeptOutcome::Accepted { seq_nr, events } => {
            assert_eq!(seq_nr, SeqNr(3));
            assert_eq!(payloads(&events), [json!({ "n": 1 }), json!({ "n": 2 })]);
        }
        other => panic!("{other:?}"),
    }
    match kept.remove("reserve:refused").unwrap() {
        KeptOutcome::Recorded { seq_nr, outcome } => {
            assert_eq!(seq_nr, SeqNr(3));
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(outcome.get()).unwrap(),
                json!({ "rejected": { "code": "full" } })
            );
        }
        other => panic!("{other:?}"),
    }

    // A retry's read-back: the command's events, the last of them marked
    // with its key; anything else is a corrupt history, not an answer.
    let read = journal
        .events_of_command(&id, "reserve:two", SeqNr(3), 2)
        .await
        .unwrap();
    assert_eq!(payloads(&read), [json!({ "n": 1 }), json!({ "n": 2 })]);
    for (key, seq_nr, count) in [
        ("reserve:one", 3, 2),
        ("reserve:two", 4, 2),
        ("reserve:one", 2, 1),
    ] {
        match journal
            .events_of_command(&id, key, SeqNr(seq_nr), count)
            .await
        {
            Err(allot_host::journal::Error::Corrupt { reason, .. }) => {
                assert!(reason.contains(key), "{reason}")
            }
            other => panic!("{key} up to {seq_nr}: {other:?}"),
        }
    }

    // What an entity remembers: the acceptances within the window, after
    // the outcomes recorded as JSON, so that an acceptance wins.
    let window = std::time::Duration::from_secs(60);
    let remembered = journal.command_outcomes(&id, window).await.unwrap();
    let accepted: Vec<(&str, SeqNr, u32)> = remembered
        .iter()
        .filter_map(|(key, kept)| match kept {
            WindowedCommand::Accepted { seq_nr, events, .. } => {
                Some((key.as_str(), *seq_nr, *events))
            }
            WindowedCommand::Recorded { .. } => None,
        })
        .collect();
    assert_eq!(
        accepted,
        [("reserve:one", SeqNr(1), 1), ("reserve:two", SeqNr(3), 2)]
    );
    assert_eq!(
        remembered.last().map(|(key, _)| key.as_str()),
        Some("reserve:two")
    );
    // Once the first event is older than the window, its command is not
    // remembered; the second command's events are within it.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE events SET recorded_at = now() - interval '2 minutes' WHERE seq_nr = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let remembered = journal.command_outcomes(&id, window).await.unwrap();
    let accepted: Vec<&str> = remembered
        .iter()
        .filter(|(_, kept)| matches!(kept, WindowedCommand::Accepted { .. }))
        .map(|(key, _)| key.as_str())
        .collect();
    assert_eq!(accepted, ["reserve:two"]);
}

/// A concurrent build of the outcomes' index that failed leaves the index
/// invalid, and the start after it passed over it as existing: the
/// migration after it builds the index again.
#[tokio::test]
async fn an_invalid_outcome_index_is_built_again() {
    let (journal, id, url) = journal_with_pool("reindexed").await;
    let mut batch = append(&id, 0, events(2));
    for (event, key) in batch.events.iter_mut().zip(["reserve:one", "reserve:two"]) {
        event.completes = Some(Completion {
            key: key.into(),
            events: 1,
            request: None,
        });
    }
    journal.append(&batch).await.unwrap();

    // A real failed build under the index's name: unique over the pool,
    // which has two keyed events.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("DROP INDEX events_by_pool_command")
        .execute(&mut conn)
        .await
        .unwrap();
    let failed = sqlx::query(
        "CREATE UNIQUE INDEX CONCURRENTLY events_by_pool_command ON events (pool_id)
          WHERE command_key IS NOT NULL",
    )
    .execute(&mut conn)
    .await;
    assert!(failed.is_err());
    let index = "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index
                  WHERE indexrelid = 'events_by_pool_command'::regclass";
    let (valid, _): (bool, String) = sqlx::query_as(index).fetch_one(&mut conn).await.unwrap();
    assert!(!valid);
    // As the database was before the migration.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 20261205000017")
        .execute(&mut conn)
        .await
        .unwrap();

    let journal = Journal::connect(&url, 2).await.unwrap();
    let (valid, definition): (bool, String) =
        sqlx::query_as(index).fetch_one(&mut conn).await.unwrap();
    assert!(valid);
    assert!(
        definition.contains("USING hash ((((pool_id || ' '::text) || command_key)))"),
        "{definition}"
    );
    let keys = ["reserve:one", "reserve:two"].map(String::from).to_vec();
    assert_eq!(journal.outcomes_of(&id, &keys).await.unwrap().len(), 2);
}

/// The view writers' metrics are the process's: tests that read them run
/// one at a time.
static VIEW_WRITERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn view_row(pool: &str, seq: i64, view: &str) -> PoolViewRow {
    PoolViewRow {
        pool: PoolId::new(pool).unwrap(),
        capacity_type: Arc::from("test"),
        seq_nr: SeqNr(seq),
        view: RawValue::from_string(view.to_owned()).unwrap(),
    }
}

/// Waits up to ten seconds for `done`; whether it came.
async fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    true
}

/// The view writer keeps each pool's latest view, never moves a row back, and leaves out only a row PostgreSQL refuses.
#[tokio::test]
async fn the_view_writer_keeps_the_latest_and_skips_what_is_refused() {
    let _alone = VIEW_WRITERS.lock().await;
    let (journal, _, url) = journal_with_pool("p").await;
    let writer = ViewWriter::start(journal.clone(), std::time::Duration::from_millis(500));
    writer.publish(view_row("a", 2, r#"{"n": 2}"#));
    writer.publish(view_row("a", 1, r#"{"n": 1}"#));
    writer.publish(view_row("b", 5, r#"{"n": 5}"#));
    // Valid JSON that `jsonb` refuses to store.
    writer.publish(view_row("c", 1, r#"{"n": "\u0000"}"#));
    writer.flush().await.unwrap();
    let refusals = &allot_host::metrics::metrics().view_rows_refused;
    let counted = refusals.get();
    assert!(counted >= 1);
    assert!(writer.refused(&PoolId::new("c").unwrap(), SeqNr(1)));
    // The same view again is not tried again, nor counted again.
    writer.publish(view_row("c", 1, r#"{"n": "\u0000"}"#));
    writer.flush().await.unwrap();
    assert_eq!(refusals.get(), counted);
    // A later view of that pool is written, and the refusal forgotten.
    writer.publish(view_row("c", 2, r#"{"n": 2}"#));
    writer.flush().await.unwrap();
    assert!(!writer.refused(&PoolId::new("c").unwrap(), SeqNr(1)));
    // A later write of an older seq does not move the row back.
    journal
        .save_views(&[view_row("b", 4, r#"{"n": 4}"#)])
        .await
        .unwrap();

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT pool_id, seq_nr, (view->>'n')::bigint FROM pool_views
          WHERE pool_id IN ('a', 'b', 'c') ORDER BY pool_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [("a".into(), 2, 2), ("b".into(), 5, 5), ("c".into(), 2, 2)]
    );
}

#[tokio::test]
async fn the_view_writer_keeps_what_it_could_not_write_and_tries_again() {
    let _alone = VIEW_WRITERS.lock().await;
    let (journal, _, url) = journal_with_pool("p").await;
    let writer = ViewWriter::start(journal.clone(), std::time::Duration::from_millis(500));
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    // The table is out of reach for a while: every write fails.
    sqlx::query("ALTER TABLE pool_views RENAME TO pool_views_away")
        .execute(&mut conn)
        .await
        .unwrap();
    writer.publish(view_row("a", 1, r#"{"n": 1}"#));
    writer.publish(view_row("b", 1, r#"{"n": 1}"#));
    let failed = writer.flush().await.unwrap_err();
    assert!(failed.contains("pool_views"), "{failed}");
    let pending = &allot_host::metrics::metrics().view_rows_pending;
    assert_eq!(pending.get(), 2, "both views wait for their rows");
    // A later view of a waiting pool replaces the one held.
    writer.publish(view_row("a", 2, r#"{"n": 2}"#));

    sqlx::query("ALTER TABLE pool_views_away RENAME TO pool_views")
        .execute(&mut conn)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Err(error) = writer.flush().await {
        assert!(std::time::Instant::now() < deadline, "{error}");
    }
    assert_eq!(pending.get(), 0);
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT pool_id, seq_nr FROM pool_views WHERE pool_id IN ('a', 'b') ORDER BY pool_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, [("a".into(), 2), ("b".into(), 1)]);
}

/// A pool whose row was written within the interval has its next view
/// held, and written at the latest once the interval has passed (or at a
/// flush); another pool's view goes meanwhile.
#[tokio::test]
async fn the_view_writer_writes_a_busy_pool_once_an_interval() {
    let _alone = VIEW_WRITERS.lock().await;
    let (journal, _, url) = journal_with_pool("p").await;
    let writer = ViewWriter::start(journal.clone(), std::time::Duration::from_secs(3600));
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    writer.publish(view_row("busy", 1, r#"{"n": 1}"#));
    row_reaches(&mut conn, "busy", 1).await;
    writer.publish(view_row("busy", 2, r#"{"n": 2}"#));
    writer.publish(view_row("busy", 3, r#"{"n": 3}"#));
    writer.publish(view_row("quiet", 1, r#"{"n": 1}"#));
    row_reaches(&mut conn, "quiet", 1).await;
    assert_eq!(
        row_seq(&mut conn, "busy").await,
        Some(1),
        "written again within the interval"
    );
    writer.flush().await.unwrap();
    assert_eq!(
        row_seq(&mut conn, "busy").await,
        Some(3),
        "the latest view, at the flush"
    );
}

async fn row_seq(conn: &mut sqlx::PgConnection, pool: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT seq_nr FROM pool_views WHERE pool_id = $1")
        .bind(pool)
        .fetch_optional(conn)
        .await
        .unwrap()
}

/// Waits for a pool's read-model row to be written as of `seq`.
async fn row_reaches(conn: &mut sqlx::PgConnection, pool: &str, seq: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while row_seq(conn, pool).await != Some(seq) {
        assert!(
            std::time::Instant::now() < deadline,
            "{pool} was not written as of {seq}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Writing a pool's view again and again updates its row in place (HOT):
/// no new index entries, no dead versions left for a vacuum.
#[tokio::test]
async fn view_rows_are_updated_in_place() {
    let url = common::database().await;
    // One connection: the statistics it keeps are flushed on request below.
    let journal = Journal::connect(&url, 1).await.unwrap();
    for seq in 1..=100 {
        journal
            .save_views(&[view_row("a", seq, &format!(r#"{{"n": {seq}}}"#))])
            .await
            .unwrap();
    }
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(journal.db())
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let (updates, in_place) = loop {
        let (updates, in_place): (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'pool_views'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if updates >= 99 || std::time::Instant::now() > deadline {
            break (updates, in_place);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(updates, 99, "the first write inserts, the rest update");
    // The ten-second window the poll finds a row by changes once at most.
    assert!(in_place >= 98, "{in_place} of {updates} updates in place");
}

/// Updating a pool's read-model row writes the update and nothing else to
/// the row's page: no lock record before it, as an upsert would write.
#[tokio::test]
async fn view_row_updates_write_no_lock_records() {
    let url = common::database().await;
    let journal = Journal::connect(&url, 1).await.unwrap();
    journal
        .save_views(&[view_row("a", 1, r#"{"n": 1}"#)])
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(&mut conn)
        .await
        .unwrap();
    let start: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    for seq in 2..=21 {
        journal
            .save_views(&[view_row("a", seq, &format!(r#"{{"n": {seq}}}"#))])
            .await
            .unwrap();
    }
    // The views' commits do not wait for the disk; a pool's does, and
    // takes the log before it along.
    journal
        .create_pool(&PoolId::new("b").unwrap(), "test", &raw(json!({})))
        .await
        .unwrap();
    let records: Vec<(String, i64)> = sqlx::query_as(
        "SELECT record_type, count(*)
           FROM pg_get_wal_records_info($1::pg_lsn, pg_current_wal_flush_lsn())
          WHERE resource_manager = 'Heap'
            AND block_ref LIKE format('%%/%s/%s %%',
                (SELECT oid FROM pg_database WHERE datname = current_database()),
                pg_relation_filenode('pool_views'))
          GROUP BY record_type ORDER BY record_type",
    )
    .bind(&start)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let is_update = |kind: &str| kind == "HOT_UPDATE" || kind == "UPDATE";
    assert!(
        records.iter().all(|(kind, _)| is_update(kind)),
        "{records:?}"
    );
    let updates: i64 = records.iter().map(|(_, n)| n).sum();
    assert_eq!(updates, 20, "{records:?}");
}

/// A change whose notification never came is found by the read model's
/// poll, well before its full comparison.
#[tokio::test]
async fn the_read_model_polls_for_changes_it_was_not_told_of() {
    use allot_host::view::{ReadModel, Settings};
    let (journal, _, url) = journal_with_pool("p").await;
    let settings = Settings {
        poll_every: std::time::Duration::from_millis(200),
        full_sync_every: std::time::Duration::from_secs(3600),
    };
    let model = ReadModel::start(journal.db().clone(), settings)
        .await
        .unwrap();
    let pool = PoolId::new("a").unwrap();
    let reaches = |seq: i64| {
        let (model, pool) = (&model, &pool);
        eventually(move || model.get(pool).is_some_and(|view| view.seq_nr.0 >= seq))
    };
    journal
        .save_views(&[view_row("a", 1, r#"{"cells": [], "details": {"n": 1}}"#)])
        .await
        .unwrap();
    assert!(reaches(1).await, "notified");

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("ALTER TABLE pool_views DISABLE TRIGGER USER")
        .execute(&mut conn)
        .await
        .unwrap();
    journal
        .save_views(&[view_row("a", 2, r#"{"cells": [], "details": {"n": 2}}"#)])
        .await
        .unwrap();
    sqlx::query("ALTER TABLE pool_views ENABLE TRIGGER USER")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(reaches(2).await, "the poll found the change");
    assert_eq!(model.get(&pool).unwrap().view.details.get(), r#"{"n": 2}"#);
}

/// One statement that writes many read-model rows notifies them all, in a
/// few notifications: every row reaches another node's read model without
/// its poll.
#[tokio::test]
async fn a_statement_of_many_views_notifies_them_all() {
    use allot_host::view::{ReadModel, Settings};
    let (journal, _, _) = journal_with_pool("many").await;
    let settings = Settings {
        poll_every: std::time::Duration::from_secs(3600),
        full_sync_every: std::time::Duration::from_secs(3600),
    };
    let model = ReadModel::start(journal.db().clone(), settings)
        .await
        .unwrap();
    // More rows than one notification lists, with ids of the longest kind.
    let rows: Vec<PoolViewRow> = (0..120)
        .map(|i| view_row(&format!("{i:0>128}"), 1, r#"{"cells": [], "details": {}}"#))
        .collect();
    journal.save_views(&rows).await.unwrap();
    eventually(|| model.len() == rows.len()).await;
    assert_eq!(model.len(), rows.len(), "every row was notified");

    // One statement that updates rows, adds others, and skips one that
    // holds a later view already: each written row is notified.
    let id = |i: usize| PoolId::new(&format!("{i:0>128}")).unwrap();
    let body = r#"{"cells": [], "details": {}}"#;
    journal
        .save_views(&[view_row(&format!("{:0>128}", 0), 3, body)])
        .await
        .unwrap();
    let mixed: Vec<PoolViewRow> = (0..60)
        .map(|i| view_row(&format!("{i:0>128}"), 2, body))
        .chain((120..130).map(|i| view_row(&format!("{i:0>128}"), 1, body)))
        .collect();
    journal.save_views(&mixed).await.unwrap();
    let seq = |i: usize| model.get(&id(i)).map(|view| view.seq_nr.0);
    let notified = || seq(0) == Some(3) && (1..60).all(|i| seq(i) == Some(2)) && model.len() == 130;
    assert!(
        eventually(notified).await,
        "updated and added rows were notified"
    );
    assert_eq!(seq(60), Some(1), "rows not in the statement stay");
    let kept: i64 = sqlx::query_scalar("SELECT seq_nr FROM pool_views WHERE pool_id = $1")
        .bind(id(0).as_str())
        .fetch_one(journal.db())
        .await
        .unwrap();
    assert_eq!(kept, 3, "a later view is not moved back");
}

/// A view published while a page of the grid is being read does not wait
/// for the read, and is not lost: it goes in once the read is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_published_during_a_read_does_not_wait_for_it() {
    use allot_host::sandbox::View;
    use allot_host::view::{Filter, ReadModel, Settings};
    use std::time::Duration;
    let (journal, _, _) = journal_with_pool("during").await;
    let settings = Settings {
        poll_every: Duration::from_secs(3600),
        full_sync_every: Duration::from_secs(3600),
    };
    let model = ReadModel::start(journal.db().clone(), settings)
        .await
        .unwrap();
    let pool = PoolId::new("a").unwrap();
    let view = |n: i64| -> View {
        serde_json::from_value(json!({ "cells": [], "details": { "n": n } })).unwrap()
    };
    let seq = |model: &ReadModel| model.get(&pool).map(|held| held.seq_nr);
    model.publish(&pool, "test", SeqNr(1), view(1));
    assert!(eventually(|| seq(&model) == Some(SeqNr(1))).await);

    let filter = Filter {
        limit: 10,
        ..Filter::default()
    };
    model.read_page(&filter, |page| {
        let publisher = model.clone();
        let id = pool.clone();
        let (published, returned) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            publisher.publish(&id, "test", SeqNr(2), view(2));
            let _ = published.send(());
        });
        returned
            .recv_timeout(Duration::from_secs(5))
            .expect("the publish returned while the page was being read");
        assert_eq!(page.pools.len(), 1);
        assert_eq!(page.pools[0].0.seq_nr, SeqNr(1), "the page is unchanged");
    });
    assert!(
        eventually(|| seq(&model) == Some(SeqNr(2))).await,
        "the view went in after the read"
    );
    assert_eq!(model.get(&pool).unwrap().view.details.get(), r#"{"n":2}"#);

    // An older view that comes late changes nothing, waiting or not.
    model.publish(&pool, "test", SeqNr(1), view(1));
    assert_eq!(seq(&model), Some(SeqNr(2)));
    model.read_page(&filter, |_| {
        let publisher = model.clone();
        let id = pool.clone();
        std::thread::spawn(move || publisher.publish(&id, "test", SeqNr(1), view(1)))
            .join()
            .unwrap();
    });
    // A view goes in under the same lock as every view that waited before
    // it, so once a later one is in, the late one has been weighed.
    let other = PoolId::new("b").unwrap();
    model.publish(&other, "test", SeqNr(1), view(1));
    assert!(
        eventually(|| model.get(&other).is_some()).await,
        "a view after it went in"
    );
    assert_eq!(seq(&model), Some(SeqNr(2)), "the late view was not taken");
}

/// Migration 18 moves events written as `jsonb` to `json` columns, which
/// keep what is written from then on as written. It gives up rather than
/// wait long for its lock behind a reader, and applies on the next try.
#[tokio::test]
async fn events_move_to_json_columns_and_the_move_waits_for_no_long_reader() {
    let url = common::database().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::migrate!("../migrations")
        .run_to(20261205000017, &mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        r#"INSERT INTO pools (pool_id, capacity_type, config, shard) VALUES ('older', 'test', '{}', 0);
           INSERT INTO events (pool_id, seq_nr, payload, plugin_name, plugin_version, plugin_digest, request_id)
           VALUES ('older', 1, '{"type":"reserved","units":2}', 'x', '1', 'sha256:x', 'req')"#,
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let mut reader = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut reading = reader.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM events")
        .execute(&mut *reading)
        .await
        .unwrap();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        Journal::connect(&url, 1),
    )
    .await
    .expect("the migration gives up waiting for its lock");
    let error = waited.err().expect("the migration needs the lock");
    assert!(error.to_string().contains("lock timeout"), "{error}");
    reading.commit().await.unwrap();

    let journal = Journal::connect(&url, 1).await.unwrap();
    let id = PoolId::new("older").unwrap();
    let mut batch = append(&id, 1, Vec::new());
    batch.events = vec![NewEvent {
        payload: RawValue::from_string(r#"{"type":"reserved","units":3}"#.into()).unwrap(),
        ..events(1).remove(0)
    }];
    journal.append(&batch).await.unwrap();
    let payloads: Vec<String> = journal
        .events(&id, SeqNr(0), 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.payload.get().to_owned())
        .collect();
    // The older event in `jsonb`'s form, the newer one as written.
    assert_eq!(
        payloads,
        [
            r#"{"type": "reserved", "units": 2}"#,
            r#"{"type":"reserved","units":3}"#
        ]
    );
}

/// A node starts on a database that a newer build has migrated further, as
/// one restarted in the middle of a rolling upgrade does.
#[tokio::test]
async fn a_node_starts_on_a_database_migrated_by_a_newer_build() {
    let url = common::database().await;
    drop(Journal::connect(&url, 1).await.unwrap());
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (29991231000001, 'from a newer build', true, '\\x00', 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    Journal::connect(&url, 1)
        .await
        .expect("starts on a database a newer build migrated");
}

/// Nodes that start together on a database all come up: one migrates, the
/// others wait without a statement the migrator's `CREATE INDEX
/// CONCURRENTLY` must wait for. The race is made certain: a reader holds
/// the index build back until a second node is waiting for its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_wait_for_one_migrator_without_deadlock() {
    let url = common::database().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    // Just before the first migration that builds an index concurrently.
    sqlx::migrate!("../migrations")
        .run_to(20261203000014, &mut conn)
        .await
        .unwrap();
    let mut reader = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut reading = reader.begin().await.unwrap();
    // A writer's lock, which the index build waits for first.
    sqlx::query("LOCK TABLE events IN ROW EXCLUSIVE MODE")
        .execute(&mut *reading)
        .await
        .unwrap();

    let first = tokio::spawn({
        let url = url.clone();
        async move { Journal::connect(&url, 2).await.map(drop) }
    });
    // The first node is building the index, held back by the reader.
    let mut building = false;
    for _ in 0..500 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND wait_event_type = 'Lock' AND query ILIKE '%INDEX CONCURRENTLY%'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if waiting > 0 {
            building = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(building, "the first node never started the index build");
    let second = tokio::spawn({
        let url = url.clone();
        async move { Journal::connect(&url, 2).await.map(drop) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    reading.commit().await.unwrap();
    let done = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        (first.await.unwrap(), second.await.unwrap())
    })
    .await
    .expect("both nodes are up within a minute");
    done.0.expect("the first node migrates");
    done.1.expect("the second node waits for it, then starts");
}

/// A recovery reads the recorded outcomes that took effect, never the
/// refusals; outcomes older than the idempotency window are deleted a
/// batch at a time.
#[tokio::test]
async fn refusals_are_not_recovered_and_old_outcomes_are_pruned() {
    let (journal, id, url) = journal_with_pool("pruned").await;
    let mut batch = append(&id, 0, Vec::new());
    batch.commands = (0..5)
        .map(|n| CommandRecord {
            key: format!("reserve:r{n}"),
            seq_nr: SeqNr(0),
            outcome: raw(json!({ "rejected": { "code": "full" } })),
            accepted: false,
            request: Some([n; 16]),
        })
        .collect();
    batch.commands.push(CommandRecord {
        key: "custom:noop:k".into(),
        seq_nr: SeqNr(0),
        outcome: raw(json!({ "accepted": { "seq_nr": 0, "events": [] } })),
        accepted: true,
        request: Some([7; 16]),
    });
    journal.append(&batch).await.unwrap();
    let window = std::time::Duration::from_secs(60);
    let kept = journal.command_outcomes(&id, window).await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].0, "custom:noop:k");
    assert!(matches!(
        kept[0].1,
        WindowedCommand::Recorded {
            request: Some([7, ..]),
            ..
        }
    ));

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "UPDATE commands SET recorded_at = now() - interval '2 minutes'
          WHERE idempotency_key IN ('reserve:r0', 'reserve:r1', 'custom:noop:k')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    assert_eq!(journal.prune_outcomes(window, 2).await.unwrap(), 2);
    assert_eq!(journal.prune_outcomes(window, 2).await.unwrap(), 1);
    assert_eq!(journal.prune_outcomes(window, 2).await.unwrap(), 0);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM commands ORDER BY idempotency_key")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(left, ["reserve:r2", "reserve:r3", "reserve:r4"]);
}

/// A grid page reads only its capacity type's pools, and looks at a
/// bounded number of pools under the read model's lock: a filter that
/// matches nothing ends at once, or in short pages that say where to go on.
#[tokio::test]
async fn a_grid_page_reads_its_type_and_a_bounded_number_of_pools() {
    use allot_host::sandbox::View;
    use allot_host::view::{Filter, ReadModel, Settings};
    use std::time::Duration;
    let (journal, _, _) = journal_with_pool("grid-bound").await;
    let settings = Settings {
        poll_every: Duration::from_secs(3600),
        full_sync_every: Duration::from_secs(3600),
    };
    let model = ReadModel::start(journal.db().clone(), settings)
        .await
        .unwrap();
    let slot: View = serde_json::from_value(json!({ "cells": [{
        "key": "08-10", "labels": {}, "start_ms": 1000, "end_ms": 2000,
        "unit": "stops", "capacity": 5, "used": 0, "held": 0, "open": true }], "details": {} }))
    .unwrap();
    let id = |i: usize| PoolId::new(&format!("day-{i:05}")).unwrap();
    for i in 0..25_000 {
        model.publish(&id(i), "logistics", SeqNr(1), slot.clone());
    }
    assert!(eventually(|| model.len() == 25_000).await);
    let page = |capacity_type: &str, from_ms: Option<i64>, after: Option<PoolId>| {
        let filter = Filter {
            capacity_type: Some(capacity_type.to_owned()),
            from_ms,
            after,
            limit: 100,
            ..Filter::default()
        };
        model.read_page(&filter, |page| (page.pools.len(), page.next.cloned()))
    };
    assert_eq!(page("nope", None, None), (0, None), "no pool of the type");
    assert_eq!(page("logistics", None, None), (100, Some(id(99))));
    // No cell ends after 5000 ms: pages of none, 10,000 pools looked at each.
    assert_eq!(page("logistics", Some(5000), None), (0, Some(id(9_999))));
    assert_eq!(
        page("logistics", Some(5000), Some(id(9_999))),
        (0, Some(id(19_999)))
    );
    assert_eq!(page("logistics", Some(5000), Some(id(19_999))), (0, None));
}
