//! The read model: every pool's latest view, in memory on every node.
//!
//! Entities write a pool's view row just after its events (through the
//! journal's view writer), and hand it to their own node's read model at
//! once. A trigger notifies on commit; a listener task here forwards the
//! pool ids and the refresher reads those rows. Notifications are lost
//! while the listening connection is down, so a poll of the rows changed
//! lately (by their `changed_window`, ten seconds wide) runs as a backstop,
//! and a full comparison runs now and then. A row replaces what is held
//! only if its seq is newer, so the order rows arrive in does not matter.
//!
//! A query reads a page under a read lock on the map, without cloning the
//! `Arc`s it does not keep: two cores reading the same pools would pass
//! their counts' cache lines to and fro. No query ever touches an entity or
//! the database.
//!
//! Nor does a query hold up a view: a view that comes while the map is
//! read-locked waits beside it, and goes in with the next view that finds
//! the map free, or by a task of the read model once the readers are done.
//! An entity never waits for the grid's readers (a reader preempted while
//! copying a page would hold it up for milliseconds), and readers never
//! queue behind a writer waiting for other readers.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockWriteGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{AssertSqlSafe, Row};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::ids::{PoolId, SeqNr};
use crate::metrics::{GaugePart, metrics};
use crate::sandbox::{Cell, View};

/// The notification channel the `pool_views` trigger sends on.
const CHANNEL: &str = "allot_pool_views";

/// Rows committed this long before a poll's start may still be missing
/// from it (their transaction began earlier): each poll looks back this far.
const POLL_OVERLAP: Duration = Duration::from_secs(10);

/// How long a notification waits before its row is read.
const FETCH_DELAY: Duration = Duration::from_millis(2);

/// Most pools a page of the grid looks at while it holds the read lock
/// (or four times its size, if more); a page that reaches it ends short.
const SCAN_BUDGET: usize = 10_000;

/// How long views that came while the map was read-locked wait before
/// another try, once a first try right after the readers' turn failed.
const PUT_RETRY: Duration = Duration::from_millis(1);

/// How the read model keeps up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The backstop poll for changes the notifications missed.
    pub poll_every: Duration,
    /// A full comparison of every pool's seq.
    pub full_sync_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            poll_every: Duration::from_secs(2),
            full_sync_every: Duration::from_secs(300),
        }
    }
}

/// One pool as the read model holds it.
#[derive(Debug)]
pub struct PoolView {
    /// The pool.
    pub pool: PoolId,
    /// Its capacity type.
    pub capacity_type: String,
    /// The seq the view is as of.
    pub seq_nr: SeqNr,
    /// When the view was written.
    pub updated_at: OffsetDateTime,
    /// The view.
    pub view: View,
    /// The whole pool as the grid answers it, encoded at its first read:
    /// a pool is read many times between two changes.
    pub encoded: OnceLock<Box<RawValue>>,
}

/// What to select from the grid.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only pools of this capacity type.
    pub capacity_type: Option<String>,
    /// Only pools whose id starts with this.
    pub prefix: Option<String>,
    /// Only cells whose time range ends after this (ms since the epoch).
    pub from_ms: Option<i64>,
    /// Only cells whose time range starts before this (ms since the epoch).
    pub to_ms: Option<i64>,
    /// Only pools whose id sorts after this (the previous page's last).
    pub after: Option<PoolId>,
    /// At most this many pools.
    pub limit: usize,
}

impl Filter {
    fn keeps_cell(&self, cell: &Cell) -> bool {
        let ends_after_from = match (self.from_ms, cell.end_ms) {
            (Some(from), Some(end)) => end > from,
            _ => true,
        };
        let starts_before_to = match (self.to_ms, cell.start_ms) {
            (Some(to), Some(start)) => start < to,
            _ => true,
        };
        ends_after_from && starts_before_to
    }

    fn has_time_range(&self) -> bool {
        self.from_ms.is_some() || self.to_ms.is_some()
    }
}

/// The cells of a pool that a filter keeps.
#[derive(Debug, PartialEq, Eq)]
pub enum Kept {
    /// Every cell.
    All,
    /// These cells, by index; never all of them and never none.
    Some(Vec<usize>),
}

