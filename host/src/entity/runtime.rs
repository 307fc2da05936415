//! The entity runtime: finds or starts the entity of a pool and hands it
//! commands.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use super::shadow::{Shadow, ShadowReport};
use super::task::{Envelope, run};
use super::{Error, OUTCOME_GRACE, Outcome, Request, Result, Ticket};
use crate::ids::{PoolId, SeqNr};
use crate::journal::{self, Committer, Fence, Journal, PoolViewRow, SnapshotWriter, ViewWriter};
use crate::metrics::{GaugePart, metrics};
use crate::sandbox::{Plugin, PoolInstance, View};

/// How entities behave.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Commands a pool may have queued; past that, callers are told to retry.
    pub mailbox: usize,
    /// Most commands decided and appended as one batch.
    pub max_batch: usize,
    /// A snapshot is taken once this many events have been appended since
    /// the last, and their payloads outweigh that snapshot.
    pub snapshot_every: u64,
    /// An entity with no command for this long is passivated: snapshotted,
    /// its instance dropped. The next command re-activates it.
    pub idle_after: Duration,
    /// Most transactions writing batches at the same time (group commit).
    pub writers: usize,
    /// A further transaction starts beside those in flight once the newest
    /// has run this long: on a slow disk, appends overlap their flushes.
    pub overlap_after: Duration,
    /// Most pools' batches written in one transaction.
    pub max_group: usize,
    /// How long the first outcome of a keyed command is kept: a retry
    /// within it gets that outcome; memory follows commands per window.
    pub idempotency_window: Duration,
    /// A pool's read-model row is written at most this often: other nodes
    /// see a busy pool's changes up to this much later.
    pub view_row_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            mailbox: 1024,
            max_batch: 512,
            snapshot_every: 1000,
            idle_after: Duration::from_secs(600),
            writers: 4,
            overlap_after: Duration::from_millis(5),
            max_group: 256,
            idempotency_window: Duration::from_secs(3600),
            view_row_interval: Duration::from_millis(500),
        }
    }
}

/// Runs the entities of this node. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) journal: Journal,
    pub(super) committer: Committer,
    /// Writes the views of appended batches to the read model's table.
    views: ViewWriter,
    /// Writes the snapshots entities take as they go.
    pub(super) snapshots: SnapshotWriter,
    pub(super) settings: Settings,
    plugins: RwLock<HashMap<String, Arc<Plugin>>>,
    /// Versions shadowing capacity types on this node.
    shadows: RwLock<HashMap<String, Arc<Shadow>>>,
    /// The live entities. Commands are sent while holding this lock, so that
    /// an entity that finds its mailbox empty under the lock can passivate
    /// knowing nothing more will arrive.
    entities: Mutex<HashMap<PoolId, Handle>>,
    /// This node's part of `allot_entities_active`.
    entities_shown: GaugePart,
    generations: AtomicU64,
    shutting_down: AtomicBool,
    /// Where entities send the views they have just appended.
    view_sink: std::sync::OnceLock<ViewSink>,
    /// The shard leases this node holds, when it is part of a cluster.
    fencing: std::sync::OnceLock<Fencing>,
    /// Told of every live pool that cannot move to its type's active
    /// version.
    refusals: std::sync::OnceLock<SwapRefusals>,
}

/// Takes each live pool that cannot move to its type's active version: the
/// pool, the capacity type, the version's digest and why.
pub type SwapRefusals = Arc<dyn Fn(&PoolId, &str, &str, &str) + Send + Sync>;

/// Tells the lease epoch this node holds for a shard, or `None` when it
/// holds none: then no entity of the shard may start here.
pub type Fencing = Arc<dyn Fn(u32) -> Option<i64> + Send + Sync>;

/// Takes each view an entity has appended: the pool, its capacity type, the
/// seq the view is as of, and the view.
pub type ViewSink = Arc<dyn Fn(&PoolId, &str, SeqNr, View) + Send + Sync>;

