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

/// How far a replay went.
pub(super) struct Replayed {
    /// The seq it ended at (earlier than asked when the history is shorter).
    pub end: SeqNr,
    /// The size of the payloads it applied.
    pub payload_bytes: usize,
}

/// Applies the pool's events after `from` up to and including `until`, in
/// order.
pub(super) async fn replay(
    journal: &Journal,
    id: &PoolId,
    live: &mut LivePool,
    from: SeqNr,
    until: SeqNr,
) -> Result<Replayed, ReplayError> {
    let mut seq = from;
    let mut payload_bytes = 0;
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
            payload_bytes += event.payload.get().len();
        }
        // A long history must not hold a worker for its whole length.
        tokio::task::yield_now().await;
    }
    Ok(Replayed {
        end: seq,
        payload_bytes,
    })
}
