//! Which keyed commands took effect, kept for as long as a retry of them is
//! honoured (the idempotency window), so that a pool's memory follows its
//! rate of commands and not its age.
//!
//! A retry is rare and its outcome is in the journal: the events of the
//! command, the last of them at a known seq. So what is kept per key is
//! where those events are, not the events themselves, and a retry reads
//! them back. Over an hour's window at thousands of commands a second,
//! these keys are most of a node's memory: about 160 bytes each this way,
//! against about 420 with whole outcomes, in the benchmark's reservations.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Error, Outcome, Result};
use crate::ids::{PoolId, SeqNr};
use crate::journal::Journal;

/// Where the events of a command that took effect are in its pool's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Taken {
    /// The seq of its last event (the pool's seq after it, if it decided none).
    seq_nr: SeqNr,
    /// How many events it decided.
    events: u32,
}

impl Taken {
    pub(super) fn new(seq_nr: SeqNr, events: u32) -> Self {
        Self { seq_nr, events }
    }

    /// Where an accepted outcome's events are; `None` for any other outcome.
    pub(super) fn of(outcome: &Outcome) -> Option<Self> {
        match outcome {
            Outcome::Accepted { seq_nr, events } => Some(Self::new(
                *seq_nr,
                u32::try_from(events.len()).expect("fewer than 2^32 events a command"),
            )),
            _ => None,
        }
    }

    /// The outcome again, its events read back from the journal.
    pub(super) async fn outcome(self, journal: &Journal, pool: &PoolId) -> Result<Outcome> {
        let Taken { seq_nr, events } = self;
        if events == 0 {
            return Ok(Outcome::Accepted {
                seq_nr,
                events: Vec::new(),
            });
        }
        let before = SeqNr(seq_nr.0 - i64::from(events));
        let read = journal.events(pool, before, i64::from(events)).await?;
        // Histories have no gaps and are never cut, so anything else is a
        // journal that was changed under the node.
        if read.len() != events as usize || read.last().map(|e| e.seq_nr) != Some(seq_nr) {
            return Err(Error::Journal(crate::journal::Error::Corrupt {
                pool: pool.clone(),
                reason: format!(
                    "the {events} events of a command that took effect, up to {seq_nr}, are not all there"
                ),
            }));
        }
        Ok(Outcome::Accepted {
            seq_nr,
            events: read.into_iter().map(|e| e.payload).collect(),
        })
    }
}

pub(super) struct Remembered {
    window: Duration,
    taken: HashMap<Arc<str>, Taken>,
    /// Keys in the order they were taken, to forget the oldest first.
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Remembered {
    /// The commands taken within the window, as recovery finds them.
    pub(super) fn new(window: Duration, recovered: Vec<(String, Taken)>) -> Self {
        let mut remembered = Self {
            window,
            taken: HashMap::with_capacity(recovered.len()),
            order: VecDeque::with_capacity(recovered.len()),
        };
        for (key, taken) in recovered {
            remembered.insert(&key, taken);
        }
        remembered
    }

    pub(super) fn get(&self, key: &str) -> Option<Taken> {
        self.taken.get(key).copied()
    }

    pub(super) fn insert(&mut self, key: &str, taken: Taken) {
        let key: Arc<str> = Arc::from(key);
        self.order.push_back((Instant::now(), key.clone()));
        self.taken.insert(key, taken);
    }

    /// Forgets what is older than the window.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) <= self.window {
                break;
            }
            let (_, key) = self.order.pop_front().expect("a front entry");
            self.taken.remove(&key);
        }
    }
}
