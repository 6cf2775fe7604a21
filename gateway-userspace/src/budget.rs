//! Token budgets for AI and MCP traffic: a daily number of tokens per workspace (or consumer,
//! user, API key, header), checked before a request and charged after its response with what
//! the upstream reported.
//!
//! - **Check** (on request): a budget whose day's usage reached its limit refuses with 429
//!   `token_budget_exhausted` and `Retry-After` until local midnight in the budget's time zone.
//!   The check cannot know the request's cost, so the request that crosses the limit is served;
//!   the next one is refused.
//! - **Charge** (when the response ends, or is cut off): the tokens come from the configured
//!   usage header, else from the body as it streams (`usage`): JSON `usage.total_tokens` or the
//!   final usage event of a server-sent-events stream. Nothing is buffered to count it.
//! - **Headers**: `X-Token-Budget-Limit`, `X-Token-Budget-Used`, `X-Token-Budget-Remaining`
//!   (usage as of the check, before this response is charged).
//! - **Audit**: `tokens_used`, `model_name` (the response's model, else the request's) and
//!   `tools_used` (tool calls in the response, MCP `tools/call` in the request).
//!
//! Budgeted routes ask upstreams for identity-encoded responses (`Accept-Encoding` is dropped),
//! so the usage can be read.

pub mod day;
mod request;
pub mod usage;

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue, header, request as http_request, response};
use thiserror::Error;

pub use day::{Day, Zone};
pub use request::{RequestFacts, RequestUsage};
pub use usage::{Facts, ResponseUsage, UsageReader};

use crate::{
    error::GatewayError,
    kv::{FailMode, Kv, KvError},
    limits::{
        Backend, DecisionCounters, DecisionResult, Key, KeySource, LimitState, PhaseConfig, RoutePolicy, key,
        memory::{BudgetSlot, ShardedStore},
        poll_once, unreachable_wait,
    },
    request::{Phase, RequestCtx, Step},
};

pub static LIMIT_HEADER: HeaderName = HeaderName::from_static("x-token-budget-limit");
pub static USED_HEADER: HeaderName = HeaderName::from_static("x-token-budget-used");
pub static REMAINING_HEADER: HeaderName = HeaderName::from_static("x-token-budget-remaining");

/// A validated `[[token_budgets]]` entry.
#[derive(Debug, Clone)]
pub struct BudgetSpec {
    /// Unique among limits and budgets: the `layer` label of decisions.
    pub name: Arc<str>,
    /// Route indices; `None` means every route.
    pub routes: Option<Vec<usize>>,
    pub key: Vec<KeySource>,
    pub daily_tokens: u64,
    pub zone: Zone,
    pub backend: Backend,
    /// An upstream response header carrying the total tokens (preferred over the body).
    pub usage_header: Option<HeaderName>,
    pub overrides: HashMap<String, u64>,
    /// Label `gateway_token_budget_tokens_total` with the workspace (unbounded cardinality).
    pub workspace_label: bool,
}

impl RoutePolicy for BudgetSpec {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn applies_to(&self, route: usize) -> bool {
        BudgetSpec::applies_to(self, route)
    }
}

impl BudgetSpec {
    pub fn applies_to(&self, route: usize) -> bool {
        self.routes.as_ref().is_none_or(|r| r.contains(&route))
    }

    pub fn limit_for(&self, key: &Key<'_>) -> u64 {
        key.override_in(&self.overrides).unwrap_or(self.daily_tokens)
    }
}

#[derive(Debug, Error)]
pub enum BudgetError {
    #[error("token budget {budget:?} is exhausted: {used} of {limit} tokens used today ({zone} day)")]
    Exhausted { budget: Arc<str>, limit: u64, used: u64, zone: String, retry_after: Duration },
    #[error("token budget {budget:?} cannot be checked and fails closed: {source}")]
    Unavailable {
        budget: Arc<str>,
        #[source]
        source: KvError,
    },
}

