//! The journal: pools, their events and snapshots, decided commands and the
//! read-model rows, in PostgreSQL.
//!
//! Appends of many pools share a transaction ([`Journal::append_many`], fed by
//! the [`Committer`]), so one commit serves them all. An append names the
//! sequence number it continues from and is refused unless the history ends
//! there; the `(pool_id, seq_nr)` key refuses a second writer of the same
//! numbers, so two writers can never both extend one history: the second
//! gets [`Error::Conflict`], which is retryable. An append can also name a
//! shard lease epoch ([`Fence`]); it then succeeds only while that epoch is
//! current.
//!
//! An accepted command's outcome is its events: the last of them carries
//! the command's idempotency key ([`NewEvent::completes`]). Only outcomes
//! without events (refusals) are written as rows of their own
//! ([`CommandRecord`]).
//!
//! Views, being derived from the events, are not part of an append: the
//! [`ViewWriter`] writes them after it, in transactions of their own (see
//! there for why, and for how a view lost in a crash is written again).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Postgres, Row};

use crate::ids::{PoolId, SeqNr};
use crate::sandbox::{Json, Snapshot};

mod committer;
mod snapshots;
mod views;

pub use committer::{Committer, Failed};
pub use snapshots::SnapshotWriter;
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
            // No connection to be had: nothing was sent.
            Error::Database(sqlx::Error::PoolTimedOut) => {
                Error::Database(sqlx::Error::PoolTimedOut)
            }
            Error::Database(sqlx::Error::PoolClosed) => Error::Database(sqlx::Error::PoolClosed),
            other => Error::Database(sqlx::Error::Protocol(other.to_string())),
        }
    }

    /// Whether the same operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Conflict { .. } | Error::Fenced { .. } => true,
            Error::Database(_) => !self.is_caused_by_input(),
            _ => false,
        }
    }

    /// Whether PostgreSQL refused a value it was given rather than failed:
    /// a data exception (SQLSTATE class 22, such as a NUL character in
    /// text) or a value over one of its limits (class 54). The same input
    /// fails the same way every time, so it is the caller's to change.
    pub fn is_caused_by_input(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(error)) => error
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
            _ => false,
        }
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    /// Set on the last event of an accepted command that carried an
    /// idempotency key: the command's outcome is this event and those
    /// just before it.
    pub completes: Option<Completion>,
}

/// The keyed command an event completes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The key: `reserve:<reservation id>` and the like.
    pub key: String,
    /// How many events the command decided: this one and those just
    /// before it.
    pub events: u32,
    /// What the command asked for, to tell a retry from another request
    /// under the same key.
    pub request: Option<RequestPrint>,
}

/// The first 16 bytes of the SHA-256 of a command as decided: its kind,
/// name and arguments (as canonical JSON).
pub type RequestPrint = [u8; 16];

/// Most bytes of a refusal's message kept with its recorded outcome: a
/// plugin's message can echo what a caller sent (an unknown field's name,
/// say), which must not make the journal keep whatever a caller sends.
pub const MAX_RECORDED_MESSAGE: usize = 1024;

/// The outcome of a keyed command that decided no events: a refusal, or
/// an acceptance that changed nothing. (An accepted command's events
/// carry its outcome: see [`NewEvent::completes`].)
#[derive(Clone, Debug)]
pub struct CommandRecord {
    /// The key: `reserve:<reservation id>` and the like.
    pub key: String,
    /// The pool's seq after the command.
    pub seq_nr: SeqNr,
    /// The outcome, as JSON.
    pub outcome: Json,
    /// Whether the command took effect (and is answered again to a retry)
    /// rather than was refused (and is only told to who asks about it).
    pub accepted: bool,
    /// What the command asked for.
    pub request: Option<RequestPrint>,
}

/// The outcome of a keyed command, as the journal keeps it.
#[derive(Clone, Debug)]
pub enum KeptOutcome {
    /// The command was accepted and decided these events, the last of
    /// them at `seq_nr`.
    Accepted {
        /// The seq of its last event.
        seq_nr: SeqNr,
        /// Its events, in order.
        events: Vec<Json>,
    },
    /// An outcome recorded as JSON: a refusal, an acceptance that decided
    /// no events, or any outcome recorded before accepted commands were
    /// kept with their events.
    Recorded {
        /// The pool's seq after the command.
        seq_nr: SeqNr,
        /// The outcome.
        outcome: Json,
    },
}