/// A page of the grid, borrowed from the read model while it is held.
#[derive(Debug)]
pub struct Page<'a> {
    /// The pools, by id, each with the cells the filter keeps.
    pub pools: Vec<(&'a Arc<PoolView>, Kept)>,
    /// Where the next page starts, if there may be one. A page can be
    /// short, or even empty, and still have a next one: it ends after
    /// [`SCAN_BUDGET`] pools looked at.
    pub next: Option<&'a PoolId>,
}

/// How fresh the read model is.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// Whether change notifications are arriving.
    pub listening: bool,
    /// How far behind the database the read model is believed to be: the
    /// delay of the latest change when listening, otherwise the time since
    /// the last successful poll.
    pub lag: Duration,
}

/// The read model. Cheap to clone; its tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct ReadModel {
    shared: Arc<Shared>,
}

/// Every pool's view by id, and again by capacity type, so that a page
/// of one type reads only that type's pools: a filter on a type with few
/// pools (or none) costs a page, not a walk over every pool under the lock.
#[derive(Default)]
struct Pools {
    all: BTreeMap<PoolId, Arc<PoolView>>,
    by_type: HashMap<String, BTreeMap<PoolId, Arc<PoolView>>>,
}

impl Pools {
    fn get(&self, id: &PoolId) -> Option<&Arc<PoolView>> {
        self.all.get(id)
    }

    fn len(&self) -> usize {
        self.all.len()
    }

    fn insert(&mut self, view: Arc<PoolView>) {
        self.by_type
            .entry(view.capacity_type.clone())
            .or_default()
            .insert(view.pool.clone(), view.clone());
        self.all.insert(view.pool.clone(), view);
    }

    /// The pools a filter can match at all.
    fn of(&self, filter: &Filter) -> Option<&BTreeMap<PoolId, Arc<PoolView>>> {
        match &filter.capacity_type {
            None => Some(&self.all),
            Some(capacity_type) => self.by_type.get(capacity_type),
        }
    }
}

struct Shared {
    pools: RwLock<Pools>,
    /// Views that came while the map was read-locked.
    waiting: Arc<Waiting>,
    /// This read model's part of `allot_read_model_pools`.
    shown: GaugePart,
    status: Mutex<Status>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Views not in the map yet, and the wake-up of the task that puts them in.
#[derive(Default)]
struct Waiting {
    views: Mutex<Vec<Arc<PoolView>>>,
    put: Notify,
}

impl Shared {
    /// Takes views into the map, each only if newer than the one held,
    /// without waiting for readers: while the map is read-locked the views
    /// wait, and the task that puts them in is woken.
    fn offer(&self, views: impl IntoIterator<Item = Arc<PoolView>>) {
        match self.pools.try_write() {
            Ok(mut pools) => {
                for view in views {
                    keep_newer(&mut pools, view);
                }
                self.put_waiting(pools);
            }
            Err(TryLockError::WouldBlock) => {
                self.waiting
                    .views
                    .lock()
                    .expect("waiting views")
                    .extend(views);
                self.waiting.put.notify_one();
            }
            Err(TryLockError::Poisoned(error)) => panic!("views: {error}"),
        }
    }

    /// Puts the views that waited into the map, and shows how many pools it
    /// holds.
    fn put_waiting(&self, mut pools: RwLockWriteGuard<'_, Pools>) {
        for view in self.waiting.views.lock().expect("waiting views").drain(..) {
            keep_newer(&mut pools, view);
        }
        let held = pools.len();
        drop(pools);
        self.shown.show(held);
    }
}

/// Holds `view` unless the map holds its pool as of a later seq already.
fn keep_newer(pools: &mut Pools, view: Arc<PoolView>) {
    match pools.get(&view.pool) {
        Some(current) if current.seq_nr >= view.seq_nr => {}
        _ => pools.insert(view),
    }
}

struct Status {
    listening: bool,
    last_lag: Duration,
    last_poll: Instant,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().expect("task list").drain(..) {
            task.abort();
        }
    }
}

enum Signal {
    /// Pools' view rows changed, each as of a seq when the notification
    /// says.
    Changed(Vec<(String, Option<i64>)>),
    /// Notifications may have been lost: compare everything.
    Resync,
}

