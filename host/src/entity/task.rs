//! The life of one entity: recover, take batches from the mailbox, decide,
//! append, answer; snapshot now and then; passivate when idle.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};

use super::remembered::{Fingerprint, Remembered, Taken};
use super::replay::{ReplayError, Replayed, replay};
use super::runtime::Inner;
use super::{Error, Outcome, Request, Result, Ticket};
use prometheus_client::metrics::histogram::Histogram;

use super::shadow::Shadow;
use crate::ids::{PoolId, SeqNr};
use crate::journal::{
    self, Append, CommandRecord, Completion, Fence, NewEvent, PluginRef, RequestPrint,
    WindowedCommand,
};
use crate::metrics::{PluginLabels, metrics};
use crate::sandbox::{self, Command, Context, Decision, Json, LivePool, Plugin, View};

pub(super) enum Envelope {
    Command(Request, Ticket, oneshot::Sender<Result<Outcome>>),
    View(oneshot::Sender<Result<(SeqNr, View)>>),
    /// For pools of this capacity type: answered once the entity runs the
    /// type's active version, or with why it does not.
    Swap(String, oneshot::Sender<Result<(), String>>),
}

/// A recovered pool: its live instance, where its history ends, and the
/// first outcome of every keyed command.
struct Entity {
    id: PoolId,
    capacity_type: Arc<str>,
    live: LivePool,
    /// The version deciding, recorded with every event it decides.
    plugin: Arc<PluginRef>,
    /// The config the pool was created with, to rebuild it in another version.
    config: Json,
    /// The version shadowing this pool's type, if any.
    shadow: Option<Following>,
    /// A version this pool could not move to, and why; not tried again.
    refused: Option<(String, String)>,
    seq: SeqNr,
    snapshot_seq: SeqNr,
    /// The size of the latest snapshot, and the bytes of the events
    /// appended since: the next snapshot waits until the events outweigh
    /// it, so that a large state is not written out again every few
    /// events, while a recovery reads at most about twice the state.
    snapshot_bytes: usize,
    tail_bytes: usize,
    /// Where the events of every keyed command that took effect within the
    /// idempotency window are, to answer a retry with them.
    outcomes: Remembered,
    /// The plugin-call histogram of this pool's capacity type, looked up once.
    decide_seconds: Histogram,
    /// The shard lease this entity appends under, when the node is in a
    /// cluster: once another node takes the shard, appends are refused.
    fence: Option<Fence>,
}

