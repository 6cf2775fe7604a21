//! Identity metrics. Request-path counters and histograms are sharded per worker (each worker
//! caches its shard handles in a thread-local map); key refresh, revocation and introspection
//! metrics are ordinary families updated off the hot path or rarely.

use std::{cell::RefCell, collections::HashMap, sync::Arc};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::breaker::BreakerState;
use crate::metrics::{CounterShard, HistogramShard, LabelValue, Labels, ShardedFamily};

/// Validation latency buckets (seconds): cached lookups are microseconds, signatures tens of
/// microseconds, introspection round trips milliseconds (the seed's budgets: 10 ms, 50 ms).
static VALIDATION_BUCKETS: [f64; 14] =
    [0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];

struct Inner {
    failures: ShardedFamily<Labels<2>, CounterShard>,
    successes: ShardedFamily<Labels<2>, CounterShard>,
    cache: ShardedFamily<Labels<1>, CounterShard>,
    validation: ShardedFamily<Labels<1>, HistogramShard>,
    refreshes: Family<Labels<2>, Counter>,
    kid_refetches: Family<Labels<1>, Counter>,
    keys: Family<Labels<1>, Gauge>,
    last_refresh: Family<Labels<1>, Gauge>,
    failed_closed: Family<Labels<1>, Gauge>,
    revocations: Family<Labels<1>, Counter>,
    revocation_errors: Family<Labels<1>, Counter>,
    revocations_pending: Gauge,
    introspections: Family<Labels<1>, Counter>,
    introspection_cache: Family<Labels<1>, Counter>,
    introspection_coalesced: Family<Labels<1>, Counter>,
    breaker_state: Family<Labels<1>, Gauge>,
    breaker_transitions: Family<Labels<2>, Counter>,
    breaker_rejections: Family<Labels<1>, Counter>,
    oidc: super::OidcMetrics,
}

/// Registered once at startup; cheap to clone.
#[derive(Clone)]
pub struct AuthMetrics(Arc<Inner>);

impl std::fmt::Debug for AuthMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthMetrics")
    }
}

impl Default for AuthMetrics {
    fn default() -> Self {
        AuthMetrics(Arc::new(Inner {
            failures: ShardedFamily::new(&[]),
            successes: ShardedFamily::new(&[]),
            cache: ShardedFamily::new(&[]),
            validation: ShardedFamily::new(&VALIDATION_BUCKETS),
            refreshes: Family::default(),
            kid_refetches: Family::default(),
            keys: Family::default(),
            last_refresh: Family::default(),
            failed_closed: Family::default(),
            revocations: Family::default(),
            revocation_errors: Family::default(),
            revocations_pending: Gauge::default(),
            introspections: Family::default(),
            introspection_cache: Family::default(),
            introspection_coalesced: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            breaker_rejections: Family::default(),
            oidc: super::OidcMetrics::default(),
        }))
    }
}

