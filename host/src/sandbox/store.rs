//! What each component instance's store holds: one field per host interface.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{log, wit};

/// Longest plugin log line kept; the rest is cut.
const MAX_LOG_LINE: usize = 4096;
/// Log lines a plugin may write per call before the rest are dropped.
const LOG_LINES_PER_CALL: u32 = 64;

pub(crate) struct StoreState {
    /// The pool this instance serves, for its log lines.
    pool: Arc<str>,
    /// Most memory one instance may have, in bytes, all memories together.
    memory_limit: usize,
    /// Memory the instance has now, all memories together.
    memory_used: usize,
    /// Set when the plugin tried to grow memory past the cap, so that the
    /// trap that follows is reported as what it is.
    pub(crate) memory_exceeded: bool,
    /// The last error line the plugin logged during the current call; the
    /// SDK reports panics this way, so a trap can say why it happened.
    pub(crate) last_error: Option<String>,
    /// Log lines left for the current call.
    log_budget: u32,
    /// WASI with no capabilities: the standard library of a wasm32-wasip2
    /// plugin imports it, but nothing behind it reaches the host.
    wasi: WasiCtx,
    table: ResourceTable,
}

impl StoreState {
    pub(crate) fn new(pool: Arc<str>, memory_limit: usize, wasi: WasiCtx) -> Self {
        Self {
            pool,
            memory_limit,
            memory_used: 0,
            memory_exceeded: false,
            last_error: None,
            log_budget: LOG_LINES_PER_CALL,
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// Forgets what the previous call left behind.
    pub(crate) fn begin_call(&mut self) {
        self.memory_exceeded = false;
        self.last_error = None;
        self.log_budget = LOG_LINES_PER_CALL;
    }

    pub(crate) fn pool(&self) -> &str {
        &self.pool
    }
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory_used - current + desired;
        if total > self.memory_limit {
            self.memory_exceeded = true;
            return Ok(false);
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl log::Host for StoreState {
    fn log(&mut self, level: log::Level, mut message: String) {
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let pool = &*self.pool;
        match level {
            log::Level::Trace => tracing::trace!(target: "allot::plugin", pool, "{message}"),
            log::Level::Debug => tracing::debug!(target: "allot::plugin", pool, "{message}"),
            log::Level::Info => tracing::info!(target: "allot::plugin", pool, "{message}"),
            log::Level::Warn => tracing::warn!(target: "allot::plugin", pool, "{message}"),
            log::Level::Error => {
                tracing::error!(target: "allot::plugin", pool, "{message}");
                self.last_error = Some(message);
            }
        }
        if self.log_budget == 0 {
            tracing::warn!(target: "allot::plugin", pool, "log limit of {LOG_LINES_PER_CALL} lines per call reached; dropping the rest");
        }
    }
}

impl wit::Host for StoreState {}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