struct Handle {
    generation: u64,
    mailbox: mpsc::Sender<Envelope>,
    task: JoinHandle<()>,
}

impl Runtime {
    /// A runtime over this journal, with no plugins yet. Must be called
    /// within a tokio runtime: it starts the group-commit writers.
    pub fn new(journal: Journal, settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                committer: Committer::start(
                    journal.clone(),
                    settings.writers,
                    settings.max_group,
                    settings.overlap_after,
                ),
                views: ViewWriter::start(journal.clone(), settings.view_row_interval),
                snapshots: SnapshotWriter::start(journal.clone()),
                journal,
                settings,
                plugins: RwLock::default(),
                shadows: RwLock::default(),
                entities: Mutex::default(),
                entities_shown: GaugePart::of(&metrics().active_pools),
                generations: AtomicU64::new(0),
                shutting_down: AtomicBool::new(false),
                view_sink: std::sync::OnceLock::new(),
                fencing: std::sync::OnceLock::new(),
                refusals: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sends every view entities append to `sink` as well (the node's read
    /// model, which then need not read its own writes back). Set once.
    pub fn publish_views_to(&self, sink: ViewSink) {
        let _ = self.inner.view_sink.set(sink);
    }

    /// Tells `refusals` of every live pool that cannot move to its type's
    /// active version (the node undoes that activation). Set once.
    pub fn report_refused_swaps_to(&self, refusals: SwapRefusals) {
        let _ = self.inner.refusals.set(refusals);
    }

    /// Starts entities only for shards whose lease `fencing` names, and
    /// makes them append under that lease epoch. Set once; without it every
    /// pool may run here and appends are not fenced (a single node).
    pub fn fence_with(&self, fencing: Fencing) {
        let _ = self.inner.fencing.set(fencing);
    }

    /// Lets the live entities of these shards finish what is queued and
    /// passivate, and waits for them. Entities of the shards start again
    /// only if [`Runtime::fence_with`]'s lookup names a lease for them.
    pub async fn stop_shards(&self, shards: &std::collections::HashSet<u32>) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut entities = self.inner.entities.lock().expect("entity table");
            let pools: Vec<PoolId> = entities
                .keys()
                .filter(|pool| shards.contains(&pool.shard()))
                .cloned()
                .collect();
            let tasks = pools
                .iter()
                .filter_map(|pool| entities.remove(pool))
                .map(|handle| handle.task)
                .collect();
            self.inner.entities_shown.show(entities.len());
            tasks
        };
        for task in tasks {
            let _ = task.await;
        }
        // The next owner should find the rows as these entities left them.
        self.inner.flush_views().await;
    }

