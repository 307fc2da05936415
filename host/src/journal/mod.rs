//! The journal: pools, their events and snapshots, decided commands and the
//! read-model rows, in PostgreSQL.
//!
//! Appends of many pools share a transaction ([`Journal::append_many`], fed by
//! the [`Committer`]), so one commit serves them all. An append names the
//! sequence number it continues from and takes the pool's row lock, so two
//! writers can never both extend one history: the second gets
//! [`Error::Conflict`], which is retryable. The `(pool_id, seq_nr)` key stays
//! as the last line of defence. An append can also name a shard lease epoch
//! ([`Fence`]); it then succeeds only while that epoch is current.
//!
//! Views, being derived from the events, are not part of an append: the
//! [`ViewWriter`] writes them after it, in transactions of their own (see
//! there for why, and for how a view lost in a crash is written again).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::ids::{PoolId, SeqNr};
use crate::sandbox::{Json, Snapshot};

mod committer;
mod views;

pub use committer::Committer;
pub use views::ViewWriter;

/// What can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Someone else extended the pool's history first.
    #[error("pool {pool}: the journal moved past seq {expected}; another writer appended")]
    Conflict {
        /// The pool.
        pool: PoolId,
        /// Where this writer expected the history to end.
        expected: SeqNr,
    },
    /// The shard lease this append was made under is no longer current.
    #[error("shard {shard}: lease epoch {epoch} is no longer current")]
    Fenced {
        /// The shard.
        shard: u32,
        /// The epoch the writer held.
        epoch: i64,
    },
    /// The pool does not exist.
    #[error("no pool {0}")]
    UnknownPool(PoolId),
    /// A pool with this id exists with another type or config.
    #[error("pool {0} already exists with another capacity type or config")]
    PoolExists(PoolId),
    /// Stored data the host cannot read.
    #[error("pool {pool}: corrupt journal data: {reason}")]
    Corrupt {
        /// The pool.
        pool: PoolId,
        /// What was wrong.
        reason: String,
    },
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    /// An error of the same kind and message, for each of several callers
    /// that one failure answers (errors of sqlx are not `Clone`).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Conflict { pool, expected } => Error::Conflict {
                pool: pool.clone(),
                expected: *expected,
            },
            Error::Fenced { shard, epoch } => Error::Fenced {
                shard: *shard,
                epoch: *epoch,
            },
            other => Error::Database(sqlx::Error::Protocol(other.to_string())),
        }
    }

    /// Whether the same operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. } | Error::Fenced { .. } | Error::Database(_)
        )
    }
}

/// Results of the journal.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A shard lease an append is made under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The shard.
    pub shard: u32,
    /// The lease epoch the writer holds.
    pub epoch: i64,
}

/// Which plugin version decided a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginRef {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// Content digest of the component.
    pub digest: String,
}

/// A stored pool.
#[derive(Clone, Debug)]
pub struct PoolRecord {
    /// The pool's id.
    pub id: PoolId,
    /// Its capacity type.
    pub capacity_type: String,
    /// The config it was created with.
    pub config: Json,
    /// Why it failed, if its history could not be replayed.
    pub failed_reason: Option<String>,
    /// The plugin version that could not replay it.
    pub failed_digest: Option<String>,
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The event, as the plugin wrote it.
    pub payload: Json,
    /// The request that caused it.
    pub request_id: String,
    /// Who sent that request: the caller's name and role.
    pub actor: String,
}

/// The first outcome of a command with an idempotency key.
#[derive(Clone, Debug)]
pub struct CommandRecord {
    /// The key: `reserve:<reservation id>` and the like.
    pub key: String,
    /// The pool's seq after the command.
    pub seq_nr: SeqNr,
    /// The outcome, as JSON.
    pub outcome: Json,
}

/// A pool's view as of a seq, for the read model's table.
#[derive(Clone, Debug)]
pub struct PoolViewRow {
    /// The pool.
    pub pool: PoolId,
    /// Its capacity type.
    pub capacity_type: Arc<str>,
    /// The seq the view is as of.
    pub seq_nr: SeqNr,
    /// The view.
    pub view: Json,
}