impl BudgetError {
    pub fn retry_after(&self) -> Duration {
        match self {
            BudgetError::Exhausted { retry_after, .. } => *retry_after,
            BudgetError::Unavailable { .. } => Duration::from_secs(1),
        }
    }
}

impl crate::error::Refusal for BudgetError {
    fn status(&self) -> http::StatusCode {
        match self {
            BudgetError::Exhausted { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            BudgetError::Unavailable { .. } => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            BudgetError::Exhausted { .. } => "token_budget_exhausted",
            BudgetError::Unavailable { .. } => "token_budget_unavailable",
        }
    }

    /// The Redis outage behind it is logged once by `kv`.
    fn logged_at_source(&self) -> bool {
        matches!(self, BudgetError::Unavailable { .. })
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(BudgetError::retry_after(self))
    }
}

/// KEYS: the day's counter. ARGV: tokens, time to live (ms; relative, so the Redis clock does
/// not have to agree with ours). Returns the new total.
static CHARGE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local used = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return used
",
    )
});

/// Charged counters outlive their day by this much (late charges of a request that started
/// before midnight still find it, and operators can look at yesterday).
const KEEP_AFTER_DAY: u64 = 3_600_000;

/// Where one budget's usage of one key lives.
#[derive(Debug, Clone)]
pub struct Counter {
    digest: u64,
    redis_key: Option<String>,
}

/// The usage store of budgets: memory and Redis behind one interface.
#[derive(Clone)]
pub struct Budgets {
    state: Arc<LimitState>,
    kv: Option<Kv>,
}

impl Budgets {
    pub fn new(state: Arc<LimitState>, kv: Option<Kv>) -> Self {
        Budgets { state, kv }
    }

    /// Where `key`'s usage of `budget` on `day` is counted.
    pub fn counter(&self, budget: &BudgetSpec, key: &Key<'_>, day: Day) -> Counter {
        let digest = self.state.hasher.digest(|h| {
            h.write(b"budget");
            h.write(budget.name.as_bytes());
            key.hash_into(h);
        });
        let redis_key = match (budget.backend, &self.kv) {
            (Backend::Redis(_), Some(kv)) => {
                let mut part = String::with_capacity(48);
                key.redis_part(&mut part);
                Some(kv.key(format_args!("tb:{{{}:{part}}}:{}", budget.name, day.id)))
            }
            _ => None,
        };
        Counter { digest, redis_key }
    }

    /// Tokens used so far on `day`.
    pub async fn used(&self, counter: &Counter, day: Day) -> Result<u64, KvError> {
        match (&counter.redis_key, &self.kv) {
            (Some(k), Some(kv)) => {
                Ok(kv.query::<Option<u64>>("budget_check", redis::cmd("GET").arg(k)).await?.unwrap_or(0))
            }
            (Some(_), None) => Err(KvError::Unavailable),
            (None, _) => Ok(self.used_memory(counter, day)),
        }
    }

    fn used_memory(&self, counter: &Counter, day: Day) -> u64 {
        self.state.budgets.peek(counter.digest, |s| if s.day == day.id { s.used } else { 0 }).unwrap_or(0)
    }

    /// Adds `tokens` to `day` (in Redis: sent from the control runtime; nobody waits).
    pub fn charge(&self, counter: &Counter, day: Day, tokens: u64, now_ms: u64) {
        match (&counter.redis_key, &self.kv) {
            (Some(k), Some(kv)) => {
                let (kv2, key) = (kv.clone(), k.clone());
                kv.spawn_detached("budget_charge", async move {
                    let mut call = CHARGE.prepare_invoke();
                    call.key(&key).arg(tokens).arg((day.ends_ms + KEEP_AFTER_DAY).saturating_sub(now_ms).max(1));
                    if let Err(e) = kv2.script::<u64>("budget_charge", &key, &call).await {
                        tracing::debug!(error = %e, tokens, "token budget charge lost");
                    }
                });
            }
            (Some(_), None) => {}
            (None, _) => charge_memory(&self.state.budgets, counter.digest, day, tokens, now_ms),
        }
    }
}

