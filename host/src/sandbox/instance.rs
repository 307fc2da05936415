//! One pool's component instance and the typed calls into it.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::value::RawValue;
use wasmtime::component::ResourceAny;
use wasmtime::{Store, Trap};

use super::bindings::{CapacityType, wit};
use super::plugin::PluginInfo;
use super::store::StoreState;
use super::types::{Decision, Json, Problem, Snapshot, View};
use super::{Command, Context, Error, Plugin, Result};

/// Most events one decision may produce.
const MAX_EVENTS: usize = 10_000;

/// A component instance holding one pool.
///
/// After a trap, timeout or memory blow-up the instance is poisoned: wasm
/// gives no guarantee about the state a trap leaves behind, so every later
/// call fails with [`Error::Poisoned`] and the owner must rebuild the pool.
pub struct PoolInstance {
    plugin: Arc<Plugin>,
    store: Store<StoreState>,
    bindings: CapacityType,
    pool: ResourceAny,
    poisoned: bool,
}

impl PoolInstance {
    /// Creates a pool from its config. `Ok(Err(problem))` when the plugin
    /// refuses the config.
    pub fn create(
        plugin: &Arc<Plugin>,
        pool_id: &str,
        config: &str,
    ) -> Result<Result<Self, Problem>> {
        Self::start(plugin, pool_id, "create", |store, bindings| {
            bindings
                .allot_capacity_decider()
                .pool()
                .call_create(store, &config.to_owned())
        })
    }

    /// Rebuilds a pool from a snapshot. `Ok(Err(problem))` when the plugin
    /// refuses the snapshot (another state version): rebuild from events then.
    pub fn restore(
        plugin: &Arc<Plugin>,
        pool_id: &str,
        snapshot: &Snapshot,
    ) -> Result<Result<Self, Problem>> {
        Self::start(plugin, pool_id, "restore", |store, bindings| {
            bindings
                .allot_capacity_decider()
                .pool()
                .call_restore(store, &snapshot.into())
        })
    }

    fn start(
        plugin: &Arc<Plugin>,
        pool_id: &str,
        call: &'static str,
        f: impl FnOnce(
            &mut Store<StoreState>,
            &CapacityType,
        ) -> wasmtime::Result<Result<ResourceAny, wit::Problem>>,
    ) -> Result<Result<Self, Problem>> {
        let mut store = plugin.engine().store(Arc::from(pool_id));
        let bindings = instantiate(plugin, &mut store)?;
        begin(plugin, &mut store);
        match f(&mut store, &bindings) {
            Ok(Ok(pool)) => Ok(Ok(Self {
                plugin: plugin.clone(),
                store,
                bindings,
                pool,
                poisoned: false,
            })),
            Ok(Err(problem)) => Ok(Err(checked_problem(call, problem)?)),
            Err(e) => Err(classify(plugin, &store, call, e)),
        }
    }