/// One batch of a pool's decisions: its events and command outcomes,
/// written all or nothing.
#[derive(Clone, Debug)]
pub struct Append {
    /// The pool.
    pub pool: PoolId,
    /// The seq the history must end at now; events get the numbers after it.
    pub expected: SeqNr,
    /// The events, in order.
    pub events: Vec<NewEvent>,
    /// The plugin version that decided them.
    pub plugin: Arc<PluginRef>,
    /// Outcomes of the batch's commands that carry idempotency keys.
    pub commands: Vec<CommandRecord>,
    /// The shard lease the writer holds, if any.
    pub fence: Option<Fence>,
}

impl Append {
    /// Where the history ends if this batch is written.
    pub fn end(&self) -> SeqNr {
        self.expected.after(self.events.len())
    }
}

/// A stored event.
#[derive(Clone, Debug)]
pub struct RecordedEvent {
    /// Its position.
    pub seq_nr: SeqNr,
    /// The event.
    pub payload: Json,
}

/// A stored event with its provenance, for the audit trail.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AuditedEvent {
    /// Its position in the pool's history.
    #[schema(value_type = i64)]
    pub seq_nr: SeqNr,
    /// The event, as the plugin wrote it.
    #[schema(value_type = Object)]
    pub payload: Json,
    /// When it was appended.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: time::OffsetDateTime,
    /// Who sent the command: the caller's name and role.
    pub actor: String,
    /// The request that caused it.
    pub request_id: String,
    /// The plugin that decided it.
    pub plugin_name: String,
    /// Its version.
    pub plugin_version: String,
    /// The content digest of its component.
    pub plugin_digest: String,
}

/// The first outcome recorded for a command key.
#[derive(Clone, Debug)]
pub struct RecordedOutcome {
    /// The pool's seq after the command.
    pub seq_nr: SeqNr,
    /// The outcome, as JSON.
    pub outcome: Json,
    /// When it was recorded.
    pub recorded_at: time::OffsetDateTime,
}

/// A stored snapshot.
#[derive(Clone, Debug)]
pub struct StoredSnapshot {
    /// The seq the snapshot covers up to.
    pub seq_nr: SeqNr,
    /// The state.
    pub snapshot: Snapshot,
    /// The plugin version that wrote it.
    pub plugin_digest: String,
}

/// The journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    db: PgPool,
}

