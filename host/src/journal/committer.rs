//! Group commit: entities hand their batches to a few writer tasks, each of
//! which takes whatever is waiting and writes it in one transaction.
//!
//! No batch waits for company: a writer that finds one batch writes one. The
//! grouping comes from the commits in flight, during which the next batches
//! queue up — the busier the node, the larger the groups.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

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
    /// per transaction. They stop when the last clone of the committer is dropped.
    pub fn start(journal: Journal, writers: usize, max_group: usize) -> Self {
        let (writers, max_group) = (writers.max(1), max_group.max(1));
        let (queue, jobs) = mpsc::channel::<Job>(max_group * writers * 4);
        let jobs = Arc::new(Mutex::new(jobs));
        for _ in 0..writers {
            tokio::spawn(write(journal.clone(), jobs.clone(), max_group));
        }
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

async fn write(journal: Journal, jobs: Arc<Mutex<mpsc::Receiver<Job>>>, max_group: usize) {
    let mut conn = HeldConnection::new(&journal);
    loop {
        let mut group = Vec::new();
        {
            let mut jobs = jobs.lock().await;
            match jobs.recv().await {
                Some(job) => group.push(job),
                None => return,
            }
            while group.len() < max_group {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
        }
        let (batches, replies): (Vec<Append>, Vec<_>) = group.into_iter().unzip();
        let started = std::time::Instant::now();
        let results = match conn.get().await {
            Ok(held) => journal.append_many_on(held, &batches).await,
            Err(error) => batches.iter().map(|_| Err(error.duplicate())).collect(),
        };
        for result in &results {
            conn.check(result);
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
