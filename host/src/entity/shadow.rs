//! Shadow evaluation: a candidate version decides every live command of its
//! capacity type beside the active one. Its decisions are compared with the
//! real ones and never persisted; the real events are applied to it so that
//! it keeps following the pool.
//!
//! The shadow runs after a batch has been appended and answered, so the
//! real decision path waits for nothing but the comparison's bookkeeping.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::metrics::{ShadowLabels, metrics};
use crate::sandbox::{Decision, Plugin};

/// Disagreements kept as examples, per shadow.
const EXAMPLES: usize = 20;

/// A version shadowing a capacity type on this node, and what it found.
pub struct Shadow {
    pub(super) plugin: Arc<Plugin>,
    since: OffsetDateTime,
    agreements: AtomicU64,
    disagreements: AtomicU64,
    failures: AtomicU64,
    examples: Mutex<VecDeque<Disagreement>>,
}

/// One command the shadow decided otherwise.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Disagreement {
    /// The pool.
    pub pool: String,
    /// The pool's seq before the command.
    pub seq_nr: i64,
    /// The command.
    #[schema(value_type = Object)]
    pub command: serde_json::Value,
    /// What the active version decided (and was recorded).
    #[schema(value_type = Object)]
    pub active: serde_json::Value,
    /// What the shadow decided.
    #[schema(value_type = Object)]
    pub shadow: serde_json::Value,
}

/// What a shadow found so far.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ShadowReport {
    /// The capacity type.
    pub capacity_type: String,
    /// The shadowing version.
    pub digest: String,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub since: OffsetDateTime,
    /// Commands it decided as the active version did.
    pub agreements: u64,
    /// Commands it decided otherwise.
    pub disagreements: u64,
    /// Pools or commands it could not follow (it cannot rebuild the pool,
    /// faulted, or cannot apply an event the active version decided).
    pub failures: u64,
    /// The latest disagreements, newest last.
    pub examples: Vec<Disagreement>,
}

impl Shadow {
    pub(super) fn new(plugin: Arc<Plugin>) -> Self {
        Self {
            plugin,
            since: OffsetDateTime::now_utc(),
            agreements: AtomicU64::new(0),
            disagreements: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            examples: Mutex::default(),
        }
    }

    /// The report so far.
    pub fn report(&self) -> ShadowReport {
        ShadowReport {
            capacity_type: self.plugin.info().capacity_type.clone(),
            digest: self.plugin.digest().to_owned(),
            since: self.since,
            agreements: self.agreements.load(Ordering::Relaxed),
            disagreements: self.disagreements.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            examples: self
                .examples
                .lock()
                .expect("shadow examples")
                .iter()
                .cloned()
                .collect(),
        }
    }

    fn count(&self, counter: &AtomicU64, result: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        metrics()
            .shadow_decisions
            .get_or_create(&ShadowLabels {
                capacity_type: self.plugin.info().capacity_type.clone(),
                result,
            })
            .inc();
    }

    pub(super) fn failed(&self) {
        self.count(&self.failures, "failed");
    }

    /// Records one comparison.
    pub(super) fn compare(
        &self,
        pool: &str,
        seq_nr: i64,
        command: &crate::sandbox::Command,
        active: &Decision,
        shadow: &Decision,
    ) {
        if same(active, shadow) {
            self.count(&self.agreements, "agree");
            return;
        }
        self.count(&self.disagreements, "disagree");
        let mut examples = self.examples.lock().expect("shadow examples");
        if examples.len() == EXAMPLES {
            examples.pop_front();
        }
        examples.push_back(Disagreement {
            pool: pool.to_owned(),
            seq_nr,
            command: serde_json::to_value(command).unwrap_or_default(),
            active: decision_json(active),
            shadow: decision_json(shadow),
        });
    }
}

/// Same events (as JSON values, so key order does not matter), or the same
/// kind of refusal with the same code.
fn same(a: &Decision, b: &Decision) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| {
                    serde_json::from_str::<serde_json::Value>(x.get()).ok()
                        == serde_json::from_str::<serde_json::Value>(y.get()).ok()
                })
        }
        (Err(a), Err(b)) => {
            std::mem::discriminant(a) == std::mem::discriminant(b)
                && a.problem().code == b.problem().code
        }
        _ => false,
    }
}

fn decision_json(decision: &Decision) -> serde_json::Value {
    match decision {
        Ok(events) => serde_json::json!({
            "events": events
                .iter()
                .map(|e| serde_json::from_str(e.get()).unwrap_or_default())
                .collect::<Vec<serde_json::Value>>()
        }),
        Err(failure) => serde_json::to_value(failure).unwrap_or_default(),
    }
}
