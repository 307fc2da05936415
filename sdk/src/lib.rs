//! Write an Allot capacity type in Rust.
//!
//! A *capacity type* is the set of rules for one kind of capacity pool: the
//! delivery slots of a fleet, the picking hours of a warehouse, the load of a
//! truck. Allot hosts many pools of each type. For every pool it keeps the
//! events in PostgreSQL, decides commands one at a time, and asks your code
//! two questions:
//!
//! * **decide**: given the pool's state and a command, which events happen
//!   (or why not)?
//! * **apply**: given the state and an event, what is the new state?
//!
//! Plus **view**: what should the capacity grid show?
//!
//! You write these as plain Rust functions on typed values. This crate turns
//! them into a WebAssembly component that the host loads, runs in a sandbox,
//! and swaps while the system runs.
//!
//! # A capacity type in five steps
//!
//! The example below is a complete plugin: a pool of seats that can be
//! reserved one or more at a time, and grown by planners.
//!
//! **1. Config** — what a planner gives when creating a pool. Anything serde
//! can read from JSON. Validate it in [`CapacityType::create`].
//!
//! **2. Request and commands** — the type-specific part of a reservation
//! (`Request`), and the type's own commands (`Command`), written as an enum
//! with one variant per command name. A command `grow` with payload
//! `{"seats": 5}` arrives as `SeatCommand::Grow { seats: 5 }`.
//!
//! **3. Events** — the facts your decisions produce. They are stored as JSON
//! forever, so name fields for the people who will query them, and only ever
//! add variants or optional fields.
//!
//! **4. State** — what `apply` folds events into. It is snapshotted with
//! postcard; bump [`CapacityType::STATE_VERSION`] when its layout changes,
//! and the host rebuilds pools from their events instead of old snapshots.
//!
//! **5. Rules** — implement [`CapacityType`], then export it with
//! [`export_capacity_type!`].
//!
//! ```
//! use allot_sdk::prelude::*;
//!
//! pub struct Seats;
//!
//! #[derive(Deserialize)]
//! pub struct Config { seats: u64 }
//!
//! #[derive(Deserialize)]
//! pub struct Request { seats: u64 }
//!
//! #[derive(Deserialize)]
//! #[serde(rename_all = "snake_case")]
//! pub enum SeatCommand { Grow { seats: u64 } }
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "type", rename_all = "snake_case")]
//! pub enum Event {
//!     Reserved { id: String, seats: u64 },
//!     Released { id: String, seats: u64 },
//!     Grown { seats: u64 },
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct State { capacity: u64, taken: std::collections::BTreeMap<String, u64> }
//!
//! impl CapacityType for Seats {
//!     const CAPACITY_TYPE: &'static str = "seats";
//!     type Config = Config;
//!     type Request = Request;
//!     type Command = SeatCommand;
//!     type Event = Event;
//!     type State = State;
//!
//!     fn create(config: Config) -> Result<State, Problem> {
//!         Ok(State { capacity: config.seats, taken: Default::default() })
//!     }
//!
//!     fn reserve(state: &State, _: &Context, id: &str, request: Request) -> Decision<Event> {
//!         if request.seats == 0 {
//!             return Err(Failure::invalid("invalid_seats", "reserve at least one seat"));
//!         }
//!         let used: u64 = state.taken.values().sum();
//!         let left = state.capacity.saturating_sub(used);
//!         if request.seats > left {
//!             return Err(Failure::rejected("sold_out", format!("{left} seats left")));
//!         }
//!         Ok(vec![Event::Reserved { id: id.into(), seats: request.seats }])
//!     }
//!
//!     fn release(state: &State, _: &Context, id: &str) -> Decision<Event> {
//!         match state.taken.get(id) {
//!             Some(&seats) => Ok(vec![Event::Released { id: id.into(), seats }]),
//!             None => Err(Failure::rejected("unknown_reservation", format!("no reservation {id}"))),
//!         }
//!     }
//!
//!     fn command(_: &State, _: &Context, command: SeatCommand) -> Decision<Event> {
//!         match command {
//!             SeatCommand::Grow { seats } => Ok(vec![Event::Grown { seats }]),
//!         }
//!     }
//!
//!     fn apply(state: &mut State, event: Event) {
//!         match event {
//!             Event::Reserved { id, seats } => { state.taken.insert(id, seats); }
//!             Event::Released { id, .. } => { state.taken.remove(&id); }
//!             Event::Grown { seats } => state.capacity += seats,
//!         }
//!     }
//!
//!     fn view(state: &State) -> View {
//!         View::new(vec![Cell::new("seats", "seats", state.capacity)
//!             .used(state.taken.values().sum())])
//!     }
//! }
//!
//! export_capacity_type!(Seats);
//! # fn main() {}
//! ```
//!
//! # Testing natively
//!
//! [`testkit::Scenario`] runs your rules as plain Rust, through the same
//! JSON and postcard paths the sandbox uses: *given* these events, *when*
//! this command, *then* these events or this rejection. `cargo test`, no wasm.
//!
//! ```
//! # use allot_sdk::prelude::*;
//! # pub struct Seats;
//! # #[derive(Deserialize)] pub struct Config { seats: u64 }
//! # #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! # #[serde(tag = "type", rename_all = "snake_case")]
//! # pub enum Event { Reserved { id: String } }
//! # #[derive(Serialize, Deserialize)] pub struct State { capacity: u64, taken: u64 }
//! # impl CapacityType for Seats {
//! #     const CAPACITY_TYPE: &'static str = "seats";
//! #     type Config = Config; type Request = (); type Command = NoCommands;
//! #     type Event = Event; type State = State;
//! #     fn create(c: Config) -> Result<State, Problem> { Ok(State { capacity: c.seats, taken: 0 }) }
//! #     fn reserve(s: &State, _: &Context, id: &str, _: ()) -> Decision<Event> {
//! #         if s.taken == s.capacity { return Err(Failure::rejected("sold_out", "no seats left")); }
//! #         Ok(vec![Event::Reserved { id: id.into() }])
//! #     }
//! #     fn release(_: &State, _: &Context, id: &str) -> Decision<Event> {
//! #         Err(Failure::rejected("unknown_reservation", id.to_string()))
//! #     }
//! #     fn apply(s: &mut State, _: Event) { s.taken += 1 }
//! #     fn view(s: &State) -> View { View::new(vec![Cell::new("seats", "seats", s.capacity).used(s.taken)]) }
//! # }
//! use allot_sdk::testkit::Scenario;
//!
//! Scenario::<Seats>::new(serde_json::json!({ "seats": 1 }))
//!     .given([Event::Reserved { id: "a".into() }])
//!     .when(Command::reserve("b", ()))
//!     .then_rejected("sold_out");
//! ```
//!
//! # Building the component
//!
//! Make the crate a `cdylib` (keep `rlib` for the native tests) and build it
//! for the component target:
//!
//! ```text
//! [lib]
//! crate-type = ["cdylib", "rlib"]
//!
//! $ rustup target add wasm32-wasip2
//! $ cargo build --release --target wasm32-wasip2
//! ```
//!
//! The component is `target/wasm32-wasip2/release/<crate_name>.wasm` (the
//! crate's name with `-` turned into `_`). Its name and version as the host
//! sees them are those of your crate.
//!
//! # Rules of the sandbox
//!
//! * Time comes from [`Context::now_ms`]. The sandbox has no clock, file system,
//!   network or environment, and its random numbers are fixed.
//! * `apply` must be deterministic and must not fail: it folds facts that
//!   already happened. Refuse things in `decide`.
//! * Iterate `BTreeMap`s, not `HashMap`s, wherever the order can reach an event
//!   or a view: a rebuilt instance may hash differently from the one before.
//! * Guard arithmetic on amounts that come from requests (`saturating_sub`,
//!   `checked_add`): plugins are built with overflow checks, so an overflow
//!   fails the command instead of deciding on a wrapped number.
//! * Roles: the host decides who may send which commands (checkout cannot
//!   change capacity). [`Context::role`] is there for rules that need more.
//! * Every call runs under a deadline and a memory cap. A panic, an endless
//!   loop or runaway memory fails that command only; the host rebuilds the
//!   pool's state from its events.
//! * Logs go through [`log`] to the host's log, tagged with the pool.

