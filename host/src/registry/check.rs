//! The replay check: a candidate version rebuilds existing pools from their
//! recorded events, beside the active version, and every pool it cannot
//! rebuild, or rebuilds into another view, is reported.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use utoipa::ToSchema;

use super::{Error, Result};
use crate::entity::Runtime;
use crate::ids::SeqNr;
use crate::journal::PoolRecord;
use crate::sandbox::{LivePool, Plugin, View};

/// Events read per query.
const PAGE: i64 = 5_000;

/// Pools listed by name per kind of finding; the rest are counted.
const LISTED: usize = 100;

/// What a replay check found.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Report {
    /// The capacity type.
    pub capacity_type: String,
    /// The candidate's digest.
    pub candidate: String,
    /// The active version's digest, if the type has one loaded.
    pub active: Option<String>,
    /// Pools rebuilt.
    pub pools: usize,
    /// Events replayed into the candidate.
    pub events: u64,
    /// How many pools the candidate cannot rebuild.
    pub failed: usize,
    /// The first of them, and why.
    pub failures: Vec<PoolFailure>,
    /// How many pools the candidate rebuilds into another view.
    pub differing: usize,
    /// The first of them.
    pub differences: Vec<PoolDifference>,
    /// How long the check took.
    pub took_ms: u64,
}

impl Report {
    /// Whether the candidate rebuilt every pool checked.
    pub fn can_replay(&self) -> bool {
        self.failed == 0
    }

    /// The first failures, for an error message.
    pub fn summary(&self) -> String {
        let mut text: Vec<String> = self
            .failures
            .iter()
            .take(3)
            .map(|f| format!("pool `{}`: {}", f.pool, f.reason))
            .collect();
        if self.failed > 3 {
            text.push(format!("and {} more", self.failed - 3));
        }
        text.join("; ")
    }
}

/// A pool the candidate cannot rebuild.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PoolFailure {
    /// The pool.
    pub pool: String,
    /// Why.
    pub reason: String,
}

/// A pool whose view differs between the versions.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PoolDifference {
    /// The pool.
    pub pool: String,
    /// Keys of the cells that differ, or exist in one view only.
    pub cells: Vec<String>,
    /// Whether the views' details differ.
    pub details: bool,
}

/// Rebuilds the pools of the candidate's capacity type (all, or a random
/// sample) with the candidate and with the active version, and compares.
pub async fn replay_check(
    runtime: &Runtime,
    candidate: &Arc<Plugin>,
    sample: Option<usize>,
) -> Result<Report> {
    let started = Instant::now();
    let capacity_type = candidate.info().capacity_type.clone();
    let active = runtime.plugin(&capacity_type).ok();
    let pools = runtime
        .journal()
        .pools_of_type(
            &capacity_type,
            sample.map(|n| n.min(i64::MAX as usize) as i64),
        )
        .await
        .map_err(Error::Journal)?;
    let mut report = Report {
        capacity_type,
        candidate: candidate.digest().to_owned(),
        active: active.as_ref().map(|p| p.digest().to_owned()),
        pools: pools.len(),
        events: 0,
        failed: 0,
        failures: Vec::new(),
        differing: 0,
        differences: Vec::new(),
        took_ms: 0,
    };
    for pool in &pools {
        match rebuild(
            runtime,
            pool,
            candidate,
            active.as_ref(),
            &mut report.events,
        )
        .await?
        {
            Ok((candidate_view, Some(active_view))) => {
                if let Some(difference) = compare(pool, &candidate_view, &active_view) {
                    report.differing += 1;
                    if report.differences.len() < LISTED {
                        report.differences.push(difference);
                    }
                }
            }
            Ok((_, None)) => {}
            Err(reason) => {
                report.failed += 1;
                if report.failures.len() < LISTED {
                    report.failures.push(PoolFailure {
                        pool: pool.id.to_string(),
                        reason,
                    });
                }
            }
        }
        // A check over many pools must not hold a worker for its whole length.
        tokio::task::yield_now().await;
    }
    report.took_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Both versions' views of a pool rebuilt from its events; `Err` says why
/// the candidate cannot. A pool the active version cannot rebuild (a failed
/// pool) is compared with nothing.
async fn rebuild(
    runtime: &Runtime,
    pool: &PoolRecord,
    candidate: &Arc<Plugin>,
    active: Option<&Arc<Plugin>>,
    events: &mut u64,
) -> Result<std::result::Result<(View, Option<View>), String>> {
    let id = pool.id.as_str();
    let config = pool.config.get();
    // Read before the events, so that the history replayed below reaches
    // it even while the pool takes commands.
    let snapshot = runtime
        .journal()
        .latest_snapshot(&pool.id, candidate.info().state_version)
        .await
        .map_err(Error::Journal)?;
    let mut new = match LivePool::create(candidate, id, config) {
        Ok(Ok(live)) => live,
        Ok(Err(problem)) => return Ok(Err(format!("it refuses the pool's config: {problem}"))),
        Err(error) => return Ok(Err(format!("creating the pool failed: {error}"))),
    };
    let mut old = active.and_then(|plugin| LivePool::create(plugin, id, config).ok()?.ok());
    let mut seq = SeqNr(0);
    loop {
        let page = runtime
            .journal()
            .events(&pool.id, seq, PAGE)
            .await
            .map_err(Error::Journal)?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            if let Err(error) = new.replay(&event.payload) {
                return Ok(Err(format!(
                    "event {} cannot be replayed: {error}",
                    event.seq_nr
                )));
            }
            if let Some(live) = &mut old
                && live.replay(&event.payload).is_err()
            {
                old = None;
            }
            *events += 1;
            seq = event.seq_nr;
        }
        // Each page's events are only needed to get here: let both drop them.
        if new.checkpoint().is_err() {
            return Ok(Err(format!("its snapshot after event {seq} failed")));
        }
        if let Some(live) = &mut old
            && live.checkpoint().is_err()
        {
            old = None;
        }
    }
    let new_view = match new.view() {
        Ok(view) => view,
        Err(error) => return Ok(Err(format!("its view failed: {error}"))),
    };
    let replayed = (seq, &new_view);
    if let Err(reason) = restored_agrees(runtime, pool, candidate, snapshot, replayed).await? {
        return Ok(Err(reason));
    }
    let old_view = old.and_then(|mut live| live.view().ok());
    Ok(Ok((new_view, old_view)))
}

