//! The plugin sandbox: loads capacity-type components and runs their calls
//! under limits.
//!
//! * [`Engine`] owns the wasmtime configuration and the linker, the one place
//!   where limits and capabilities are decided.
//! * [`Plugin`] is a compiled component whose contract has been checked.
//! * [`PoolInstance`] is one pool's instance: one component instance holding
//!   one `pool` resource, with typed calls.
//! * [`LivePool`] wraps a [`PoolInstance`] with what is needed to rebuild it, so a
//!   plugin fault costs one command, not the pool.

mod bindings;
mod engine;
mod error;
mod instance;
mod live;
mod plugin;
mod store;
mod types;

pub use engine::{Engine, Limits};
pub use error::{Error, Result};
pub use instance::PoolInstance;
pub use live::LivePool;
pub use plugin::{ACCEPTED_CONTRACTS, Plugin, PluginInfo};
pub use types::{Cell, Command, Context, Decision, Failure, Json, Problem, Role, Snapshot, View};