#[tracing::instrument(name = "entity", skip_all, fields(pool = %pool, generation))]
pub(super) async fn run(
    runtime: Arc<Inner>,
    pool: PoolId,
    generation: u64,
    fence: Option<Fence>,
    mut inbox: mpsc::Receiver<Envelope>,
) {
    let mut entity = match Entity::recover(&runtime, &pool, fence).await {
        Ok(entity) => entity,
        Err(error) => return refuse_all(&runtime, &pool, generation, inbox, error).await,
    };
    let idle_after = runtime.settings.idle_after;
    loop {
        let first = match timeout(idle_after, inbox.recv()).await {
            Ok(Some(envelope)) => envelope,
            Ok(None) => break,
            Err(_idle) if runtime.retire(&pool, generation, &inbox) => break,
            Err(_idle) => continue,
        };
        metrics().mailbox_depth.observe(inbox.len() as f64 + 1.0);
        let mut batch = vec![first];
        while batch.len() < runtime.settings.max_batch {
            match inbox.try_recv() {
                Ok(envelope) => batch.push(envelope),
                Err(_) => break,
            }
        }
        metrics().batch_size.observe(batch.len() as f64);
        // A command boundary: a newly activated version takes over here, so
        // the batch is decided by it and nothing decided is ever redone.
        if let Ok(active) = runtime.plugin(&entity.capacity_type) {
            if active.digest() == entity.plugin.digest {
                entity.refused = None;
            } else if entity.refused.as_ref().map(|(d, _)| d.as_str()) != Some(active.digest()) {
                match entity.swap(&runtime, &active).await {
                    Ok(()) => {}
                    Err(error) if error.retryable => tracing::warn!(
                        to = %active.digest(),
                        "the pool could not move to the active plugin version yet: {}",
                        error.reason
                    ),
                    Err(error) => {
                        tracing::error!(
                            to = %active.digest(),
                            "the pool cannot move to the active plugin version; the activation is undone: {}",
                            error.reason
                        );
                        runtime.refused_swap(
                            &pool,
                            &entity.capacity_type,
                            active.digest(),
                            &error.reason,
                        );
                        entity.refused = Some((active.digest().to_owned(), error.reason));
                    }
                }
            }
            // Until the version it cannot move to is undone, the pool
            // decides nothing: not with that version, nor with its own,
            // which is no longer the active one.
            if let Some((digest, why)) = &entity.refused
                && digest == active.digest()
            {
                pending(&pool, batch, why);
                continue;
            }
        }
        entity.follow_shadow(&runtime).await;
        let outcome = entity.process(&runtime, batch).await;
        // A pool whose instance could not be rebuilt after a plugin fault is
        // rebuilt from the journal; only a history that cannot be replayed
        // marks it failed for good.
        let (why, unsettled) = match outcome {
            // Another node holds the shard now: this copy of the pool must
            // not live on. What is queued goes back to be routed anew.
            Err(unsettled) if unsettled.is_fenced() => {
                let shard = unsettled.shard();
                unsettled.not_written();
                return refuse_all(&runtime, &pool, generation, inbox, Error::NotOwner(shard))
                    .await;
            }
            Err(unsettled) => (
                format!("append failed: {}", unsettled.error),
                Some(unsettled),
            ),
            Ok(()) if entity.live.is_failed() => ("its instance failed".to_owned(), None),
            Ok(()) => continue,
        };
        tracing::warn!("{why}; rebuilding from the journal");
        let mut recovered = Entity::recover(&runtime, &pool, fence).await;
        if let Some(unsettled) = unsettled {
            match &mut recovered {
                Ok(recovered) => unsettled.settle(&runtime, recovered).await,
                Err(_) => unsettled.unknown(),
            }
        }
        entity = match recovered {
            Ok(entity) => entity,
            Err(error) => return refuse_all(&runtime, &pool, generation, inbox, error).await,
        };
    }
    entity.passivate(&runtime).await;
}

