//! The journal: pools, their events and snapshots, decided commands and the
//! read-model rows, in PostgreSQL.
//!
//! An append names the sequence number it continues from and takes the pool's
//! row lock, so two writers can never both extend one history: the second
//! gets [`Error::Conflict`], which is retryable. The `(pool_id, seq_nr)` key
//! stays as the last line of defence. An append can also name a shard lease
//! epoch ([`Fence`]); it then succeeds only while that epoch is current.

use serde_json::value::RawValue;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::ids::{PoolId, SeqNr};
use crate::sandbox::{Json, Snapshot};

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
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The event, as the plugin wrote it.
    pub payload: Json,
    /// The request that caused it.
    pub request_id: String,
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

/// One batch of a pool's decisions, written in one transaction.
pub struct Append<'a> {
    /// The pool.
    pub pool: &'a PoolId,
    /// The seq the history must end at now; events get the numbers after it.
    pub expected: SeqNr,
    /// The events, in order.
    pub events: &'a [NewEvent],
    /// The plugin version that decided them.
    pub plugin: &'a PluginRef,
    /// Outcomes of the batch's commands that carry idempotency keys.
    pub commands: &'a [CommandRecord],
    /// The pool's view after the batch, for the read model.
    pub view: Option<&'a RawValue>,
    /// The capacity type, stored with the view.
    pub capacity_type: &'a str,
    /// The shard lease the writer holds, if any.
    pub fence: Option<Fence>,
}

/// A stored event.
#[derive(Clone, Debug)]
pub struct RecordedEvent {
    /// Its position.
    pub seq_nr: SeqNr,
    /// The event.
    pub payload: Json,
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
            .connect(url)
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
        let row = sqlx::query("SELECT capacity_type, config::text AS config, failed_reason FROM pools WHERE pool_id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| Error::UnknownPool(id.clone()))?;
        Ok(PoolRecord {
            id: id.clone(),
            capacity_type: row.get("capacity_type"),
            config: json(id, row.get("config"))?,
            failed_reason: row.get("failed_reason"),
        })
    }

