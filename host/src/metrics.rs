//! Prometheus metrics of this process.
//!
//! One registry per process, reached through [`metrics`]: the stages record
//! into it where the work happens (an entity's batch, a group commit, a
//! plugin call) without threading a handle through every constructor, the
//! way a logger is reached.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The HTTP method.
    pub method: String,
    /// The route template (`/v1/pools/{pool}/reservations`), never a concrete path.
    pub route: String,
    /// The response status.
    pub status: u16,
}

/// Labels of a plugin call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The capacity type.
    pub capacity_type: String,
    /// The call: `decide`, `view`, …
    pub call: &'static str,
}

/// Labels of a shadow decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    /// The capacity type.
    pub capacity_type: String,
    /// `agree`, `disagree` or `failed`.
    pub result: &'static str,
}

/// Labels of a forwarded request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForwardLabels {
    /// `answered`, `not_owner` or `failed`.
    pub result: &'static str,
}

/// Every metric Allot exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP request latency, per route.
    pub http_requests: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Commands waiting in an entity's mailbox when it takes a batch.
    pub mailbox_depth: Histogram,
    /// Commands decided per entity batch.
    pub batch_size: Histogram,
    /// Pools' batches written per group commit.
    pub group_size: Histogram,
    /// Time to append one group to PostgreSQL.
    pub append_seconds: Histogram,
    /// Appends started beside others in flight, on an extra writer.
    pub overlapping_appends: Counter,
    /// Read-model rows written per statement of the view writer.
    pub view_rows: Histogram,
    /// Time of one statement of the view writer.
    pub view_write_seconds: Histogram,
    /// Read-model rows PostgreSQL refused for what they hold.
    pub view_rows_refused: Counter,
    /// Pools whose latest view the view writer holds and has not written.
    pub view_rows_pending: Gauge,
    /// Time of plugin calls.
    pub plugin_calls: Family<PluginLabels, Histogram, fn() -> Histogram>,
    /// Entities live on the nodes of this process.
    pub active_pools: Gauge,
    /// Pools in the read models of the nodes of this process.
    pub read_model_pools: Gauge,
    /// Time from a view's commit to its arrival in this node's read model.
    pub read_model_lag: Histogram,
    /// Decisions of shadowing versions, by whether they agreed.
    pub shadow_decisions: Family<ShadowLabels, Counter>,
    /// Shard leases the nodes of this process hold.
    pub cluster_shards_held: Gauge,
    /// Nodes with a fresh heartbeat, as this node last saw.
    pub cluster_nodes_live: Gauge,
    /// Leases this node found taken by another node: at a tick, or when
    /// an append was fenced.
    pub cluster_leases_lost: Counter,
    /// Batches whose append PostgreSQL refused because their shard's lease
    /// had moved on: a node that lost a shard tried to write, and could not.
    pub appends_fenced: Counter,
    /// Commands and reads sent on to the owner of their pool, by result.
    pub forwarded: Family<ForwardLabels, Counter>,
}

/// Latencies from 50 µs to about 13 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

/// Counts from 1 to 4096.
fn sizes() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// One holder's part of a gauge that all holders in the process add up to:
/// the nodes of `allot dev --nodes N` share one registry, so a count that
/// each of them keeps (its live entities, its read model, its unwritten
/// views) must move the gauge by its own change, not set it. The part is
/// taken back when the holder is dropped.
pub struct GaugePart {
    gauge: &'static Gauge,
    shown: AtomicI64,
}

impl GaugePart {
    /// A part of `gauge`, at zero.
    pub fn of(gauge: &'static Gauge) -> Self {
        Self {
            gauge,
            shown: AtomicI64::new(0),
        }
    }

    /// Makes this holder's part `count`.
    pub fn show(&self, count: usize) {
        let count = count as i64;
        let before = self.shown.swap(count, Ordering::Relaxed);
        self.gauge.inc_by(count - before);
    }
}