/// A keyed command of the idempotency window, as recovery reads it.
#[derive(Clone, Debug)]
pub enum WindowedCommand {
    /// Accepted: its events are the `events` last up to `seq_nr`, which
    /// are not read, since a retry is rare and reads them then.
    Accepted {
        /// The seq of its last event.
        seq_nr: SeqNr,
        /// How many events it decided.
        events: u32,
        /// What it asked for, if recorded.
        request: Option<RequestPrint>,
    },
    /// An outcome recorded as JSON, as in [`KeptOutcome::Recorded`].
    Recorded {
        /// The outcome.
        outcome: Json,
        /// What it asked for, if recorded.
        request: Option<RequestPrint>,
    },
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

/// How often a node that waits for another's migrations looks again.
const MIGRATION_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Brings the schema up to date, or waits while another node does.
///
/// The nodes take turns by the advisory lock sqlx's migrator uses (so that
/// builds that let sqlx take it agree), but ask for it without waiting
/// inside the statement, and ask again after a pause. A session waiting
/// in `pg_advisory_lock` is a transaction that a `CREATE INDEX
/// CONCURRENTLY` of the node holding the lock must wait for: PostgreSQL
/// then finds a deadlock and fails one of the nodes that started together.
pub async fn migrate(db: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("../migrations");
    // During a rolling upgrade the first node of the newer build applies
    // its migrations, and a node of this build that starts afterwards
    // finds some it does not know. Each migration keeps the build before
    // it working, so it starts all the same.
    migrator.set_ignore_missing(true);
    migrator.set_locking(false);
    // A session of its own, beside the pool (which may have one
    // connection): the lock is this session's while the migrations run on
    // the pool's.
    let mut conn = db.connect_options().connect().await?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await?;
    let key = migration_lock(&database);
    loop {
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if taken {
            break;
        }
        tracing::debug!("another node is migrating the database; waiting");
        tokio::time::sleep(MIGRATION_POLL).await;
    }
    let ran = migrator.run(db).await;
    // Closing the session lets go of the lock.
    if let Err(error) = conn.close().await {
        tracing::debug!("closing the migration lock's session: {error}");
    }
    Ok(ran?)
}

/// A request print as stored; anything but 16 bytes is none.
fn print_of(bytes: &[u8]) -> Option<RequestPrint> {
    bytes.try_into().ok()
}

/// The key of the advisory lock sqlx's migrator takes for a database.
fn migration_lock(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// The journal. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    db: PgPool,
    /// The keys of the plugin builds events were written under, as
    /// `event_plugins` holds them.
    plugin_keys: Arc<std::sync::Mutex<HashMap<PluginRef, i32>>>,
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
        migrate(&db).await?;
        Ok(Self {
            db,
            plugin_keys: Arc::default(),
        })
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
        match self.db.acquire().await {
            Ok(mut conn) => self.append_many_on(&mut conn, batches).await,
            Err(error) => {
                let error = Error::Database(error);
                batches.iter().map(|_| Err(error.duplicate())).collect()
            }
        }
    }

    /// A connection from the pool for a while, or none if the pool has none
    /// to give.
    pub(crate) async fn spare_connection(&self) -> Option<PoolConnection<Postgres>> {
        self.db.acquire().await.ok()
    }