    /// Appends a batch: events, command outcomes and the view, all or nothing.
    pub async fn append(&self, batch: &Append<'_>) -> Result<SeqNr> {
        let pool = batch.pool.as_str();
        let mut tx = self.db.begin().await?;
        if let Some(fence) = batch.fence {
            let current: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM shard_leases WHERE shard = $1 FOR SHARE")
                    .bind(fence.shard as i32)
                    .fetch_optional(&mut *tx)
                    .await?;
            if current != Some(fence.epoch) {
                return Err(Error::Fenced {
                    shard: fence.shard,
                    epoch: fence.epoch,
                });
            }
        }
        // The pool's row lock orders writers; under it, the history must end
        // where this writer believes it does.
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT COALESCE(max(seq_nr), 0) FROM events WHERE pool_id = $1)
             FROM pools WHERE pool_id = $1 FOR UPDATE",
        )
        .bind(pool)
        .fetch_optional(&mut *tx)
        .await?;
        match last {
            None => return Err(Error::UnknownPool(batch.pool.clone())),
            Some(last) if last != batch.expected.0 => {
                return Err(Error::Conflict {
                    pool: batch.pool.clone(),
                    expected: batch.expected,
                });
            }
            Some(_) => {}
        }
        let end = batch.expected.after(batch.events.len());
        if !batch.events.is_empty() {
            let seqs: Vec<i64> = (batch.expected.0 + 1..=end.0).collect();
            let payloads: Vec<&str> = batch.events.iter().map(|e| e.payload.get()).collect();
            let requests: Vec<&str> = batch.events.iter().map(|e| e.request_id.as_str()).collect();
            sqlx::query(
                "INSERT INTO events (pool_id, seq_nr, payload, plugin_name, plugin_version, plugin_digest, request_id)
                 SELECT $1, s, p::jsonb, $4, $5, $6, r FROM UNNEST($2::bigint[], $3::text[], $7::text[]) AS t(s, p, r)",
            )
            .bind(pool)
            .bind(&seqs)
            .bind(&payloads)
            .bind(&batch.plugin.name)
            .bind(&batch.plugin.version)
            .bind(&batch.plugin.digest)
            .bind(&requests)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_or(e, batch))?;
        }
        if !batch.commands.is_empty() {
            let keys: Vec<&str> = batch.commands.iter().map(|c| c.key.as_str()).collect();
            let seqs: Vec<i64> = batch.commands.iter().map(|c| c.seq_nr.0).collect();
            let outcomes: Vec<&str> = batch.commands.iter().map(|c| c.outcome.get()).collect();
            sqlx::query(
                "INSERT INTO commands (pool_id, idempotency_key, seq_nr, outcome)
                 SELECT $1, k, s, o::jsonb FROM UNNEST($2::text[], $3::bigint[], $4::text[]) AS t(k, s, o)",
            )
            .bind(pool)
            .bind(&keys)
            .bind(&seqs)
            .bind(&outcomes)
            .execute(&mut *tx)
            .await
            .map_err(|e| conflict_or(e, batch))?;
        }
        if let Some(view) = batch.view {
            sqlx::query(
                "INSERT INTO pool_views (pool_id, capacity_type, seq_nr, view) VALUES ($1, $2, $3, $4::jsonb)
                 ON CONFLICT (pool_id) DO UPDATE
                 SET seq_nr = EXCLUDED.seq_nr, view = EXCLUDED.view, updated_at = now()",
            )
            .bind(pool)
            .bind(batch.capacity_type)
            .bind(end.0)
            .bind(view.get())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(end)
    }

    /// Writes a pool's read-model row outside an append (for a new pool).
    pub async fn save_view(
        &self,
        id: &PoolId,
        capacity_type: &str,
        seq_nr: SeqNr,
        view: &RawValue,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO pool_views (pool_id, capacity_type, seq_nr, view) VALUES ($1, $2, $3, $4::jsonb)
             ON CONFLICT (pool_id) DO UPDATE SET seq_nr = EXCLUDED.seq_nr, view = EXCLUDED.view, updated_at = now()
             WHERE pool_views.seq_nr <= EXCLUDED.seq_nr",
        )
        .bind(id.as_str())
        .bind(capacity_type)
        .bind(seq_nr.0)
        .bind(view.get())
        .execute(&self.db)
        .await?;
        Ok(())
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
        let row = sqlx::query(
            "SELECT seq_nr, state, plugin_digest FROM snapshots
             WHERE pool_id = $1 AND state_version = $2 ORDER BY seq_nr DESC LIMIT 1",
        )
        .bind(id.as_str())
        .bind(state_version as i32)
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

    /// Every recorded command outcome of the pool, by key.
    pub async fn command_outcomes(&self, id: &PoolId) -> Result<Vec<(String, Json)>> {
        let rows = sqlx::query(
            "SELECT idempotency_key, outcome::text AS outcome FROM commands WHERE pool_id = $1",
        )
        .bind(id.as_str())
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.get("idempotency_key"), json(id, row.get("outcome"))?)))
            .collect()
    }

    /// Marks a pool failed, with the reason, so that it refuses commands.
    pub async fn mark_failed(&self, id: &PoolId, reason: &str) -> Result<()> {
        sqlx::query("UPDATE pools SET failed_reason = $2 WHERE pool_id = $1")
            .bind(id.as_str())
            .bind(reason)
            .execute(&self.db)
            .await?;
        Ok(())
    }
}

fn json(pool: &PoolId, text: String) -> Result<Json> {
    RawValue::from_string(text).map_err(|e| Error::Corrupt {
        pool: pool.clone(),
        reason: e.to_string(),
    })
}

/// A unique violation on append means another writer got there first.
fn conflict_or(error: sqlx::Error, batch: &Append<'_>) -> Error {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => Error::Conflict {
            pool: batch.pool.clone(),
            expected: batch.expected,
        },
        _ => Error::Database(error),
    }
}
