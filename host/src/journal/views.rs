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

use std::collections::HashMap;
use std::collections::hash_map::Entry;
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
    let mut held: HashMap<PoolId, PoolViewRow> = HashMap::new();
    let mut flushes: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    let pending = GaugePart::of(&metrics().view_rows_pending);
    // When each pool's row was last written, for the pools written within
    // the interval.
    let mut written: HashMap<PoolId, Instant> = HashMap::new();
    let mut open = true;
    loop {
        if held.is_empty() && flushes.is_empty() {
            match messages.recv().await {
                Some(message) => take(message, &mut held, &mut flushes),
                None => return,
            }
        }
        loop {
            match messages.try_recv() {
                Ok(message) => take(message, &mut held, &mut flushes),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let now = Instant::now();
        written.retain(|_, at| now.duration_since(*at) < per_pool);
        let everything = !flushes.is_empty() || !open;
        let rows: Vec<PoolViewRow> = {
            let refused = refused.lock().expect("refused views");
            held.extract_if(|pool, _| everything || !written.contains_key(pool))
                .map(|(_, row)| row)
                .filter(|row| {
                    refused
                        .get(&row.pool)
                        .is_none_or(|&(seq, hash)| seq != row.seq_nr || hash != body_hash(row))
                })
                .collect()
        };
        pending.show(held.len() + rows.len());
        match save(&journal, &mut conn, &rows, &refused).await {
            Ok(()) => {
                pending.show(held.len());
                written.extend(rows.into_iter().map(|row| (row.pool, now)));
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
                    keep_latest(&mut held, row);
                }
                pending.show(held.len());
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
    held: &mut HashMap<PoolId, PoolViewRow>,
    flushes: &mut Vec<oneshot::Sender<Result<(), String>>>,
) {
    match message {
        Message::View(row) => keep_latest(held, row),
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
