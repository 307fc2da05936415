//! The plugin registry: components stored in PostgreSQL by content digest,
//! and which version is active for each capacity type.
//!
//! Every node loads the active versions from here, so all run the same
//! bytes; an activation made through one node reaches the others by a
//! notification. A node compiles each digest once and keeps it.

mod check;

pub use check::{PoolDifference, PoolFailure, Report, replay_check};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::postgres::{PgListener, PgPool};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::entity::Runtime;
use crate::sandbox::{self, Engine, Plugin};

/// The notification channel activations are announced on.
const CHANNEL: &str = "allot_plugin_activations";

/// How long live pools have to move to a newly activated version.
const SWAP_DEADLINE: Duration = Duration::from_secs(10);

/// How long an activation or rollback waits for another of its type.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// A stored plugin version.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Version {
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// The capacity type it implements.
    pub capacity_type: String,
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The `allot:capacity` contract version it implements.
    pub contract: String,
    /// Its state layout version.
    pub state_version: u32,
    /// Size of the component in bytes.
    pub size_bytes: i64,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub uploaded_at: OffsetDateTime,
    /// Whether it is the active version of its capacity type.
    pub active: bool,
}

/// An activation: from then on, this version decides its capacity type.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Activation {
    /// The capacity type.
    pub capacity_type: String,
    /// The version made active.
    pub digest: String,
    /// Who did it.
    pub activated_by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub activated_at: OffsetDateTime,
    /// `activate` or `rollback`.
    pub kind: String,
}

/// What the registry refuses, or fails at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upload is not a usable capacity-type component.
    #[error("the component is refused: {0}")]
    Invalid(sandbox::Error),
    /// The upload implements another capacity type than the one named.
    #[error("the component implements capacity type `{found}`, not `{expected}`")]
    WrongType {
        /// The type named with the upload or activation.
        expected: String,
        /// The type the component implements.
        found: String,
    },
    /// No stored version has this digest.
    #[error("no plugin version {0} is stored")]
    UnknownVersion(String),
    /// Nothing to roll back to.
    #[error("capacity type `{0}` has no earlier version to roll back to")]
    NoPrevious(String),
    /// The candidate cannot rebuild existing pools from their history.
    #[error("the version cannot replay the history of existing pools: {}", .0.summary())]
    ReplayCheckFailed(Box<Report>),
    /// A live pool could not move to the version, so the activation was
    /// undone as a whole.
    #[error(
        "pool `{pool}` could not move to the version ({reason}); the activation was rolled back to {restored}"
    )]
    SwapFailed {
        /// The first pool that could not move.
        pool: String,
        /// Why.
        reason: String,
        /// The version active again.
        restored: String,
    },
    /// Another activation or rollback of the type held its lock for
    /// longer than an activation waits.
    #[error("another activation or rollback of `{0}` is in progress")]
    Busy(String),
    /// The activation's task failed.
    #[error("the activation stopped: {0}")]
    Stopped(String),
    /// Reading pools or events failed.
    #[error(transparent)]
    Journal(crate::journal::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Results of the registry.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    db: PgPool,
    engine: Engine,
    /// Compiled components by digest: compiling takes hundreds of ms.
    compiled: Arc<Mutex<HashMap<String, Arc<Plugin>>>>,
    /// Digests that failed to compile here, which [`catch_up`](Self::catch_up)
    /// and [`check`](Self::check) do not try again.
    refused: Arc<Mutex<HashSet<String>>>,
    /// Held while making the runtime match the active versions.
    syncing: Arc<tokio::sync::Mutex<()>>,
}

impl Registry {
    /// A registry in this database, compiling with this engine.
    pub fn new(db: PgPool, engine: Engine) -> Self {
        Self {
            db,
            engine,
            compiled: Arc::default(),
            refused: Arc::default(),
            syncing: Arc::default(),
        }
    }