    /// Starts a throwaway instance and asks the plugin to describe itself.
    pub(crate) fn describe(plugin: &Plugin) -> Result<PluginInfo> {
        let mut store = plugin.engine().store(Arc::from("(loading)"));
        let bindings = instantiate(plugin, &mut store)?;
        begin(plugin, &mut store);
        let info = bindings
            .allot_capacity_decider()
            .call_describe(&mut store)
            .map_err(|e| classify(plugin, &store, "describe", e))?;
        let bad = |reason: &str| Error::BadOutput {
            call: "describe",
            reason: reason.into(),
        };
        if info.name.is_empty() || info.version.is_empty() {
            return Err(bad("name and version must not be empty"));
        }
        if !is_code(&info.capacity_type) {
            return Err(bad("the capacity type must be a non-empty lower-case name"));
        }
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            capacity_type: info.capacity_type,
            state_version: info.state_version,
        })
    }

    /// The plugin this instance runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Decides a command. Does not change the state.
    pub fn decide(&mut self, context: &Context, command: &Command) -> Result<Decision> {
        let (context, command) = (wit::Context::from(context), wit::Command::from(command));
        let result = self.call("decide", |store, bindings, pool| {
            bindings
                .allot_capacity_decider()
                .pool()
                .call_decide(store, pool, &context, &command)
        })?;
        match result {
            Ok(events) => {
                if events.len() > MAX_EVENTS {
                    return Err(bad_output(
                        "decide",
                        format!("{} events, at most {MAX_EVENTS}", events.len()),
                    ));
                }
                events
                    .into_iter()
                    .enumerate()
                    .map(|(i, event)| {
                        storable("decide", &event)?;
                        RawValue::from_string(event).map_err(|e| {
                            bad_output("decide", format!("event {i} is not JSON: {e}"))
                        })
                    })
                    .collect::<Result<Vec<Json>>>()
                    .map(Ok)
            }
            Err(failure) => {
                let failure: super::Failure = failure.into();
                check_problem("decide", failure.problem())?;
                Ok(Err(failure))
            }
        }
    }

    /// Folds an event into the state.
    pub fn apply(&mut self, event: &RawValue) -> Result<()> {
        let result = self.call("apply", |store, bindings, pool| {
            bindings.allot_capacity_decider().pool().call_apply(
                store,
                pool,
                &event.get().to_owned(),
            )
        })?;
        result.map_err(|p| Error::Apply(p.into()))
    }

    /// Serializes the state.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        self.call("snapshot", |store, bindings, pool| {
            bindings
                .allot_capacity_decider()
                .pool()
                .call_snapshot(store, pool)
        })
        .map(Into::into)
    }

    /// Shows the state.
    pub fn view(&mut self) -> Result<View> {
        let view = self.call("view", |store, bindings, pool| {
            bindings
                .allot_capacity_decider()
                .pool()
                .call_view(store, pool)
        })?;
        storable("view", &view.details)?;
        let details = RawValue::from_string(view.details)
            .map_err(|e| bad_output("view", format!("details are not JSON: {e}")))?;
        let mut keys = HashSet::with_capacity(view.cells.len());
        for cell in &view.cells {
            if !keys.insert(cell.key.as_str()) {
                return Err(bad_output(
                    "view",
                    format!("cell key `{}` appears twice", cell.key),
                ));
            }
        }
        Ok(View {
            cells: view.cells.into_iter().map(Into::into).collect(),
            details,
        })
    }

    /// Runs one call under the deadline; a trap poisons the instance.
    fn call<R>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Store<StoreState>, &CapacityType, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        begin(&self.plugin, &mut self.store);
        // Any trap poisons: wasm makes no promise about the state it leaves.
        f(&mut self.store, &self.bindings, self.pool).map_err(|e| {
            self.poisoned = true;
            classify(&self.plugin, &self.store, name, e)
        })
    }
}

fn instantiate(plugin: &Plugin, store: &mut Store<StoreState>) -> Result<CapacityType> {
    begin(plugin, store);
    plugin
        .pre()
        .instantiate(&mut *store)
        .map_err(|e| Error::Start(format!("{e:#}")))
}

fn begin(plugin: &Plugin, store: &mut Store<StoreState>) {
    store.data_mut().begin_call();
    store.set_epoch_deadline(plugin.engine().deadline_ticks());
}

/// Says what a failed call means, for the caller and the log.
fn classify(
    plugin: &Plugin,
    store: &Store<StoreState>,
    call: &'static str,
    error: wasmtime::Error,
) -> Error {
    let state = store.data();
    let limits = plugin.engine().limits();
    let error = if state.memory_exceeded {
        Error::MemoryLimit {
            call,
            limit: limits.memory_bytes,
        }
    } else if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        Error::Timeout {
            call,
            limit: limits.call_timeout,
        }
    } else {
        let trap = error.root_cause().to_string();
        Error::Trap {
            call,
            message: match &state.last_error {
                Some(logged) => format!("{logged} ({trap})"),
                None => trap,
            },
        }
    };
    tracing::warn!(pool = state.pool(), plugin = %plugin.info().name, digest = %plugin.digest(), "{error}");
    tracing::debug!(pool = state.pool(), "plugin fault detail: {error:?}");
    error
}

fn bad_output(call: &'static str, reason: String) -> Error {
    Error::BadOutput { call, reason }
}

fn checked_problem(call: &'static str, problem: wit::Problem) -> Result<Problem> {
    let problem: Problem = problem.into();
    check_problem(call, &problem)?;
    Ok(problem)
}

/// PostgreSQL stores no NUL character in text, nor in `jsonb` (the read
/// model's views) even as `\u0000`; refusing one here keeps a single bad
/// decision from failing the append or view write it would share.
fn storable(call: &'static str, text: &str) -> Result<()> {
    if text.contains('\0') || text.contains("\\u0000") {
        return Err(bad_output(
            call,
            "the output contains a NUL character, which cannot be stored".into(),
        ));
    }
    Ok(())
}

/// Codes reach API clients, who branch on them: they must be short names.
fn check_problem(call: &'static str, problem: &Problem) -> Result<()> {
    storable(call, &problem.message)?;
    if is_code(&problem.code) {
        Ok(())
    } else {
        Err(bad_output(
            call,
            format!(
                "`{}` is not a problem code (lower-case letters, digits, `_` or `-`, at most 64)",
                problem.code.escape_debug()
            ),
        ))
    }
}

fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
