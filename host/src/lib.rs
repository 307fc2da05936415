//! The Allot host: runs capacity pools and the plugins that decide them.
//!
//! # Layout
//!
//! * [`api`] answers HTTP: checkout, planning and the capacity grid, with
//!   roles by bearer token and every error as a JSON problem.
//! * [`entity`] runs one task per active pool: a bounded mailbox, commands
//!   decided one at a time in batches, events appended before anyone is
//!   answered, snapshots, passivation and recovery.
//! * [`registry`] stores plugin components in PostgreSQL by digest and
//!   says which version is active for each capacity type, on every node.
//! * [`sandbox`] loads capacity-type components (wasmtime, WIT contract
//!   `allot:capacity`) and runs each pool's decisions in its own instance under
//!   a deadline and a memory cap.
//! * [`journal`] stores pools, events, snapshots and command outcomes in
//!   PostgreSQL, with fenced, sequence-checked appends, and writes the
//!   read-model rows just after them.
//! * [`view`] keeps every pool's latest view in memory on every node,
//!   refreshed from PostgreSQL, for the capacity grid.
//! * [`node`] puts the stages together into a running node: config,
//!   plugins, HTTP server, shutdown.
//! * [`metrics`] holds the Prometheus metrics the stages record.
//! * [`pg`] starts a private PostgreSQL from the machine's binaries when no
//!   database URL is configured.
//! * [`baseline`] serves the classical design (a counter row per pool,
//!   a conditional update per request) in the API's shape, for `allot bench`.
//! * [`bench`] is `allot bench`: open-loop load over HTTP against Allot and
//!   the baseline side by side, with a comparison table and a final check
//!   that nothing was overbooked or lost.
//! * [`cli`] is the `allot` command line: `serve`, `dev`, plugins, and a
//!   client of the API for pools, reservations and the grid.
//! * [`dev`] builds the workspace's plugin crates into components, for local
//!   development, tests and benchmarks.
//! * [`ids`] holds the identifiers the stages pass along: pool ids (and their
//!   shards) and sequence numbers.

pub mod api;
pub mod baseline;
pub mod bench;
pub mod cli;
pub mod cluster;
pub mod dev;
pub mod entity;
pub mod ids;
pub mod journal;
pub mod metrics;
pub mod node;
pub mod pg;
pub mod registry;
pub mod sandbox;
pub mod view;
