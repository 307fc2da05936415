//! Host-side bindings of the `allot:capacity` contract.

wasmtime::component::bindgen!({
    world: "capacity-type",
    path: "../wit",
});

pub(crate) use allot::capacity::log;
pub(crate) use allot::capacity::types as wit;
