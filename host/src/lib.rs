//! The Allot host: runs capacity pools and the plugins that decide them.
//!
//! # Layout
//!
//! * [`entity`] runs one task per active pool: a bounded mailbox, commands
//!   decided one at a time in batches, events appended before anyone is
//!   answered, snapshots, passivation and recovery.
//! * [`sandbox`] loads capacity-type components (wasmtime, WIT contract
//!   `allot:capacity`) and runs each pool's decisions in its own instance under
//!   a deadline and a memory cap.
//! * [`journal`] stores pools, events, snapshots, command outcomes and the
//!   read-model rows in PostgreSQL, with fenced, sequence-checked appends.
//! * [`pg`] starts a private PostgreSQL from the machine's binaries when no
//!   database URL is configured.
//! * [`dev`] builds the workspace's plugin crates into components, for local
//!   development, tests and benchmarks.
//! * [`ids`] holds the identifiers the stages pass along: pool ids (and their
//!   shards) and sequence numbers.

pub mod dev;
pub mod entity;
pub mod ids;
pub mod journal;
pub mod pg;
pub mod sandbox;
