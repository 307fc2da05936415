//! The view writer: read-model rows written after the appends they follow,
//! in transactions of their own.
//!
//! A view is derived from the events, and the append is the one serial step
//! that every write of a node goes through. Inside the append, the view's
//! upsert (a row rewritten with its index entries, and a notification whose
//! queue lock PostgreSQL holds through the commit's flush) made each append
//! about a third longer under spread load. Here the views of many pools go
//! in one statement, off the path callers wait on, and a pool that changed
//! several times meanwhile is written once, at its latest. A busy pool's row
//! is written at most once an interval (`[entities] view_row_interval_ms`):
//! the node's own read model has the pool's latest view at once, the other
//! nodes' within that interval.
//!
//! A view may therefore reach its row a moment after its events. A node that
//! dies in that moment leaves the row behind the history; whoever takes the
//! shard next finds such rows ([`Journal::stale_views`]) and writes them from
//! the recovered pool. A row never goes back: a write keeps a later seq that
//! is already there.
//!
//! A row PostgreSQL refuses for what it holds is logged once and remembered:
//! the same view of the same pool is not tried again, and a later one is.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Error, HeldConnection, Journal, PoolViewRow, Result};
use crate::ids::{PoolId, SeqNr};
use crate::metrics::{GaugePart, metrics};

/// How long the writer gathers views after each write: the read model of
/// other nodes lags by this much more, and PostgreSQL sees at most this
/// many view transactions a second per node.
const GATHER: Duration = Duration::from_millis(10);

/// How long the writer waits before trying a failed write again.
const RETRY: Duration = Duration::from_millis(500);

enum Message {
    View(PoolViewRow),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Hands views to the writer task. Cheap to clone; the task writes what it
/// holds and stops when the last clone is dropped.
#[derive(Clone)]
pub struct ViewWriter {
    queue: mpsc::UnboundedSender<Message>,
    refused: Refused,
}

/// The views PostgreSQL refused, per pool: the seq and a hash of the body.
/// At most one per pool; a pool's entry goes when a later view of it is
/// written.
type Refused = Arc<Mutex<RefusedViews>>;
type RefusedViews = HashMap<PoolId, (SeqNr, u64)>;

impl ViewWriter {
    /// Starts the writer task. It writes a pool's row again no sooner than
    /// `per_pool` after the last time: a pool that changes faster has its
    /// row written at most that often, with its latest view. Other nodes'
    /// read models then see such a pool's changes up to `per_pool` later,
    /// and PostgreSQL writes a row per pool per interval instead of one per
    /// batch (under spread load, several times fewer). Flushes write at once.
    pub fn start(journal: Journal, per_pool: Duration) -> Self {
        let (queue, messages) = mpsc::unbounded_channel();
        let refused = Refused::default();
        tokio::spawn(write(journal, messages, refused.clone(), per_pool));
        Self { queue, refused }
    }

    /// Whether PostgreSQL refused this pool's view as of `seq`: a repair
    /// of the row would only be refused again.
    pub fn refused(&self, pool: &PoolId, seq: SeqNr) -> bool {
        self.refused
            .lock()
            .expect("refused views")
            .get(pool)
            .is_some_and(|(refused, _)| *refused == seq)
    }

    /// Queues a view for its row. Never waits: the task holds one view per
    /// pool, so what it keeps is bounded by the pools, not by the rate.
    pub fn publish(&self, view: PoolViewRow) {
        let _ = self.queue.send(Message::View(view));
    }

