//! Rate limits: per IP, consumer, user, workspace, API key or header; per second, minute, hour or
//! day; embedded (`memory`) on one node or in Redis across nodes.
//!
//! A route's layers (`[[rate_limits]]` that apply to it) run in file order as one phase; the
//! first refusal wins (429 with `Retry-After`) and later layers do not count the request.
//! Every response of a limited route carries the limit headers (see `headers`). The algorithm is
//! a sliding window counter (see `window`): exact while the previous window is empty, and no
//! double burst at window edges.
//!
//! The long-lived stores, the clock and the Redis handle are the shared [`LimitState`] (see
//! `limits`); this phase is rebuilt per snapshot from the config.

mod headers;
mod policy;
mod remote;
pub mod window;

use std::{sync::Arc, time::Duration};

use http::{request, response};
use thiserror::Error;

pub use headers::Decision;
pub use policy::{LayerSpec, Window};

use crate::{
    error::GatewayError,
    kv::{FailMode, Kv, KvError},
    limits::{
        Backend, DecisionCounters, DecisionResult, Key, KeySource, LimitState, PhaseConfig, RoutePolicy, key,
        memory::WindowSlot, poll_once, unreachable_wait,
    },
    request::{Phase, RequestCtx, Step},
};
use window::{Outcome, Position};

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

impl RoutePolicy for LayerSpec {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn applies_to(&self, route: usize) -> bool {
        LayerSpec::applies_to(self, route)
    }
}

/// Counts a request against `layer` in `state`'s memory store if it fits.
pub fn decide_memory(state: &LimitState, layer: &LayerSpec, key: &Key<'_>, limit: u64, now_ms: u64) -> Outcome {
    let window_ms = layer.window.millis();
    let pos = Position::of(now_ms, window_ms);
    let digest = state.hasher.digest(|h| {
        h.write(layer.name.as_bytes());
        h.write_u64(window_ms);
        key.hash_into(h);
    });
    let now_s = (now_ms / 1000) as u32;
    let dead_at = ((pos.index + 2) * window_ms / 1000) as u32;
    state.windows.with(digest, now_s, WindowSlot::empty, |slot| {
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
    pub fn new(layers: Vec<LayerSpec>, on: &PhaseConfig<'_>, state: Arc<LimitState>, kv: Option<Kv>) -> RateLimitPhase {
        let plans = state
            .route_steps(on, &layers)
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
        RateLimitPhase { layers, plans, state, kv, api_key_header: on.api_key_header.clone() }
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
                (Backend::Memory, _) => Ok(decide_memory(&self.state, layer, &key, limit, now)),
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
