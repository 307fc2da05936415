//! A component that implements the contract's shapes but breaks its rules:
//! its events are not JSON, its view details are not JSON, its cell keys
//! repeat and its rejection codes are not codes. Written against the raw
//! bindings, because the SDK cannot produce any of this.

#![allow(missing_docs)]

mod bindings {
    wit_bindgen::generate!({
        world: "capacity-type",
        path: "../../../../wit",
    });
}

use bindings::allot::capacity::types::{
    Cell, Command, Context, Failure, Info, Problem, Snapshot, View,
};
use bindings::exports::allot::capacity::decider::{self, GuestPool};

struct Garbage;

struct Pool;

impl decider::Guest for Garbage {
    type Pool = Pool;

    fn describe() -> Info {
        Info {
            name: "allot-test-garbage-output".into(),
            version: "0.1.0".into(),
            capacity_type: "garbage".into(),
            state_version: 1,
        }
    }
}

impl GuestPool for Pool {
    fn create(_config: String) -> Result<decider::Pool, Problem> {
        Ok(decider::Pool::new(Pool))
    }

    fn restore(_snapshot: Snapshot) -> Result<decider::Pool, Problem> {
        Ok(decider::Pool::new(Pool))
    }

    fn decide(&self, _context: Context, command: Command) -> Result<Vec<String>, Failure> {
        match command {
            Command::Reserve(_) => Ok(vec![
                "{\"type\":\"taken\"}".into(),
                "taken, probably".into(),
            ]),
            Command::Release(_) => Err(Failure::Rejected(Problem {
                code: "Not A Code!".into(),
                message: "codes must be machine-readable".into(),
            })),
            Command::Confirm(_) | Command::Custom(_) => Ok(vec![]),
        }
    }

    fn apply(&self, _event: String) -> Result<(), Problem> {
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            state_version: 1,
            bytes: vec![],
        }
    }

    fn view(&self) -> View {
        let cell = Cell {
            key: "same".into(),
            labels: vec![],
            start_ms: None,
            end_ms: None,
            unit: "units".into(),
            capacity: 1,
            used: 0,
            held: 0,
            open: true,
        };
        View {
            cells: vec![cell.clone(), cell],
            details: "{not json".into(),
        }
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(Garbage with_types_in bindings);