    /// Writes the read-model rows of these shards' pools that are missing
    /// or behind their history, from the recovered pools: a node that
    /// stopped between an append and its view leaves such rows. Returns how
    /// many were written; a pool that cannot be read now is logged and left
    /// for the next owner or the next look.
    ///
    /// A row is taken as behind only if it still is once this node's own
    /// views written meanwhile are in: a pool appended to just now is not.
    /// While this node's view writer cannot write, nothing is repaired (its
    /// pending views are the rows behind); a row PostgreSQL refused is not
    /// rendered again for the same history.
    pub async fn repair_views(&self, shards: &[u32]) -> Result<usize> {
        let first = self.inner.journal.stale_views(shards).await?;
        if first.is_empty() {
            return Ok(0);
        }
        if !self.inner.flush_views().await {
            return Ok(0);
        }
        let behind: std::collections::HashSet<PoolId> =
            first.into_iter().map(|(pool, ..)| pool).collect();
        let stale: Vec<(PoolId, String)> = self
            .inner
            .journal
            .stale_views(shards)
            .await?
            .into_iter()
            .filter(|(pool, _, last)| {
                behind.contains(pool) && !self.inner.views.refused(pool, *last)
            })
            .map(|(pool, capacity_type, _)| (pool, capacity_type))
            .collect();
        let mut repaired = 0;
        for (pool, capacity_type) in stale {
            match self
                .view(&pool, Instant::now() + Duration::from_secs(10))
                .await
            {
                Ok((seq_nr, view)) => {
                    self.inner
                        .publish_view(&pool, &Arc::from(capacity_type), seq_nr, view);
                    repaired += 1;
                }
                Err(error) => tracing::warn!(%pool, "cannot write its read-model row: {error}"),
            }
        }
        if repaired > 0 {
            tracing::info!(
                pools = repaired,
                "read-model rows behind their history written"
            );
        }
        Ok(repaired)
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// Makes a plugin the one that runs pools of its capacity type. Live
    /// entities move to it at their next batch, by a snapshot it accepts or
    /// by replaying their events; one that cannot keeps its version.
    pub fn load_plugin(&self, plugin: Arc<Plugin>) {
        let capacity_type = plugin.info().capacity_type.clone();
        self.inner
            .plugins
            .write()
            .expect("plugin table")
            .insert(capacity_type, plugin);
    }

    /// Makes `plugin` shadow its capacity type on this node: from each live
    /// pool's next command on, it decides every command too, for
    /// comparison only. Replaces a shadow the type had.
    pub fn start_shadow(&self, plugin: Arc<Plugin>) -> ShadowReport {
        let shadow = Arc::new(Shadow::new(plugin));
        let report = shadow.report();
        self.inner
            .shadows
            .write()
            .expect("shadow table")
            .insert(report.capacity_type.clone(), shadow);
        report
    }

    /// What the type's shadow found so far.
    pub fn shadow_report(&self, capacity_type: &str) -> Option<ShadowReport> {
        self.inner.shadow(capacity_type).map(|s| s.report())
    }

    /// Stops the type's shadow; returns what it found.
    pub fn stop_shadow(&self, capacity_type: &str) -> Option<ShadowReport> {
        self.inner
            .shadows
            .write()
            .expect("shadow table")
            .remove(capacity_type)
            .map(|s| s.report())
    }

    /// The loaded plugins, by capacity type.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        let plugins = self.inner.plugins.read().expect("plugin table");
        let mut all: Vec<Arc<Plugin>> = plugins.values().cloned().collect();
        all.sort_by(|a, b| a.info().capacity_type.cmp(&b.info().capacity_type));
        all
    }

    /// The plugin for a capacity type.
    pub fn plugin(&self, capacity_type: &str) -> Result<Arc<Plugin>> {
        self.inner.plugin(capacity_type)
    }

    /// Creates a pool, after the plugin has accepted its config. Creating the
    /// same pool again is not an error (`Ok(false)`).
    pub async fn create_pool(
        &self,
        id: &PoolId,
        capacity_type: &str,
        config: &RawValue,
    ) -> Result<bool> {
        let plugin = self.plugin(capacity_type)?;
        let mut instance = PoolInstance::create(&plugin, id.as_str(), config.get())?
            .map_err(Error::InvalidConfig)?;
        let view = serde_json::value::to_raw_value(&instance.view()?).expect("views serialize");
        let journal = &self.inner.journal;
        let created = journal
            .create_pool(id, capacity_type, config)
            .await
            .map_err(|e| match e {
                journal::Error::PoolExists(id) => Error::PoolExists(id),
                e => Error::Journal(e),
            })?;
        if created {
            journal
                .save_views(&[PoolViewRow {
                    pool: id.clone(),
                    capacity_type: Arc::from(capacity_type),
                    seq_nr: SeqNr(0),
                    view,
                }])
                .await?;
        }
        Ok(created)
    }

