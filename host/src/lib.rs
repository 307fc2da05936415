//! The Allot host: runs capacity pools and the plugins that decide them.
//!
//! # Layout
//!
//! * [`sandbox`] loads capacity-type components (wasmtime, WIT contract
//!   `allot:capacity`) and runs each pool's decisions in its own instance under
//!   a deadline and a memory cap.
//! * [`pg`] starts a private PostgreSQL from the machine's binaries when no
//!   database URL is configured.
//! * [`dev`] builds the workspace's plugin crates into components, for local
//!   development, tests and benchmarks.

pub mod dev;
pub mod pg;
pub mod sandbox;