/// The read model's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error("reading the views failed: {0}")]
    Database(#[from] sqlx::Error),
}

/// Results of the read model.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl ReadModel {
    /// Loads every view and starts keeping them fresh.
    pub async fn start(db: PgPool, settings: Settings) -> Result<Self> {
        let mut listener = PgListener::connect_with(&db).await?;
        listener.listen(CHANNEL).await?;
        let waiting = Arc::new(Waiting::default());
        let shared = Arc::new(Shared {
            pools: RwLock::default(),
            waiting: waiting.clone(),
            shown: GaugePart::of(&metrics().read_model_pools),
            status: Mutex::new(Status {
                listening: true,
                last_lag: Duration::ZERO,
                last_poll: Instant::now(),
            }),
            tasks: Mutex::default(),
        });
        // Listening starts before the first load, so no change falls between.
        sync(&db, &shared, None).await?;
        let (signals, received) = mpsc::unbounded_channel();
        let listen = tokio::spawn(listen(listener, signals, Arc::downgrade(&shared)));
        let refresh = tokio::spawn(refresh(db, Arc::downgrade(&shared), received, settings));
        let put = tokio::spawn(put_when_free(Arc::downgrade(&shared), waiting));
        shared
            .tasks
            .lock()
            .expect("task list")
            .extend([listen, refresh, put]);
        Ok(Self { shared })
    }

    /// Takes a view this node has just written to the journal, without
    /// reading it back; kept if newer than what is held. Never waits for
    /// readers: while a page is being read, the view goes in just after.
    pub fn publish(&self, pool: &PoolId, capacity_type: &str, seq_nr: SeqNr, view: View) {
        let fresh = Arc::new(PoolView {
            pool: pool.clone(),
            capacity_type: capacity_type.to_owned(),
            seq_nr,
            updated_at: OffsetDateTime::now_utc(),
            view,
            encoded: OnceLock::new(),
        });
        self.shared.offer([fresh]);
    }

    /// One pool's view.
    pub fn get(&self, pool: &PoolId) -> Option<Arc<PoolView>> {
        self.shared.pools.read().expect("views").get(pool).cloned()
    }

    /// Number of pools held.
    pub fn len(&self) -> usize {
        self.shared.pools.read().expect("views").len()
    }

    /// Whether no pool is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `read` on a page of the pools that match the filter, in id
    /// order, while the map is read-locked. Views that come meanwhile go
    /// in after it returns, so `read` should copy what it needs and
    /// return: a pool whose `Arc` it clones can be read at leisure.
    pub fn read_page<R>(&self, filter: &Filter, read: impl FnOnce(Page<'_>) -> R) -> R {
        let pools = self.shared.pools.read().expect("views");
        let prefix = filter.prefix.as_deref().unwrap_or("");
        let from_prefix = match filter.after {
            Some(_) => None,
            None => PoolId::new(prefix).ok(),
        };
        let start = match (&filter.after, &from_prefix) {
            (Some(after), _) => Bound::Excluded(after),
            (None, Some(id)) => Bound::Included(id),
            (None, None) => Bound::Unbounded,
        };
        let mut page = Page {
            pools: Vec::new(),
            next: None,
        };
        let Some(candidates) = pools.of(filter) else {
            return read(page);
        };
        // A time range can leave pool after pool without a cell: the walk
        // stops after this many pools looked at, and the page ends there,
        // short, with where to go on from.
        let mut budget = SCAN_BUDGET.max(filter.limit * 4);
        let mut looked_at = None;
        for (id, pool) in candidates.range::<PoolId, _>((start, Bound::Unbounded)) {
            if budget == 0 {
                page.next = looked_at;
                break;
            }
            budget -= 1;
            looked_at = Some(id);
            if !id.as_str().starts_with(prefix) {
                // Ids sort by bytes, so past the prefix's range nothing matches.
                if id.as_str() > prefix {
                    break;
                }
                continue;
            }
            if filter
                .capacity_type
                .as_ref()
                .is_some_and(|t| *t != pool.capacity_type)
            {
                continue;
            }
            let kept = if filter.has_time_range() {
                let cells = &pool.view.cells;
                let kept: Vec<usize> = (0..cells.len())
                    .filter(|&i| filter.keeps_cell(&cells[i]))
                    .collect();
                if kept.is_empty() {
                    continue;
                }
                if kept.len() == cells.len() {
                    Kept::All
                } else {
                    Kept::Some(kept)
                }
            } else {
                Kept::All
            };
            if page.pools.len() == filter.limit {
                page.next = page.pools.last().map(|(p, _)| &p.pool);
                break;
            }
            page.pools.push((pool, kept));
        }
        read(page)
    }

    /// How fresh the read model is.
    pub fn freshness(&self) -> Freshness {
        let status = self.shared.status.lock().expect("status");
        Freshness {
            listening: status.listening,
            lag: if status.listening {
                status.last_lag
            } else {
                status.last_poll.elapsed()
            },
        }
    }
}

