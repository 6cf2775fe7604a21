//! The long-lived limit stores shared by the rate-limit and token-budget phases: the sharded
//! memory stores (sliding windows, daily budgets), the key hasher, the clock, the Redis handle
//! and the decision metrics. [`LimitState`] outlives snapshots (kept by `state::PartsHolder`
//! across reloads); each phase is rebuilt per snapshot and receives it when the pipeline is built.
//! Both phases depend on this module, neither on the other.

pub mod clock;
pub mod key;
pub(crate) mod memory;
mod metrics;

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use prometheus_client::registry::Registry;

pub use clock::{Clock, ManualClock, SystemClock};
pub use key::{Key, KeySource};
pub use metrics::{DecisionCounters, DecisionResult, LimitMetrics};

use crate::{
    kv::{FailMode, Kv, KvMetrics, KvSpec},
    request::Step,
};
use memory::{KeyHasher, ShardedStore, WindowSlot};

/// Keys per memory store (rate limits, budgets): a few tens of MB each when full.
pub const MEMORY_CAPACITY: usize = 1_000_000;
/// How often dead memory entries are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Where counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In this process: exact for one node, nothing shared with other nodes.
    Memory,
    /// In `[redis]`, shared by every node; the fail mode says what happens when it cannot answer.
    Redis(FailMode),
}

/// Limiter state that outlives snapshots: memory stores, the Redis handle, the clock, metrics.
pub struct LimitState {
    pub(crate) windows: Arc<ShardedStore<WindowSlot>>,
    pub(crate) budgets: Arc<ShardedStore<memory::BudgetSlot>>,
    pub(crate) hasher: KeyHasher,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<LimitMetrics>,
    kv_metrics: KvMetrics,
    kv: Mutex<Option<Kv>>,
}

impl std::fmt::Debug for LimitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitState").finish_non_exhaustive()
    }
}

/// A limit layer or a token budget: applies to some routes, counts its decisions under its name.
pub(crate) trait RoutePolicy {
    fn name(&self) -> &Arc<str>;
    fn applies_to(&self, route: usize) -> bool;
}

impl LimitState {
    /// For each route (by index), the policies that apply to it in order, by index into
    /// `policies`, each with its decision counters.
    pub(crate) fn route_steps<P: RoutePolicy>(
        &self,
        on: &PhaseConfig<'_>,
        policies: &[P],
    ) -> Vec<Vec<(usize, DecisionCounters)>> {
        let workers = on.workers;
        let steps = |route: &crate::route::Route| {
            let applying = policies.iter().enumerate().filter(|(_, p)| p.applies_to(route.index));
            applying.map(|(i, p)| (i, self.metrics.decisions(&route.name, p.name(), workers))).collect()
        };
        on.routes.iter().map(steps).collect()
    }

    /// Registers the limiter and Redis metrics and starts the memory sweep (call it on the
    /// control runtime, once).
    pub fn register(registry: &mut Registry) -> Arc<LimitState> {
        let state =
            Arc::new(Self::new(Arc::new(SystemClock), LimitMetrics::register(registry), KvMetrics::register(registry)));
        registry.register_collector(Box::new(metrics::StoreCollector {
            windows: state.windows.clone(),
            budgets: state.budgets.clone(),
        }));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&state)));
        }
        state
    }

    /// Unregistered state (tests, or a holder built without a registry).
    pub fn new(clock: Arc<dyn Clock>, metrics: Arc<LimitMetrics>, kv_metrics: KvMetrics) -> LimitState {
        LimitState {
            windows: Arc::new(ShardedStore::new(MEMORY_CAPACITY)),
            budgets: Arc::new(ShardedStore::new(MEMORY_CAPACITY)),
            hasher: KeyHasher::default(),
            clock,
            metrics,
            kv_metrics,
            kv: Mutex::new(None),
        }
    }

    /// The Redis handle for `spec`: the running one while the spec is unchanged, a new one
    /// (connecting in the background) otherwise. Call on the control runtime.
    pub fn kv_for(&self, spec: Option<&KvSpec>) -> Option<Kv> {
        let mut current = self.kv.lock().unwrap_or_else(PoisonError::into_inner);
        let kv = match (spec, current.as_ref()) {
            (None, _) => None,
            (Some(s), Some(kv)) if kv.spec() == s => Some(kv.clone()),
            (Some(s), _) => Some(Kv::start(s.clone(), self.kv_metrics.clone())),
        };
        current.clone_from(&kv);
        kv
    }

    /// Waits until the Redis handle (if any) made its first connection attempt.
    pub async fn settled(&self) {
        let kv = self.kv.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(kv) = kv {
            let within = kv.spec().connect_timeout + Duration::from_millis(200);
            if !kv.settled(within).await {
                tracing::warn!(
                    "starting without redis; policies that use it apply their on_redis_error mode until it is reachable"
                );
            }
        }
    }
}

/// Drops dead memory entries every few seconds, until the state is gone.
async fn sweep(state: std::sync::Weak<LimitState>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let now_s = (state.clock.now_ms() / 1000) as u32;
        state.windows.sweep(now_s);
        state.budgets.sweep(now_s);
    }
}

/// What the limit phases read of the rest of the config, handed over when the pipeline is built.
pub struct PhaseConfig<'a> {
    /// Every route, in table order (plans are indexed by route).
    pub routes: &'a [crate::route::Route],
    /// Worker count (decision counters are sharded per worker).
    pub workers: usize,
    /// `[auth] api_key_header`, for limits keyed by API key.
    pub api_key_header: &'a http::HeaderName,
}

/// Runs a future that cannot wait (memory-only checks) to completion without boxing it.
pub(crate) fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// A memory-only check that waited: a bug, never a reason to refuse traffic.
pub(crate) fn unreachable_wait(phase: &'static str) -> Step<'static> {
    tracing::error!(phase, "a memory-only check waited; letting the request through");
    Step::Continue
}