    /// Decides a command on its pool and waits for the outcome, at most
    /// until the request's deadline.
    ///
    /// At the deadline a command still queued is withdrawn and answered
    /// [`Error::DeadlinePassed`]: it is never decided. One the entity took
    /// for deciding before then is waited for, at most [`OUTCOME_GRACE`]
    /// longer, and then answered [`Error::OutcomeUnknown`]: a deadline never
    /// turns a decided command into "not decided".
    pub async fn execute(&self, pool: &PoolId, request: Request) -> Result<Outcome> {
        let deadline = request.deadline;
        let ticket = Ticket::default();
        let (reply, mut outcome) = oneshot::channel();
        self.send(pool, Envelope::Command(request, ticket.clone(), reply))?;
        let early = timeout_at(deadline, &mut outcome).await;
        let late = match early {
            Ok(answer) => answer,
            Err(_) if ticket.withdraw() => return Err(Error::DeadlinePassed),
            Err(_) => match timeout_at(deadline + OUTCOME_GRACE, outcome).await {
                Ok(answer) => answer,
                Err(_) => return Err(Error::OutcomeUnknown),
            },
        };
        match late {
            Ok(result) => result,
            // The entity stopped without answering: if it had taken the
            // command, it may have written it.
            Err(_) if ticket.withdraw() => Err(Error::ShuttingDown),
            Err(_) => Err(Error::OutcomeUnknown),
        }
    }

    /// The pool's view, read through its entity: it includes every command
    /// answered before the call.
    pub async fn view(&self, pool: &PoolId, deadline: Instant) -> Result<(SeqNr, View)> {
        let (reply, view) = oneshot::channel();
        self.send(pool, Envelope::View(reply))?;
        wait(deadline, view).await
    }

    /// Moves every live entity of the type to its active version now, at its
    /// next command boundary, and waits until `deadline`. Returns the pools that
    /// could not move, with why (an entity that did not answer in time is
    /// one of them).
    pub async fn swap_live(&self, capacity_type: &str, deadline: Instant) -> Vec<(PoolId, String)> {
        let pools: Vec<PoolId> = self
            .inner
            .entities
            .lock()
            .expect("entity table")
            .keys()
            .cloned()
            .collect();
        let mut waiting = Vec::with_capacity(pools.len());
        for pool in pools {
            // A full mailbox drains in well under the deadline; try again.
            let answer = loop {
                let (reply, answer) = oneshot::channel();
                match self.send(&pool, Envelope::Swap(capacity_type.to_owned(), reply)) {
                    Ok(()) => break Some(answer),
                    Err(Error::Overloaded(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    Err(error) => {
                        tracing::debug!(%pool, "not swapped: {error}");
                        break None;
                    }
                }
            };
            if let Some(answer) = answer {
                waiting.push((pool, answer));
            }
        }
        let mut failed = Vec::new();
        for (pool, answer) in waiting {
            match timeout_at(deadline, answer).await {
                Ok(Ok(Ok(()))) | Ok(Err(_)) => {}
                Ok(Ok(Err(reason))) => failed.push((pool, reason)),
                Err(_) => failed.push((pool, "it did not answer in time".to_owned())),
            }
        }
        failed
    }

    /// Number of live entities.
    pub fn active_pools(&self) -> usize {
        self.inner.entities.lock().expect("entity table").len()
    }

    /// Stops taking commands, lets every entity finish what is queued and
    /// passivate, and waits for them.
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut entities = self.inner.entities.lock().expect("entity table");
            self.inner.shutting_down.store(true, Ordering::SeqCst);
            // Dropping every mailbox first lets all entities passivate at once.
            let tasks = entities.drain().map(|(_, handle)| handle.task).collect();
            self.inner.entities_shown.show(0);
            tasks
        };
        for task in tasks {
            let _ = task.await;
        }
        self.inner.snapshots.flush().await;
        self.inner.flush_views().await;
    }