/// An entity that cannot recover answers what is queued with the reason and
/// stops; the next command tries again (a failed pool fails fast then, from
/// its stored reason).
async fn refuse_all(
    runtime: &Inner,
    pool: &PoolId,
    generation: u64,
    mut inbox: mpsc::Receiver<Envelope>,
    error: Error,
) {
    match &error {
        // A client's typo, not the node's problem.
        Error::UnknownPool(_) => tracing::debug!("cannot activate: {error}"),
        _ => tracing::warn!("cannot activate: {error}"),
    }
    loop {
        while let Ok(envelope) = inbox.try_recv() {
            match envelope {
                Envelope::Command(_, _, reply) => drop(reply.send(Err(same_error(&error)))),
                Envelope::View(reply) => drop(reply.send(Err(same_error(&error)))),
                // Not live, so nothing to move: it starts in the active
                // version whenever it can start.
                Envelope::Swap(_, reply) => drop(reply.send(Ok(()))),
            }
        }
        if runtime.retire(pool, generation, &inbox) {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Answers a batch the pool cannot decide while its type's active version
/// is being undone: callers retry, and are decided once it is.
fn pending(pool: &PoolId, batch: Vec<Envelope>, why: &str) {
    for envelope in batch {
        match envelope {
            Envelope::Command(_, ticket, reply) => {
                // Refused before being taken: certainly not decided.
                ticket.withdraw();
                let _ = reply.send(Err(Error::VersionPending(pool.clone())));
            }
            Envelope::View(reply) => drop(reply.send(Err(Error::VersionPending(pool.clone())))),
            Envelope::Swap(_, reply) => drop(reply.send(Err(why.to_owned()))),
        }
    }
}

/// Entity errors are not `Clone`; callers queued behind a failed activation
/// each get one of the same kind, so that what is final stays final and
/// what is retryable stays retryable.
fn same_error(error: &Error) -> Error {
    match error {
        Error::UnknownPool(pool) => Error::UnknownPool(pool.clone()),
        Error::UnknownCapacityType(t) => Error::UnknownCapacityType(t.clone()),
        Error::PoolFailed { pool, reason } => Error::PoolFailed {
            pool: pool.clone(),
            reason: reason.clone(),
        },
        Error::Journal(e) => Error::Journal(e.duplicate()),
        Error::NotOwner(shard) => Error::NotOwner(*shard),
        other => Error::Journal(crate::journal::Error::Database(sqlx::Error::Protocol(
            other.to_string(),
        ))),
    }
}

impl Entity {
    /// Latest usable snapshot + later events; without a usable snapshot, the
    /// config + every event.
    async fn recover(runtime: &Inner, id: &PoolId, fence: Option<Fence>) -> Result<Self> {
        let journal = &runtime.journal;
        let record = journal.pool(id).await.map_err(|e| match e {
            crate::journal::Error::UnknownPool(id) => Error::UnknownPool(id),
            e => Error::Journal(e),
        })?;
        let plugin = runtime.plugin(&record.capacity_type)?;
        // Failed under this version (or before versions were recorded):
        // refused at once. Under another, this version tries again.
        if let Some(reason) = &record.failed_reason
            && record
                .failed_digest
                .as_deref()
                .is_none_or(|digest| digest == plugin.digest())
        {
            return Err(Error::PoolFailed {
                pool: id.clone(),
                reason: reason.clone(),
            });
        }
        let config = record.config.get();
        let started = std::time::Instant::now();

        let snapshot = journal
            .latest_snapshot(id, plugin.info().state_version)
            .await?;
        let mut start = None;
        if let Some(stored) = snapshot {
            let size = stored.snapshot.bytes.len();
            let bytes = stored.snapshot.bytes.clone();
            match LivePool::restore(&plugin, id.as_str(), config, stored.snapshot) {
                // A snapshot that does not come back as it was written was
                // not understood (a layout changed under the same state
                // version, say): the events say what the state is.
                Ok(Ok(mut live)) => match live.checkpoint() {
                    Ok(again) if again.bytes == bytes => start = Some((live, stored.seq_nr, size)),
                    _ => tracing::warn!(
                        "snapshot at {} does not restore to itself; replaying all events",
                        stored.seq_nr
                    ),
                },
                Ok(Err(problem)) => tracing::info!(
                    "snapshot at {} refused ({problem}); replaying all events",
                    stored.seq_nr
                ),
                Err(error) => tracing::warn!(
                    "snapshot at {} failed to load ({error}); replaying all events",
                    stored.seq_nr
                ),
            }
        }
        let (mut live, snapshot_seq, snapshot_bytes) = match start {
            Some(start) => start,
            None => {
                let created = LivePool::create(&plugin, id.as_str(), config)
                    .map_err(|e| fail(id, format!("creating it again failed: {e}")));
                let live = created?
                    .map_err(|p| fail(id, format!("the plugin now refuses its config: {p}")))?;
                (live, SeqNr(0), 0)
            }
        };
        let replayed = match replay(journal, id, &mut live, snapshot_seq, SeqNr(i64::MAX)).await {
            Ok(replayed) => replayed,
            Err(ReplayError::Journal(error)) => return Err(Error::Journal(error)),
            // A deadline can pass on a busy machine: that is no reason to
            // fail the pool, only this attempt.
            Err(ReplayError::Event { error, .. }) if error.is_retryable() => {
                return Err(Error::Plugin(error));
            }
            Err(error @ ReplayError::Gap { .. }) => return Err(fail(id, error.to_string())),
            Err(error) => {
                let reason = error.to_string();
                journal.mark_failed(id, &reason, plugin.digest()).await?;
                return Err(fail(id, reason));
            }
        };
        let outcomes: Vec<(String, Taken)> = journal
            .command_outcomes(id, runtime.settings.idempotency_window)
            .await?
            .into_iter()
            .filter_map(|(key, kept)| match kept {
                WindowedCommand::Accepted {
                    seq_nr,
                    events,
                    request,
                } => Some(Ok((key, Taken::new(seq_nr, events, request)))),
                WindowedCommand::Recorded { outcome, request } => {
                    match serde_json::from_str::<Outcome>(outcome.get()) {
                        Ok(outcome) => Taken::of(&outcome, request).map(|taken| Ok((key, taken))),
                        Err(e) => Some(Err(fail(
                            id,
                            format!("the stored outcome of `{key}` is unreadable: {e}"),
                        ))),
                    }
                }
            })
            .collect::<Result<_>>()?;
        let outcomes = Remembered::new(runtime.settings.idempotency_window, outcomes);
        if record.failed_reason.is_some() {
            tracing::info!("pool failed under another plugin version, and this one replays it");
            journal.clear_failed(id).await?;
        }
        tracing::info!(
            seq_nr = replayed.end.0,
            from_snapshot = snapshot_seq.0,
            took_ms = started.elapsed().as_millis() as u64,
            "pool recovered"
        );
        let info = plugin.info();
        let decide_seconds = metrics()
            .plugin_calls
            .get_or_create(&PluginLabels {
                capacity_type: record.capacity_type.clone(),
                call: "decide",
            })
            .clone();
        Ok(Self {
            decide_seconds,
            config: record.config,
            refused: None,
            shadow: None,
            id: id.clone(),
            capacity_type: Arc::from(record.capacity_type),
            plugin: Arc::new(PluginRef {
                name: info.name.clone(),
                version: info.version.clone(),
                digest: plugin.digest().to_owned(),
            }),
            live,
            seq: replayed.end,
            snapshot_seq,
            snapshot_bytes,
            // The events after the snapshot count towards the next one.
            tail_bytes: replayed.payload_bytes,
            outcomes,
            fence,
        })
    }

    /// Decides a batch on the evolving state, appends it in one transaction,
    /// then answers. An `Err` means the append failed: the batch's callers
    /// are answered once the journal tells whether it was written (see
    /// [`Unsettled`]), and the entity must be rebuilt.
    async fn process(&mut self, runtime: &Inner, batch: Vec<Envelope>) -> Result<(), Unsettled> {
        let now = Instant::now();
        let mut events: Vec<NewEvent> = Vec::new();
        // The latest outcome of each keyed command of the batch, with the
        // key's fingerprint, made once, and what the command asked for.
        let mut fresh: HashMap<String, (SeqNr, Outcome, Fingerprint, RequestPrint)> =
            HashMap::new();
        let mut answers: Vec<(oneshot::Sender<Result<Outcome>>, Outcome)> =
            Vec::with_capacity(batch.len());
        let mut views = Vec::new();
        let shadowing = self.shadow.as_ref().is_some_and(|f| f.live.is_some());
        let mut shadow_work: Vec<ShadowWork> = Vec::new();
        // Retries of commands taken in earlier batches, answered from the journal.
        let mut repeats: Vec<(oneshot::Sender<Result<Outcome>>, Taken, String)> = Vec::new();

        for envelope in batch {
            let (request, reply) = match envelope {
                Envelope::View(reply) => {
                    views.push(reply);
                    continue;
                }
                Envelope::Swap(capacity_type, reply) => {
                    let _ = reply.send(self.moved(runtime, &capacity_type));
                    continue;
                }
                Envelope::Command(request, ticket, reply) => {
                    // Past its deadline, or withdrawn by its caller at the
                    // deadline: never decided. Taken, it is decided and its
                    // caller waits for the outcome.
                    if request.deadline <= now || !ticket.take() {
                        ticket.withdraw();
                        let _ = reply.send(Err(Error::DeadlinePassed));
                        continue;
                    }
                    (request, reply)
                }
            };
            let key = request.key().map(|key| {
                let print = Fingerprint::of(&key);
                (key, print, request.print())
            });
            // Only what took effect is repeated; a refusal took none, so
            // deciding the command again is as safe as it is useful (the
            // order that did not fit may fit now, or in another slot). A
            // key that took effect for another request is refused: its
            // outcome is not this request's.
            if let Some((k, print, asked)) = &key {
                if let Some((_, known, _, first)) =
                    fresh.get(k).filter(|(_, o, _, _)| o.is_accepted())
                {
                    match first == asked {
                        true => answers.push((reply, known.clone())),
                        false => drop(reply.send(Err(Error::KeyReused))),
                    }
                    continue;
                }
                if let Some(taken) = self.outcomes.get(*print) {
                    match taken.is_retry_of(*asked) {
                        true => repeats.push((reply, taken, k.clone())),
                        false => drop(reply.send(Err(Error::KeyReused))),
                    }
                    continue;
                }
            }
            let started = std::time::Instant::now();
            let decided = self.live.decide(&request.context, &request.command);
            self.decide_seconds.observe(started.elapsed().as_secs_f64());
            let decision = match decided {
                Ok(decision) => decision,
                Err(error) => {
                    let _ = reply.send(Err(Error::Plugin(error)));
                    continue;
                }
            };
            if shadowing {
                shadow_work.push((
                    request.context.clone(),
                    request.command.clone(),
                    decision.clone(),
                    self.seq.after(events.len()),
                ));
            }
            if let Ok(new) = &decision {
                events.extend(new.iter().map(|payload| NewEvent {
                    payload: payload.clone(),
                    request_id: request.context.request_id.clone(),
                    actor: request.actor.clone(),
                    completes: None,
                }));
            }
            let outcome = Outcome::decided(self.seq.after(events.len()), decision);
            if let Some((key, print, asked)) = key {
                fresh.insert(
                    key,
                    (self.seq.after(events.len()), outcome.clone(), print, asked),
                );
            }
            answers.push((reply, outcome));
        }

        if !repeats.is_empty() {
            // Their events are in the journal already: read back beside the
            // entity, which goes on deciding meanwhile.
            let (journal, pool) = (runtime.journal.clone(), self.id.clone());
            tokio::spawn(async move {
                for (reply, taken, key) in repeats {
                    let _ = reply.send(taken.outcome(&journal, &pool, &key).await);
                }
            });
        }

        // An accepted command's outcome is its events: the last of them
        // carries its key. Only outcomes without events are records of
        // their own.
        let mut records: Vec<CommandRecord> = Vec::new();
        for (key, (seq_nr, outcome, _, asked)) in &fresh {
            match outcome {
                Outcome::Accepted {
                    events: decided, ..
                } if !decided.is_empty() => {
                    let last = (seq_nr.0 - self.seq.0 - 1) as usize;
                    events[last].completes = Some(Completion {
                        key: key.clone(),
                        events: decided.len() as u32,
                        request: Some(*asked),
                    });
                }
                _ => records.push(CommandRecord {
                    key: key.clone(),
                    seq_nr: *seq_nr,
                    outcome: serde_json::value::to_raw_value(&outcome.recorded())
                        .expect("outcomes serialize"),
                    accepted: outcome.is_accepted(),
                    request: Some(*asked),
                }),
            }
        }
        if !events.is_empty() || !records.is_empty() {
            // A batch of refusals changes no state: the view stays as it is,
            // and no node is told to fetch it again.
            let changed = !events.is_empty();
            let appended: usize = events.iter().map(|e| e.payload.get().len()).sum();
            let append = Append {
                pool: self.id.clone(),
                expected: self.seq,
                events,
                plugin: self.plugin.clone(),
                commands: records,
                fence: self.fence,
            };
            match runtime.committer.append(append).await {
                Ok(end) => {
                    self.seq = end;
                    self.tail_bytes += appended;
                    if changed {
                        match self.live.view() {
                            Ok(view) => {
                                runtime.publish_view(&self.id, &self.capacity_type, end, view)
                            }
                            Err(error) => tracing::warn!(
                                "view failed; the read model keeps the previous one: {error}"
                            ),
                        }
                    }
                }
                Err(failed) => {
                    return Err(Unsettled {
                        error: failed.error,
                        batch: failed.batch,
                        answers,
                        views,
                    });
                }
            }
            self.outcomes.expire();
            for (_, outcome, print, asked) in fresh.values() {
                if let Some(taken) = Taken::of(outcome, Some(*asked)) {
                    self.outcomes.insert(*print, taken);
                }
            }
        }
        for (reply, outcome) in answers {
            let _ = reply.send(Ok(outcome));
        }
        if !views.is_empty() {
            let view = self.live.view();
            for reply in views {
                let _ = reply.send(match &view {
                    Ok(view) => Ok((self.seq, view.clone())),
                    Err(error) => Err(Error::Plugin(sandbox::Error::Failed(error.to_string()))),
                });
            }
        }
        // Only now, with everyone answered: the shadow costs no one time.
        self.run_shadow(shadow_work);
        if (self.seq.0 - self.snapshot_seq.0) as u64 >= runtime.settings.snapshot_every
            && self.tail_bytes >= self.snapshot_bytes
        {
            self.snapshot_in_background(runtime);
        }
        Ok(())
    }

    /// Moves the pool to another plugin version: by a snapshot the new
    /// version accepts, else by replaying every event through it. On error
    /// nothing has changed.
    /// Whether the pool runs its type's active version, if it is of this type.
    fn moved(&self, runtime: &Inner, capacity_type: &str) -> Result<(), String> {
        if *self.capacity_type != *capacity_type {
            return Ok(());
        }
        match runtime.plugin(capacity_type) {
            Ok(active) if active.digest() == self.plugin.digest => Ok(()),
            Ok(active) => Err(match &self.refused {
                Some((digest, reason)) if digest == active.digest() => reason.clone(),
                _ => "it has not moved yet (a temporary error)".to_owned(),
            }),
            Err(_) => Ok(()),
        }
    }

    async fn swap(&mut self, runtime: &Inner, plugin: &Arc<Plugin>) -> Result<(), SwapError> {
        let started = std::time::Instant::now();
        let (live, how) = self.rebuilt_in(runtime, plugin).await?;
        tracing::info!(
            from = %self.plugin.digest,
            to = %plugin.digest(),
            how,
            seq_nr = self.seq.0,
            took_us = started.elapsed().as_micros() as u64,
            "pool moved to another plugin version"
        );
        let info = plugin.info();
        self.live = live;
        self.plugin = Arc::new(PluginRef {
            name: info.name.clone(),
            version: info.version.clone(),
            digest: plugin.digest().to_owned(),
        });
        self.refused = None;
        Ok(())
    }

    /// The pool's current state in another version: by a snapshot it
    /// accepts, else by replaying every event through it.
    async fn rebuilt_in(
        &mut self,
        runtime: &Inner,
        plugin: &Arc<Plugin>,
    ) -> Result<(LivePool, &'static str), SwapError> {
        let restored = match self.live.checkpoint() {
            Ok(snapshot) if snapshot.state_version == plugin.info().state_version => {
                match LivePool::restore(plugin, self.id.as_str(), self.config.get(), snapshot) {
                    Ok(Ok(live)) => Some(live),
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(match restored {
            Some(live) => (live, "snapshot"),
            None => (
                replay_into(runtime, &self.id, &self.config, self.seq, plugin).await?,
                "replay",
            ),
        })
    }

    /// Starts or stops following the version that shadows this pool's type.
    async fn follow_shadow(&mut self, runtime: &Inner) {
        let wanted = runtime.shadow(&self.capacity_type);
        let current = self.shadow.as_ref().map(|f| &f.shadow);
        match (wanted, current) {
            (None, None) => {}
            (None, Some(_)) => self.shadow = None,
            (Some(wanted), Some(current)) if Arc::ptr_eq(&wanted, current) => {}
            (Some(wanted), _) => {
                let live = match self.rebuilt_in(runtime, &wanted.plugin).await {
                    Ok((live, _)) => Some(live),
                    Err(error) => {
                        tracing::warn!(
                            "the shadowing version cannot follow this pool: {}",
                            error.reason
                        );
                        wanted.failed();
                        None
                    }
                };
                self.shadow = Some(Following {
                    shadow: wanted,
                    live,
                });
            }
        }
    }

    /// Lets the shadow decide the batch's commands, compares, and applies
    /// the events really decided to it.
    fn run_shadow(&mut self, work: Vec<ShadowWork>) {
        let Some(following) = &mut self.shadow else {
            return;
        };
        let Some(live) = &mut following.live else {
            return;
        };
        for (context, command, active, seq_nr) in work {
            match live.decide_only(&context, &command) {
                Ok(decision) => following.shadow.compare(
                    self.id.as_str(),
                    seq_nr.0,
                    &command,
                    &active,
                    &decision,
                ),
                Err(error) => {
                    // A faulting shadow would cost this pool a rebuild per
                    // command: it stops following the pool instead.
                    tracing::debug!("the shadowing version faulted: {error}");
                    following.shadow.failed();
                    following.live = None;
                    return;
                }
            }
            for event in active.iter().flatten() {
                if let Err(error) = live.replay(event) {
                    tracing::warn!("the shadowing version cannot apply a decided event: {error}");
                    following.shadow.failed();
                    following.live = None;
                    return;
                }
            }
        }
    }
}

/// A batch whose append failed. Its commands were decided, so whether
/// they took effect is what the journal says, not what the error says: a
/// commit whose answer was lost may have been written. The callers are
/// answered once the entity has been rebuilt from the journal: with their
/// outcomes if the batch is there, with a retryable error if it is not,
/// and with [`Error::OutcomeUnknown`] if the journal cannot tell.
struct Unsettled {
    error: journal::Error,
    batch: Option<Box<journal::Append>>,
    answers: Vec<(oneshot::Sender<Result<Outcome>>, Outcome)>,
    views: Vec<oneshot::Sender<Result<(SeqNr, View)>>>,
}

impl Unsettled {
    /// Refused under a lease another node holds now: certainly not written.
    fn is_fenced(&self) -> bool {
        matches!(self.error, journal::Error::Fenced { .. })
    }

    fn shard(&self) -> u32 {
        match self.error {
            journal::Error::Fenced { shard, .. } => shard,
            _ => unreachable!("only asked of a fenced append"),
        }
    }

    /// Errors that say for certain that nothing was written. An append is
    /// one statement outside any transaction: PostgreSQL's error answer
    /// to it means it was rolled back, and without a connection it was
    /// never sent. A connection lost while waiting for the answer says
    /// nothing.
    fn certainly_not_written(&self) -> bool {
        matches!(
            self.error,
            journal::Error::Fenced { .. }
                | journal::Error::Conflict { .. }
                | journal::Error::UnknownPool(_)
                | journal::Error::Database(
                    sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
                )
        )
    }

    /// Answers with the batch's outcomes if `recovered` (the pool rebuilt
    /// from the journal just after the failure) holds its events.
    async fn settle(self, runtime: &Inner, recovered: &mut Entity) {
        let written = match &self.batch {
            _ if self.certainly_not_written() => Ok(false),
            None => Err("the batch was lost with its writer".to_owned()),
            Some(batch) if recovered.seq < batch.end() => Ok(false),
            Some(batch) => runtime
                .journal
                .holds(batch)
                .await
                .map_err(|e| e.to_string()),
        };
        match written {
            Ok(false) => self.not_written(),
            Ok(true) => {
                tracing::info!(
                    seq_nr = recovered.seq.0,
                    "the failed append was written after all; its outcomes are answered"
                );
                if let Ok(view) = recovered.live.view() {
                    runtime.publish_view(
                        &recovered.id,
                        &recovered.capacity_type,
                        recovered.seq,
                        view,
                    );
                }
                for (reply, outcome) in self.answers {
                    let _ = reply.send(Ok(outcome));
                }
                for reply in self.views {
                    let _ = reply.send(Err(Error::Journal(self.error.duplicate())));
                }
            }
            Err(why) => {
                tracing::warn!("whether the failed append was written is unknown: {why}");
                self.unknown();
            }
        }
    }

    /// Nothing was written: every caller may retry.
    fn not_written(self) {
        for (reply, _) in self.answers {
            let _ = reply.send(Err(Error::Journal(self.error.duplicate())));
        }
        for reply in self.views {
            let _ = reply.send(Err(Error::Journal(self.error.duplicate())));
        }
    }

    /// The journal cannot tell: commands that took effect, if written, have
    /// an unknown outcome; refusals changed nothing either way.
    fn unknown(self) {
        if self.certainly_not_written() {
            return self.not_written();
        }
        for (reply, outcome) in self.answers {
            let _ = reply.send(Err(match outcome {
                Outcome::Accepted { .. } => Error::OutcomeUnknown,
                _ => Error::Journal(self.error.duplicate()),
            }));
        }
        for reply in self.views {
            let _ = reply.send(Err(Error::Journal(self.error.duplicate())));
        }
    }
}

/// Why a pool could not move to another version.
struct SwapError {
    reason: String,
    /// A database or deadline failure: the next command tries again.
    retryable: bool,
}

impl SwapError {
    fn permanent(reason: String) -> Self {
        Self {
            reason,
            retryable: false,
        }
    }
}

/// A command decided for real, for the shadow: its context, the command,
/// the real decision and the pool's seq before it.
type ShadowWork = (Context, Command, Decision, SeqNr);

/// A shadowing version following one pool.
struct Following {
    shadow: Arc<Shadow>,
    /// `None` when it cannot follow this pool.
    live: Option<LivePool>,
}

/// A pool rebuilt in `plugin` from its config and every event, which must
/// end at `end`. (A free function: an entity is not `Sync`, so no reference
/// to one may be held across an await.)
async fn replay_into(
    runtime: &Inner,
    id: &PoolId,
    config: &Json,
    end: SeqNr,
    plugin: &Arc<Plugin>,
) -> Result<LivePool, SwapError> {
    let mut live = match LivePool::create(plugin, id.as_str(), config.get()) {
        Ok(Ok(live)) => live,
        Ok(Err(problem)) => {
            return Err(SwapError::permanent(format!(
                "it refuses the pool's config: {problem}"
            )));
        }
        Err(error) => {
            return Err(SwapError {
                retryable: error.is_retryable(),
                reason: format!("creating the pool failed: {error}"),
            });
        }
    };
    match replay(&runtime.journal, id, &mut live, SeqNr(0), end).await {
        Ok(replayed) if replayed.end == end => {}
        Ok(Replayed { end: seq, .. }) => {
            return Err(SwapError {
                retryable: true,
                reason: format!("the journal ends at {seq}, the pool at {end}"),
            });
        }
        Err(error) => {
            return Err(SwapError {
                retryable: error.is_retryable(),
                reason: error.to_string(),
            });
        }
    }
    // The events were only needed to get here.
    let _ = live.checkpoint();
    Ok(live)
}

impl Entity {
    /// A snapshot of the state as of now, if there is anything new.
    fn take_snapshot(&mut self) -> Option<sandbox::Snapshot> {
        if self.seq == self.snapshot_seq {
            return None;
        }
        // The shadow keeps the events it applied for rebuilds too; its own
        // checkpoint lets it drop them.
        if let Some(Following {
            live: Some(shadow), ..
        }) = &mut self.shadow
            && shadow.checkpoint().is_err()
            && let Some(following) = self.shadow.take()
        {
            following.shadow.failed();
        }
        match self.live.checkpoint() {
            Ok(snapshot) => {
                self.snapshot_bytes = snapshot.bytes.len();
                self.tail_bytes = 0;
                Some(snapshot)
            }
            Err(error) => {
                tracing::warn!("taking a snapshot failed: {error}");
                None
            }
        }
    }

    /// Hands a snapshot to the snapshot writer, and goes on without waiting
    /// for it. Another is taken `snapshot_every` events later, whether or
    /// not this one is written.
    fn snapshot_in_background(&mut self, runtime: &Inner) {
        if let Some(snapshot) = self.take_snapshot()
            && !runtime
                .snapshots
                .save(&self.id, self.seq, snapshot, &self.plugin.digest)
        {
            tracing::debug!("the snapshot writer is busy; this snapshot is skipped");
        }
        self.snapshot_seq = self.seq;
    }

    /// Saves a snapshot and waits for it: the next owner of the pool, or
    /// its next activation, starts from there.
    async fn snapshot(&mut self, runtime: &Inner) {
        if let Some(snapshot) = self.take_snapshot() {
            match runtime
                .journal
                .save_snapshot(&self.id, self.seq, &snapshot, &self.plugin.digest)
                .await
            {
                Ok(()) => self.snapshot_seq = self.seq,
                Err(error) => tracing::warn!("saving a snapshot failed: {error}"),
            }
        }
    }

    async fn passivate(mut self, runtime: &Inner) {
        self.snapshot(runtime).await;
        tracing::debug!(seq_nr = self.seq.0, "passivated");
    }
}

fn fail(pool: &PoolId, reason: String) -> Error {
    Error::PoolFailed {
        pool: pool.clone(),
        reason,
    }
}