fn charge_memory(store: &ShardedStore<BudgetSlot>, digest: u64, day: Day, tokens: u64, now_ms: u64) {
    let now_s = (now_ms / 1000) as u32;
    store.with(digest, now_s, BudgetSlot::empty, |s| {
        if s.day != day.id {
            *s = BudgetSlot { day: day.id, used: 0, dead_at: 0, touched: 0 };
        }
        s.used = s.used.saturating_add(tokens);
        s.dead_at = (day.ends_ms / 1000) as u32;
        s.touched = now_s;
    });
}

/// A budget checked for this request, to charge later.
#[derive(Debug, Clone)]
struct Checked {
    counter: Counter,
    /// The day it was checked on: the request's tokens count there.
    day: Day,
    limit: u64,
    /// `None` when Redis could not say (failing open).
    used: Option<u64>,
}

/// Phase-private request state.
#[derive(Debug, Clone, Default)]
struct BudgetState {
    checked: Vec<Checked>,
    request: Option<Arc<Mutex<RequestFacts>>>,
}

/// One route's budgets, in order.
struct Plan {
    steps: Vec<(usize, DecisionCounters)>,
    /// Some budget is in Redis: the phase has to wait for it.
    remote: bool,
    usage_header: Option<HeaderName>,
    workspace_label: bool,
    workspace: bool,
}

/// The token budget phase.
pub struct BudgetPhase {
    budgets: Vec<BudgetSpec>,
    plans: Vec<Plan>,
    store: Budgets,
    /// `[auth] api_key_header`, for budgets keyed by API key.
    api_key_header: http::HeaderName,
}

impl BudgetPhase {
    pub fn new(budgets: Vec<BudgetSpec>, on: &PhaseConfig<'_>, state: Arc<LimitState>, kv: Option<Kv>) -> BudgetPhase {
        let plans = state
            .route_steps(on, &budgets)
            .into_iter()
            .map(|steps| {
                let mine = || steps.iter().map(|(i, _)| &budgets[*i]);
                Plan {
                    remote: mine().any(|b| matches!(b.backend, Backend::Redis(_))),
                    usage_header: mine().find_map(|b| b.usage_header.clone()),
                    workspace_label: mine().any(|b| b.workspace_label),
                    workspace: mine().any(|b| b.key.contains(&KeySource::Workspace)),
                    steps,
                }
            })
            .collect();
        BudgetPhase { budgets, plans, store: Budgets::new(state, kv), api_key_header: on.api_key_header.clone() }
    }

    fn plan(&self, ctx: &RequestCtx) -> Option<&Plan> {
        self.plans.get(ctx.route?).filter(|p| !p.steps.is_empty())
    }

    async fn check(&self, plan: &Plan, ctx: &mut RequestCtx, head: &http_request::Parts) -> Result<(), BudgetError> {
        let now = self.store.state.clock.now_ms();
        let worker = ctx.conn.worker_id;
        let mut checked = Vec::with_capacity(plan.steps.len());
        let mut result = Ok(());
        for (i, counters) in &plan.steps {
            let budget = &self.budgets[*i];
            let Some(key) = key::find(&budget.key, 64, &self.api_key_header, ctx, head) else { continue };
            let day = budget.zone.day(now);
            let limit = budget.limit_for(&key);
            let counter = self.store.counter(budget, &key, day);
            match self.store.used(&counter, day).await {
                Ok(used) if used >= limit => {
                    counters.count(worker, DecisionResult::Limited);
                    checked.push(Checked { counter, day, limit, used: Some(used) });
                    result = Err(BudgetError::Exhausted {
                        budget: budget.name.clone(),
                        limit,
                        used,
                        zone: budget.zone.name.clone(),
                        retry_after: Duration::from_millis(day.ends_ms.saturating_sub(now)),
                    });
                    break;
                }
                Ok(used) => {
                    counters.count(worker, DecisionResult::Allowed);
                    checked.push(Checked { counter, day, limit, used: Some(used) });
                }
                Err(source) => {
                    counters.count(worker, DecisionResult::Error);
                    tracing::debug!(budget = %budget.name, error = %source, "token budget not checked");
                    if budget.backend == Backend::Redis(FailMode::Closed) {
                        result = Err(BudgetError::Unavailable { budget: budget.name.clone(), source });
                        break;
                    }
                    // Failing open still charges what the response reports, if Redis is back.
                    checked.push(Checked { counter, day, limit, used: None });
                }
            }
        }
        let state = ctx.extensions.get_or_insert_default::<BudgetState>();
        state.checked = checked;
        result
    }