/// (family address, route name address or 0, label value). The route name is kept alive in the
/// value, so its address cannot be reused by another name while the entry exists.
type ShardKey = (usize, usize, &'static str);
/// The route name kept alive (see [`ShardKey`]) and the shard.
type ShardEntry = (Option<Arc<str>>, Arc<CounterShard>);

thread_local! {
    /// This worker's shard handles, per metrics instance: found once, then used lock-free.
    static SHARDS: RefCell<HashMap<ShardKey, ShardEntry>> = RefCell::default();
    static HISTOGRAMS: RefCell<HashMap<(usize, &'static str), Arc<HistogramShard>>> = RefCell::default();
}

fn one(name: &'static str, value: LabelValue) -> Labels<1> {
    Labels([(name, value)])
}

impl AuthMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let mut m = AuthMetrics::default();
        if let Some(inner) = Arc::get_mut(&mut m.0) {
            inner.oidc = super::OidcMetrics::register(registry);
        }
        let i = &m.0;
        registry.register(
            "gateway_auth_failures",
            "Requests refused by the identity phase, by route and reason",
            i.failures.clone(),
        );
        registry.register(
            "gateway_auth_successes",
            "Requests authenticated, by route and credential (jwt, introspection, api_key, mtls)",
            i.successes.clone(),
        );
        registry.register(
            "gateway_auth_token_cache",
            "Validated-token cache lookups, by result (hit, miss)",
            i.cache.clone(),
        );
        registry.register(
            "gateway_auth_validation_duration_seconds",
            "Token validations that were not cache hits, by kind (jwt: signature and claims; introspection: IdP round trip)",
            i.validation.clone(),
        );
        registry.register(
            "gateway_auth_jwks_refreshes",
            "Key refreshes (discovery + JWKS), by issuer and result (ok, error)",
            i.refreshes.clone(),
        );
        registry.register(
            "gateway_auth_jwks_unknown_kid_refetches",
            "Refetches triggered by tokens with an unknown kid, by issuer",
            i.kid_refetches.clone(),
        );
        registry.register("gateway_auth_jwks_keys", "Signing keys held, by issuer", i.keys.clone());
        registry.register(
            "gateway_auth_jwks_last_success_timestamp_seconds",
            "Unix time of the last successful key refresh, by issuer",
            i.last_refresh.clone(),
        );
        registry.register(
            "gateway_auth_issuer_failed_closed",
            "1 while an issuer refuses every token because its IdP was unreachable for longer than the grace period",
            i.failed_closed.clone(),
        );
        registry.register(
            "gateway_auth_revocations",
            "jti revocations added, by source (admin, peer)",
            i.revocations.clone(),
        );
        registry.register(
            "gateway_auth_revocation_store_errors",
            "Revocation checks the shared store could not answer, by the fail mode applied (fail_open, fail_closed)",
            i.revocation_errors.clone(),
        );
        registry.register(
            "gateway_auth_revocations_pending",
            "Revocations made on this node that Redis has not taken yet (queued, published when it answers)",
            i.revocations_pending.clone(),
        );
        registry.register(
            "gateway_auth_introspections",
            "RFC 7662 introspection calls, by result (active, inactive, error)",
            i.introspections.clone(),
        );
        registry.register(
            "gateway_auth_introspection_cache",
            "Lookups in the shared (Redis) introspection cache, by result (hit, miss, error: Redis could not answer or held an unusable value; the IdP is asked)",
            i.introspection_cache.clone(),
        );
        registry.register(
            "gateway_auth_introspection_coalesced",
            "Introspections a request did not make because a concurrent request for the same token was already asking the IdP (it took that answer), by issuer",
            i.introspection_coalesced.clone(),
        );
        registry.register(
            "gateway_auth_idp_breaker_state",
            "The IdP circuit breaker of each issuer: 0 closed, 1 open (failing fast), 2 half-open (one trial call under way)",
            i.breaker_state.clone(),
        );
        registry.register(
            "gateway_auth_idp_breaker_transitions",
            "IdP circuit breaker state changes, by issuer and new state (open, half_open, closed)",
            i.breaker_transitions.clone(),
        );
        registry.register(
            "gateway_auth_idp_breaker_rejections",
            "IdP calls (introspections, key fetches) refused at once by an open circuit breaker, by issuer",
            i.breaker_rejections.clone(),
        );
        m
    }

    pub fn oidc(&self) -> &super::OidcMetrics {
        &self.0.oidc
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    fn shard(
        &self,
        family: &ShardedFamily<Labels<2>, CounterShard>,
        route: &Arc<str>,
        name: &'static str,
        value: &'static str,
    ) {
        let key = (family as *const _ as usize, Arc::as_ptr(route) as *const u8 as usize, value);
        SHARDS.with_borrow_mut(|m| {
            m.entry(key)
                .or_insert_with(|| {
                    let labels =
                        Labels([("route", LabelValue::Shared(route.clone())), (name, LabelValue::Static(value))]);
                    (Some(route.clone()), family.new_shard(&labels))
                })
                .1
                .inc();
        });
    }

    pub fn failure(&self, route: &Arc<str>, reason: &'static str) {
        self.shard(&self.0.failures, route, "reason", reason);
    }

    pub fn success(&self, route: &Arc<str>, credential: &'static str) {
        self.shard(&self.0.successes, route, "credential", credential);
    }

    pub fn cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        SHARDS.with_borrow_mut(|m| {
            m.entry((&self.0.cache as *const _ as usize, 0, result))
                .or_insert_with(|| (None, self.0.cache.new_shard(&one("result", LabelValue::Static(result)))))
                .1
                .inc();
        });
    }

    pub fn validation(&self, kind: &'static str, seconds: f64) {
        HISTOGRAMS.with_borrow_mut(|m| {
            m.entry((self.id(), kind))
                .or_insert_with(|| self.0.validation.new_shard(&one("kind", LabelValue::Static(kind))))
                .observe(seconds);
        });
    }

    fn issuer(name: &Arc<str>) -> Labels<1> {
        one("issuer", LabelValue::Shared(name.clone()))
    }

    pub fn refreshed(&self, issuer: &Arc<str>, ok: bool, now_ms: u64) {
        let result = if ok { "ok" } else { "error" };
        self.0
            .refreshes
            .get_or_create(&Labels([
                ("issuer", LabelValue::Shared(issuer.clone())),
                ("result", LabelValue::Static(result)),
            ]))
            .inc();
        if ok {
            self.0.last_refresh.get_or_create(&Self::issuer(issuer)).set((now_ms / 1000) as i64);
        }
    }

    pub fn kid_refetch(&self, issuer: &Arc<str>) {
        self.0.kid_refetches.get_or_create(&Self::issuer(issuer)).inc();
    }

    pub fn set_keys(&self, issuer: &Arc<str>, n: usize) {
        self.0.keys.get_or_create(&Self::issuer(issuer)).set(n as i64);
    }

    pub fn set_failed_closed(&self, issuer: &Arc<str>, closed: bool) {
        self.0.failed_closed.get_or_create(&Self::issuer(issuer)).set(i64::from(closed));
    }

    /// An issuer removed by a reload disappears from the gauges.
    pub fn forget_issuer(&self, issuer: &Arc<str>) {
        let l = Self::issuer(issuer);
        self.0.keys.remove(&l);
        self.0.failed_closed.remove(&l);
        self.0.last_refresh.remove(&l);
        self.0.breaker_state.remove(&l);
    }

    pub fn set_breaker_state(&self, issuer: &Arc<str>, state: BreakerState) {
        self.0.breaker_state.get_or_create(&Self::issuer(issuer)).set(state.gauge());
    }

    pub fn breaker_transition(&self, issuer: &Arc<str>, to: BreakerState) {
        self.set_breaker_state(issuer, to);
        let labels = Labels([("issuer", LabelValue::Shared(issuer.clone())), ("to", LabelValue::Static(to.label()))]);
        self.0.breaker_transitions.get_or_create(&labels).inc();
    }

    pub fn breaker_rejection(&self, issuer: &Arc<str>) {
        self.0.breaker_rejections.get_or_create(&Self::issuer(issuer)).inc();
    }

    pub fn introspection_coalesced(&self, issuer: &Arc<str>) {
        self.0.introspection_coalesced.get_or_create(&Self::issuer(issuer)).inc();
    }

    pub fn revoked(&self, source: &'static str) {
        self.0.revocations.get_or_create(&one("source", LabelValue::Static(source))).inc();
    }

    pub fn revocations_pending(&self, n: usize) {
        self.0.revocations_pending.set(n as i64);
    }

    pub fn revocation_store_error(&self, fail_open: bool) {
        let mode = if fail_open { "fail_open" } else { "fail_closed" };
        self.0.revocation_errors.get_or_create(&one("result", LabelValue::Static(mode))).inc();
    }

    pub fn introspection(&self, result: &'static str) {
        self.0.introspections.get_or_create(&one("result", LabelValue::Static(result))).inc();
    }

    pub fn introspection_cache(&self, result: &'static str) {
        self.0.introspection_cache.get_or_create(&one("result", LabelValue::Static(result))).inc();
    }
}
