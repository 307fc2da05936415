//! The snapshot writer: pools' snapshots written off the entities' path.
//!
//! An entity that waited for its snapshot's insert and commit held up the
//! commands queued behind it: on a hot pool, a stall of a few milliseconds
//! every thousand events. Here one task writes the snapshots entities hand
//! it, one at a time on a connection of its own. A snapshot only saves a
//! recovery from replaying events, so one that finds the queue full, or
//! fails to be written, is dropped: the pool takes another later.
//!
//! Old snapshots are thinned as new ones are written, so that a pool keeps
//! a few, spread over its history, rather than one per thousand events.

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

/// Which of a pool's older snapshots (their seqs, newest first) to delete
/// once one at `newest` is written.
///
/// An older snapshot `d` events back stands for the aligned stretch of the
/// history around it that is as long as the largest power of two up to
/// `d`, and is deleted when a newer one stands in that stretch too. The
/// stretches widen with age, so a pool keeps about `log2` of its history's
/// length in snapshots, always the newest older one among them, and a past
/// state `d` events back is rebuilt from a snapshot less than `2d` events
/// (plus the distance between two snapshots) before it.
pub(super) fn thinned_out(newest: i64, older: &[i64]) -> Vec<i64> {
    let mut thinned = Vec::new();
    // The stretches are aligned intervals, so if any kept snapshot shares
    // this one's stretch, the nearest kept one does.
    let mut nearest_kept = newest;
    for &seq in older {
        let stretch = 1i64 << (newest - seq).max(1).ilog2();
        if nearest_kept / stretch == seq / stretch {
            thinned.push(seq);
        } else {
            nearest_kept = seq;
        }
    }
    thinned
}

#[cfg(test)]
mod tests {
    use super::thinned_out;

    /// Snapshots written at these seqs, thinned as they go: what is kept.
    fn kept_after(seqs: impl IntoIterator<Item = i64>) -> Vec<i64> {
        let mut kept: Vec<i64> = Vec::new(); // newest first
        for seq in seqs {
            let thinned = thinned_out(seq, &kept);
            kept.retain(|s| !thinned.contains(s));
            assert!(
                kept.first()
                    .is_none_or(|&previous| !thinned.contains(&previous))
            );
            kept.insert(0, seq);
        }
        kept
    }

    #[test]
    fn a_pool_keeps_about_log2_of_its_history_in_snapshots() {
        for (every, count) in [(1, 5_000), (1_000, 2_000), (7, 30_000)] {
            let kept = kept_after((1..=count).map(|n| n * every));
            let newest = count * every;
            assert_eq!(kept[..2], [newest, newest - every], "the newest two stay");
            let bound = (newest as f64).log2().ceil() as usize + 2;
            assert!(
                kept.len() <= bound,
                "{} kept of {count}: {kept:?}",
                kept.len()
            );
            // Every past state is rebuilt from a snapshot not far before it.
            for point in (0..newest).step_by(every.max(13) as usize) {
                let from = kept.iter().copied().find(|&s| s <= point).unwrap_or(0);
                let back = newest - point;
                assert!(
                    point - from < 2 * back + every,
                    "{point} ({back} back) rebuilt from {from}"
                );
            }
        }
    }

    #[test]
    fn irregular_snapshots_are_thinned_the_same_way() {
        // Snapshots wait for events that outweigh them: the gaps vary.
        let mut seq = 0;
        let seqs = (0..3_000u64).map(|n| {
            seq += 200 + (n * 7_919 % 1_301) as i64;
            seq
        });
        let seqs: Vec<i64> = seqs.collect();
        let kept = kept_after(seqs.iter().copied());
        let newest = *seqs.last().unwrap();
        assert_eq!(kept[..2], [newest, seqs[seqs.len() - 2]]);
        assert!(kept.len() <= (newest as f64).log2().ceil() as usize + 2);
        for point in (0..newest).step_by(997) {
            let from = kept.iter().copied().find(|&s| s <= point).unwrap_or(0);
            assert!(point - from < 2 * (newest - point) + 1_501);
        }
    }
}
