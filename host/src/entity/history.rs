//! Past states of a pool, rebuilt from its events in a throwaway instance:
//! the live entity is neither asked nor disturbed.

use time::OffsetDateTime;

use super::replay::{ReplayError, replay};
use super::runtime::Runtime;
use super::{Error, Result};
use crate::ids::{PoolId, SeqNr};
use crate::journal;
use crate::sandbox::{LivePool, View};

/// A point in a pool's history.
#[derive(Clone, Copy, Debug)]
pub enum Point {
    /// Right after the event with this seq (0: as created).
    Seq(SeqNr),
    /// After every event appended at or before this time.
    Time(OffsetDateTime),
}

impl Runtime {
    /// The pool's view as of a point in its history, rebuilt by the capacity
    /// type's current plugin from the newest snapshot before that point and
    /// the events after it. A point past the end of the history gives the
    /// latest state.
    pub async fn state_at(&self, id: &PoolId, point: Point) -> Result<(SeqNr, View)> {
        let journal = self.journal();
        let record = journal.pool(id).await.map_err(|e| match e {
            journal::Error::UnknownPool(id) => Error::UnknownPool(id),
            e => Error::Journal(e),
        })?;
        let target = match point {
            Point::Seq(seq) => seq.min(journal.last_seq(id).await?),
            Point::Time(at) => journal.seq_at(id, at).await?,
        };
        let plugin = self.plugin(&record.capacity_type)?;
        let config = record.config.get();
        let failed = |reason: String| Error::PoolFailed {
            pool: id.clone(),
            reason,
        };

        let mut start = None;
        if let Some(stored) = journal
            .snapshot_before(id, plugin.info().state_version, target)
            .await?
            && let Ok(Ok(live)) = LivePool::restore(&plugin, id.as_str(), config, stored.snapshot)
        {
            start = Some((live, stored.seq_nr));
        }
        let (mut live, seq) = match start {
            Some(start) => start,
            None => {
                let live = LivePool::create(&plugin, id.as_str(), config)?
                    .map_err(|p| failed(format!("the plugin now refuses its config: {p}")))?;
                (live, SeqNr(0))
            }
        };
        let seq = replay(journal, id, &mut live, seq, target)
            .await
            .map(|replayed| replayed.end)
            .map_err(|error| match error {
                ReplayError::Journal(error) => Error::Journal(error),
                error => failed(error.to_string()),
            })?;
        Ok((seq, live.view()?))
    }
}