    /// [`Journal::append_many`] on a connection the caller holds.
    pub async fn append_many_on(
        &self,
        conn: &mut PgConnection,
        batches: &[Append],
    ) -> Vec<Result<SeqNr>> {
        let mut results: Vec<Option<Result<SeqNr>>> = batches.iter().map(|_| None).collect();
        let outcome = self.write_group(conn, batches, &mut results).await;
        if outcome.is_err() && batches.len() > 1 {
            // One poisoned batch (say, an event PostgreSQL will not store)
            // must not sink the others: write them one at a time instead.
            tracing::warn!(
                "group append failed, writing its {} batches one by one",
                batches.len()
            );
            let mut alone = Vec::with_capacity(batches.len());
            for batch in batches {
                let mut result =
                    Box::pin(self.append_many_on(conn, std::slice::from_ref(batch))).await;
                alone.push(result.pop().expect("one result per batch"));
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

    /// The key in `event_plugins` of the plugin build that decided a batch.
    /// A build is added there before the first append of its events.
    async fn plugin_key(&self, conn: &mut PgConnection, plugin: &PluginRef) -> Result<i32> {
        let known = self
            .plugin_keys
            .lock()
            .expect("plugin keys")
            .get(plugin)
            .copied();
        if let Some(key) = known {
            return Ok(key);
        }
        // Looked up, else added. A node that adds the same build at the
        // same moment makes the insert add nothing; the next look-up, a
        // statement of its own outside any transaction, then finds its row.
        let mut key = None;
        'found: for _ in 0..2 {
            for statement in [
                "SELECT id FROM event_plugins WHERE digest = $1 AND name = $2 AND version = $3",
                "INSERT INTO event_plugins (digest, name, version) VALUES ($1, $2, $3)
                 ON CONFLICT (digest, name, version) DO NOTHING RETURNING id",
            ] {
                let found: Option<i32> = sqlx::query_scalar(statement)
                    .bind(&plugin.digest)
                    .bind(&plugin.name)
                    .bind(&plugin.version)
                    .fetch_optional(&mut *conn)
                    .await?;
                if found.is_some() {
                    key = found;
                    break 'found;
                }
            }
        }
        let key = key.ok_or_else(|| {
            Error::Database(sqlx::Error::Protocol(format!(
                "plugin build {} was neither found nor added",
                plugin.digest
            )))
        })?;
        self.plugin_keys
            .lock()
            .expect("plugin keys")
            .insert(plugin.clone(), key);
        Ok(key)
    }

    /// Writes the batches that may go, in one statement (one round trip,
    /// one implicit transaction; the first time a plugin build's events are
    /// written, its key is looked up or added before); records each batch's
    /// result in `results`.
    async fn write_group(
        &self,
        conn: &mut PgConnection,
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
            events.push(batch, self.plugin_key(conn, &batch.plugin).await?);
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
            .bind(&group.shards)
            .bind(&group.epochs)
            .bind(&events.pools)
            .bind(&events.seqs)
            .bind(&events.payloads)
            .bind(&events.plugins)
            .bind(&events.requests)
            .bind(&events.actors)
            .bind(&events.command_keys)
            .bind(&events.command_events)
            .bind(&commands.pools)
            .bind(&commands.keys)
            .bind(&commands.seqs)
            .bind(&commands.outcomes)
            .bind(&events.command_prints)
            .bind(&commands.accepted)
            .bind(&commands.requests)
            .fetch_all(&mut *conn)
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
                        crate::metrics::metrics().appends_fenced.inc();
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
    /// owner of a shard, for a moment) do not wait on each other in a
    /// cycle; should they all the same, over the first rows of new pools,
    /// PostgreSQL fails one of them and its rows are written again later.
    ///
    /// The commit does not wait for its flush to disk. A row is derived from
    /// events that were flushed before it was made, and the log is replayed
    /// in order, so a crash of PostgreSQL can only lose rows whose events it
    /// keeps: those rows are then behind their history, where
    /// [`Journal::stale_views`] finds them. Waiting would cost a second
    /// flush beside each append's.
    pub async fn save_views(&self, views: &[PoolViewRow]) -> Result<()> {
        self.save_views_on(&mut *self.db.acquire().await?, views)
            .await
    }

    /// [`Journal::save_views`] on a connection the caller holds.
    pub async fn save_views_on(
        &self,
        conn: &mut PgConnection,
        views: &[PoolViewRow],
    ) -> Result<()> {
        let mut sorted: Vec<&PoolViewRow> = views.iter().collect();
        sorted.sort_unstable_by(|a, b| a.pool.as_str().cmp(b.pool.as_str()));
        let pools: Vec<&str> = sorted.iter().map(|v| v.pool.as_str()).collect();
        let types: Vec<&str> = sorted.iter().map(|v| &*v.capacity_type).collect();
        let seqs: Vec<i64> = sorted.iter().map(|v| v.seq_nr.0).collect();
        let bodies: Vec<&str> = sorted.iter().map(|v| v.view.get()).collect();
        let mut tx = conn.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query(SAVE_VIEWS)
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
            "SELECT p.pool_id, p.capacity_type, h.last_seq FROM pools p
               CROSS JOIN LATERAL (SELECT COALESCE(max(e.seq_nr), 0) AS last_seq
                                     FROM events e WHERE e.pool_id = p.pool_id) h
               LEFT JOIN pool_views v ON v.pool_id = p.pool_id
              WHERE p.shard = ANY($1) AND p.failed_reason IS NULL
                AND (v.seq_nr IS NULL OR v.seq_nr < h.last_seq)
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

    /// The events of a command that took effect: the `count` events up to
    /// `seq_nr`, the last of which completes the command `key`. Histories
    /// have no gaps and are never cut, so anything else is `Corrupt`.
    pub async fn events_of_command(
        &self,
        id: &PoolId,
        key: &str,
        seq_nr: SeqNr,
        count: u32,
    ) -> Result<Vec<Json>> {
        let rows = sqlx::query(
            "SELECT seq_nr, payload::text AS payload, command_key FROM events
              WHERE pool_id = $1 AND seq_nr > $2 AND seq_nr <= $3 ORDER BY seq_nr",
        )
        .bind(id.as_str())
        .bind(seq_nr.0 - i64::from(count))
        .bind(seq_nr.0)
        .fetch_all(&self.db)
        .await?;
        let completes = rows.last().and_then(|row| {
            let last: i64 = row.get("seq_nr");
            let completes: Option<&str> = row.get("command_key");
            (last == seq_nr.0).then_some(completes).flatten()
        });
        if rows.len() != count as usize || completes != Some(key) {
            return Err(Error::Corrupt {
                pool: id.clone(),
                reason: format!(
                    "the {count} events up to {seq_nr} are not those of the command `{key}`"
                ),
            });
        }
        rows.into_iter()
            .map(|row| json(id, row.get("payload")))
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
        let mut conn = self.db.acquire().await?;
        self.save_snapshot_on(&mut conn, id, seq_nr, snapshot, plugin_digest)
            .await
    }

    /// [`Journal::save_snapshot`] on a connection the caller holds.
    ///
    /// The commit does not wait for its flush to disk: a snapshot only
    /// spares a recovery some events, so one lost in a crash of PostgreSQL
    /// costs that recovery time, never data.
    ///
    /// The pool's older snapshots in the same state version are thinned in
    /// the same transaction (see [`snapshots::thinned_out`]); those of other
    /// state versions are left for a rollback.
    pub async fn save_snapshot_on(
        &self,
        conn: &mut PgConnection,
        id: &PoolId,
        seq_nr: SeqNr,
        snapshot: &Snapshot,
        plugin_digest: &str,
    ) -> Result<()> {
        let mut tx = conn.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO snapshots (pool_id, seq_nr, state_version, plugin_digest, state) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (pool_id, seq_nr) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(seq_nr.0)
        .bind(snapshot.state_version as i32)
        .bind(plugin_digest)
        .bind(&snapshot.bytes)
        .execute(&mut *tx)
        .await?;
        let older: Vec<i64> = sqlx::query_scalar(
            "SELECT seq_nr FROM snapshots WHERE pool_id = $1 AND state_version = $2 AND seq_nr < $3
             ORDER BY seq_nr DESC",
        )
        .bind(id.as_str())
        .bind(snapshot.state_version as i32)
        .bind(seq_nr.0)
        .fetch_all(&mut *tx)
        .await?;
        let thinned = snapshots::thinned_out(seq_nr.0, &older);
        if !thinned.is_empty() {
            sqlx::query("DELETE FROM snapshots WHERE pool_id = $1 AND seq_nr = ANY($2)")
                .bind(id.as_str())
                .bind(&thinned)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
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
            "SELECT e.seq_nr, e.payload::text AS payload, e.recorded_at, e.actor, e.request_id,
                    COALESCE(p.name, e.plugin_name) AS plugin_name,
                    COALESCE(p.version, e.plugin_version) AS plugin_version,
                    COALESCE(p.digest, e.plugin_digest) AS plugin_digest
             FROM events e LEFT JOIN event_plugins p ON p.id = e.plugin
             WHERE e.pool_id = $1 AND e.seq_nr > $2 ORDER BY e.seq_nr LIMIT $3",
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

    /// Whether the journal holds `batch`: its events at the seqs it
    /// expected, from the same requests, as written. Tells a writer whose
    /// append failed (its commit's answer lost, say) whether it was
    /// written after all. A batch without events is never held.
    pub async fn holds(&self, batch: &Append) -> Result<bool> {
        if batch.events.is_empty() {
            return Ok(false);
        }
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT payload::text, request_id FROM events
             WHERE pool_id = $1 AND seq_nr > $2 AND seq_nr <= $3 ORDER BY seq_nr",
        )
        .bind(batch.pool.as_str())
        .bind(batch.expected.0)
        .bind(batch.end().0)
        .fetch_all(&self.db)
        .await?;
        Ok(rows.len() == batch.events.len()
            && rows
                .iter()
                .zip(&batch.events)
                .all(|((payload, request), event)| {
                    payload == event.payload.get() && *request == event.request_id
                }))
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

    /// The outcomes of these command keys, by key. Of a key accepted more
    /// than once (a retry after the idempotency window), the latest
    /// acceptance; an acceptance is preferred to an outcome recorded as
    /// JSON, which may be a refusal of a retry.
    pub async fn outcomes_of(
        &self,
        id: &PoolId,
        keys: &[String],
    ) -> Result<HashMap<String, KeptOutcome>> {
        let mut kept: HashMap<String, KeptOutcome> = self
            .recorded_outcomes(id, keys)
            .await?
            .into_iter()
            .map(|(key, seq_nr, outcome)| (key, KeptOutcome::Recorded { seq_nr, outcome }))
            .collect();
        // As the hash index `events_by_pool_command` has them: pool and key,
        // which a pool id's lack of spaces keeps apart. The pool is not
        // named on its own, or PostgreSQL may also scan the pool's whole
        // history by the primary key to intersect the two.
        let indexed: Vec<String> = keys.iter().map(|key| format!("{id} {key}")).collect();
        let accepted = sqlx::query(AssertSqlSafe(format!(
            "{ACCEPTED_OUTCOMES} WHERE k.command_key IS NOT NULL
                AND (k.pool_id || ' ' || k.command_key) = ANY($1) ORDER BY k.seq_nr"
        )))
        .bind(&indexed)
        .fetch_all(&self.db)
        .await?;
        for row in accepted {
            kept.insert(row.get("command_key"), accepted_outcome(id, &row)?);
        }
        Ok(kept)
    }

    /// The pool's keyed commands that were accepted within `within` of
    /// now, with the outcomes recorded as JSON in that time (which the
    /// caller sorts out): what an entity remembers for retries. The events
    /// of the accepted ones are counted, not read.
    pub async fn command_outcomes(
        &self,
        id: &PoolId,
        within: std::time::Duration,
    ) -> Result<Vec<(String, WindowedCommand)>> {
        let recorded = self.taken_outcomes(id, within).await?;
        // Per pool, events are recorded in the order of their numbers: the
        // window is the history after the last event recorded before it,
        // which a backward scan of the pool's key finds.
        // Key, seq, events of the command, request print.
        type Completing = (String, i64, Option<i32>, Option<Vec<u8>>);
        let accepted: Vec<Completing> = sqlx::query_as(
            "SELECT k.command_key, k.seq_nr, k.command_events, k.command_print FROM events k
              WHERE k.pool_id = $1 AND k.command_key IS NOT NULL
                AND k.seq_nr > COALESCE((SELECT max(o.seq_nr) FROM events o WHERE o.pool_id = $1
                      AND o.recorded_at <= now() - make_interval(secs => $2)), 0)
              ORDER BY k.seq_nr",
        )
        .bind(id.as_str())
        .bind(within.as_secs_f64())
        .fetch_all(&self.db)
        .await?;
        let mut outcomes: Vec<(String, WindowedCommand)> = recorded;
        for (key, seq_nr, events, request) in accepted {
            // The event that carries a key says how many events its command
            // decided: itself and those just before it.
            let Some(events) = events
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
            else {
                return Err(Error::Corrupt {
                    pool: id.clone(),
                    reason: match events {
                        Some(n) => format!("event {seq_nr} completes `{key}` with {n} events"),
                        None => format!("event {seq_nr} completes `{key}` with no count of events"),
                    },
                });
            };
            outcomes.push((
                key,
                WindowedCommand::Accepted {
                    seq_nr: SeqNr(seq_nr),
                    events,
                    request: request.as_deref().and_then(print_of),
                },
            ));
        }
        Ok(outcomes)
    }

    /// The recorded outcomes of a pool within `within` that took effect,
    /// or that an earlier build recorded without saying; refusals are
    /// not read (and `commands_recent_accepted` does not hold them).
    async fn taken_outcomes(
        &self,
        id: &PoolId,
        within: std::time::Duration,
    ) -> Result<Vec<(String, WindowedCommand)>> {
        let rows: Vec<(String, String, Option<Vec<u8>>)> = sqlx::query_as(
            "SELECT idempotency_key, outcome::text, request_print FROM commands
              WHERE pool_id = $1 AND accepted IS NOT FALSE
                AND recorded_at > now() - make_interval(secs => $2)",
        )
        .bind(id.as_str())
        .bind(within.as_secs_f64())
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|(key, outcome, request)| {
                Ok((
                    key,
                    WindowedCommand::Recorded {
                        outcome: json(id, outcome)?,
                        request: request.as_deref().and_then(print_of),
                    },
                ))
            })
            .collect()
    }

    /// Deletes up to `batch` recorded outcomes older than `window`, of any
    /// pool, and returns how many it deleted. Nodes call it side by side:
    /// each skips the rows another is deleting.
    pub async fn prune_outcomes(&self, window: std::time::Duration, batch: i64) -> Result<u64> {
        let deleted = sqlx::query(
            "DELETE FROM commands WHERE ctid = ANY (ARRAY(
                 SELECT ctid FROM commands
                  WHERE recorded_at < now() - make_interval(secs => $1)
                  LIMIT $2 FOR UPDATE SKIP LOCKED))",
        )
        .bind(window.as_secs_f64())
        .bind(batch)
        .execute(&self.db)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// Outcomes recorded as JSON in `commands`, of these keys.
    async fn recorded_outcomes(
        &self,
        id: &PoolId,
        keys: &[String],
    ) -> Result<Vec<(String, SeqNr, Json)>> {
        let rows = sqlx::query(
            "SELECT idempotency_key, seq_nr, outcome::text AS outcome
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
                    SeqNr(row.get("seq_nr")),
                    json(id, row.get("outcome"))?,
                ))
            })
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

/// A connection a writer task keeps for all its statements. Taking
/// whichever the pool has idle (sqlx hands out the one idle longest) would
/// spread a writer's statements over every backend, each of which then runs
/// them with its caches cold: under spread load, PostgreSQL spent more CPU
/// on larger groups that way than on one warm backend, and each append took
/// twice as long.
pub(crate) struct HeldConnection {
    db: PgPool,
    conn: Option<PoolConnection<Postgres>>,
}

impl HeldConnection {
    pub(crate) fn new(journal: &Journal) -> Self {
        Self {
            db: journal.db.clone(),
            conn: None,
        }
    }

    /// The connection, taken from the pool if none is held.
    pub(crate) async fn get(&mut self) -> Result<&mut PgConnection> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.db.acquire().await?,
        };
        Ok(&mut **self.conn.insert(conn))
    }

    /// Holds a connection from the pool until [`release`](Self::release).
    pub(crate) fn hold(&mut self, conn: PoolConnection<Postgres>) {
        self.conn = Some(conn);
    }

    /// Hands the connection back to the pool.
    pub(crate) fn release(&mut self) {
        self.conn = None;
    }

    /// After a statement: if it failed other than by the server's refusal,
    /// the connection may be broken, so it is closed and the next statement
    /// gets another.
    pub(crate) fn check<T>(&mut self, result: &Result<T>) {
        let broken =
            matches!(result, Err(Error::Database(e)) if !matches!(e, sqlx::Error::Database(_)));
        if broken && let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
        }
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

/// Accepted outcomes from the events that complete keyed commands (`k`):
/// each command's key, its last seq and its events as a JSON array. Most
/// commands decide one event, which is then the whole outcome.
const ACCEPTED_OUTCOMES: &str = "
SELECT k.command_key, k.seq_nr,
       CASE WHEN k.command_events = 1 THEN '[' || k.payload::text || ']'
            ELSE (SELECT json_agg(e.payload ORDER BY e.seq_nr)::text FROM events e
                   WHERE e.pool_id = k.pool_id
                     AND e.seq_nr BETWEEN k.seq_nr - k.command_events + 1 AND k.seq_nr)
       END AS events
  FROM events k";

/// A row of [`ACCEPTED_OUTCOMES`].
fn accepted_outcome(pool: &PoolId, row: &sqlx::postgres::PgRow) -> Result<KeptOutcome> {
    let events: String = row.get("events");
    let events: Vec<Json> = serde_json::from_str(&events).map_err(|e| Error::Corrupt {
        pool: pool.clone(),
        reason: format!("the events of an accepted command: {e}"),
    })?;
    Ok(KeptOutcome::Accepted {
        seq_nr: SeqNr(row.get("seq_nr")),
        events,
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
/// The leases of the group's shards are locked FOR KEY SHARE, shard by
/// shard in shard order as every statement on leases takes them: a take
/// (which locks FOR UPDATE) waits for the group, so no lease can move while
/// it is written, and a release (FOR NO KEY UPDATE) neither waits for the
/// group nor holds it up. A batch is written only if it holds
/// its lease, its pool exists and the pool's history ends where the batch
/// continues from; the others are answered with why. A writer extending
/// the same history at the same moment is caught by the `(pool_id,
/// seq_nr)` key instead: the statement fails, and
/// [`Journal::append_many_on`] writes the batches one by one to tell
/// which. Pools' rows are neither locked nor changed; an append writes its
/// events, and outcomes only for the commands that decided none.
///
/// The plan is shaped for a few pools at a time, which is what a group
/// mostly holds: each lookup of a pool and of its history is by key and
/// per batch, and the inserts keep the written pools by comparing with an
/// array. Joins would set up a hash table apiece at every execution, and
/// PostgreSQL would answer an `EXISTS` by hashing the whole table of
/// pools. Events and outcomes go in with a fixed number of `UNNEST`s
/// however many pools take part.
///
/// Seq numbers have no gaps, so a history ends at `expected` when the
/// event `expected` is there (or nothing is expected) and the next is
/// not: two look-ups of one key each. Its `max(seq_nr)` would read, in
/// PostgreSQL's backward index scan, every key of the pool on the index
/// page it ends on. The leases are read in one pass for the whole group:
/// the table is small enough that PostgreSQL reads all of it for each
/// look-up, where a look-up per shard would read it once per shard.
const APPEND_GROUP: &str = "
WITH batch AS (
    SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::int[], $4::bigint[])
        AS b(pool_id, expected, shard, epoch)
), lease AS (
    SELECT l.shard, l.epoch
      FROM shard_leases l
     WHERE l.shard = ANY (ARRAY(SELECT DISTINCT shard FROM batch WHERE shard IS NOT NULL))
     ORDER BY l.shard
       FOR KEY SHARE
), verdict AS (
    SELECT b.pool_id,
           CASE WHEN b.shard IS NOT NULL
                     AND (SELECT l.epoch FROM lease l WHERE l.shard = b.shard) IS DISTINCT FROM b.epoch THEN 'fenced'
                WHEN (SELECT true FROM pools p WHERE p.pool_id = b.pool_id) IS NULL THEN 'unknown'
                WHEN (b.expected > 0 AND (SELECT true FROM events e
                                           WHERE e.pool_id = b.pool_id AND e.seq_nr = b.expected) IS NULL)
                     OR (SELECT true FROM events e
                          WHERE e.pool_id = b.pool_id AND e.seq_nr = b.expected + 1) THEN 'behind'
                ELSE 'written' END AS verdict
      FROM batch b
), new_events AS (
    INSERT INTO events (pool_id, seq_nr, payload, plugin, plugin_name, plugin_version,
                        plugin_digest, request_id, actor, command_key, command_events,
                        command_print)
    SELECT e.pool_id, e.seq_nr, e.payload, e.plugin, '', '', '', e.request_id, e.actor,
           e.command_key, e.command_events, e.command_print
      FROM UNNEST($5::text[], $6::bigint[], $7::text[]::json[], $8::int[], $9::text[],
                  $10::text[], $11::text[], $12::int[], $17::bytea[])
        AS e(pool_id, seq_nr, payload, plugin, request_id, actor, command_key, command_events,
             command_print)
     WHERE e.pool_id = ANY (ARRAY(SELECT pool_id FROM verdict WHERE verdict = 'written'))
), new_commands AS (
    INSERT INTO commands (pool_id, idempotency_key, seq_nr, outcome, accepted, request_print)
    SELECT c.* FROM UNNEST($13::text[], $14::text[], $15::bigint[], $16::text[]::json[],
                           $18::bool[], $19::bytea[])
        AS c(pool_id, idempotency_key, seq_nr, outcome, accepted, request_print)
     WHERE c.pool_id = ANY (ARRAY(SELECT pool_id FROM verdict WHERE verdict = 'written'))
        ON CONFLICT (pool_id, idempotency_key) DO UPDATE
       SET seq_nr = EXCLUDED.seq_nr, outcome = EXCLUDED.outcome, recorded_at = now(),
           accepted = EXCLUDED.accepted, request_print = EXCLUDED.request_print
)
SELECT pool_id, verdict FROM verdict";

/// Updates the read-model rows that exist, and adds the others.
///
/// An `INSERT … ON CONFLICT DO UPDATE` of every row would lock each
/// existing row before updating it, and a row lock is a record of its own
/// in the write-ahead log: 54 bytes, beside the update's 250 or so.
/// The insert sees the table as the statement began, so it adds only the
/// rows the update could not have found; `ON CONFLICT` is left for a row
/// that another writer added meanwhile. The given rows (sorted by pool)
/// drive the update's join, whether PostgreSQL plans it as a look-up by
/// key per row or, for a small table, as a hash of the table probed by
/// them, so each part locks its rows in pool order; which of the two
/// parts runs first is PostgreSQL's choice.
const SAVE_VIEWS: &str = "
WITH v AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]::jsonb[])
        AS v(pool_id, capacity_type, seq_nr, view)
), updated AS (
    UPDATE pool_views p
       SET seq_nr = v.seq_nr, view = v.view, updated_at = now(),
           changed_window = allot_view_window(now())
      FROM v
     WHERE p.pool_id = v.pool_id AND p.seq_nr <= v.seq_nr
)
INSERT INTO pool_views (pool_id, capacity_type, seq_nr, view)
SELECT * FROM v WHERE NOT EXISTS (SELECT FROM pool_views p WHERE p.pool_id = v.pool_id)
    ON CONFLICT (pool_id) DO UPDATE
   SET seq_nr = EXCLUDED.seq_nr, view = EXCLUDED.view, updated_at = now(),
       changed_window = EXCLUDED.changed_window
 WHERE pool_views.seq_nr <= EXCLUDED.seq_nr";

/// Columns of the batches of a group.
#[derive(Default)]
struct GroupColumns<'a> {
    pools: Vec<&'a str>,
    expected: Vec<i64>,
    shards: Vec<Option<i32>>,
    epochs: Vec<Option<i64>>,
}