    /// Starts reading the request body for the model and MCP tool calls (JSON bodies only).
    fn observe_request(ctx: &mut RequestCtx, head: &http_request::Parts) {
        let declared = head.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if !is_json(head.headers.get(header::CONTENT_TYPE)) || declared.is_some_and(|n| n > usage::MAX_JSON_COPY) {
            return;
        }
        let facts = Arc::new(Mutex::new(RequestFacts::default()));
        ctx.request_observers.push(Box::new(request::RequestUsage::new(facts.clone())));
        ctx.extensions.get_or_insert_default::<BudgetState>().request = Some(facts);
    }
}

fn is_json(ct: Option<&HeaderValue>) -> bool {
    ct.is_some_and(|v| {
        let v = v.as_bytes().to_ascii_lowercase();
        v.starts_with(b"application/json") || memchr::memmem::find(&v, b"+json").is_some()
    })
}

impl Phase for BudgetPhase {
    fn name(&self) -> &'static str {
        "token-budget"
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx, head: &'a mut http_request::Parts) -> Step<'a> {
        let Some(plan) = self.plan(ctx) else { return Step::Continue };
        if plan.workspace {
            key::adopt_workspace_header(ctx, head);
        }
        // The usage must be readable in the response.
        head.headers.remove(header::ACCEPT_ENCODING);
        Self::observe_request(ctx, head);
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
        let Some(plan) = self.plan(ctx) else { return };
        let Some(state) = ctx.extensions.get::<BudgetState>() else { return };
        budget_headers(&state.checked, &mut head.headers);
        if ctx.error.is_some() {
            return;
        }
        let header_tokens = plan
            .usage_header
            .as_ref()
            .and_then(|h| head.headers.get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let uncounted = head.status.is_success().then(|| {
            let route = ctx.route_name().cloned().unwrap_or_else(|| Arc::from(""));
            (self.store.state.metrics.clone(), route)
        });
        let observer = ResponseUsage::new(
            head.headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes),
            header_tokens,
            state.request.clone(),
            uncounted,
        );
        ctx.response_observers.push(Box::new(observer));
    }

    fn on_log(&self, ctx: &RequestCtx) {
        let Some(plan) = self.plan(ctx) else { return };
        let (Some(tokens), Some(state)) = (ctx.usage.tokens_used, ctx.extensions.get::<BudgetState>()) else {
            return;
        };
        if tokens == 0 || ctx.error.is_some() {
            return;
        }
        let now = self.store.state.clock.now_ms();
        for c in &state.checked {
            self.store.charge(&c.counter, c.day, tokens, now);
        }
        if let Some(route) = ctx.route_name() {
            let workspace = plan.workspace_label.then(|| ctx.identity.workspace_id.as_deref().unwrap_or(""));
            self.store.state.metrics.tokens(route, workspace, tokens);
        }
    }
}

/// The tightest checked budget's numbers.
fn budget_headers(checked: &[Checked], headers: &mut HeaderMap) {
    let known = checked.iter().filter_map(|c| Some((c.limit, c.used?)));
    let Some((limit, used)) = known.min_by_key(|(limit, used)| limit.saturating_sub(*used)) else { return };
    headers.insert(&LIMIT_HEADER, HeaderValue::from(limit));
    headers.insert(&USED_HEADER, HeaderValue::from(used));
    headers.insert(&REMAINING_HEADER, HeaderValue::from(limit.saturating_sub(used)));
}

#[cfg(test)]
mod tests;
