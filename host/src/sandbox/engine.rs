//! The wasmtime engine and linker shared by every plugin, and the one place
//! where the sandbox's limits and capabilities are set.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Store};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use super::bindings::CapacityType;
use super::store::StoreState;
use super::{Error, Result};

/// How often the epoch advances. Deadlines are counted in these ticks, so
/// this is also their resolution.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Limits applied to every plugin instance.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest a single call into a plugin may run.
    pub call_timeout: Duration,
    /// Most linear memory one instance may use, in bytes.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A decision takes microseconds; 100 ms only stops a runaway plugin
        // from holding a thread. 64 MiB holds the state of a very large pool.
        Self {
            call_timeout: Duration::from_millis(100),
            memory_bytes: 64 << 20,
        }
    }
}

/// Compiles and instantiates plugins. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: wasmtime::Engine,
    linker: Linker<StoreState>,
    limits: Limits,
}

impl Engine {
    /// An engine with these limits. Starts the thread that advances epochs,
    /// which ends when the last clone of the engine is dropped.
    pub fn new(limits: Limits) -> Result<Self> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Deadlines by epoch rather than fuel: a check at loop headers
            // and calls costs far less than counting every instruction, and
            // the deadline is wall-clock time, which is what callers wait on.
            .epoch_interruption(true)
            // `apply` must give the same state on every node; NaN bit
            // patterns are the one thing wasm leaves to the hardware.
            .cranelift_nan_canonicalization(true)
            .max_wasm_stack(512 << 10);
        let engine = wasmtime::Engine::new(&config).map_err(|e| Error::Link(e.to_string()))?;

        let mut linker = Linker::new(&engine);
        // A wasm32-wasip2 standard library imports WASI (stderr for panics,
        // random seeds for hash maps, ...). We satisfy those imports with a
        // context that grants nothing: see `wasi_context`.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| Error::Link(e.to_string()))?;
        CapacityType::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |state| state)
            .map_err(|e| Error::Link(e.to_string()))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("allot-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| Error::Link(format!("cannot start the epoch thread: {e}")))?;

        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                limits,
            }),
        })
    }

    /// The limits every instance runs under.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<StoreState> {
        &self.inner.linker
    }

    /// A fresh store for one instance serving `pool`.
    pub(crate) fn store(&self, pool: Arc<str>) -> Store<StoreState> {
        let state = StoreState::new(pool, self.inner.limits.memory_bytes, wasi_context());
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| state);
        store
    }

    /// Epoch ticks that cover the call timeout, plus one because the current
    /// tick may be nearly over.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let ticks = self.inner.limits.call_timeout.as_micros() / EPOCH_TICK.as_micros();
        ticks as u64 + 1
    }
}

/// WASI that grants nothing: no files, no network, no environment or
/// arguments, output streams that go nowhere, a clock stopped at the epoch and
/// fixed "random" bytes. Plugins take time from the command's context. Fixed
/// bytes make runs more alike but not identical (a rebuilt instance has made
/// fewer calls), which is why the SDK tells authors not to let hash-map order
/// reach a decision.
fn wasi_context() -> wasmtime_wasi::WasiCtx {
    WasiCtxBuilder::new()
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .wall_clock(StoppedClock)
        .monotonic_clock(StoppedClock)
        .secure_random(Deterministic::new(vec![0x5a, 0x17, 0xc3, 0x8e]))
        .insecure_random(Deterministic::new(vec![0x3c, 0x91, 0x4d, 0xe2]))
        .insecure_random_seed(0x0a11_07ca_9ac1_7e55)
        .build()
}

struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}
