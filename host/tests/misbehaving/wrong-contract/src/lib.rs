//! A capacity type built against another version of the contract
//! (`allot:capacity@0.9.0`), which the host must refuse by name.

#![allow(missing_docs)]

mod bindings {
    wit_bindgen::generate!({
        world: "capacity-type",
        path: "wit",
    });
}

use bindings::exports::allot::capacity::decider;

struct Old;

impl decider::Guest for Old {
    fn describe() -> String {
        "an old plugin".into()
    }

    fn decide(_state: Vec<u8>, _command: String) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
}

#[cfg(target_arch = "wasm32")]
bindings::export!(Old with_types_in bindings);
