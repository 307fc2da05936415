//! A pool's instance together with what it takes to rebuild it.

use std::sync::Arc;

use super::types::{Decision, Json, Problem, Snapshot, View};
use super::{Command, Context, Error, Plugin, PoolInstance, Result};

/// A live pool that survives plugin faults.
///
/// Keeps the pool's base (its config, or the latest checkpoint snapshot) and
/// the events applied since, in memory. When a call traps, times out or
/// blows its memory cap, the command fails and the instance is rebuilt from
/// base + events before the error is returned, so the next command sees the
/// state exactly as it was. If the rebuild itself fails the pool is marked
/// failed and refuses every later call with the reason.
pub struct LivePool {
    id: Arc<str>,
    plugin: Arc<Plugin>,
    config: String,
    base: Option<Snapshot>,
    tail: Vec<Json>,
    instance: Result<PoolInstance, String>,
}

impl LivePool {
    /// Creates a pool. `Ok(Err(problem))` when the plugin refuses the config.
    pub fn create(plugin: &Arc<Plugin>, id: &str, config: &str) -> Result<Result<Self, Problem>> {
        Ok(
            PoolInstance::create(plugin, id, config)?.map(|instance| Self {
                id: Arc::from(id),
                plugin: plugin.clone(),
                config: config.to_owned(),
                base: None,
                tail: Vec::new(),
                instance: Ok(instance),
            }),
        )
    }

    /// Rebuilds a pool from a snapshot, keeping the config for rebuilds that
    /// may follow. `Ok(Err(problem))` when the plugin refuses the snapshot:
    /// start from [`LivePool::create`] and replay every event then.
    pub fn restore(
        plugin: &Arc<Plugin>,
        id: &str,
        config: &str,
        snapshot: Snapshot,
    ) -> Result<Result<Self, Problem>> {
        Ok(
            PoolInstance::restore(plugin, id, &snapshot)?.map(|instance| Self {
                id: Arc::from(id),
                plugin: plugin.clone(),
                config: config.to_owned(),
                base: Some(snapshot),
                tail: Vec::new(),
                instance: Ok(instance),
            }),
        )
    }

    /// Applies an event from the journal. An error means the pool's history
    /// cannot be replayed by this plugin.
    pub fn replay(&mut self, event: &Json) -> Result<()> {
        let result = self.instance()?.apply(event);
        match result {
            Ok(()) => {
                self.tail.push(event.clone());
                Ok(())
            }
            Err(error) => {
                self.instance = Err(format!("replaying its events failed: {error}"));
                Err(error)
            }
        }
    }

    /// Whether the pool could not be rebuilt after a fault and refuses calls.
    pub fn is_failed(&self) -> bool {
        self.instance.is_err()
    }

    /// The pool's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The plugin that runs the pool.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Events applied since the last checkpoint.
    pub fn uncheckpointed(&self) -> usize {
        self.tail.len()
    }

    /// Decides a command and applies its events. A plugin fault rejects this
    /// command only: the pool is rebuilt as it was before the command.
    pub fn decide(&mut self, context: &Context, command: &Command) -> Result<Decision> {
        let instance = self.instance()?;
        let outcome = instance.decide(context, command).and_then(|decision| {
            if let Ok(events) = &decision {
                for event in events {
                    instance.apply(event)?;
                }
            }
            Ok(decision)
        });
        match outcome {
            Ok(Ok(events)) => {
                self.tail.extend(events.iter().cloned());
                Ok(Ok(events))
            }
            Ok(Err(failure)) => Ok(Err(failure)),
            Err(error) => {
                if error.poisons_instance() {
                    self.rebuild();
                }
                Err(error)
            }
        }
    }

    /// Decides a command without applying its events, to compare this
    /// version's decision with another's (shadow evaluation). The caller
    /// applies the events that were really decided with [`LivePool::replay`].
    pub fn decide_only(&mut self, context: &Context, command: &Command) -> Result<Decision> {
        let result = self.instance()?.decide(context, command);
        self.heal(result)
    }

    /// The pool's view.
    pub fn view(&mut self) -> Result<View> {
        let result = self.instance()?.view();
        self.heal(result)
    }

    /// A snapshot of the pool's state.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let result = self.instance()?.snapshot();
        self.heal(result)
    }

    /// Takes a snapshot and makes it the base for rebuilds, dropping the
    /// events it covers from memory.
    pub fn checkpoint(&mut self) -> Result<Snapshot> {
        let snapshot = self.snapshot()?;
        self.base = Some(snapshot.clone());
        self.tail.clear();
        Ok(snapshot)
    }

    fn instance(&mut self) -> Result<&mut PoolInstance> {
        self.instance
            .as_mut()
            .map_err(|reason| Error::Failed(reason.clone()))
    }

    fn heal<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.as_ref().is_err_and(Error::poisons_instance) {
            self.rebuild();
        }
        result
    }

    /// Replaces a poisoned instance with one rebuilt from base + tail.
    fn rebuild(&mut self) {
        self.instance = self.rebuilt().map_err(|e| {
            let reason = format!("rebuilding after a plugin fault failed: {e}");
            tracing::error!(pool = %self.id, "{reason}");
            reason
        });
    }

    fn rebuilt(&self) -> Result<PoolInstance> {
        let started = match &self.base {
            Some(snapshot) => PoolInstance::restore(&self.plugin, &self.id, snapshot)?,
            None => PoolInstance::create(&self.plugin, &self.id, &self.config)?,
        };
        let mut instance = started
            .map_err(|p| Error::Failed(format!("the plugin refused to restart the pool: {p}")))?;
        for event in &self.tail {
            instance.apply(event)?;
        }
        Ok(instance)
    }
}