    fn send(&self, pool: &PoolId, envelope: Envelope) -> Result<()> {
        let mut entities = self.inner.entities.lock().expect("entity table");
        // Checked under the lock: shutdown sets it while holding the lock,
        // so no entity can start after shutdown has taken the table.
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let mut envelope = envelope;
        // Twice at most: an entity that died leaves a closed mailbox behind,
        // which is replaced by a fresh entity once.
        for _ in 0..2 {
            if !entities.contains_key(pool) {
                let fence = match self.inner.fencing.get() {
                    None => None,
                    Some(fencing) => {
                        let shard = pool.shard();
                        let epoch = fencing(shard).ok_or(Error::NotOwner(shard))?;
                        Some(Fence { shard, epoch })
                    }
                };
                entities.insert(pool.clone(), self.spawn(pool.clone(), fence));
                self.inner.entities_shown.show(entities.len());
            }
            let handle = entities.get(pool).expect("just inserted");
            match handle.mailbox.try_send(envelope) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Error::Overloaded(pool.clone()));
                }
                Err(mpsc::error::TrySendError::Closed(returned)) => {
                    entities.remove(pool);
                    envelope = returned;
                }
            }
        }
        Err(Error::ShuttingDown)
    }

    fn spawn(&self, pool: PoolId, fence: Option<Fence>) -> Handle {
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
        let (mailbox, inbox) = mpsc::channel(self.inner.settings.mailbox);
        let task = tokio::spawn(run(self.inner.clone(), pool, generation, fence, inbox));
        Handle {
            generation,
            mailbox,
            task,
        }
    }
}

impl Inner {
    /// Hands a pool's view as of `seq_nr` to the read model's table and to
    /// this node's read model.
    pub(super) fn publish_view(
        &self,
        pool: &PoolId,
        capacity_type: &Arc<str>,
        seq_nr: SeqNr,
        view: View,
    ) {
        self.views.publish(PoolViewRow {
            pool: pool.clone(),
            capacity_type: capacity_type.clone(),
            seq_nr,
            view: serde_json::value::to_raw_value(&view).expect("views serialize"),
        });
        if let Some(sink) = self.view_sink.get() {
            sink(pool, capacity_type, seq_nr, view);
        }
    }

    /// Reports a live pool that cannot move to its type's active version.
    pub(super) fn refused_swap(&self, pool: &PoolId, capacity_type: &str, digest: &str, why: &str) {
        if let Some(refusals) = self.refusals.get() {
            refusals(pool, capacity_type, digest, why);
        }
    }

    /// Waits for the view writer to write what it holds; false if it
    /// could not (it keeps the views and tries again).
    async fn flush_views(&self) -> bool {
        match self.views.flush().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!("read-model rows not written yet: {error}");
                false
            }
        }
    }

    pub(super) fn shadow(&self, capacity_type: &str) -> Option<Arc<Shadow>> {
        self.shadows
            .read()
            .expect("shadow table")
            .get(capacity_type)
            .cloned()
    }

    pub(super) fn plugin(&self, capacity_type: &str) -> Result<Arc<Plugin>> {
        self.plugins
            .read()
            .expect("plugin table")
            .get(capacity_type)
            .cloned()
            .ok_or_else(|| Error::UnknownCapacityType(capacity_type.to_owned()))
    }

    /// Removes the entity of `pool` from the table if it is still this
    /// generation and nothing is queued for it. Returns whether it was removed;
    /// after that, no command can reach its mailbox.
    pub(super) fn retire(
        &self,
        pool: &PoolId,
        generation: u64,
        inbox: &mpsc::Receiver<Envelope>,
    ) -> bool {
        let mut entities = self.entities.lock().expect("entity table");
        match entities.get(pool) {
            Some(handle) if handle.generation == generation && inbox.is_empty() => {
                entities.remove(pool);
                self.entities_shown.show(entities.len());
                true
            }
            Some(handle) if handle.generation == generation => false,
            // Shut down or replaced: nothing new can arrive either way.
            _ => inbox.is_empty(),
        }
    }
}

async fn wait<T>(deadline: Instant, reply: oneshot::Receiver<Result<T>>) -> Result<T> {
    match timeout_at(deadline, reply).await {
        Ok(Ok(result)) => result,
        // The entity stopped without answering (its task failed).
        Ok(Err(_)) => Err(Error::ShuttingDown),
        Err(_) => Err(Error::DeadlinePassed),
    }
}