#![deny(missing_docs)]

extern crate self as allot_sdk;

mod guest;
pub mod log;
pub mod testkit;
pub mod time;
mod types;
mod wire;

pub use serde;
pub use serde_json;
pub use types::{Cell, Command, Context, Decision, Failure, NoCommands, Problem, Role, View};

/// Everything a plugin usually needs, in one import.
pub mod prelude {
    pub use crate::{
        CapacityType, Cell, Command, Context, Decision, Failure, NoCommands, Problem, Role, View,
        export_capacity_type,
    };
    pub use serde::{Deserialize, Serialize};
}

/// The rules of a capacity type.
///
/// Only `create`, `reserve`, `release`, `apply` and `view` are required;
/// `confirm` and `command` refuse by default, for types without holds or
/// commands of their own.
pub trait CapacityType: 'static {
    /// The name pools of this type are created with, e.g. `logistics`.
    const CAPACITY_TYPE: &'static str;

    /// The layout version of [`CapacityType::State`] in snapshots. Bump it
    /// whenever the state's serialized form changes.
    const STATE_VERSION: u32 = 1;

    /// A pool's config, read from JSON when the pool is created.
    type Config: serde::de::DeserializeOwned;

    /// The type-specific part of a reservation, read from JSON.
    type Request: serde::de::DeserializeOwned;

    /// The type's own commands, read as `{"<name>": <payload>}` into an enum.
    /// Use [`NoCommands`] if there are none.
    type Command: serde::de::DeserializeOwned;

    /// The facts decisions produce. Stored as JSON forever.
    type Event: serde::Serialize + serde::de::DeserializeOwned;

    /// What events fold into. Snapshotted with postcard.
    type State: serde::Serialize + serde::de::DeserializeOwned;

    /// Checks a config and builds a new pool's state from it.
    ///
    /// A bad config is refused with a [`Problem`] saying what is wrong; the
    /// pool is then not created.
    fn create(config: Self::Config) -> Result<Self::State, Problem>;

    /// Decides a reservation. `id` is the caller's reservation id (never empty).
    fn reserve(
        state: &Self::State,
        context: &Context,
        id: &str,
        request: Self::Request,
    ) -> Decision<Self::Event>;

    /// Decides the release of a reservation.
    fn release(state: &Self::State, context: &Context, id: &str) -> Decision<Self::Event>;

    /// Decides the confirmation of a hold. Refused by default.
    fn confirm(state: &Self::State, context: &Context, id: &str) -> Decision<Self::Event> {
        let _ = (state, context);
        Err(Failure::invalid(
            "holds_unsupported",
            format!(
                "{} has no holds to confirm (reservation {id})",
                Self::CAPACITY_TYPE
            ),
        ))
    }

    /// Decides a type-specific command. Refused by default.
    fn command(
        state: &Self::State,
        context: &Context,
        command: Self::Command,
    ) -> Decision<Self::Event> {
        let _ = (state, context, command);
        Err(Failure::invalid(
            "unknown_command",
            format!("{} has no commands of its own", Self::CAPACITY_TYPE),
        ))
    }

    /// Folds an event into the state. Deterministic, infallible.
    fn apply(state: &mut Self::State, event: Self::Event);

    /// What the capacity grid shows of this pool.
    fn view(state: &Self::State) -> View;
}

/// Exports a [`CapacityType`] as the component's decider.
///
/// Call it once, at the top level of the plugin crate. The plugin's name and
/// version reported to the host are the crate's (`CARGO_PKG_NAME`,
/// `CARGO_PKG_VERSION`).
#[macro_export]
macro_rules! export_capacity_type {
    ($capacity_type:ty) => {
        #[doc(hidden)]
        pub struct __AllotExport;

        impl $crate::__private::Export for __AllotExport {
            type Type = $capacity_type;
            const NAME: &'static str = env!("CARGO_PKG_NAME");
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
        }

        // Native builds (the plugin's own tests) link no component exports:
        // their names are not valid symbols outside wasm.
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __AllotGuest = $crate::__private::Guest<__AllotExport>;

        #[cfg(target_arch = "wasm32")]
        $crate::__private::export_guest!(__AllotGuest with_types_in $crate::__private::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::guest::bindings::export_guest;
    pub use crate::guest::{Export, Guest, bindings};
    pub use wit_bindgen;
}
