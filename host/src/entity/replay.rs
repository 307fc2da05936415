//! Replaying a pool's journal into an instance: the one loop that recovery,
//! moving to another plugin version and rebuilding a past state share.

use crate::ids::{PoolId, SeqNr};
use crate::journal::{self, Journal};
use crate::sandbox::{self, LivePool};

/// Events read per query.
const PAGE: i64 = 5_000;

/// Why a replay stopped.
pub(super) enum ReplayError {
    /// The journal could not be read.
    Journal(journal::Error),
    /// The history has a hole.
    Gap { after: SeqNr, found: SeqNr },
    /// The plugin could not apply an event.
    Event {
        seq_nr: SeqNr,
        error: sandbox::Error,
    },
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Journal(error) => error.fmt(f),
            Self::Gap { after, found } => {
                write!(f, "the journal skips from seq {after} to {found}")
            }
            Self::Event { seq_nr, error } => {
                write!(f, "event {seq_nr} cannot be replayed: {error}")
            }
        }
    }
}

impl ReplayError {
    /// Whether trying again may succeed (a database error, a deadline).
    pub(super) fn is_retryable(&self) -> bool {
        match self {
            Self::Journal(error) => error.is_retryable(),
            Self::Gap { .. } => false,
            Self::Event { error, .. } => error.is_retryable(),
        }
    }
}

/// Applies the pool's events after `from` up to and including `until`, in
/// order, and returns the seq it ended at (earlier than `until` when the
/// history is shorter).
pub(super) async fn replay(
    journal: &Journal,
    id: &PoolId,
    live: &mut LivePool,
    from: SeqNr,
    until: SeqNr,
) -> Result<SeqNr, ReplayError> {
    let mut seq = from;
    while seq < until {
        let page = journal
            .events(id, seq, PAGE.min(until.0 - seq.0))
            .await
            .map_err(ReplayError::Journal)?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            if event.seq_nr != seq.after(1) {
                return Err(ReplayError::Gap {
                    after: seq,
                    found: event.seq_nr,
                });
            }
            live.replay(&event.payload)
                .map_err(|error| ReplayError::Event {
                    seq_nr: event.seq_nr,
                    error,
                })?;
            seq = event.seq_nr;
        }
        // A long history must not hold a worker for its whole length.
        tokio::task::yield_now().await;
    }
    Ok(seq)
}
