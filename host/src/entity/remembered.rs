//! Which keyed commands took effect, kept for as long as a retry of them is
//! honoured (the idempotency window), so that a pool's memory follows its
//! rate of commands and not its age.
//!
//! A retry is rare and its outcome is in the journal: the events of the
//! command, the last of them at a known seq and marked with its key. So
//! what is kept per key is where those events are, under a fingerprint of
//! the key, and a retry reads them back, checking the key. Over an hour's
//! window at thousands of commands a second, these keys are most of a
//! node's memory.
//!
//! Keys are kept in spans of a quarter of the window, a map each: a key is
//! honoured for at least the window and at most a span longer, and a span
//! past that is dropped whole, with no record per key of when it came.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

use super::{Error, Outcome, Result};
use crate::ids::{PoolId, SeqNr};
use crate::journal::{Journal, RequestPrint};

/// Spans the window is kept in.
const SPANS: u32 = 4;

/// A key by the first 128 bits of its SHA-256: 16 bytes however long the
/// key is. Two of a pool's `n` keys share one with a chance of about
/// n²/2¹²⁹, 10⁻²³ for an hour of 20,000 commands a second; and a retry
/// whose events turn out to complete another key is an error, never
/// another command's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Fingerprint(u128);

impl Fingerprint {
    pub(super) fn of(key: &str) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut first = [0; 16];
        first.copy_from_slice(&digest[..16]);
        Self(u128::from_le_bytes(first))
    }
}

/// Where the events of a command that took effect are in its pool's
/// history, and what it asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Taken {
    /// The seq of its last event (the pool's seq after it, if it decided none).
    seq_nr: SeqNr,
    /// How many events it decided.
    events: u32,
    /// What it asked for; unknown for commands an earlier build recorded.
    request: Option<RequestPrint>,
}

impl Taken {
    pub(super) fn new(seq_nr: SeqNr, events: u32, request: Option<RequestPrint>) -> Self {
        Self {
            seq_nr,
            events,
            request,
        }
    }

    /// Where an accepted outcome's events are; `None` for any other outcome.
    pub(super) fn of(outcome: &Outcome, request: Option<RequestPrint>) -> Option<Self> {
        match outcome {
            Outcome::Accepted { seq_nr, events } => Some(Self::new(
                *seq_nr,
                u32::try_from(events.len()).expect("fewer than 2^32 events a command"),
                request,
            )),
            _ => None,
        }
    }

    /// Whether a command asking for `request` is a retry of this one: the
    /// same request, or one this build cannot compare with.
    pub(super) fn is_retry_of(&self, request: RequestPrint) -> bool {
        self.request.is_none_or(|first| first == request)
    }

    /// The outcome of command `key` again, its events read back from the
    /// journal.
    pub(super) async fn outcome(
        self,
        journal: &Journal,
        pool: &PoolId,
        key: &str,
    ) -> Result<Outcome> {
        let Taken { seq_nr, events, .. } = self;
        let events = match events {
            0 => Vec::new(),
            count => journal
                .events_of_command(pool, key, seq_nr, count)
                .await
                .map_err(Error::Journal)?,
        };
        Ok(Outcome::Accepted { seq_nr, events })
    }
}

pub(super) struct Remembered {
    /// How long a span takes new keys: a quarter of the window.
    span: Duration,
    /// The keys taken in each span, by when it opened, the newest last.
    spans: VecDeque<(Instant, HashMap<Fingerprint, Taken>)>,
}

impl Remembered {
    /// The commands taken within the window, as recovery finds them.
    pub(super) fn new(window: Duration, recovered: Vec<(String, Taken)>) -> Self {
        let mut remembered = Self {
            span: window / SPANS,
            spans: VecDeque::new(),
        };
        if !recovered.is_empty() {
            let keys = recovered
                .into_iter()
                .map(|(key, taken)| (Fingerprint::of(&key), taken))
                .collect();
            remembered.spans.push_back((Instant::now(), keys));
        }
        remembered
    }

    pub(super) fn get(&self, key: Fingerprint) -> Option<Taken> {
        self.spans
            .iter()
            .rev()
            .find_map(|(_, keys)| keys.get(&key).copied())
    }

