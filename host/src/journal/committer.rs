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

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{Append, Error, HeldConnection, Journal};
use crate::ids::SeqNr;

type Job = (Append, oneshot::Sender<Result<SeqNr, Failed>>);

/// An append that failed, with its batch when the committer still had it,
/// so that its writer can look in the journal for it: a failed append may
/// have been written all the same (its commit's answer was lost).
#[derive(Debug)]
pub struct Failed {
    /// Why.
    pub error: Error,
    /// The batch, unless it was lost with a writer that stopped.
    pub batch: Option<Box<Append>>,
}

/// The batches of one transaction, with the connection to write them on
/// when the writer has none of its own.
type Group = (Vec<Job>, Option<PoolConnection<Postgres>>);

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
        tokio::spawn(dispatch(journal, jobs, shared, groups, max_group));
        Self { queue }
    }

    /// Appends a batch, in a transaction shared with whatever else is waiting.
    pub async fn append(&self, batch: Append) -> Result<SeqNr, Failed> {
        let (reply, result) = oneshot::channel();
        let closed = || Error::Database(sqlx::Error::PoolClosed);
        if let Err(returned) = self.queue.send((batch, reply)).await {
            let (batch, _) = returned.0;
            return Err(Failed {
                error: closed(),
                batch: Some(Box::new(batch)),
            });
        }
        result.await.unwrap_or_else(|_| {
            Err(Failed {
                error: closed(),
                batch: None,
            })
        })
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

/// What a transaction that may not start yet waits for.
enum Wait {
    /// A connection for an extra writer, or the first writer to be free.
    ForConnection,
    /// The newest transaction to have run long enough, or one to end.
    Until(Instant),
    /// A transaction to end.
    ForWriter,
}

impl InFlight {
    fn start(&mut self, k: usize) -> usize {
        self.busy[k] = true;
        self.newest = Instant::now();
        k
    }
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

    /// Waits until a transaction may start, marks its writer busy and names
    /// it. A transaction starts at once when none is in flight, and beside
    /// others only once the newest has run for `overlap_after`. It goes to
    /// the first writer, which keeps a connection of its own, whenever that
    /// one is free; to another only with a connection from `spare` (the
    /// node's pool), handed over with the group. Should the first writer
    /// be done before a connection is to be had, it takes the group: an
    /// extra writer never holds up a group waiting for a connection. The
    /// wait for one goes on while other extra writers end, so that a
    /// connection being opened is not dropped half-way.
    async fn turn<C, F>(&self, spare: impl Fn() -> F) -> (usize, Option<C>)
    where
        F: Future<Output = Option<C>>,
    {
        loop {
            let mut finished = std::pin::pin!(self.finished.notified());
            let wait = {
                let mut in_flight = self.in_flight.lock().expect("in flight");
                let free = in_flight.busy.iter().filter(|b| !**b).count();
                let due = in_flight.newest + self.overlap_after;
                if free == in_flight.busy.len() || (free > 0 && due <= Instant::now()) {
                    if !in_flight.busy[0] {
                        return (in_flight.start(0), None);
                    }
                    Wait::ForConnection
                } else if free > 0 {
                    Wait::Until(due)
                } else {
                    Wait::ForWriter
                }
            };
            match wait {
                Wait::ForConnection => {
                    let mut conn = std::pin::pin!(spare());
                    loop {
                        tokio::select! {
                            biased;
                            () = &mut finished => {
                                finished.set(self.finished.notified());
                                let mut in_flight = self.in_flight.lock().expect("in flight");
                                if !in_flight.busy[0] {
                                    return (in_flight.start(0), None);
                                }
                            }
                            conn = &mut conn => match conn {
                                Some(conn) => {
                                    let mut in_flight = self.in_flight.lock().expect("in flight");
                                    let k = in_flight.busy.iter().position(|b| !*b);
                                    let k = in_flight.start(k.expect("writers only get free"));
                                    return (k, (k > 0).then_some(conn));
                                }
                                // None to be had (the database is gone):
                                // the first writer fails the group.
                                None => break finished.await,
                            },
                        }
                    }
                }
                Wait::Until(due) => tokio::select! {
                    () = finished => {}
                    () = tokio::time::sleep_until(due.into()) => {}
                },
                Wait::ForWriter => finished.await,
            }
        }
    }

    fn ended(&self, k: usize) {
        self.in_flight.lock().expect("in flight").busy[k] = false;
        self.finished.notify_waiters();
    }
}

/// Takes whatever batches are waiting, up to `max_group`, whenever a
/// transaction may start, and hands them to the writer whose turn it is.
async fn dispatch(
    journal: Journal,
    mut jobs: mpsc::Receiver<Job>,
    writers: Arc<Writers>,
    groups: Vec<mpsc::Sender<Group>>,
    max_group: usize,
) {
    while let Some(job) = jobs.recv().await {
        let mut group = vec![job];
        let (k, spare) = writers.turn(|| journal.spare_connection()).await;
        while group.len() < max_group {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if groups[k].send((group, spare)).await.is_err() {
            return;
        }
    }
}

/// Writes writer `k`'s groups. The first writer keeps its connection; the
/// others, which only write while appends are slow, write on the one that
/// comes with each group and hand it back after the transaction.
async fn write(
    journal: Journal,
    writers: Arc<Writers>,
    k: usize,
    mut groups: mpsc::Receiver<Group>,
) {
    let mut conn = HeldConnection::new(&journal);
    while let Some((group, spare)) = groups.recv().await {
        let (batches, replies): (Vec<Append>, Vec<_>) = group.into_iter().unzip();
        let started = Instant::now();
        let writing = Writing(&writers, k);
        let lent = spare.is_some();
        if let Some(spare) = spare {
            conn.hold(spare);
            crate::metrics::metrics().overlapping_appends.inc();
        }
        let results = match conn.get().await {
            Ok(held) => journal.append_many_on(held, &batches).await,
            Err(error) => batches.iter().map(|_| Err(error.duplicate())).collect(),
        };
        drop(writing);
        for result in &results {
            conn.check(result);
        }
        if lent {
            conn.release();
        }
        let metrics = crate::metrics::metrics();
        metrics
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.group_size.observe(batches.len() as f64);
        for ((reply, result), batch) in replies.into_iter().zip(results).zip(batches) {
            let _ = reply.send(result.map_err(|error| Failed {
                error,
                batch: Some(Box::new(batch)),
            }));
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

    use futures::future::BoxFuture;

    const LONG: Duration = Duration::from_secs(30);
    const PATIENCE: Duration = Duration::from_secs(5);

    /// Awaits `future`, failing with `what` unless it is done within
    /// [`PATIENCE`].
    async fn soon<T>(future: impl Future<Output = T>, what: &str) -> T {
        tokio::time::timeout(PATIENCE, future).await.expect(what)
    }

    /// A connection for an extra writer, or one never to be had.
    fn spare(found: bool) -> impl Fn() -> BoxFuture<'static, Option<()>> {
        move || match found {
            true => Box::pin(std::future::ready(Some(()))),
            false => Box::pin(std::future::pending()),
        }
    }

    /// Whether `turn` is still waiting after a while.
    async fn waits(writers: &Arc<Writers>, found: bool) -> tokio::task::JoinHandle<usize> {
        let waiting = tokio::spawn({
            let writers = writers.clone();
            async move { writers.turn(spare(found)).await.0 }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "a transaction started too soon");
        waiting
    }

    /// A transaction (with a connection `found` for an extra writer or not)
    /// waits while writer `ended` is busy, and once it ends starts on
    /// writer `k`.
    async fn waits_until_ended(
        writers: &Arc<Writers>,
        found: bool,
        ended: usize,
        k: usize,
        what: &str,
    ) {
        let waiting = waits(writers, found).await;
        writers.ended(ended);
        assert_eq!(soon(waiting, what).await.unwrap(), k);
    }

    /// Starts a transaction, which must not wait long, on writer `k`.
    async fn starts(writers: &Writers, k: usize, what: &str) {
        assert_eq!(soon(writers.turn(spare(true)), what).await.0, k);
    }

    #[tokio::test]
    async fn a_transaction_starts_at_once_on_the_first_writer_when_none_is_in_flight() {
        let writers = Writers::new(4, LONG);
        for _ in 0..3 {
            starts(&writers, 0, "no wait").await;
            writers.ended(0);
        }
    }

    #[tokio::test]
    async fn a_further_transaction_waits_until_the_last_ends() {
        let writers = Arc::new(Writers::new(4, LONG));
        starts(&writers, 0, "no wait").await;
        waits_until_ended(&writers, true, 0, 0, "starts once the one in flight ended").await;
    }

    #[tokio::test]
    async fn a_further_transaction_starts_once_the_newest_has_run_long_enough() {
        let overlap = Duration::from_millis(200);
        let writers = Writers::new(4, overlap);
        let first = Instant::now();
        starts(&writers, 0, "no wait").await;
        starts(&writers, 1, "starts beside a slow one").await;
        assert!(first.elapsed() >= overlap);
        // Two in flight: the wait counts from the newer, and the first
        // writer is taken whenever it is free.
        let second = Instant::now();
        writers.ended(0);
        starts(&writers, 0, "starts beside two slow ones").await;
        assert!(second.elapsed() >= overlap);
    }

    #[tokio::test]
    async fn no_transaction_starts_while_every_writer_is_busy() {
        let writers = Arc::new(Writers::new(2, Duration::from_millis(1)));
        starts(&writers, 0, "no wait").await;
        starts(&writers, 1, "starts beside a slow one").await;
        waits_until_ended(&writers, true, 1, 1, "starts once a writer is free").await;
    }

    #[tokio::test]
    async fn the_wait_for_a_connection_outlasts_other_writers_ending() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let writers = Arc::new(Writers::new(3, Duration::from_millis(1)));
        starts(&writers, 0, "no wait").await;
        starts(&writers, 1, "starts beside a slow one").await;
        let (calls, opened) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let waiting = tokio::spawn({
            let (writers, calls, opened) = (writers.clone(), calls.clone(), opened.clone());
            async move {
                let spare = || {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let opened = opened.clone();
                    async move {
                        opened.notified().await;
                        Some(())
                    }
                };
                writers.turn(spare).await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        writers.ended(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "started without a connection");
        opened.notify_waiters();
        let (k, conn) = soon(waiting, "starts once the connection is there")
            .await
            .unwrap();
        assert_eq!((k, conn), (1, Some(())));
        assert_eq!(calls.load(Ordering::Relaxed), 1, "asked for one connection");
    }

    #[tokio::test]
    async fn without_a_spare_connection_a_transaction_waits_for_the_first_writer() {
        let writers = Arc::new(Writers::new(4, Duration::from_millis(1)));
        starts(&writers, 0, "no wait").await;
        waits_until_ended(
            &writers,
            false,
            0,
            0,
            "starts once the first writer is free",
        )
        .await;
    }
}
