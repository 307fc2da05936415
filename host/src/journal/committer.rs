//! Group commit: entities hand their batches to a dispatcher, which gives
//! whatever is waiting to one of a few writer tasks to write in one
//! transaction.
//!
//! No batch waits for company: a writer that finds one batch writes one. The
//! grouping comes from the commits in flight, during which the next batches
//! queue up — the busier the node, the larger the groups.
//!
//! A further transaction starts beside those in flight only once the latest
//! of them has run for `overlap_after`. While appends take less than that,
//! one transaction at a time takes everything that queued meanwhile, in the
//! fewest commits, on the first writer's connection. When they take longer
//! (a disk slow to flush, a large group, a stall), the next transaction's
//! statement runs while the last waits for its flush, and PostgreSQL can
//! flush their commits together instead of one after another.

use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use super::{Append, HeldConnection, Journal, Result};
use crate::ids::SeqNr;

type Job = (Append, oneshot::Sender<Result<SeqNr>>);

/// Hands batches to the group writers. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
}

impl Committer {
    /// Starts `writers` writer tasks, each writing up to `max_group` batches
    /// per transaction, a further one starting beside those in flight once
    /// the newest has run for `overlap_after`. They stop when the last clone
    /// of the committer is dropped.
    pub fn start(
        journal: Journal,
        writers: usize,
        max_group: usize,
        overlap_after: Duration,
    ) -> Self {
        let (writers, max_group) = (writers.max(1), max_group.max(1));
        let (queue, jobs) = mpsc::channel::<Job>(max_group * writers * 4);
        let shared = Arc::new(Writers::new(writers, overlap_after));
        let groups = (0..writers)
            .map(|k| {
                let (group, groups) = mpsc::channel(1);
                tokio::spawn(write(journal.clone(), shared.clone(), k, groups));
                group
            })
            .collect();
        tokio::spawn(dispatch(jobs, shared, groups, max_group));
        Self { queue }
    }

    /// Appends a batch, in a transaction shared with whatever else is waiting.
    pub async fn append(&self, batch: Append) -> Result<SeqNr> {
        let (reply, result) = oneshot::channel();
        let closed = || super::Error::Database(sqlx::Error::PoolClosed);
        self.queue
            .send((batch, reply))
            .await
            .map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }
}

/// Which writers are writing, and when the newest transaction started.
struct Writers {
    in_flight: SyncMutex<InFlight>,
    /// Told whenever a transaction ends.
    finished: Notify,
    overlap_after: Duration,
}

struct InFlight {
    busy: Vec<bool>,
    /// When the latest transaction started (it may have ended since).
    newest: Instant,
}

impl Writers {
    fn new(writers: usize, overlap_after: Duration) -> Self {
        Self {
            in_flight: SyncMutex::new(InFlight {
                busy: vec![false; writers],
                newest: Instant::now(),
            }),
            finished: Notify::new(),
            overlap_after,
        }
    }

    /// Waits until a transaction may start: at once when none is in flight;
    /// beside others once the newest has run for `overlap_after` and a
    /// writer is free. Batches queue up meanwhile.
    async fn turn(&self) {
        loop {
            let finished = self.finished.notified();
            let due = {
                let in_flight = self.in_flight.lock().expect("in flight");
                let busy = in_flight.busy.iter().filter(|b| **b).count();
                if busy == 0 {
                    return;
                }
                (busy < in_flight.busy.len()).then_some(in_flight.newest + self.overlap_after)
            };
            match due {
                Some(due) if due <= Instant::now() => return,
                Some(due) => tokio::select! {
                    () = finished => {}
                    () = tokio::time::sleep_until(due.into()) => return,
                },
                None => finished.await,
            }
        }
    }

    /// Marks the first free writer busy and names it. Only after [`turn`](Self::turn).
    fn start(&self) -> usize {
        let mut in_flight = self.in_flight.lock().expect("in flight");
        let k = in_flight
            .busy
            .iter()
            .position(|b| !*b)
            .expect("a free writer after its turn");
        in_flight.busy[k] = true;
        in_flight.newest = Instant::now();
        k
    }

    fn ended(&self, k: usize) {
        self.in_flight.lock().expect("in flight").busy[k] = false;
        self.finished.notify_waiters();
    }
}