/// Forwards notifications. A lost connection is reported as a resync, since
/// what was sent meanwhile is gone.
async fn listen(
    mut listener: PgListener,
    signals: mpsc::UnboundedSender<Signal>,
    shared: Weak<Shared>,
) {
    let set_listening = |listening: bool| {
        if let Some(shared) = shared.upgrade() {
            shared.status.lock().expect("status").listening = listening;
        }
    };
    loop {
        let signal = match listener.try_recv().await {
            Ok(Some(notification)) => {
                set_listening(true);
                // A line `<pool> <seq>` per row; older triggers sent one
                // line a notification, and before that the pool alone.
                let changed = (notification.payload().lines())
                    .map(|line| match line.split_once(' ') {
                        Some((pool, seq)) => (pool.to_owned(), seq.parse().ok()),
                        None => (line.to_owned(), None),
                    })
                    .collect();
                Signal::Changed(changed)
            }
            Ok(None) => {
                // Reconnected already (eagerly); what was sent meanwhile is
                // found by comparing everything.
                tracing::warn!("the read model's notification connection was lost and is back");
                Signal::Resync
            }
            Err(error) => {
                tracing::warn!("the read model cannot listen for changes: {error}");
                set_listening(false);
                tokio::time::sleep(Duration::from_secs(1)).await;
                Signal::Resync
            }
        };
        if signals.send(signal).is_err() {
            return;
        }
    }
}

