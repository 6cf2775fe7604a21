//! Rate limits: per IP, consumer, user, workspace, API key or header; per second, minute, hour or
//! day; embedded (`memory`) on one node or in Redis across nodes.
//!
//! A route's layers (`[[rate_limits]]` that apply to it) run in file order as one phase; the
//! first refusal wins (429 with `Retry-After`) and later layers do not count the request.
//! Every response of a limited route carries the limit headers (see `headers`). The algorithm is
//! a sliding window counter (see `window`): exact while the previous window is empty, and no
//! double burst at window edges.
//!
//! Long-lived state (the memory store, the Redis handle) is a [`LimitState`], kept by
//! `state::PartsHolder` across reloads; a phase is rebuilt per snapshot from the config.

pub mod clock;
mod headers;
pub mod key;
pub(crate) mod memory;
mod metrics;
mod policy;
mod remote;
pub mod window;

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http::{request, response};
use prometheus_client::registry::Registry;
use thiserror::Error;

pub use clock::{Clock, ManualClock, SystemClock};
pub use headers::Decision;
pub use key::{Key, KeySource};
pub use metrics::{DecisionCounters, DecisionResult, LimitMetrics};
pub use policy::{Backend, LayerSpec, Window};

use crate::{
    budget::BudgetSlot,
    config::Config,
    error::GatewayError,
    kv::{FailMode, Kv, KvError, KvMetrics, KvSpec},
    request::{Phase, RequestCtx, Step},
};
use memory::{KeyHasher, ShardedStore, WindowSlot};
use window::{Outcome, Position};

/// Keys per memory store (rate limits, budgets): a few tens of MB each when full.
pub const MEMORY_CAPACITY: usize = 1_000_000;
/// How often dead memory entries are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum RateLimitError {
    #[error("rate limit {layer:?} exceeded: {limit} requests per {window}")]
    Limited { layer: Arc<str>, limit: u64, window: Window, retry_after: Duration },
    #[error("rate limit {layer:?} cannot be checked and fails closed: {source}")]
    Unavailable {
        layer: Arc<str>,
        #[source]
        source: KvError,
    },
}

impl RateLimitError {
    /// For `Retry-After`: when a request would be admitted again (at least a second).
    pub fn retry_after(&self) -> Duration {
        match self {
            RateLimitError::Limited { retry_after, .. } => *retry_after,
            RateLimitError::Unavailable { .. } => Duration::from_secs(1),
        }
    }
}