/// Takes whatever batches are waiting, up to `max_group`, whenever a
/// transaction may start, and hands them to the first free writer.
async fn dispatch(
    mut jobs: mpsc::Receiver<Job>,
    writers: Arc<Writers>,
    groups: Vec<mpsc::Sender<Vec<Job>>>,
    max_group: usize,
) {
    while let Some(job) = jobs.recv().await {
        let mut group = vec![job];
        writers.turn().await;
        while group.len() < max_group {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let k = writers.start();
        if groups[k].send(group).await.is_err() {
            return;
        }
    }
}

/// Writes writer `k`'s groups. The first writer keeps its connection; the
/// others, which only write while appends are slow, hand theirs back after
/// each transaction, so that they do not keep connections from the rest of
/// the node.
async fn write(
    journal: Journal,
    writers: Arc<Writers>,
    k: usize,
    mut groups: mpsc::Receiver<Vec<Job>>,
) {
    let mut conn = HeldConnection::new(&journal);
    while let Some(group) = groups.recv().await {
        let (batches, replies): (Vec<Append>, Vec<_>) = group.into_iter().unzip();
        let started = Instant::now();
        let writing = Writing(&writers, k);
        let results = match conn.get().await {
            Ok(held) => journal.append_many_on(held, &batches).await,
            Err(error) => batches.iter().map(|_| Err(error.duplicate())).collect(),
        };
        drop(writing);
        for result in &results {
            conn.check(result);
        }
        if k > 0 {
            conn.release();
        }
        let metrics = crate::metrics::metrics();
        metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.group_size.observe(batches.len() as f64);
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Writer `k` is busy while this lives: also when the append panics, so
/// that the dispatcher does not wait for it forever (it then finds the
/// writer gone and stops, and appends fail as when the committer closes).
struct Writing<'a>(&'a Writers, usize);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.ended(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);
    const PATIENCE: Duration = Duration::from_secs(5);

    /// Awaits `future`, failing with `what` unless it is done within
    /// [`PATIENCE`].
    async fn soon<T>(future: impl Future<Output = T>, what: &str) -> T {
        tokio::time::timeout(PATIENCE, future).await.expect(what)
    }

    /// Whether `turn` is still waiting after a while.
    async fn waits(writers: &Arc<Writers>) -> tokio::task::JoinHandle<()> {
        let waiting = tokio::spawn({
            let writers = writers.clone();
            async move { writers.turn().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "a transaction started too soon");
        waiting
    }

    #[tokio::test]
    async fn a_transaction_starts_at_once_on_the_first_writer_when_none_is_in_flight() {
        let writers = Writers::new(4, LONG);
        for _ in 0..3 {
            soon(writers.turn(), "no wait").await;
            assert_eq!(writers.start(), 0);
            writers.ended(0);
        }
    }

    #[tokio::test]
    async fn a_further_transaction_waits_until_the_last_ends() {
        let writers = Arc::new(Writers::new(4, LONG));
        assert_eq!(writers.start(), 0);
        let waiting = waits(&writers).await;
        writers.ended(0);
        soon(waiting, "starts once the one in flight ended")
            .await
            .unwrap();
        assert_eq!(writers.start(), 0);
    }

    #[tokio::test]
    async fn a_further_transaction_starts_once_the_newest_has_run_long_enough() {
        let overlap = Duration::from_millis(200);
        let writers = Writers::new(4, overlap);
        let first = Instant::now();
        assert_eq!(writers.start(), 0);
        soon(writers.turn(), "starts beside a slow one").await;
        assert!(first.elapsed() >= overlap);
        // Two in flight: the wait counts from the newer.
        let second = Instant::now();
        assert_eq!(writers.start(), 1);
        soon(writers.turn(), "starts beside two slow ones").await;
        assert!(second.elapsed() >= overlap);
        // The first free writer is taken.
        writers.ended(0);
        assert_eq!(writers.start(), 0);
    }

    #[tokio::test]
    async fn no_transaction_starts_while_every_writer_is_busy() {
        let writers = Arc::new(Writers::new(2, Duration::from_millis(1)));
        assert_eq!(writers.start(), 0);
        assert_eq!(writers.start(), 1);
        let waiting = waits(&writers).await;
        writers.ended(1);
        soon(waiting, "starts once a writer is free").await.unwrap();
        assert_eq!(writers.start(), 1);
    }
}