    pub(super) fn insert(&mut self, key: Fingerprint, taken: Taken) {
        let now = Instant::now();
        let open = self
            .spans
            .back()
            .is_some_and(|(opened, _)| now.duration_since(*opened) < self.span);
        if !open {
            self.spans.push_back((now, HashMap::new()));
        }
        let (_, keys) = self.spans.back_mut().expect("a span taking keys");
        keys.insert(key, taken);
    }

    /// Forgets the spans whose every key is older than the window.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        // A span's last key came just before it closed, a span after it opened.
        let kept = self.span * (SPANS + 1);
        while self
            .spans
            .front()
            .is_some_and(|(opened, _)| now.duration_since(*opened) > kept)
        {
            self.spans.pop_front();
        }
    }

    /// Keys remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.spans.iter().map(|(_, keys)| keys.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(3600);
    const SPAN: Duration = Duration::from_secs(900);

    fn taken(n: i64) -> Taken {
        Taken::new(SeqNr(n), 1, None)
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_honoured_for_the_window_and_at_most_a_span_more() {
        let mut remembered = Remembered::new(WINDOW, Vec::new());
        remembered.insert(Fingerprint::of("early"), taken(1));
        tokio::time::advance(SPAN - Duration::from_secs(1)).await;
        // The last key of the first span.
        remembered.insert(Fingerprint::of("late"), taken(2));
        assert_eq!(remembered.spans.len(), 1);

        // Each is honoured a whole window after it was taken.
        tokio::time::advance(WINDOW).await;
        remembered.expire();
        assert_eq!(remembered.get(Fingerprint::of("early")), Some(taken(1)));
        assert_eq!(remembered.get(Fingerprint::of("late")), Some(taken(2)));
        assert_eq!(remembered.get(Fingerprint::of("never")), None);

        // Once the span's last key is past the window, the span goes.
        tokio::time::advance(Duration::from_secs(2)).await;
        remembered.expire();
        assert_eq!(remembered.get(Fingerprint::of("early")), None);
        assert_eq!(remembered.get(Fingerprint::of("late")), None);
        assert_eq!(remembered.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_of_keys_keeps_a_window_and_a_span_of_them() {
        let mut remembered = Remembered::new(WINDOW, Vec::new());
        // One key a second for three windows.
        for n in 0..3 * 3600 {
            remembered.expire();
            remembered.insert(Fingerprint::of(&format!("key-{n}")), taken(n));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        remembered.expire();
        // Key n was taken n seconds in; it is now 3 hours in. Everything
        // within the window is there, nothing older than a span more.
        let now = 3 * 3600;
        for n in [now - 1, now - 3600] {
            assert_eq!(
                remembered.get(Fingerprint::of(&format!("key-{n}"))),
                Some(taken(n))
            );
        }
        assert_eq!(
            remembered.get(Fingerprint::of(&format!("key-{}", now - 3600 - 900 - 1))),
            None
        );
        assert!(
            (3600..=3600 + 900).contains(&remembered.len()),
            "{}",
            remembered.len()
        );
        assert!(remembered.spans.len() <= SPANS as usize + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn recovered_keys_are_honoured_for_a_window_from_recovery() {
        let mut remembered = Remembered::new(WINDOW, vec![("recovered".into(), taken(7))]);
        tokio::time::advance(WINDOW).await;
        remembered.expire();
        assert_eq!(remembered.get(Fingerprint::of("recovered")), Some(taken(7)));
        tokio::time::advance(SPAN + Duration::from_secs(1)).await;
        remembered.expire();
        assert_eq!(remembered.get(Fingerprint::of("recovered")), None);
    }

    #[test]
    fn keys_are_told_apart_by_their_fingerprints() {
        assert_eq!(Fingerprint::of("order-1"), Fingerprint::of("order-1"));
        assert_ne!(Fingerprint::of("order-1"), Fingerprint::of("order-2"));
        assert_ne!(Fingerprint::of(""), Fingerprint::of("\0"));
    }
}
