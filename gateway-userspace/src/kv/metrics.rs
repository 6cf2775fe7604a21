//! `gateway_redis_up`, `gateway_redis_node_up` (Cluster masters), `gateway_redis_command_duration_seconds`,
//! `gateway_redis_errors_total`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::metrics::{LabelValue, Labels};

/// Loopback Redis answers in tens of microseconds; a remote one in a millisecond or so.
static BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// Registered once at startup; shared by every [`super::Kv`] the process starts.
#[derive(Clone, Debug)]
pub struct KvMetrics {
    up: Family<Labels<1>, Gauge>,
    node_up: Family<Labels<2>, Gauge>,
    duration: Family<Labels<1>, Histogram, fn() -> Histogram>,
    errors: Family<Labels<2>, Counter>,
    /// Live handles per target: a reload that replaces a handle with one for the same target
    /// must not remove the new handle's gauge when the old one goes.
    live: Arc<Mutex<HashMap<String, usize>>>,
}

impl Default for KvMetrics {
    fn default() -> Self {
        KvMetrics {
            up: Family::default(),
            node_up: Family::default(),
            duration: Family::new_with_constructor(histogram),
            errors: Family::default(),
            live: Arc::default(),
        }
    }
}

impl KvMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = KvMetrics::default();
        registry.register(
            "gateway_redis_up",
            "1 while the gateway holds a working connection to the Redis target, 0 while it is down",
            m.up.clone(),
        );
        registry.register(
            "gateway_redis_node_up",
            "Redis Cluster: 1 while the master serves its slots for this gateway, 0 while it is marked down",
            m.node_up.clone(),
        );
        registry.register(
            "gateway_redis_command_duration_seconds",
            "Redis round trips (scripts, commands, health pings, connects), by command",
            m.duration.clone(),
        );
        registry.register(
            "gateway_redis_errors",
            "Redis calls that failed, by command and kind (timeout, unavailable, command, dropped)",
            m.errors.clone(),
        );
        m
    }

    /// Counts a new handle for `target`; true when it is the only one (so its state is the gauge's).
    pub(super) fn adopt(&self, target: &str) -> bool {
        let mut live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = live.entry(target.to_owned()).or_default();
        *n += 1;
        *n == 1
    }

    pub(super) fn set_up(&self, target: &str, up: bool) {
        self.up.get_or_create(&target_label(target)).set(i64::from(up));
    }

    /// Drops a handle; true when it was the last one for `target` (its gauges are removed).
    pub(super) fn forget(&self, target: &str) -> bool {
        let mut live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(n) = live.get_mut(target) else { return false };
        *n -= 1;
        if *n == 0 {
            live.remove(target);
            self.up.remove(&target_label(target));
            return true;
        }
        false
    }

    pub(super) fn set_node_up(&self, target: &str, node: &str, up: bool) {
        self.node_up.get_or_create(&node_label(target, node)).set(i64::from(up));
    }

    pub(super) fn forget_node(&self, target: &str, node: &str) {
        self.node_up.remove(&node_label(target, node));
    }

    pub(super) fn observe(&self, op: &'static str, took: Duration) {
        self.duration.get_or_create(&Labels([("command", LabelValue::Static(op))])).observe(took.as_secs_f64());
    }

    pub(super) fn error(&self, op: &'static str, kind: &'static str) {
        self.errors
            .get_or_create(&Labels([("command", LabelValue::Static(op)), ("kind", LabelValue::Static(kind))]))
            .inc();
    }
}

fn target_label(target: &str) -> Labels<1> {
    Labels([("target", LabelValue::Owned(target.to_owned()))])
}

fn node_label(target: &str, node: &str) -> Labels<2> {
    Labels([("target", LabelValue::Owned(target.to_owned())), ("node", LabelValue::Owned(node.to_owned()))])
}