async fn refresh(
    db: PgPool,
    shared: Weak<Shared>,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    settings: Settings,
) {
    let mut poll = tokio::time::interval(settings.poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full = Instant::now();
    let mut watermark: Option<OffsetDateTime> = None;
    loop {
        let mut changed: HashMap<String, Option<i64>> = HashMap::new();
        let mut resync = false;
        let mut polled = false;
        let mut take = |signal| match signal {
            Signal::Changed(rows) => {
                for (id, seq) in rows {
                    let newest = changed.entry(id).or_insert(seq);
                    *newest = (*newest).max(seq);
                }
            }
            Signal::Resync => resync = true,
        };
        tokio::select! {
            signal = signals.recv() => {
                let Some(signal) = signal else { return };
                take(signal);
                // This node's own writes reach its read model directly, at
                // about the time their notifications arrive: a moment's
                // wait spares reading them back (and gathers more ids per read).
                tokio::time::sleep(FETCH_DELAY).await;
                while let Ok(signal) = signals.try_recv() {
                    take(signal);
                }
            }
            _ = poll.tick() => polled = true,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let result = if !resync && !polled {
            let ids: Vec<String> = {
                let pools = shared.pools.read().expect("views");
                changed
                    .into_iter()
                    .filter(|(id, seq)| !holds(&pools, id, *seq))
                    .map(|(id, _)| id)
                    .collect()
            };
            if ids.is_empty() {
                continue;
            }
            fetch(&db, &shared, &ids, true).await
        } else {
            let since = if resync || last_full.elapsed() >= settings.full_sync_every {
                last_full = Instant::now();
                None
            } else {
                watermark
            };
            match sync(&db, &shared, since).await {
                Ok(now) => {
                    watermark = Some(now - POLL_OVERLAP);
                    Ok(())
                }
                Err(error) => Err(error),
            }
        };
        if let Err(error) = result {
            tracing::warn!("refreshing the read model failed: {error}");
        }
    }
}

/// Puts the views that waited into the map once no reader holds it: at
/// once when the readers are done within a turn of the runtime, otherwise
/// a moment later.
async fn put_when_free(shared: Weak<Shared>, waiting: Arc<Waiting>) {
    loop {
        waiting.put.notified().await;
        let mut tried = false;
        loop {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match shared.pools.try_write() {
                Ok(pools) => {
                    shared.put_waiting(pools);
                    break;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(error)) => panic!("views: {error}"),
            }
            drop(shared);
            if tried {
                tokio::time::sleep(PUT_RETRY).await;
            } else {
                tokio::task::yield_now().await;
                tried = true;
            }
        }
    }
}

/// Whether `pools` holds a pool's view as of `seq` already.
fn holds(pools: &Pools, id: &str, seq: Option<i64>) -> bool {
    let (Some(seq), Ok(id)) = (seq, PoolId::new(id)) else {
        return false;
    };
    pools.get(&id).is_some_and(|held| held.seq_nr.0 >= seq)
}

/// Compares the seqs of rows changed since `since` (all rows without it)
/// with what is held and fetches those that are newer. Returns the
/// database's time at the start, the next poll's watermark.
async fn sync(
    db: &PgPool,
    shared: &Shared,
    since: Option<OffsetDateTime>,
) -> Result<OffsetDateTime> {
    let now: OffsetDateTime = sqlx::query_scalar("SELECT now()").fetch_one(db).await?;
    let rows: Vec<(String, i64)> = match since {
        // Whole windows: from the one `since` falls in.
        Some(since) => {
            sqlx::query_as(
                "SELECT pool_id, seq_nr FROM pool_views
                  WHERE changed_window >= allot_view_window($1)",
            )
            .bind(since)
            .fetch_all(db)
            .await?
        }
        None => {
            sqlx::query_as("SELECT pool_id, seq_nr FROM pool_views")
                .fetch_all(db)
                .await?
        }
    };
    let stale: Vec<String> = {
        let pools = shared.pools.read().expect("views");
        rows.into_iter()
            .filter(|(id, seq)| {
                PoolId::new(id)
                    .ok()
                    .and_then(|id| pools.get(&id).map(|p| p.seq_nr.0))
                    < Some(*seq)
            })
            .map(|(id, _)| id)
            .collect()
    };
    for ids in stale.chunks(1_000) {
        fetch(db, shared, ids, false).await?;
    }
    let mut status = shared.status.lock().expect("status");
    status.last_poll = Instant::now();
    Ok(now)
}

/// Reads these pools' rows and keeps those newer than what is held.
async fn fetch(db: &PgPool, shared: &Shared, ids: &[String], notified: bool) -> Result<()> {
    let rows = sqlx::query(AssertSqlSafe(
        "SELECT pool_id, capacity_type, seq_nr, view::text AS view, updated_at,
                extract(epoch FROM clock_timestamp() - updated_at)::float8 AS lag
         FROM pool_views WHERE pool_id = ANY($1)",
    ))
    .bind(ids)
    .fetch_all(db)
    .await?;
    let mut newest_lag = None;
    let mut fresh = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.get("pool_id");
        let Ok(pool) = PoolId::new(&id) else {
            tracing::warn!(pool = %id, "a view row has an invalid pool id; skipped");
            continue;
        };
        let view: View = match serde_json::from_str(row.get::<&str, _>("view")) {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(pool = %id, "a view row is unreadable ({error}); skipped");
                continue;
            }
        };
        let lag: f64 = row.get("lag");
        newest_lag = Some(lag.max(0.0));
        if notified {
            metrics().read_model_lag.observe(lag.max(0.0));
        }
        fresh.push(Arc::new(PoolView {
            pool,
            capacity_type: row.get("capacity_type"),
            seq_nr: SeqNr(row.get("seq_nr")),
            updated_at: row.get("updated_at"),
            view,
            encoded: OnceLock::new(),
        }));
    }
    shared.offer(fresh);
    if notified && let Some(lag) = newest_lag {
        shared.status.lock().expect("status").last_lag = Duration::from_secs_f64(lag);
    }
    Ok(())
}