impl Journal {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let db = PgPoolOptions::new()
            .max_connections(max_connections)
            // Callers have deadlines of a second or so; waiting half a minute
            // for a connection (the default) only holds up shutdowns and
            // recoveries when the database is gone.
            .acquire_timeout(std::time::Duration::from_secs(5))
            // A broken connection fails its statement, which callers retry;
            // a ping before every statement would cost a round trip each.
            .test_before_acquire(false)
            .connect_with(
                url.parse::<PgConnectOptions>()?
                    // The append's plan does not depend on its arrays; planning
                    // it afresh for each group (which PostgreSQL otherwise
                    // keeps doing, misled by their sizes) would cost more than
                    // running it.
                    .options([("plan_cache_mode", "force_generic_plan")]),
            )
            .await?;
        sqlx::migrate!("../migrations").run(&db).await?;
        Ok(Self { db })
    }

    /// The connection pool, for other stages that share the database.
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// Stores a new pool. Creating the same pool again with the same type and
    /// config is not an error (`Ok(false)`); with another, it is.
    pub async fn create_pool(
        &self,
        id: &PoolId,
        capacity_type: &str,
        config: &RawValue,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO pools (pool_id, capacity_type, config, shard) VALUES ($1, $2, $3::jsonb, $4)
             ON CONFLICT (pool_id) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(capacity_type)
        .bind(config.get())
        .bind(id.shard() as i32)
        .execute(&self.db)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            return Ok(true);
        }
        let same: bool = sqlx::query_scalar(
            "SELECT capacity_type = $2 AND config = $3::jsonb FROM pools WHERE pool_id = $1",
        )
        .bind(id.as_str())
        .bind(capacity_type)
        .bind(config.get())
        .fetch_one(&self.db)
        .await?;
        if same {
            Ok(false)
        } else {
            Err(Error::PoolExists(id.clone()))
        }
    }

    /// A stored pool.
    pub async fn pool(&self, id: &PoolId) -> Result<PoolRecord> {
        let row = sqlx::query("SELECT capacity_type, config::text AS config, failed_reason, failed_digest FROM pools WHERE pool_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| Error::UnknownPool(id.clone()))?;
        Ok(PoolRecord {
            id: id.clone(),
            capacity_type: row.get("capacity_type"),
            config: json(id, row.get("config"))?,
            failed_reason: row.get("failed_reason"),
            failed_digest: row.get("failed_digest"),
        })
    }

    /// Appends one batch: events and command outcomes, all or nothing.
    pub async fn append(&self, batch: &Append) -> Result<SeqNr> {
        let mut results = self.append_many(std::slice::from_ref(batch)).await;
        results.pop().expect("one result per batch")
    }

    /// Appends the batches of many pools in one transaction, with a fixed
    /// number of statements however many pools take part, so one commit
    /// serves them all. Each batch gets its own result: a batch that is
    /// fenced or behind its pool's history is left out with that error and
    /// the others are written. A batch per pool at most; a second one for
    /// the same pool is refused as a conflict.
    pub async fn append_many(&self, batches: &[Append]) -> Vec<Result<SeqNr>> {
        let mut results: Vec<Option<Result<SeqNr>>> = batches.iter().map(|_| None).collect();
        let outcome = self.write_group(batches, &mut results).await;
        if outcome.is_err() && batches.len() > 1 {
            // One poisoned batch (say, an event PostgreSQL will not store)
            // must not sink the others: write them one at a time instead.
            tracing::warn!(
                "group append failed, writing its {} batches one by one",
                batches.len()
            );
            let mut alone = Vec::with_capacity(batches.len());
            for batch in batches {
                alone.push(Box::pin(self.append(batch)).await);
            }
            return alone;
        }
        if let Err(error) = outcome {
            let kind = error;
            for result in results.iter_mut() {
                if !matches!(result, Some(Err(_))) {
                    *result = Some(Err(kind.duplicate()));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every batch has a result"))
            .collect()
    }

    /// Writes the batches that may go, in one statement (one round trip,
    /// one implicit transaction); records each batch's result in `results`.
    async fn write_group(
        &self,
        batches: &[Append],
        results: &mut [Option<Result<SeqNr>>],
    ) -> Result<()> {
        // A second batch for a pool in one group cannot continue the history
        // the first one writes.
        let mut seen = std::collections::HashSet::new();
        for (batch, result) in batches.iter().zip(results.iter_mut()) {
            if !seen.insert(batch.pool.as_str()) {
                *result = Some(Err(Error::Conflict {
                    pool: batch.pool.clone(),
                    expected: batch.expected,
                }));
            }
        }
        let mut group = GroupColumns::default();
        let mut events = EventColumns::default();
        let mut commands = CommandColumns::default();
        for (batch, _) in batches
            .iter()
            .zip(results.iter())
            .filter(|(_, r)| r.is_none())
        {
            group.push(batch);
            events.push(batch);
            commands.push(batch);
        }
        let first = batches
            .iter()
            .zip(results.iter())
            .find(|(_, r)| r.is_none())
            .map(|(b, _)| b);
        let verdicts: Vec<(String, String)> = sqlx::query_as(APPEND_GROUP)
            .bind(&group.pools)
            .bind(&group.expected)
            .bind(&group.ends)
            .bind(&group.shards)
            .bind(&group.epochs)
            .bind(&events.pools)
            .bind(&events.seqs)
            .bind(&events.payloads)
            .bind(&events.plugin_names)
            .bind(&events.plugin_versions)
            .bind(&events.plugin_digests)
            .bind(&events.requests)
            .bind(&events.actors)
            .bind(&commands.pools)
            .bind(&commands.keys)
            .bind(&commands.seqs)
            .bind(&commands.outcomes)
            .fetch_all(&self.db)
            .await
            .map_err(|error| match first {
                // Another writer stored one of these numbers first.
                Some(batch) => unique_is_conflict(batch)(error),
                None => Error::Database(error),
            })?;
        let verdicts: HashMap<String, String> = verdicts.into_iter().collect();
        for (batch, result) in batches.iter().zip(results.iter_mut()) {
            if result.is_some() {
                continue;
            }
            *result = Some(
                match verdicts.get(batch.pool.as_str()).map(String::as_str) {
                    Some("written") => Ok(batch.end()),
                    Some("fenced") => {
                        let fence = batch.fence.expect("only fenced batches are fenced");
                        Err(Error::Fenced {
                            shard: fence.shard,
                            epoch: fence.epoch,
                        })
                    }
                    Some("behind") => Err(Error::Conflict {
                        pool: batch.pool.clone(),
                        expected: batch.expected,
                    }),
                    _ => Err(Error::UnknownPool(batch.pool.clone())),
                },
            );
        }
        Ok(())
    }

    /// Writes read-model rows, each unless the row holds a later seq
    /// already. In pool order, so that two writers (the old and the new
    /// owner of a shard, for a moment) never wait on each other in a cycle.
    ///
    /// The commit does not wait for its flush to disk. A row is derived from
    /// events that were flushed before it was made, and the log is replayed
    /// in order, so a crash of PostgreSQL can only lose rows whose events it
    /// keeps: those rows are then behind their history, where
    /// [`Journal::stale_views`] finds them. Waiting would cost a second
    /// flush beside each append's.
    pub async fn save_views(&self, views: &[PoolViewRow]) -> Result<()> {
        let mut sorted: Vec<&PoolViewRow> = views.iter().collect();
        sorted.sort_unstable_by(|a, b| a.pool.as_str().cmp(b.pool.as_str()));
        let pools: Vec<&str> = sorted.iter().map(|v| v.pool.as_str()).collect();
        let types: Vec<&str> = sorted.iter().map(|v| &*v.capacity_type).collect();
        let seqs: Vec<i64> = sorted.iter().map(|v| v.seq_nr.0).collect();
        let bodies: Vec<&str> = sorted.iter().map(|v| v.view.get()).collect();
        let mut tx = self.db.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO pool_views (pool_id, capacity_type, seq_nr, view)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]::jsonb[])
             ON CONFLICT (pool_id) DO UPDATE
                SET seq_nr = EXCLUDED.seq_nr, view = EXCLUDED.view, updated_at = now(),
                    changed_window = EXCLUDED.changed_window
              WHERE pool_views.seq_nr <= EXCLUDED.seq_nr",
        )
        .bind(&pools)
        .bind(&types)
        .bind(&seqs)
        .bind(&bodies)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Pools of these shards whose read-model row is missing or behind
    /// their history, with their capacity types and where their histories
    /// end; failed pools are left out.
    pub async fn stale_views(&self, shards: &[u32]) -> Result<Vec<(PoolId, String, SeqNr)>> {
        let shards: Vec<i32> = shards.iter().map(|s| *s as i32).collect();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT p.pool_id, p.capacity_type, p.last_seq FROM pools p
               LEFT JOIN pool_views v ON v.pool_id = p.pool_id
              WHERE p.shard = ANY($1) AND p.failed_reason IS NULL
                AND (v.seq_nr IS NULL OR v.seq_nr < p.last_seq)
              ORDER BY p.pool_id",
        )
        .bind(&shards)
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|(pool, capacity_type, last)| Ok((stored_id(&pool)?, capacity_type, SeqNr(last))))
            .collect()
    }

    /// Events after `after`, at most `limit`, in order.
    pub async fn events(
        &self,
        id: &PoolId,
        after: SeqNr,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(
            "SELECT seq_nr, payload::text AS payload FROM events
             WHERE pool_id = $1 AND seq_nr > $2 ORDER BY seq_nr LIMIT $3",
        )
        .bind(id.as_str())
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(RecordedEvent {
                    seq_nr: SeqNr(row.get("seq_nr")),
                    payload: json(id, row.get("payload"))?,
                })
            })
            .collect()
    }

    /// Where the pool's history ends.
    pub async fn last_seq(&self, id: &PoolId) -> Result<SeqNr> {
        let last: i64 =
            sqlx::query_scalar("SELECT COALESCE(max(seq_nr), 0) FROM events WHERE pool_id = $1")
                .bind(id.as_str())
                .fetch_one(&self.db)
                .await?;
        Ok(SeqNr(last))
    }

    /// Stores a snapshot of the pool's state as of `seq_nr`.
    pub async fn save_snapshot(
        &self,
        id: &PoolId,
        seq_nr: SeqNr,
        snapshot: &Snapshot,
        plugin_digest: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (pool_id, seq_nr, state_version, plugin_digest, state) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (pool_id, seq_nr) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(seq_nr.0)
        .bind(snapshot.state_version as i32)
        .bind(plugin_digest)
        .bind(&snapshot.bytes)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// The newest snapshot of the pool written in this state version.
    pub async fn latest_snapshot(
        &self,
        id: &PoolId,
        state_version: u32,
    ) -> Result<Option<StoredSnapshot>> {
        self.snapshot_before(id, state_version, SeqNr(i64::MAX))
            .await
    }

    /// Events after `after`, at most `limit`, with who sent them and which
    /// plugin decided them.
    pub async fn audit(&self, id: &PoolId, after: SeqNr, limit: i64) -> Result<Vec<AuditedEvent>> {
        let rows = sqlx::query(
            "SELECT seq_nr, payload::text AS payload, recorded_at, actor, request_id,
                    plugin_name, plugin_version, plugin_digest
             FROM events WHERE pool_id = $1 AND seq_nr > $2 ORDER BY seq_nr LIMIT $3",
        )
        .bind(id.as_str())
        .bind(after.0)
        .bind(limit)
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(AuditedEvent {
                    seq_nr: SeqNr(row.get("seq_nr")),
                    payload: json(id, row.get("payload"))?,
                    recorded_at: row.get("recorded_at"),
                    actor: row.get("actor"),
                    request_id: row.get("request_id"),
                    plugin_name: row.get("plugin_name"),
                    plugin_version: row.get("plugin_version"),
                    plugin_digest: row.get("plugin_digest"),
                })
            })
            .collect()
    }

    /// The seq of the last event appended at or before `at` (0 if none).
    pub async fn seq_at(&self, id: &PoolId, at: time::OffsetDateTime) -> Result<SeqNr> {
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(max(seq_nr), 0) FROM events WHERE pool_id = $1 AND recorded_at <= $2",
        )
        .bind(id.as_str())
        .bind(at)
        .fetch_one(&self.db)
        .await?;
        Ok(SeqNr(seq))
    }

    /// The newest snapshot in this state version that covers no more than
    /// `seq_nr`: where rebuilding a past state can start.
    pub async fn snapshot_before(
        &self,
        id: &PoolId,
        state_version: u32,
        seq_nr: SeqNr,
    ) -> Result<Option<StoredSnapshot>> {
        let row = sqlx::query(
            "SELECT seq_nr, state, plugin_digest FROM snapshots
             WHERE pool_id = $1 AND state_version = $2 AND seq_nr <= $3
             ORDER BY seq_nr DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(state_version as i32)
        .bind(seq_nr.0)
        .fetch_optional(&self.db)
        .await?;
        Ok(row.map(|row| StoredSnapshot {
            seq_nr: SeqNr(row.get("seq_nr")),
            snapshot: Snapshot {
                state_version,
                bytes: row.get("state"),
            },
            plugin_digest: row.get("plugin_digest"),
        }))
    }

    /// The recorded outcomes of these command keys, by key.
    pub async fn outcomes_of(
        &self,
        id: &PoolId,
        keys: &[String],
    ) -> Result<HashMap<String, RecordedOutcome>> {
        let rows = sqlx::query(
            "SELECT idempotency_key, seq_nr, outcome::text AS outcome, recorded_at
             FROM commands WHERE pool_id = $1 AND idempotency_key = ANY($2)",
        )
        .bind(id.as_str())
        .bind(keys)
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok((
                    row.get("idempotency_key"),
                    RecordedOutcome {
                        seq_nr: SeqNr(row.get("seq_nr")),
                        outcome: json(id, row.get("outcome"))?,
                        recorded_at: row.get("recorded_at"),
                    },
                ))
            })
            .collect()
    }

    /// Every recorded command outcome of the pool, by key.
    pub async fn command_outcomes(
        &self,
        id: &PoolId,
        within: std::time::Duration,
    ) -> Result<Vec<(String, Json)>> {
        let rows = sqlx::query(
            "SELECT idempotency_key, outcome::text AS outcome FROM commands
             WHERE pool_id = $1 AND recorded_at > now() - make_interval(secs => $2)",
        )
        .bind(id.as_str())
        .bind(within.as_secs_f64())
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.get("idempotency_key"), json(id, row.get("outcome"))?)))
            .collect()
    }

    /// The pools of a capacity type, by id; all, or a random sample.
    pub async fn pools_of_type(
        &self,
        capacity_type: &str,
        sample: Option<i64>,
    ) -> Result<Vec<PoolRecord>> {
        let rows = sqlx::query(
            "SELECT pool_id, capacity_type, config::text AS config, failed_reason, failed_digest FROM pools
             WHERE capacity_type = $1
             ORDER BY CASE WHEN $2::bigint IS NULL THEN 0 ELSE random() END, pool_id
             LIMIT $2",
        )
        .bind(capacity_type)
        .bind(sample)
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|row| {
                let id = stored_id(row.get("pool_id"))?;
                Ok(PoolRecord {
                    config: json(&id, row.get("config"))?,
                    capacity_type: row.get("capacity_type"),
                    failed_reason: row.get("failed_reason"),
                    failed_digest: row.get("failed_digest"),
                    id,
                })
            })
            .collect()
    }

    /// Marks a pool failed under a plugin version, with the reason: that
    /// version refuses it at once from then on.
    pub async fn mark_failed(&self, id: &PoolId, reason: &str, digest: &str) -> Result<()> {
        sqlx::query("UPDATE pools SET failed_reason = $2, failed_digest = $3 WHERE pool_id = $1")
            .bind(id.as_str())
            .bind(reason)
            .bind(digest)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Clears a pool's failure, once a version has replayed it.
    pub async fn clear_failed(&self, id: &PoolId) -> Result<()> {
        sqlx::query(
            "UPDATE pools SET failed_reason = NULL, failed_digest = NULL WHERE pool_id = $1",
        )
        .bind(id.as_str())
        .execute(&self.db)
        .await?;
        Ok(())
    }
}

