//! Working from a source checkout: building the workspace's plugin crates
//! into components, for `allot plugins build`, the tests and the benchmarks.

mod build;

pub use build::{
    BuildError, PLUGIN_PROFILE, WASM_TARGET, build_plugins, build_plugins_showing_progress,
    scratch_postgres_dir, workspace_root,
};
