//! Limit and budget metrics. Decisions are counted on the hot path, so their counters are
//! sharded per worker (each worker increments its own, summed at scrape) and resolved once per
//! snapshot, not per request.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder},
    metrics::{MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge},
    registry::Registry,
};

use super::memory::{ShardedStore, Slot};
use crate::metrics::{CounterShard, LabelValue, Labels, ShardedFamily};

/// The `result` label of `gateway_ratelimit_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionResult {
    Allowed = 0,
    Limited = 1,
    /// Redis could not answer; the fail mode decided.
    Error = 2,
}

const RESULTS: [&str; 3] = ["allowed", "limited", "error"];

/// Families registered once at startup.
pub struct LimitMetrics {
    decisions: ShardedFamily<Labels<3>, CounterShard>,
    /// (route, layer, worker) → its three counters; reused by later snapshots.
    resolved: Mutex<HashMap<CountersKey, WorkerCounters>>,
    tokens: Family<TokenLabels, Counter>,
    uncounted: Family<Labels<2>, Counter>,
}

impl fmt::Debug for LimitMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LimitMetrics")
    }
}

impl Default for LimitMetrics {
    fn default() -> Self {
        LimitMetrics {
            decisions: ShardedFamily::new(&[]),
            resolved: Mutex::default(),
            tokens: Family::default(),
            uncounted: Family::default(),
        }
    }
}

impl LimitMetrics {
    pub fn register(registry: &mut Registry) -> Arc<LimitMetrics> {
        let m = Arc::new(LimitMetrics::default());
        registry.register(
            "gateway_ratelimit_decisions",
            "Rate-limit and token-budget checks, by route, layer and result (allowed, limited, error)",
            m.decisions.clone(),
        );
        registry.register(
            "gateway_token_budget_tokens",
            "Tokens charged to budgets, as reported by upstreams, by route",
            m.tokens.clone(),
        );
        registry.register(
            "gateway_token_budget_uncounted",
            "Responses on budgeted routes whose token usage could not be read, by route and reason",
            m.uncounted.clone(),
        );
        m
    }

    /// The counters of one (route, layer) pair, one set per worker.
    pub fn decisions(&self, route: &Arc<str>, layer: &Arc<str>, workers: usize) -> DecisionCounters {
        let mut resolved = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        let per_worker = (0..workers.max(1))
            .map(|w| {
                resolved
                    .entry((route.clone(), layer.clone(), w))
                    .or_insert_with(|| {
                        Arc::new(RESULTS.map(|result| {
                            self.decisions.new_shard(&Labels([
                                ("route", LabelValue::Shared(route.clone())),
                                ("layer", LabelValue::Shared(layer.clone())),
                                ("result", LabelValue::Static(result)),
                            ]))
                        }))
                    })
                    .clone()
            })
            .collect();
        DecisionCounters(per_worker)
    }

    pub fn tokens(&self, route: &Arc<str>, workspace: Option<&str>, n: u64) {
        let labels = TokenLabels { route: route.clone(), workspace: workspace.map(str::to_owned) };
        self.tokens.get_or_create(&labels).inc_by(n);
    }

    pub fn uncounted(&self, route: &Arc<str>, reason: &'static str) {
        self.uncounted
            .get_or_create(&Labels([
                ("route", LabelValue::Shared(route.clone())),
                ("reason", LabelValue::Static(reason)),
            ]))
            .inc();
    }
}

/// (route, layer, worker).
type CountersKey = (Arc<str>, Arc<str>, usize);

/// One worker's counters of one (route, layer) pair, indexed by [`DecisionResult`].
type WorkerCounters = Arc<[Arc<CounterShard>; 3]>;

/// A (route, layer) pair's decision counters, indexed by worker.
#[derive(Debug, Clone)]
pub struct DecisionCounters(Vec<WorkerCounters>);

impl DecisionCounters {
    pub fn count(&self, worker: usize, result: DecisionResult) {
        self.0[worker % self.0.len()][result as usize].inc();
    }
}

/// `route`, and `workspace` only where a budget asked for it (it is unbounded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenLabels {
    route: Arc<str>,
    workspace: Option<String>,
}

impl EncodeLabelSet for TokenLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("route", &*self.route).encode(encoder.encode_label())?;
        if let Some(w) = &self.workspace {
            ("workspace", w.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// `gateway_ratelimit_memory_keys` and `gateway_ratelimit_memory_evictions_total`, read from the
/// stores at scrape.
pub struct StoreCollector<A, B> {
    pub windows: Arc<ShardedStore<A>>,
    pub budgets: Arc<ShardedStore<B>>,
}

impl<A, B> fmt::Debug for StoreCollector<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl<A: Slot + Send + 'static, B: Slot + Send + 'static> Collector for StoreCollector<A, B> {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let stores = [
            ("ratelimit", self.windows.key_count(), self.windows.evicted()),
            ("token_budget", self.budgets.key_count(), self.budgets.evicted()),
        ];
        let mut keys = encoder.encode_descriptor(
            "gateway_ratelimit_memory_keys",
            "Keys held by the embedded (memory) backend, by store",
            None,
            MetricType::Gauge,
        )?;
        for (store, len, _) in stores {
            ConstGauge::new(len as i64).encode(keys.encode_family(&Labels([("store", LabelValue::Static(store))]))?)?;
        }
        let mut evicted = encoder.encode_descriptor(
            "gateway_ratelimit_memory_evictions",
            "Live keys the memory backend evicted because it was full, by store",
            None,
            MetricType::Counter,
        )?;
        for (store, _, n) in stores {
            ConstCounter::new(n).encode(evicted.encode_family(&Labels([("store", LabelValue::Static(store))]))?)?;
        }
        Ok(())
    }
}