    /// Checks and stores a component. Storing the same bytes again is not
    /// an error (`false`: it was stored already). Nothing is activated.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        capacity_type: Option<&str>,
        uploaded_by: &str,
    ) -> Result<(Version, bool)> {
        let plugin = self.compile(bytes.clone()).await?;
        let info = plugin.info();
        if let Some(expected) = capacity_type
            && expected != info.capacity_type
        {
            return Err(Error::WrongType {
                expected: expected.to_owned(),
                found: info.capacity_type.clone(),
            });
        }
        let inserted = sqlx::query(
            "INSERT INTO plugins (digest, capacity_type, name, version, contract, state_version, component, uploaded_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (digest) DO NOTHING",
        )
        .bind(plugin.digest())
        .bind(&info.capacity_type)
        .bind(&info.name)
        .bind(&info.version)
        .bind(plugin.contract())
        .bind(info.state_version as i32)
        .bind(&bytes)
        .bind(uploaded_by)
        .execute(&self.db)
        .await?
        .rows_affected()
            == 1;
        let version = self.version(plugin.digest()).await?;
        Ok((version, inserted))
    }

    /// The stored versions, newest first; of one capacity type, or all.
    pub async fn versions(&self, capacity_type: Option<&str>) -> Result<Vec<Version>> {
        self.select(capacity_type, None).await
    }

    async fn version(&self, digest: &str) -> Result<Version> {
        self.select(None, Some(digest))
            .await?
            .pop()
            .ok_or_else(|| Error::UnknownVersion(digest.to_owned()))
    }

    async fn select(
        &self,
        capacity_type: Option<&str>,
        digest: Option<&str>,
    ) -> Result<Vec<Version>> {
        let rows = sqlx::query(
            "SELECT p.digest, p.capacity_type, p.name, p.version, p.contract, p.state_version,
                    octet_length(p.component)::bigint AS size_bytes, p.uploaded_by, p.uploaded_at,
                    p.digest = a.digest AS active
             FROM plugins p
             LEFT JOIN LATERAL (SELECT digest FROM plugin_activations
                                WHERE capacity_type = p.capacity_type ORDER BY id DESC LIMIT 1) a ON true
             WHERE ($1::text IS NULL OR p.capacity_type = $1) AND ($2::text IS NULL OR p.digest = $2)
             ORDER BY p.capacity_type, p.uploaded_at DESC, p.digest",
        )
        .bind(capacity_type)
        .bind(digest)
        .fetch_all(&self.db)
        .await?;
        Ok(rows.iter().map(version).collect())
    }

    /// Makes a stored version the active one of its capacity type.
    pub async fn activate(
        &self,
        capacity_type: &str,
        digest: &str,
        activated_by: &str,
    ) -> Result<Activation> {
        self.record(capacity_type, digest, activated_by, "activate")
            .await
    }

    /// Checks a stored version against existing pools' history (see
    /// [`Registry::check`]), then activates it; a version that cannot replay
    /// every pool checked is refused unless `force` is set. Returns the
    /// check's report with the activation.
    pub async fn activate_checked(
        &self,
        runtime: &Runtime,
        capacity_type: &str,
        digest: &str,
        activated_by: &str,
        force: bool,
    ) -> Result<(Activation, Report)> {
        let target = Target::Version(digest.to_owned());
        self.switch(runtime, capacity_type, activated_by, target, force)
            .await
            .map(|switched| switched.expect("an activation always switches"))
    }

    /// Makes active again the version that was active before the current
    /// one, after the same replay check as an activation (which `force`
    /// skips the verdict of), and moves live pools to it. Rolling back
    /// twice returns to where it started.
    pub async fn rollback(
        &self,
        runtime: &Runtime,
        capacity_type: &str,
        activated_by: &str,
        force: bool,
    ) -> Result<(Activation, Report)> {
        self.switch(
            runtime,
            capacity_type,
            activated_by,
            Target::Previous,
            force,
        )
        .await
        .map(|switched| switched.expect("a rollback always switches"))
    }

    /// Undoes the activation of `digest` because a live pool cannot move to
    /// it (on this node, after another node activated it): the version
    /// active before it is active again, on every node. Nothing is done
    /// if `digest` is no longer the active version.
    pub async fn undo(
        &self,
        runtime: &Runtime,
        capacity_type: &str,
        digest: &str,
        why: &str,
    ) -> Result<Option<Activation>> {
        let target = Target::PreviousOf(digest.to_owned());
        let switched = self
            .switch(runtime, capacity_type, why, target, true)
            .await?;
        Ok(switched.map(|(activation, _)| activation))
    }

    /// Switches a type's active version under the type's lock, in a task
    /// of its own: it finishes, and lets go of the lock, whatever becomes
    /// of its caller (a client that disconnects half-way cannot leave the
    /// type half-switched or its lock held). The version `target` names is
    /// found once the lock is held; `None` when there is nothing to do.
    async fn switch(
        &self,
        runtime: &Runtime,
        capacity_type: &str,
        activated_by: &str,
        target: Target,
        force: bool,
    ) -> Result<Option<(Activation, Report)>> {
        let (registry, runtime) = (self.clone(), runtime.clone());
        let (capacity_type, activated_by) = (capacity_type.to_owned(), activated_by.to_owned());
        let task = tokio::spawn(async move {
            let lock = TypeLock::take(&registry.db, &capacity_type).await?;
            let switched = async {
                let (digest, kind) = match target {
                    Target::Version(digest) => (digest, "activate"),
                    Target::Previous => (registry.previous(&capacity_type).await?, "rollback"),
                    Target::PreviousOf(digest) => {
                        let active = registry.active_version(&capacity_type).await?;
                        if active.as_deref() != Some(digest.as_str()) {
                            return Ok(None);
                        }
                        (registry.previous(&capacity_type).await?, "rollback")
                    }
                };
                registry
                    .switch_locked(
                        &runtime,
                        &capacity_type,
                        &digest,
                        &activated_by,
                        kind,
                        force,
                    )
                    .await
                    .map(Some)
            }
            .await;
            lock.release().await;
            switched
        });
        task.await.map_err(|e| Error::Stopped(e.to_string()))?
    }

    async fn switch_locked(
        &self,
        runtime: &Runtime,
        capacity_type: &str,
        digest: &str,
        activated_by: &str,
        kind: &str,
        force: bool,
    ) -> Result<(Activation, Report)> {
        let candidate = self.candidate(capacity_type, digest).await?;
        let report = self.check(runtime, &candidate, None).await?;
        if !report.can_replay() && !force {
            return Err(Error::ReplayCheckFailed(Box::new(report)));
        }
        // What to restore if a live pool cannot move.
        let previous = self.active().await?.remove(capacity_type);
        let activation = self
            .record(capacity_type, digest, activated_by, kind)
            .await?;
        self.sync(runtime, capacity_type).await?;
        // Every live pool moves now, so that a pool that cannot is known
        // before anyone is told the version is active.
        let deadline = tokio::time::Instant::now() + SWAP_DEADLINE;
        let failed = runtime.swap_live(capacity_type, deadline).await;
        let Some((pool, reason)) = failed.into_iter().next() else {
            return Ok((activation, report));
        };
        let restored = match previous.filter(|p| p != digest) {
            Some(previous) => {
                self.record(capacity_type, &previous, "system", "rollback")
                    .await?;
                self.sync(runtime, capacity_type).await?;
                let deadline = tokio::time::Instant::now() + SWAP_DEADLINE;
                for (pool, reason) in runtime.swap_live(capacity_type, deadline).await {
                    tracing::error!(%pool, "pool could not move back after a failed activation: {reason}");
                }
                previous
            }
            None => "nothing (the type had no other active version)".to_owned(),
        };
        Err(Error::SwapFailed {
            pool: pool.to_string(),
            reason,
            restored,
        })
    }

    /// The version that was active before the current one.
    async fn previous(&self, capacity_type: &str) -> Result<String> {
        let digests: Vec<String> = sqlx::query_scalar(
            "SELECT digest FROM plugin_activations WHERE capacity_type = $1 ORDER BY id DESC",
        )
        .bind(capacity_type)
        .fetch_all(&self.db)
        .await?;
        let current = digests.first();
        digests
            .iter()
            .find(|d| Some(*d) != current)
            .cloned()
            .ok_or_else(|| Error::NoPrevious(capacity_type.to_owned()))
    }

    async fn record(
        &self,
        capacity_type: &str,
        digest: &str,
        activated_by: &str,
        kind: &str,
    ) -> Result<Activation> {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT capacity_type FROM plugins WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.db)
                .await?;
        match stored {
            None => return Err(Error::UnknownVersion(digest.to_owned())),
            Some(found) if found != capacity_type => {
                return Err(Error::WrongType {
                    expected: capacity_type.to_owned(),
                    found,
                });
            }
            Some(_) => {}
        }
        let activated_at: OffsetDateTime = sqlx::query_scalar(
            "INSERT INTO plugin_activations (capacity_type, digest, activated_by, kind)
             VALUES ($1, $2, $3, $4) RETURNING activated_at",
        )
        .bind(capacity_type)
        .bind(digest)
        .bind(activated_by)
        .bind(kind)
        .fetch_one(&self.db)
        .await?;
        tracing::info!(
            capacity_type,
            digest,
            activated_by,
            kind,
            "plugin version activated"
        );
        Ok(Activation {
            capacity_type: capacity_type.to_owned(),
            digest: digest.to_owned(),
            activated_by: activated_by.to_owned(),
            activated_at,
            kind: kind.to_owned(),
        })
    }

    /// The active version of every capacity type that has one.
    pub async fn active(&self) -> Result<HashMap<String, String>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT ON (capacity_type) capacity_type, digest
             FROM plugin_activations ORDER BY capacity_type, id DESC",
        )
        .fetch_all(&self.db)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// A stored version that must implement `capacity_type`, compiled.
    pub async fn candidate(&self, capacity_type: &str, digest: &str) -> Result<Arc<Plugin>> {
        let plugin = self.load(digest).await?;
        if plugin.info().capacity_type != capacity_type {
            return Err(Error::WrongType {
                expected: capacity_type.to_owned(),
                found: plugin.info().capacity_type.clone(),
            });
        }
        Ok(plugin)
    }

    /// A stored version, compiled (once per node).
    pub async fn load(&self, digest: &str) -> Result<Arc<Plugin>> {
        if let Some(plugin) = self.compiled.lock().expect("compiled plugins").get(digest) {
            return Ok(plugin.clone());
        }
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT component FROM plugins WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.db)
                .await?;
        let bytes = bytes.ok_or_else(|| Error::UnknownVersion(digest.to_owned()))?;
        self.compile(bytes).await
    }

    /// Compiles and checks a component off the async workers.
    async fn compile(&self, bytes: Vec<u8>) -> Result<Arc<Plugin>> {
        let engine = self.engine.clone();
        let plugin = tokio::task::spawn_blocking(move || Plugin::load(&engine, &bytes))
            .await
            .map_err(|e| Error::Invalid(sandbox::Error::Start(format!("compiling failed: {e}"))))?
            .map_err(Error::Invalid)?;
        self.compiled
            .lock()
            .expect("compiled plugins")
            .insert(plugin.digest().to_owned(), plugin.clone());
        Ok(plugin)
    }

    /// Makes the runtime run every active version; returns how many types.
    pub async fn apply_active(&self, runtime: &Runtime) -> Result<usize> {
        // Under the lock, reading what is active and loading it happen
        // together: two syncs cannot finish in the wrong order.
        let _syncing = self.syncing.lock().await;
        let active = self.active().await?;
        for digest in active.values() {
            self.run(runtime, digest).await?;
        }
        Ok(active.len())
    }

    /// Rebuilds the pools of the candidate's capacity type with it and with
    /// the type's active version (see [`replay_check`]). The active version
    /// is the database's: one this node has not heard of yet is loaded
    /// first, and runs from then on. One that does not compile here is
    /// logged, and the check compares with what runs here, as the report
    /// names it, so that a version to replace it can still be checked.
    pub async fn check(
        &self,
        runtime: &Runtime,
        candidate: &Arc<Plugin>,
        sample: Option<usize>,
    ) -> Result<Report> {
        let capacity_type = &candidate.info().capacity_type;
        let syncing = self.syncing.lock().await;
        if let Some(digest) = self.active_version(capacity_type).await? {
            match self.run_unless_refused(runtime, &digest).await {
                Ok(true) => {}
                Ok(false) | Err(Error::Invalid(_)) => tracing::warn!(
                    capacity_type,
                    digest,
                    "the active version does not compile here; the check compares with what runs"
                ),
                Err(error) => return Err(error),
            }
        }
        drop(syncing);
        replay_check(runtime, candidate, sample).await
    }

    /// Makes the runtime run the type's active version, as the database has
    /// it now; live pools move to it at their next command.
    pub async fn sync(&self, runtime: &Runtime, capacity_type: &str) -> Result<()> {
        let _syncing = self.syncing.lock().await;
        if let Some(digest) = self.active_version(capacity_type).await? {
            self.run(runtime, &digest).await?;
        }
        Ok(())
    }

    /// The active version of one capacity type, if it has one.
    async fn active_version(&self, capacity_type: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT digest FROM plugin_activations WHERE capacity_type = $1
             ORDER BY id DESC LIMIT 1",
        )
        .bind(capacity_type)
        .fetch_optional(&self.db)
        .await?)
    }

    /// Makes the runtime run the type's active version if it does not run
    /// the type at all: for work that arrives before the notification of an
    /// activation made through another node. Returns whether it runs the
    /// type now. Cheap when it does; a version that failed to compile here
    /// is not tried again.
    pub async fn catch_up(&self, runtime: &Runtime, capacity_type: &str) -> Result<bool> {
        if runtime.plugin(capacity_type).is_ok() {
            return Ok(true);
        }
        let _syncing = self.syncing.lock().await;
        // Loaded by whoever held the lock before.
        if runtime.plugin(capacity_type).is_ok() {
            return Ok(true);
        }
        let Some(digest) = self.active_version(capacity_type).await? else {
            return Ok(false);
        };
        self.run_unless_refused(runtime, &digest).await
    }

    /// Makes the runtime run a version, unless it failed to compile on this
    /// node before (`Ok(false)`); one that fails now is remembered so.
    async fn run_unless_refused(&self, runtime: &Runtime, digest: &str) -> Result<bool> {
        if self
            .refused
            .lock()
            .expect("refused digests")
            .contains(digest)
        {
            return Ok(false);
        }
        match self.run(runtime, digest).await {
            Ok(()) => Ok(true),
            Err(error @ Error::Invalid(_)) => {
                self.refused
                    .lock()
                    .expect("refused digests")
                    .insert(digest.to_owned());
                Err(error)
            }
            Err(error) => Err(error),
        }
    }

    async fn run(&self, runtime: &Runtime, digest: &str) -> Result<()> {
        let plugin = self.load(digest).await?;
        let current = runtime.plugin(&plugin.info().capacity_type).ok();
        if current.is_none_or(|c| c.digest() != plugin.digest()) {
            runtime.load_plugin(plugin);
        }
        Ok(())
    }

    /// Follows activations made anywhere, for as long as the runtime lives.
    /// Notifications missed while disconnected are made up by applying every
    /// active version again.
    pub async fn follow(&self, runtime: Runtime) -> Result<tokio::task::JoinHandle<()>> {
        let mut listener = PgListener::connect_with(&self.db).await?;
        listener.listen(CHANNEL).await?;
        let registry = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                let result = match listener.try_recv().await {
                    Ok(Some(_)) | Ok(None) => registry.apply_active(&runtime).await,
                    Err(error) => {
                        tracing::warn!("cannot listen for plugin activations: {error}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        registry.apply_active(&runtime).await
                    }
                };
                if let Err(error) = result {
                    tracing::warn!("applying plugin activations failed: {error}");
                }
            }
        }))
    }
}

