//! The snapshot writer: pools' snapshots written off the entities' path.
//!
//! An entity that waited for its snapshot's insert and commit held up the
//! commands queued behind it: on a hot pool, a stall of a few milliseconds
//! every thousand events. Here one task writes the snapshots entities hand
//! it, one at a time on a connection of its own. A snapshot only saves a
//! recovery from replaying events, so one that finds the queue full, or
//! fails to be written, is dropped: the pool takes another later.

use tokio::sync::{mpsc, oneshot};

use super::{HeldConnection, Journal};
use crate::ids::{PoolId, SeqNr};
use crate::sandbox::Snapshot;

/// Snapshots waiting to be written, at most.
const QUEUE: usize = 64;

enum Message {
    Save {
        pool: PoolId,
        seq_nr: SeqNr,
        snapshot: Snapshot,
        plugin_digest: String,
    },
    /// Answered once every snapshot queued before it is written (or given up).
    Flush(oneshot::Sender<()>),
}

/// Hands snapshots to the writer task. Cheap to clone; the task stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct SnapshotWriter {
    queue: mpsc::Sender<Message>,
}

impl SnapshotWriter {
    /// Starts the writer task.
    pub fn start(journal: Journal) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write(journal, jobs));
        Self { queue }
    }

    /// Queues a pool's snapshot as of `seq_nr`; false when the queue is
    /// full and it was dropped.
    pub fn save(
        &self,
        pool: &PoolId,
        seq_nr: SeqNr,
        snapshot: Snapshot,
        plugin_digest: &str,
    ) -> bool {
        self.queue
            .try_send(Message::Save {
                pool: pool.clone(),
                seq_nr,
                snapshot,
                plugin_digest: plugin_digest.to_owned(),
            })
            .is_ok()
    }

    /// Waits until the snapshots queued so far are written.
    pub async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.queue.send(Message::Flush(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

async fn write(journal: Journal, mut queue: mpsc::Receiver<Message>) {
    let mut conn = HeldConnection::new(&journal);
    while let Some(message) = queue.recv().await {
        match message {
            Message::Save {
                pool,
                seq_nr,
                snapshot,
                plugin_digest,
            } => {
                let saved = match conn.get().await {
                    Ok(held) => {
                        journal
                            .save_snapshot_on(held, &pool, seq_nr, &snapshot, &plugin_digest)
                            .await
                    }
                    Err(error) => Err(error),
                };
                conn.check(&saved);
                if let Err(error) = saved {
                    tracing::warn!(pool = %pool, seq_nr = seq_nr.0, "saving a snapshot failed: {error}");
                }
            }
            Message::Flush(reply) => {
                let _ = reply.send(());
            }
        }
    }
}