/// A pool id read from the database.
fn stored_id(id: &str) -> Result<PoolId> {
    PoolId::new(id).map_err(|e| Error::Corrupt {
        pool: PoolId::new("invalid").expect("a valid id"),
        reason: e.to_string(),
    })
}

fn json(pool: &PoolId, text: String) -> Result<Json> {
    RawValue::from_string(text).map_err(|e| Error::Corrupt {
        pool: pool.clone(),
        reason: e.to_string(),
    })
}

/// A unique violation on append means another writer got there first.
fn unique_is_conflict(batch: &Append) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |error| match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict {
            pool: batch.pool.clone(),
            expected: batch.expected,
        },
        _ => Error::Database(error),
    }
}

/// Appends a group of batches as one statement.
///
/// Leases are read under a share lock, in shard order as every statement
/// on leases takes them, so a lease cannot move while the group is
/// written; the pools' rows are locked one by one through their key (a
/// lateral lookup each, which the planner cannot turn into a scan of the
/// table) in id order, so two groups never wait on each other in a
/// cycle. `last_seq` is read through that
/// lock: after waiting for another writer, PostgreSQL hands back the row as
/// that writer left it, which a read of `events` (the statement's snapshot,
/// taken before the wait) would not see. Only batches that hold their lease
/// and continue their pool's history are written; the others are answered
/// with why. Events and outcomes go in with a fixed number of `UNNEST`s
/// however many pools take part.
const APPEND_GROUP: &str = "
WITH batch AS (
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::int[], $5::bigint[])
        AS b(pool_id, expected, last_seq, shard, epoch)
), lease AS (
    SELECT shard, epoch FROM shard_leases WHERE shard = ANY($4) ORDER BY shard FOR SHARE
), locked AS (
    SELECT b.pool_id, k.last_seq
      FROM (SELECT pool_id FROM batch ORDER BY pool_id) b,
           LATERAL (SELECT last_seq FROM pools p WHERE p.pool_id = b.pool_id
                    FOR NO KEY UPDATE) k
), verdict AS (
    SELECT b.pool_id, b.last_seq, b.expected,
           CASE WHEN k.pool_id IS NULL THEN 'unknown'
                WHEN b.shard IS NOT NULL AND l.epoch IS DISTINCT FROM b.epoch THEN 'fenced'
                WHEN k.last_seq <> b.expected THEN 'behind'
                ELSE 'written' END AS verdict
      FROM batch b
      LEFT JOIN locked k ON k.pool_id = b.pool_id
      LEFT JOIN lease l ON l.shard = b.shard
), going AS (
    SELECT pool_id, last_seq, expected FROM verdict WHERE verdict = 'written'
), moved AS (
    UPDATE pools p SET last_seq = g.last_seq
      FROM going g WHERE p.pool_id = g.pool_id AND g.last_seq > g.expected
), new_events AS (
    INSERT INTO events (pool_id, seq_nr, payload, plugin_name, plugin_version, plugin_digest, request_id, actor)
    SELECT e.* FROM UNNEST($6::text[], $7::bigint[], $8::text[]::jsonb[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
        AS e(pool_id, seq_nr, payload, plugin_name, plugin_version, plugin_digest, request_id, actor)
     WHERE e.pool_id IN (SELECT pool_id FROM going)
), new_commands AS (
    INSERT INTO commands (pool_id, idempotency_key, seq_nr, outcome)
    SELECT c.* FROM UNNEST($14::text[], $15::text[], $16::bigint[], $17::text[]::jsonb[])
        AS c(pool_id, idempotency_key, seq_nr, outcome)
     WHERE c.pool_id IN (SELECT pool_id FROM going)
        ON CONFLICT (pool_id, idempotency_key) DO UPDATE
       SET seq_nr = EXCLUDED.seq_nr, outcome = EXCLUDED.outcome, recorded_at = now()
)
SELECT pool_id, verdict FROM verdict";

/// Columns of the batches of a group.
#[derive(Default)]
struct GroupColumns<'a> {
    pools: Vec<&'a str>,
    expected: Vec<i64>,
    ends: Vec<i64>,
    shards: Vec<Option<i32>>,
    epochs: Vec<Option<i64>>,
}

impl<'a> GroupColumns<'a> {
    fn push(&mut self, batch: &'a Append) {
        self.pools.push(batch.pool.as_str());
        self.expected.push(batch.expected.0);
        self.ends.push(batch.end().0);
        self.shards.push(batch.fence.map(|f| f.shard as i32));
        self.epochs.push(batch.fence.map(|f| f.epoch));
    }
}

/// Columns of the events of a group, for one `UNNEST` insert.
#[derive(Default)]
struct EventColumns<'a> {
    pools: Vec<&'a str>,
    seqs: Vec<i64>,
    payloads: Vec<&'a str>,
    plugin_names: Vec<&'a str>,
    plugin_versions: Vec<&'a str>,
    plugin_digests: Vec<&'a str>,
    requests: Vec<&'a str>,
    actors: Vec<&'a str>,
}

impl<'a> EventColumns<'a> {
    fn push(&mut self, batch: &'a Append) {
        for (i, event) in batch.events.iter().enumerate() {
            self.pools.push(batch.pool.as_str());
            self.seqs.push(batch.expected.0 + 1 + i as i64);
            self.payloads.push(event.payload.get());
            self.plugin_names.push(&batch.plugin.name);
            self.plugin_versions.push(&batch.plugin.version);
            self.plugin_digests.push(&batch.plugin.digest);
            self.requests.push(&event.request_id);
            self.actors.push(&event.actor);
        }
    }
}

#[derive(Default)]
struct CommandColumns<'a> {
    pools: Vec<&'a str>,
    keys: Vec<&'a str>,
    seqs: Vec<i64>,
    outcomes: Vec<&'a str>,
}

impl<'a> CommandColumns<'a> {
    fn push(&mut self, batch: &'a Append) {
        for command in &batch.commands {
            self.pools.push(batch.pool.as_str());
            self.keys.push(&command.key);
            self.seqs.push(command.seq_nr.0);
            self.outcomes.push(command.outcome.get());
        }
    }
}
