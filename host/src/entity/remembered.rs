//! The outcomes of keyed commands that took effect, kept for as long as a
//! retry of them is honoured (the idempotency window), so that a pool's
//! memory follows its rate of commands and not its age.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::Outcome;

pub(super) struct Remembered {
    window: Duration,
    outcomes: HashMap<String, Outcome>,
    /// Keys in the order they were taken, to forget the oldest first.
    taken: VecDeque<(Instant, String)>,
}

impl Remembered {
    /// Outcomes recorded within the window, as recovery finds them.
    pub(super) fn new(window: Duration, recovered: Vec<(String, Outcome)>) -> Self {
        let now = Instant::now();
        let taken = recovered
            .iter()
            .map(|(key, _)| (now, key.clone()))
            .collect();
        Self {
            window,
            outcomes: recovered.into_iter().collect(),
            taken,
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&Outcome> {
        self.outcomes.get(key)
    }

    pub(super) fn insert(&mut self, key: String, outcome: Outcome) {
        self.taken.push_back((Instant::now(), key.clone()));
        self.outcomes.insert(key, outcome);
    }

    /// Forgets what is older than the window.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.taken.front() {
            if now.duration_since(*at) <= self.window {
                break;
            }
            let (_, key) = self.taken.pop_front().expect("a front entry");
            self.outcomes.remove(&key);
        }
    }
}