impl crate::error::Refusal for RateLimitError {
    fn status(&self) -> http::StatusCode {
        match self {
            RateLimitError::Limited { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            RateLimitError::Unavailable { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            RateLimitError::Limited { .. } => "rate_limited",
            RateLimitError::Unavailable { .. } => "ratelimit_unavailable",
        }
    }

    /// The Redis outage behind it is logged once by `kv`.
    fn logged_at_source(&self) -> bool {
        matches!(self, RateLimitError::Unavailable { .. })
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(RateLimitError::retry_after(self))
    }
}

/// Limiter state that outlives snapshots: memory stores, the Redis handle, the clock, metrics.
pub struct LimitState {
    pub(crate) windows: Arc<ShardedStore<WindowSlot>>,
    pub(crate) budgets: Arc<ShardedStore<BudgetSlot>>,
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

impl RoutePolicy for LayerSpec {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn applies_to(&self, route: usize) -> bool {
        LayerSpec::applies_to(self, route)
    }
}

impl LimitState {
    /// For each route (by index), the policies that apply to it in order, by index into
    /// `policies`, each with its decision counters.
    pub(crate) fn route_steps<P: RoutePolicy>(
        &self,
        config: &Config,
        policies: &[P],
    ) -> Vec<Vec<(usize, DecisionCounters)>> {
        let workers = config.server.workers;
        let steps = |route: &crate::route::Route| {
            let applying = policies.iter().enumerate().filter(|(_, p)| p.applies_to(route.index));
            applying.map(|(i, p)| (i, self.metrics.decisions(&route.name, p.name(), workers))).collect()
        };
        config.routes.routes().iter().map(steps).collect()
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

    /// Counts a request against `layer` in memory if it fits.
    pub fn decide_memory(&self, layer: &LayerSpec, key: &Key<'_>, limit: u64, now_ms: u64) -> Outcome {
        let window_ms = layer.window.millis();
        let pos = Position::of(now_ms, window_ms);
        let digest = self.hasher.digest(|h| {
            h.write(layer.name.as_bytes());
            h.write_u64(window_ms);
            key.hash_into(h);
        });
        let now_s = (now_ms / 1000) as u32;
        let dead_at = ((pos.index + 2) * window_ms / 1000) as u32;
        self.windows.with(digest, now_s, WindowSlot::empty, |slot| {
            slot.roll(pos.index);
            slot.touched = now_s;
            let outcome = window::outcome(slot.prev.into(), slot.cur.into(), pos, limit);
            if outcome.allowed {
                slot.cur = slot.cur.saturating_add(1);
                slot.dead_at = dead_at;
            }
            outcome
        })
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

/// One route's layers, in order, with their counters.
struct Plan {
    steps: Vec<(usize, DecisionCounters)>,
    /// Some layer is in Redis: the phase has to wait for it.
    remote: bool,
    /// Some layer keys on the workspace: take it from `X-Workspace-Id` if needed.
    workspace: bool,
}

/// The decisions taken for a request (for the response headers).
#[derive(Debug, Clone, Default)]
pub struct Decisions(pub Vec<Decision>);

/// The rate-limit phase.
pub struct RateLimitPhase {
    layers: Vec<LayerSpec>,
    /// Indexed by route.
    plans: Vec<Plan>,
    state: Arc<LimitState>,
    kv: Option<Kv>,
    /// `[auth] api_key_header`, for layers keyed by API key.
    api_key_header: http::HeaderName,
}

impl RateLimitPhase {
    pub fn new(config: &Config, state: Arc<LimitState>, kv: Option<Kv>) -> RateLimitPhase {
        let layers = config.rate_limits.clone();
        let plans = state
            .route_steps(config, &layers)
            .into_iter()
            .map(|steps| {
                let uses = |f: &dyn Fn(&LayerSpec) -> bool| steps.iter().any(|(i, _)| f(&layers[*i]));
                Plan {
                    remote: uses(&|l| matches!(l.backend, Backend::Redis(_))),
                    workspace: uses(&|l| l.key.contains(&KeySource::Workspace)),
                    steps,
                }
            })
            .collect();
        RateLimitPhase { layers, plans, state, kv, api_key_header: config.auth.api_key_header.clone() }
    }

    fn plan(&self, ctx: &RequestCtx) -> Option<&Plan> {
        self.plans.get(ctx.route?).filter(|p| !p.steps.is_empty())
    }

    /// The route's layers in order; Redis layers take one script round trip each (memory-only
    /// plans never wait, see [`poll_once`]).
    async fn check(&self, plan: &Plan, ctx: &mut RequestCtx, head: &request::Parts) -> Result<(), RateLimitError> {
        let now = self.state.clock.now_ms();
        let worker = ctx.conn.worker_id;
        let mut decisions = Vec::with_capacity(plan.steps.len());
        let mut result = Ok(());
        for (i, counters) in &plan.steps {
            let layer = &self.layers[*i];
            let Some(key) = key::find(&layer.key, layer.ipv6_prefix, &self.api_key_header, ctx, head) else { continue };
            let limit = layer.limit_for(&key);
            let verdict = match (layer.backend, &self.kv) {
                (Backend::Memory, _) => Ok(self.state.decide_memory(layer, &key, limit, now)),
                (Backend::Redis(_), Some(kv)) => remote::decide(kv, layer, &key, limit, now).await,
                (Backend::Redis(_), None) => Err(KvError::Unavailable),
            };
            if let Err(e) = &verdict {
                tracing::debug!(layer = %layer.name, error = %e, "rate limit not checked");
            }
            result = conclude(layer, counters, worker, limit, now, verdict, &mut decisions);
            if result.is_err() {
                break;
            }
        }
        ctx.extensions.insert(Decisions(decisions));
        result
    }
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

/// Counts a layer's verdict and turns it into go / refuse.
fn conclude(
    layer: &LayerSpec,
    counters: &DecisionCounters,
    worker: usize,
    limit: u64,
    now: u64,
    verdict: Result<Outcome, KvError>,
    decisions: &mut Vec<Decision>,
) -> Result<(), RateLimitError> {
    match verdict {
        Ok(outcome) => {
            let result = if outcome.allowed { DecisionResult::Allowed } else { DecisionResult::Limited };
            counters.count(worker, result);
            decisions.push(Decision { layer: layer.name.clone(), window: layer.window, limit, outcome, at_ms: now });
            if outcome.allowed {
                Ok(())
            } else {
                Err(RateLimitError::Limited {
                    layer: layer.name.clone(),
                    limit,
                    window: layer.window,
                    retry_after: Duration::from_millis(outcome.reset_ms),
                })
            }
        }
        Err(source) => {
            counters.count(worker, DecisionResult::Error);
            match layer.backend {
                Backend::Redis(FailMode::Closed) => {
                    Err(RateLimitError::Unavailable { layer: layer.name.clone(), source })
                }
                _ => Ok(()),
            }
        }
    }
}

impl Phase for RateLimitPhase {
    fn name(&self) -> &'static str {
        "ratelimit"
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx, head: &'a mut request::Parts) -> Step<'a> {
        let Some(plan) = self.plan(ctx) else { return Step::Continue };
        if plan.workspace {
            key::adopt_workspace_header(ctx, head);
        }
        if plan.remote {
            return Step::Wait(Box::pin(async move { Ok(self.check(plan, ctx, head).await?) }));
        }
        match poll_once(self.check(plan, ctx, head)) {
            Some(Ok(())) => Step::Continue,
            Some(Err(e)) => Step::Refuse(GatewayError::from(e)),
            None => unreachable_wait(self.name()),
        }
    }

    fn on_response(&self, ctx: &mut RequestCtx, head: &mut response::Parts) {
        if self.plan(ctx).is_none() {
            return;
        }
        if let Some(d) = ctx.extensions.get::<Decisions>() {
            headers::apply(&d.0, &mut head.headers);
        }
    }
}

#[cfg(test)]
mod tests;