/// Which version a switch makes active.
enum Target {
    /// This one.
    Version(String),
    /// The one active before the current one.
    Previous,
    /// The one active before this one, if this one is still active.
    PreviousOf(String),
}

/// The cluster-wide lock on changing a capacity type's active version: a
/// PostgreSQL advisory lock, held on one connection. Two operators'
/// activations and rollbacks of a type take turns, so each restores what
/// was really active before it. A node that dies releases it with its
/// connection.
struct TypeLock {
    /// Taken by [`TypeLock::release`]; a lock dropped without it (its
    /// task panicked) closes its connection, which lets go of the lock.
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: String,
}

impl TypeLock {
    /// Takes the lock, waiting at most [`LOCK_WAIT`] for another holder,
    /// without a statement that waits inside PostgreSQL.
    async fn take(db: &PgPool, capacity_type: &str) -> Result<Self> {
        let mut conn = db.acquire().await?;
        let key = format!("allot:activation:{capacity_type}");
        let give_up = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                .bind(&key)
                .fetch_one(&mut *conn)
                .await?;
            if taken {
                return Ok(Self {
                    conn: Some(conn),
                    key,
                });
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(Error::Busy(capacity_type.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(&self.key)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // The lock must not go back to the pool with the connection:
            // closing the connection releases it.
            drop(conn.detach());
        }
    }
}

impl Drop for TypeLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

fn version(row: &sqlx::postgres::PgRow) -> Version {
    Version {
        digest: row.get("digest"),
        capacity_type: row.get("capacity_type"),
        name: row.get("name"),
        version: row.get("version"),
        contract: row.get("contract"),
        state_version: row.get::<i32, _>("state_version") as u32,
        size_bytes: row.get("size_bytes"),
        uploaded_by: row.get("uploaded_by"),
        uploaded_at: row.get("uploaded_at"),
        active: row.get::<Option<bool>, _>("active").unwrap_or(false),
    }
}