    /// Waits until every view published before the call is written. `Err`
    /// says why the write failed; the views stay queued and are tried again.
    pub async fn flush(&self) -> Result<(), String> {
        let (reply, done) = oneshot::channel();
        if self.queue.send(Message::Flush(reply)).is_err() {
            return Ok(());
        }
        done.await.unwrap_or(Ok(()))
    }
}

async fn write(
    journal: Journal,
    mut messages: mpsc::UnboundedReceiver<Message>,
    refused: Refused,
    per_pool: Duration,
) {
    let mut conn = HeldConnection::new(&journal);
    let mut views = Pending::new(per_pool);
    let mut flushes: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let pending = GaugePart::of(&metrics().view_rows_pending);
    let mut open = true;
    loop {
        if views.held.is_empty() && flushes.is_empty() {
            match messages.recv().await {
                Some(message) => take(message, &mut views, &mut flushes),
                None => return,
            }
        }
        loop {
            match messages.try_recv() {
                Ok(message) => take(message, &mut views, &mut flushes),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let now = Instant::now();
        let everything = !flushes.is_empty() || !open;
        let rows: Vec<PoolViewRow> = {
            let refused = refused.lock().expect("refused views");
            views
                .due(now, everything)
                .into_iter()
                .filter(|row| {
                    refused
                        .get(&row.pool)
                        .is_none_or(|&(seq, hash)| seq != row.seq_nr || hash != body_hash(row))
                })
                .collect()
        };
        pending.show(views.held.len() + rows.len());
        match save(&journal, &mut conn, &rows, &refused).await {
            Ok(()) => {
                pending.show(views.held.len());
                views.written(rows, now);
                for flush in flushes.drain(..) {
                    let _ = flush.send(Ok(()));
                }
            }
            Err(error) => {
                tracing::warn!(
                    views = rows.len(),
                    "writing read-model rows failed; trying again: {error}"
                );
                for flush in flushes.drain(..) {
                    let _ = flush.send(Err(error.to_string()));
                }
                for row in rows {
                    views.hold(row);
                }
                pending.show(views.held.len());
                if !open {
                    return;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        if !open {
            return;
        }
        tokio::time::sleep(GATHER).await;
    }
}

/// The views waiting for their rows, and which of them may be written now.
/// A write costs in proportion to the views it takes and the rows whose
/// interval ended, not to all the pools held: a node holding many pools
/// does not go over each of them every round.
struct Pending {
    per_pool: Duration,
    /// The latest view of each pool, not yet written.
    held: HashMap<PoolId, PoolViewRow>,
    /// The held pools whose row was not written within the interval.
    ready: HashSet<PoolId>,
    /// When each pool whose row was written within the interval was written.
    recent: HashMap<PoolId, Instant>,
    /// The same writes in the order they were made, so that the first to
    /// leave the interval is in front (a pool written again has an entry
    /// per write; only its latest counts).
    expiring: VecDeque<(Instant, PoolId)>,
}

impl Pending {
    fn new(per_pool: Duration) -> Self {
        Self {
            per_pool,
            held: HashMap::new(),
            ready: HashSet::new(),
            recent: HashMap::new(),
            expiring: VecDeque::new(),
        }
    }

    /// Holds a view until its row is written, in place of an earlier one.
    fn hold(&mut self, row: PoolViewRow) {
        if !self.recent.contains_key(&row.pool) {
            self.ready.insert(row.pool.clone());
        }
        keep_latest(&mut self.held, row);
    }

    /// The views to write at `now`: those of pools whose row was not
    /// written within the interval, or `everything` held.
    fn due(&mut self, now: Instant, everything: bool) -> Vec<PoolViewRow> {
        while let Some((at, _)) = self.expiring.front()
            && now.duration_since(*at) >= self.per_pool
        {
            let (at, pool) = self.expiring.pop_front().expect("a front");
            if self.recent.get(&pool) == Some(&at) {
                self.recent.remove(&pool);
                if self.held.contains_key(&pool) {
                    self.ready.insert(pool);
                }
            }
        }
        if everything {
            self.ready.clear();
            return self.held.drain().map(|(_, row)| row).collect();
        }
        let held = &mut self.held;
        self.ready
            .drain()
            .filter_map(|pool| held.remove(&pool))
            .collect()
    }

    /// Notes that these views' rows were written at `now`.
    fn written(&mut self, rows: Vec<PoolViewRow>, now: Instant) {
        for row in rows {
            self.recent.insert(row.pool.clone(), now);
            self.expiring.push_back((now, row.pool));
        }
    }
}

/// Writes the rows. A row PostgreSQL refuses for what it holds (a view
/// `jsonb` cannot store) is logged, remembered in `refused` and left out
/// rather than holding back every other pool's; any other failure is for
/// the caller to retry.
async fn save(
    journal: &Journal,
    conn: &mut HeldConnection,
    rows: &[PoolViewRow],
    refused: &Mutex<RefusedViews>,
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    match timed(journal, conn, rows).await {
        // Row by row, so that the one refused does not hold back the others.
        Err(error) if is_refusal(&error) => {
            for row in rows {
                match timed(journal, conn, std::slice::from_ref(row)).await {
                    Err(error) if is_refusal(&error) => {
                        metrics().view_rows_refused.inc();
                        tracing::error!(
                            pool = %row.pool,
                            seq_nr = row.seq_nr.0,
                            "the read-model row was refused and is not written: {error}"
                        );
                        refused
                            .lock()
                            .expect("refused views")
                            .insert(row.pool.clone(), (row.seq_nr, body_hash(row)));
                    }
                    Ok(()) => forget_refused(refused, std::slice::from_ref(row)),
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        }
        Ok(()) => {
            forget_refused(refused, rows);
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// A pool whose later view was written has no refused view any more.
fn forget_refused(refused: &Mutex<RefusedViews>, written: &[PoolViewRow]) {
    let mut refused = refused.lock().expect("refused views");
    if refused.is_empty() {
        return;
    }
    for row in written {
        if refused
            .get(&row.pool)
            .is_some_and(|(seq, _)| *seq < row.seq_nr)
        {
            refused.remove(&row.pool);
        }
    }
}

fn body_hash(row: &PoolViewRow) -> u64 {
    crate::ids::fnv1a(row.view.get().as_bytes())
}

/// One statement, recorded in the metrics.
async fn timed(journal: &Journal, conn: &mut HeldConnection, rows: &[PoolViewRow]) -> Result<()> {
    let started = std::time::Instant::now();
    let written = match conn.get().await {
        Ok(held) => journal.save_views_on(held, rows).await,
        Err(error) => Err(error),
    };
    conn.check(&written);
    let metrics = metrics();
    metrics
        .view_write_seconds
        .observe(started.elapsed().as_secs_f64());
    if written.is_ok() {
        metrics.view_rows.observe(rows.len() as f64);
    }
    written
}

/// Whether PostgreSQL refused the data itself (SQLSTATE classes 22, data
/// exception, and 23, integrity violation): trying again cannot help.
fn is_refusal(error: &Error) -> bool {
    match error {
        Error::Database(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

fn take(
    message: Message,
    views: &mut Pending,
    flushes: &mut Vec<oneshot::Sender<Result<(), String>>>,
) {
    match message {
        Message::View(row) => views.hold(row),
        Message::Flush(reply) => flushes.push(reply),
    }
}

/// Keeps the view with the higher seq; of two at the same seq, the newer
/// (a plugin version swapped in may render the same state differently).
fn keep_latest(held: &mut HashMap<PoolId, PoolViewRow>, row: PoolViewRow) {
    match held.entry(row.pool.clone()) {
        Entry::Occupied(mut entry) => {
            if row.seq_nr >= entry.get().seq_nr {
                entry.insert(row);
            }
        }
        Entry::Vacant(entry) => {
            entry.insert(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    const INTERVAL: Duration = Duration::from_millis(500);

    fn row(pool: &str, seq: i64) -> PoolViewRow {
        PoolViewRow {
            pool: PoolId::new(pool).unwrap(),
            capacity_type: Arc::from("test"),
            seq_nr: SeqNr(seq),
            view: RawValue::from_string(format!(r#"{{"n": {seq}}}"#)).unwrap(),
        }
    }

    fn seqs(mut rows: Vec<PoolViewRow>) -> Vec<(String, i64)> {
        rows.sort_by(|a, b| a.pool.as_str().cmp(b.pool.as_str()));
        rows.into_iter()
            .map(|row| (row.pool.as_str().to_owned(), row.seq_nr.0))
            .collect()
    }

    fn pools(rows: &[(&str, i64)]) -> Vec<(String, i64)> {
        rows.iter().map(|(p, s)| (p.to_string(), *s)).collect()
    }

    #[test]
    fn a_pool_not_written_lately_is_due_at_once_with_its_latest_view() {
        let mut views = Pending::new(INTERVAL);
        let now = Instant::now();
        views.hold(row("a", 1));
        views.hold(row("a", 2));
        views.hold(row("b", 1));
        let due = views.due(now, false);
        assert_eq!(seqs(due), pools(&[("a", 2), ("b", 1)]));
        assert!(views.held.is_empty());
        assert!(views.due(now, false).is_empty());
    }

    /// Views of which `pool`'s row was written at `at`, as of seq 1.
    fn written_at(pool: &str, at: Instant) -> Pending {
        let mut views = Pending::new(INTERVAL);
        views.hold(row(pool, 1));
        let rows = views.due(at, false);
        views.written(rows, at);
        views
    }

    #[test]
    fn a_pool_written_within_the_interval_is_held_until_it_ends() {
        let start = Instant::now();
        let mut views = written_at("busy", start);
        views.hold(row("busy", 2));
        views.hold(row("busy", 3));
        views.hold(row("quiet", 1));
        let later = start + INTERVAL / 2;
        assert_eq!(seqs(views.due(later, false)), pools(&[("quiet", 1)]));
        assert_eq!(views.held.len(), 1, "the busy pool's view is held");
        let ended = start + INTERVAL;
        assert_eq!(seqs(views.due(ended, false)), pools(&[("busy", 3)]));
    }

    #[test]
    fn a_flush_takes_every_view_and_the_latest_write_counts() {
        let start = Instant::now();
        let mut views = written_at("busy", start);
        views.hold(row("busy", 2));
        let flushed = start + INTERVAL / 2;
        let rows = views.due(flushed, true);
        assert_eq!(seqs(rows.clone()), pools(&[("busy", 2)]));
        views.written(rows, flushed);
        views.hold(row("busy", 3));
        // The first write's interval has ended; the flush's has not.
        assert!(views.due(start + INTERVAL, false).is_empty());
        assert_eq!(
            seqs(views.due(flushed + INTERVAL, false)),
            pools(&[("busy", 3)])
        );
    }

    #[test]
    fn views_that_failed_are_held_again() {
        let mut views = Pending::new(INTERVAL);
        let now = Instant::now();
        views.hold(row("a", 1));
        let rows = views.due(now, false);
        views.hold(row("a", 2));
        for row in rows {
            views.hold(row);
        }
        assert_eq!(seqs(views.due(now, false)), pools(&[("a", 2)]));
    }
}