/// Whether the pool's latest snapshot in the candidate's state version,
/// restored by the candidate and followed by the later events up to
/// `end`, gives the state its whole history up to `end` gives (`replayed`).
/// A build that changed its state's layout without a new `STATE_VERSION`
/// would restore such a snapshot to garbage, and decide on it.
async fn restored_agrees(
    runtime: &Runtime,
    pool: &PoolRecord,
    candidate: &Arc<Plugin>,
    snapshot: Option<crate::journal::StoredSnapshot>,
    (end, replayed): (SeqNr, &View),
) -> Result<std::result::Result<(), String>> {
    let journal = runtime.journal();
    let state_version = candidate.info().state_version;
    // A snapshot past the history replayed (written meanwhile) cannot be
    // compared with it.
    let Some(stored) = snapshot.filter(|s| s.seq_nr <= end) else {
        return Ok(Ok(()));
    };
    let at = stored.seq_nr;
    let unlike = |what: String| {
        format!(
            "its snapshot at event {at} (state version {state_version}) {what}; a change of \
             the state's layout needs a new STATE_VERSION"
        )
    };
    let mut live = match LivePool::restore(
        candidate,
        pool.id.as_str(),
        pool.config.get(),
        stored.snapshot,
    ) {
        Ok(Ok(live)) => live,
        Ok(Err(problem)) => return Ok(Err(unlike(format!("is refused: {problem}")))),
        Err(error) => return Ok(Err(unlike(format!("fails to restore: {error}")))),
    };
    let mut seq = at;
    loop {
        let page = journal
            .events(&pool.id, seq, PAGE)
            .await
            .map_err(Error::Journal)?;
        if page.is_empty() {
            break;
        }
        for event in page.iter().filter(|e| e.seq_nr <= end) {
            if let Err(error) = live.replay(&event.payload) {
                return Ok(Err(unlike(format!(
                    "cannot take event {} after it: {error}",
                    event.seq_nr
                ))));
            }
            seq = event.seq_nr;
        }
        if page.last().is_some_and(|e| e.seq_nr >= end) {
            break;
        }
        if live.checkpoint().is_err() {
            return Ok(Err(unlike("fails to snapshot again".to_owned())));
        }
    }
    let restored = match live.view() {
        Ok(view) => view,
        Err(error) => return Ok(Err(unlike(format!("gives no view: {error}")))),
    };
    Ok(match compare(pool, &restored, replayed) {
        None => Ok(()),
        Some(difference) => Err(unlike(format!(
            "restores to another state than its events give (cells {:?})",
            difference.cells
        ))),
    })
}

fn compare(pool: &PoolRecord, candidate: &View, active: &View) -> Option<PoolDifference> {
    let mut cells = BTreeSet::new();
    for cell in &candidate.cells {
        if active.cells.iter().find(|c| c.key == cell.key) != Some(cell) {
            cells.insert(cell.key.clone());
        }
    }
    for cell in &active.cells {
        if !candidate.cells.iter().any(|c| c.key == cell.key) {
            cells.insert(cell.key.clone());
        }
    }
    let details = serde_json::from_str::<serde_json::Value>(candidate.details.get()).ok()
        != serde_json::from_str::<serde_json::Value>(active.details.get()).ok();
    (!cells.is_empty() || details).then(|| PoolDifference {
        pool: pool.id.to_string(),
        cells: cells.into_iter().collect(),
        details,
    })
}
