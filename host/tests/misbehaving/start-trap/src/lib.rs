//! A component that links and looks like a capacity type, but traps as
//! soon as the host asks what it is: the registry must refuse it.

#![allow(missing_docs)]

mod bindings {
    wit_bindgen::generate!({
        world: "capacity-type",
        path: "../../../../wit",
    });
}

use bindings::allot::capacity::types::{Command, Context, Failure, Info, Problem, Snapshot, View};
use bindings::exports::allot::capacity::decider::{self, GuestPool};

struct StartTrap;

struct Pool;

impl decider::Guest for StartTrap {
    type Pool = Pool;

    fn describe() -> Info {
        panic!("this plugin refuses to start");
    }
}

impl GuestPool for Pool {
    fn create(_config: String) -> Result<decider::Pool, Problem> {
        unreachable!("never started")
    }

    fn restore(_snapshot: Snapshot) -> Result<decider::Pool, Problem> {
        unreachable!("never started")
    }

    fn decide(&self, _context: Context, _command: Command) -> Result<Vec<String>, Failure> {
        unreachable!("never started")
    }

    fn apply(&self, _event: String) -> Result<(), Problem> {
        unreachable!("never started")
    }

    fn snapshot(&self) -> Snapshot {
        unreachable!("never started")
    }

    fn view(&self) -> View {
        unreachable!("never started")
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(StartTrap with_types_in bindings);