impl Drop for GaugePart {
    fn drop(&mut self) {
        self.show(0);
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency as fn() -> Histogram,
            );
        let plugin_calls =
            Family::<PluginLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency as fn() -> Histogram,
            );
        let metrics = Self {
            http_requests,
            mailbox_depth: sizes(),
            batch_size: sizes(),
            group_size: sizes(),
            append_seconds: latency(),
            overlapping_appends: Counter::default(),
            view_rows: sizes(),
            view_write_seconds: latency(),
            view_rows_refused: Counter::default(),
            view_rows_pending: Gauge::default(),
            plugin_calls,
            active_pools: Gauge::default(),
            read_model_pools: Gauge::default(),
            read_model_lag: latency(),
            shadow_decisions: Family::default(),
            cluster_shards_held: Gauge::default(),
            cluster_nodes_live: Gauge::default(),
            cluster_leases_lost: Counter::default(),
            appends_fenced: Counter::default(),
            forwarded: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "allot_http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            metrics.http_requests.clone(),
        );
        registry.register(
            "allot_entity_mailbox_depth",
            "Commands waiting in a pool's mailbox when its entity takes a batch",
            metrics.mailbox_depth.clone(),
        );
        registry.register(
            "allot_entity_batch_size",
            "Commands decided per entity batch",
            metrics.batch_size.clone(),
        );
        registry.register(
            "allot_journal_group_size",
            "Pools' batches written per group commit",
            metrics.group_size.clone(),
        );
        registry.register(
            "allot_journal_append_duration_seconds",
            "Time to append one group commit to PostgreSQL",
            metrics.append_seconds.clone(),
        );
        registry.register(
            "allot_journal_overlapping_appends",
            "Group commits started beside others in flight, on an extra writer",
            metrics.overlapping_appends.clone(),
        );
        registry.register(
            "allot_view_rows_written",
            "Read-model rows written per statement of the view writer",
            metrics.view_rows.clone(),
        );
        registry.register(
            "allot_view_write_duration_seconds",
            "Time of one statement of the view writer",
            metrics.view_write_seconds.clone(),
        );
        registry.register(
            "allot_view_rows_refused",
            "Read-model rows PostgreSQL refused for what they hold, left unwritten",
            metrics.view_rows_refused.clone(),
        );
        registry.register(
            "allot_view_rows_pending",
            "Pools whose latest view the view writer holds and has not written yet",
            metrics.view_rows_pending.clone(),
        );
        registry.register(
            "allot_plugin_call_duration_seconds",
            "Time of plugin calls by capacity type and call",
            metrics.plugin_calls.clone(),
        );
        registry.register(
            "allot_entities_active",
            "Pool entities live on this node",
            metrics.active_pools.clone(),
        );
        registry.register(
            "allot_read_model_pools",
            "Pools in this node's read model",
            metrics.read_model_pools.clone(),
        );
        registry.register(
            "allot_read_model_lag_seconds",
            "Time from a view's commit to its arrival in this node's read model",
            metrics.read_model_lag.clone(),
        );
        registry.register(
            "allot_shadow_decisions",
            "Decisions of shadowing plugin versions, by capacity type and whether they agreed",
            metrics.shadow_decisions.clone(),
        );
        registry.register(
            "allot_cluster_shards_held",
            "Shard leases this node holds",
            metrics.cluster_shards_held.clone(),
        );
        registry.register(
            "allot_cluster_nodes_live",
            "Nodes with a fresh heartbeat, as this node last saw",
            metrics.cluster_nodes_live.clone(),
        );
        registry.register(
            "allot_cluster_leases_lost",
            "Leases this node found taken by another node",
            metrics.cluster_leases_lost.clone(),
        );
        registry.register(
            "allot_appends_fenced",
            "Batches refused because their shard's lease had moved to another node",
            metrics.appends_fenced.clone(),
        );
        registry.register(
            "allot_forwarded_requests",
            "Commands and reads sent on to the node owning their pool, by result",
            metrics.forwarded.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_of_a_gauge_add_up_and_are_taken_back_when_dropped() {
        let gauge: &'static Gauge = Box::leak(Box::default());
        let first = GaugePart::of(gauge);
        let second = GaugePart::of(gauge);
        first.show(3);
        second.show(5);
        assert_eq!(gauge.get(), 8);
        first.show(1);
        assert_eq!(gauge.get(), 6);
        drop(second);
        assert_eq!(gauge.get(), 1);
        first.show(0);
        assert_eq!(gauge.get(), 0);
    }
}