impl<'a> GroupColumns<'a> {
    fn push(&mut self, batch: &'a Append) {
        self.pools.push(batch.pool.as_str());
        self.expected.push(batch.expected.0);
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
    plugins: Vec<i32>,
    requests: Vec<&'a str>,
    actors: Vec<&'a str>,
    command_keys: Vec<Option<&'a str>>,
    command_events: Vec<Option<i32>>,
    command_prints: Vec<Option<&'a [u8]>>,
}

impl<'a> EventColumns<'a> {
    /// Adds the batch's events, decided by the plugin build of this key.
    fn push(&mut self, batch: &'a Append, plugin: i32) {
        for (i, event) in batch.events.iter().enumerate() {
            self.pools.push(batch.pool.as_str());
            self.seqs.push(batch.expected.0 + 1 + i as i64);
            self.payloads.push(event.payload.get());
            self.plugins.push(plugin);
            self.requests.push(&event.request_id);
            self.actors.push(&event.actor);
            self.command_keys
                .push(event.completes.as_ref().map(|c| c.key.as_str()));
            self.command_events.push(
                event
                    .completes
                    .as_ref()
                    .map(|c| i32::try_from(c.events).unwrap_or(i32::MAX)),
            );
            self.command_prints.push(
                event
                    .completes
                    .as_ref()
                    .and_then(|c| c.request.as_ref())
                    .map(|p| p.as_slice()),
            );
        }
    }
}

#[derive(Default)]
struct CommandColumns<'a> {
    pools: Vec<&'a str>,
    keys: Vec<&'a str>,
    seqs: Vec<i64>,
    outcomes: Vec<&'a str>,
    accepted: Vec<bool>,
    requests: Vec<Option<&'a [u8]>>,
}

impl<'a> CommandColumns<'a> {
    fn push(&mut self, batch: &'a Append) {
        for command in &batch.commands {
            self.pools.push(batch.pool.as_str());
            self.keys.push(&command.key);
            self.seqs.push(command.seq_nr.0);
            self.outcomes.push(command.outcome.get());
            self.accepted.push(command.accepted);
            self.requests
                .push(command.request.as_ref().map(|p| p.as_slice()));
        }
    }
}
