//! Native tests for capacity types: *given* events, *when* a command, *then*
//! events or a refusal.
//!
//! Scenarios run the rules as plain Rust with `cargo test`, through the same
//! boundary code the sandbox uses: events go through JSON before they are
//! applied, and the state goes through a postcard snapshot before every
//! decision, so a type whose events or snapshots do not round-trip fails here
//! rather than in production.
//!
//! ```
//! # use allot_sdk::prelude::*;
//! # pub struct Counter;
//! # #[derive(Debug, PartialEq, Serialize, Deserialize)] pub struct Taken { id: String }
//! # impl CapacityType for Counter {
//! #     const CAPACITY_TYPE: &'static str = "counter";
//! #     type Config = u64; type Request = (); type Command = NoCommands;
//! #     type Event = Taken; type State = (u64, u64);
//! #     fn create(c: u64) -> Result<(u64, u64), Problem> { Ok((c, 0)) }
//! #     fn reserve(s: &(u64, u64), _: &Context, id: &str, _: ()) -> Decision<Taken> {
//! #         if s.1 == s.0 { return Err(Failure::rejected("full", "full")); }
//! #         Ok(vec![Taken { id: id.into() }])
//! #     }
//! #     fn release(_: &(u64, u64), _: &Context, _: &str) -> Decision<Taken> { Ok(vec![]) }
//! #     fn apply(s: &mut (u64, u64), _: Taken) { s.1 += 1 }
//! #     fn view(s: &(u64, u64)) -> View { View::new(vec![Cell::new("c", "units", s.0).used(s.1)]) }
//! # }
//! use allot_sdk::testkit::Scenario;
//!
//! let scenario = Scenario::<Counter>::new(serde_json::json!(2))
//!     .when(Command::reserve("a", ()))
//!     .then([Taken { id: "a".into() }])
//!     .when(Command::reserve("b", ()))
//!     .then_accepted()
//!     .when(Command::reserve("c", ()))
//!     .then_rejected("full");
//! assert_eq!(scenario.view().cell("c").unwrap().used, 2);
//! ```

use std::fmt::Debug;

use crate::wire::{self, WireCommand};
use crate::{CapacityType, Command, Context, Failure, Problem, Role, View};

/// A pool under test.
pub struct Scenario<T: CapacityType> {
    state: T::State,
    context: Context,
}

impl<T: CapacityType> Scenario<T> {
    /// A new pool created from this config.
    ///
    /// # Panics
    /// If the config is refused; use [`Scenario::create`] to test refusals.
    pub fn new(config: serde_json::Value) -> Self {
        match Self::create(config) {
            Ok(scenario) => scenario,
            Err(problem) => panic!("config refused: {problem}"),
        }
    }

    /// A new pool created from this config, or the plugin's reason for refusing it.
    pub fn create(config: serde_json::Value) -> Result<Self, Problem> {
        let state = wire::create::<T>(&config.to_string())?;
        Ok(Self {
            state,
            context: Context::at(0),
        })
    }

    /// Applies events that already happened.
    pub fn given(mut self, events: impl IntoIterator<Item = T::Event>) -> Self {
        for event in events {
            self.apply(&event);
        }
        self
    }

    /// Decides the next commands at this time (ms since the Unix epoch).
    pub fn at(mut self, now_ms: i64) -> Self {
        self.context.now_ms = now_ms;
        self
    }

    /// Decides the next commands as sent by this role.
    pub fn as_role(mut self, role: Role) -> Self {
        self.context.role = role;
        self
    }

    /// Decides a command.
    pub fn when(mut self, command: Command<T::Request, T::Command>) -> Outcome<T> {
        self.round_trip_snapshot();
        let result = wire::decide::<T>(&self.state, &self.context, command);
        Outcome {
            scenario: self,
            result,
        }
    }

    /// Decides a reservation given as JSON, exactly as the host would pass it.
    pub fn when_reserve_json(self, id: &str, request: serde_json::Value) -> Outcome<T> {
        self.when_wire(WireCommand::Reserve {
            id: id.to_owned(),
            request: request.to_string(),
        })
    }

    /// Decides a type-specific command given by name and JSON payload, exactly
    /// as the host would pass it.
    pub fn when_command(self, name: &str, payload: serde_json::Value) -> Outcome<T> {
        self.when_wire(WireCommand::Custom {
            name: name.to_owned(),
            payload: payload.to_string(),
        })
    }

    fn when_wire(self, command: WireCommand) -> Outcome<T> {
        match wire::parse_command::<T>(command) {
            Ok(command) => self.when(command),
            Err(failure) => Outcome {
                scenario: self,
                result: Err(failure),
            },
        }
    }

    /// The pool's state.
    pub fn state(&self) -> &T::State {
        &self.state
    }

    /// The pool's view.
    pub fn view(&self) -> View {
        T::view(&self.state)
    }

    fn apply(&mut self, event: &T::Event) {
        let json = wire::encode_event::<T>(event);
        let event = wire::decode_event::<T>(&json)
            .unwrap_or_else(|p| panic!("event does not round-trip through JSON: {p}\n{json}"));
        T::apply(&mut self.state, event);
    }

    fn round_trip_snapshot(&mut self) {
        let bytes = wire::snapshot::<T>(&self.state);
        self.state = wire::restore::<T>(T::STATE_VERSION, &bytes)
            .unwrap_or_else(|p| panic!("state does not round-trip through a snapshot: {p}"));
    }
}

/// What a command decided; assert on it with one of the `then` methods.
pub struct Outcome<T: CapacityType> {
    scenario: Scenario<T>,
    result: Result<Vec<T::Event>, Failure>,
}

impl<T: CapacityType> Outcome<T> {
    /// Asserts these events, applies them and goes on.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = T::Event>) -> Scenario<T>
    where
        T::Event: PartialEq + Debug,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        match &self.result {
            Ok(events) => assert_eq!(events, &expected, "unexpected events"),
            Err(failure) => panic!("expected events {expected:?}, got {failure}"),
        }
        self.then_accepted()
    }

    /// Asserts that the command was accepted, applies its events and goes on.
    #[track_caller]
    pub fn then_accepted(self) -> Scenario<T> {
        let mut scenario = self.scenario;
        match self.result {
            Ok(events) => {
                for event in &events {
                    scenario.apply(event);
                }
                scenario
            }
            Err(failure) => panic!("expected the command to be accepted, got {failure}"),
        }
    }

    /// Asserts a business rejection with this code; the state is unchanged.
    #[track_caller]
    pub fn then_rejected(self, code: &str) -> Scenario<T> {
        match &self.result {
            Err(Failure::Rejected(p)) if p.code == code => self.scenario,
            _ => panic!("expected rejection `{code}`, got {}", self.describe()),
        }
    }

    /// Asserts an invalid command with this code; the state is unchanged.
    #[track_caller]
    pub fn then_invalid(self, code: &str) -> Scenario<T> {
        match &self.result {
            Err(Failure::Invalid(p)) if p.code == code => self.scenario,
            _ => panic!("expected invalid command `{code}`, got {}", self.describe()),
        }
    }

    /// The raw outcome, for assertions the `then` methods do not cover.
    pub fn result(&self) -> &Result<Vec<T::Event>, Failure> {
        &self.result
    }

    fn describe(&self) -> String {
        match &self.result {
            Ok(events) => format!(
                "events {}",
                events
                    .iter()
                    .map(wire::encode_event::<T>)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(failure) => failure.to_string(),
        }
    }
}
