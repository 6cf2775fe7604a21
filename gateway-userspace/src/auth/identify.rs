//! The identify phase: strips client-supplied identity headers (on every route), applies the
//! route's policy, and on success sets the identity headers and `RequestCtx::identity`.
//!
//! The decision is synchronous whenever it can be (cached token, or a JWT whose key is known:
//! no allocation for the future, no network). It needs I/O only for a `kid` not in the key set
//! (or keys never fetched yet), and for opaque tokens (introspection). Then the request waits:
//! the I/O only fills caches, and the same synchronous decision runs again.

use std::{
    borrow::Cow,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use http::{HeaderValue, header, request};

use super::{
    AuthError, AuthMetrics, AuthSpec, Credential, IntrospectionCacheKind, IntrospectionSpec, Mode, Policy, RoutePolicy,
    breaker::retry_after_secs,
    cache::{self, Entry, TokenHash, Validated, WorkerCache},
    idp_http::IdpClient,
    introspection::{
        Introspected, IntrospectionError, introspect,
        shared::{self, SharedAnswers, Stored},
        single_flight::SingleFlight,
    },
    jwks::{Freshness, IssuerKeys},
    jwt::{self, ClaimsOf},
    revocation::{Lookup, Revocations},
    unix_now_ms,
};
use crate::{
    consumer::Consumer,
    error::GatewayError,
    kv::Kv,
    request::VerifyStatus,
    request::{Phase, RequestCtx, Step},
};

static NEXT_PHASE_ID: AtomicU64 = AtomicU64::new(1);

pub struct IdentifyPhase {
    /// Unique per phase (per snapshot): workers' caches are keyed by it.
    id: u64,
    spec: Arc<AuthSpec>,
    /// Running key caches, indexed like `spec.issuers`.
    issuers: Vec<Arc<IssuerKeys>>,
    /// Introspection clients, indexed like `spec.issuers` (`None` without introspection).
    introspectors: Vec<Option<IdpClient>>,
    /// The fleet-wide introspection cache, indexed like `spec.issuers` (`cache = "redis"`).
    shared: Vec<Option<SharedAnswers>>,
    /// Introspections under way, by issuer index and token digest (one call per token).
    flights: SingleFlight<(usize, TokenHash), Result<Arc<Stored>, AuthError>>,
    revocations: Arc<Revocations>,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for IdentifyPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentifyPhase").field("id", &self.id).field("issuers", &self.issuers).finish_non_exhaustive()
    }
}

/// The time, read once per decision.
#[derive(Debug, Clone, Copy)]
struct Now {
    secs: u64,
    ms: u64,
}

impl Now {
    fn get() -> Now {
        let ms = unix_now_ms();
        Now { secs: ms / 1000, ms }
    }
}

/// Which slow steps this request already took (each at most once).
#[derive(Debug, Default, Clone, Copy)]
struct Waited {
    keys: bool,
    introspected: bool,
    /// The shared revocation store was asked (and answered "not revoked", or failed open).
    revocation: bool,
}

enum Decision {
    Done(Result<Outcome, AuthError>),
    Io(Io),
}

#[derive(Debug, Clone)]
enum Io {
    /// Wait for a key refresh of this issuer (unknown `kid`, or no keys yet).
    Keys(usize),
    /// Introspect the opaque token at this issuer.
    Introspect(usize),
    /// Ask the shared revocation store about this jti.
    Revocation(Box<str>),
}

enum Check<T> {
    Ready(Result<T, AuthError>),
    Io(Io),
}

#[derive(Default)]
struct Outcome {
    token: Option<Rc<Validated>>,
    /// From the API key, else from the client certificate.
    consumer: Option<Consumer>,
    api_key: bool,
}

/// The credentials a request carries (only the kinds its policy accepts are looked for).
#[derive(Default)]
struct Presented<'h> {
    bearer: Option<Cow<'h, str>>,
    api_key: Option<&'h str>,
    cert: Option<[u8; 32]>,
}

impl IdentifyPhase {
    pub(super) fn new(
        spec: Arc<AuthSpec>,
        issuers: Vec<Arc<IssuerKeys>>,
        revocations: Arc<Revocations>,
        kv: Option<Kv>,
        metrics: AuthMetrics,
    ) -> Self {
        let introspectors =
            spec.issuers.iter().map(|i| i.introspection.as_ref().map(|_| IdpClient::new(i.tls.clone()))).collect();
        let shared = spec
            .issuers
            .iter()
            .map(|i| {
                let settings = i.introspection.as_ref().filter(|s| s.cache == IntrospectionCacheKind::Redis)?;
                match &kv {
                    Some(kv) => Some(SharedAnswers::new(kv.clone(), i, settings)),
                    None => {
                        // Validation requires [redis]; without it answers stay per worker.
                        tracing::error!(issuer = %i.name, "introspection cache is redis but no [redis] handle exists");
                        None
                    }
                }
            })
            .collect();
        IdentifyPhase {
            id: NEXT_PHASE_ID.fetch_add(1, Ordering::Relaxed),
            spec,
            issuers,
            introspectors,
            shared,
            flights: SingleFlight::default(),
            revocations,
            metrics,
        }
    }

    pub fn spec(&self) -> &AuthSpec {
        &self.spec
    }

    /// Checks a bearer token against policy number `policy` as a request would (token cache,
    /// keys, claims, revocation, scopes), without a request and without I/O: an unknown `kid`
    /// or an opaque token is refused rather than fetched. For benchmarks and fuzzing.
    #[doc(hidden)]
    pub fn check_bearer(&self, policy: usize, token: &str) -> Result<(), AuthError> {
        let policy = self.spec.policies.get(policy).ok_or(AuthError::Missing("a policy".into()))?;
        let now = Now::get();
        match self.bearer(policy, token, now, Waited { keys: true, introspected: true, revocation: false }) {
            Check::Ready(Ok(v)) => {
                let outcome = Outcome { token: Some(v), ..Outcome::default() };
                match self.checks(policy, &Presented::default(), outcome, now, Waited::default()) {
                    Check::Ready(r) => r.map(|_| ()),
                    Check::Io(_) => Err(AuthError::RevocationUnavailable),
                }
            }
            Check::Ready(Err(e)) => Err(e),
            Check::Io(_) => Err(AuthError::IdpUnavailable),
        }
    }

    fn refused(&self, ctx: &RequestCtx, e: AuthError) -> GatewayError {
        if let Some(route) = ctx.route_name() {
            self.metrics.failure(route, e.reason());
        }
        e.into()
    }

    /// Runs the policy as far as it can without I/O.
    fn decide(&self, ctx: &RequestCtx, head: &request::Parts, policy: &Policy, now: Now, waited: Waited) -> Decision {
        let presented = match self.presented(head, ctx, policy) {
            Ok(p) => p,
            Err(e) => return Decision::Done(Err(e)),
        };
        let mut outcome = Outcome::default();
        let mut any = false;
        for &credential in &policy.credentials {
            let present = match credential {
                Credential::Jwt => presented.bearer.is_some(),
                Credential::ApiKey => presented.api_key.is_some(),
                Credential::Mtls => presented.cert.is_some(),
            };
            if !present {
                if policy.mode == Mode::AllOf {
                    return Decision::Done(Err(AuthError::Missing(credential.wanted().into())));
                }
                continue;
            }
            any = true;
            match credential {
                Credential::Jwt => {
                    let token = presented.bearer.as_deref().unwrap_or_default();
                    match self.bearer(policy, token, now, waited) {
                        Check::Ready(Ok(v)) => outcome.token = Some(v),
                        Check::Ready(Err(e)) => return Decision::Done(Err(e)),
                        Check::Io(io) => return Decision::Io(io),
                    }
                }
                Credential::ApiKey => match self.spec.consumers.by_api_key(presented.api_key.unwrap_or_default()) {
                    Some(consumer) => {
                        outcome.consumer = Some(consumer.clone());
                        outcome.api_key = true;
                    }
                    None => return Decision::Done(Err(AuthError::InvalidApiKey)),
                },
                Credential::Mtls => {
                    // The client-certificate phase found its consumer, if it has one.
                    if outcome.consumer.is_none() {
                        outcome.consumer = ctx.identity.consumer.clone();
                    }
                }
            }
        }
        if !any {
            return Decision::Done(Err(AuthError::Missing(policy.wanted.clone())));
        }
        match self.checks(policy, &presented, outcome, now, waited) {
            Check::Ready(r) => Decision::Done(r),
            Check::Io(io) => Decision::Io(io),
        }
    }

    /// What holds per request even for a cached token: certificate binding, revocation, scopes.
    fn checks(
        &self,
        policy: &Policy,
        presented: &Presented<'_>,
        outcome: Outcome,
        now: Now,
        waited: Waited,
    ) -> Check<Outcome> {
        match self.checks_inner(policy, presented, &outcome, now, waited) {
            Ok(None) => Check::Ready(Ok(outcome)),
            Ok(Some(io)) => Check::Io(io),
            Err(e) => Check::Ready(Err(e)),
        }
    }

    fn checks_inner(
        &self,
        policy: &Policy,
        presented: &Presented<'_>,
        outcome: &Outcome,
        now: Now,
        waited: Waited,
    ) -> Result<Option<Io>, AuthError> {
        if let Some(v) = &outcome.token {
            if let Some(bound) = &v.claims.cert_thumbprint {
                match &presented.cert {
                    None => return Err(AuthError::CertRequired),
                    Some(cert) if verify_slices_are_equal(cert, bound).is_ok() => {}
                    Some(_) => return Err(AuthError::CertMismatch),
                }
            }
            if let Some(jti) = &v.claims.jti {
                if self.revocations.is_revoked_locally(jti, now.secs) {
                    return Err(AuthError::Revoked);
                }
                if self.revocations.shared() && !waited.revocation {
                    // A recent "not revoked" is reused only while revocations are being heard,
                    // and only if it was cached since they were last heard without a gap.
                    let fresh = self.revocations.subscribed()
                        && WorkerCache::with(self.id, self.spec.token_cache_size, |c| c.not_revoked_until(jti))
                            .is_some_and(|until| self.revocations.reusable_answer(until, now.ms));
                    if !fresh {
                        return Ok(Some(Io::Revocation(jti.clone())));
                    }
                }
            }
        }
        let token_scopes = outcome.token.as_ref().map_or(&[][..], |v| &v.claims.scopes[..]);
        let consumer_scopes = outcome.consumer.as_ref().map_or(&[][..], |c| &c.profile.scopes[..]);
        let lacking = policy.scopes.iter().any(|s| !token_scopes.iter().chain(consumer_scopes).any(|g| g == s));
        if lacking {
            return Err(AuthError::InsufficientScope { required: policy.scopes_joined.clone() });
        }
        Ok(None)
    }

    /// A bearer token: from the cache, or validated now (JWT), or after I/O.
    fn bearer(&self, policy: &Policy, token: &str, now: Now, waited: Waited) -> Check<Rc<Validated>> {
        if token.len() > self.spec.tokens.max_size {
            return Check::Ready(Err(AuthError::Malformed("the token is too large")));
        }
        let digest = cache::hash(token);
        let cached = WorkerCache::with(self.id, self.spec.token_cache_size, |c| c.get(&digest));
        match cached {
            // An entry validated for an issuer this policy does not accept is a miss: another
            // issuer entry may share the `iss` (with other audiences or outage settings).
            Some(Entry::Valid(v)) if v.valid_until > now.secs && policy.issuers.contains(&v.issuer) => {
                let keys = &self.issuers[v.issuer];
                if v.keys_version == 0 || v.keys_version == keys.version() {
                    self.metrics.cache(true);
                    if keys.freshness(now.ms) == Freshness::FailedClosed {
                        return Check::Ready(Err(AuthError::IdpUnavailable));
                    }
                    return Check::Ready(Ok(v));
                }
            }
            Some(Entry::Inactive { until }) if until > now.secs => {
                self.metrics.cache(true);
                return Check::Ready(Err(AuthError::InactiveToken));
            }
            _ => {}
        }
        self.metrics.cache(false);
        if !jwt::looks_like_jwt(token) {
            let introspecting = policy.issuers.iter().copied().find(|i| self.spec.issuers[*i].introspection.is_some());
            return match introspecting {
                None => Check::Ready(Err(AuthError::Malformed("the bearer token is not a JWT"))),
                // Introspected already, and still nothing cached: the answer did not stick.
                Some(_) if waited.introspected => Check::Ready(Err(AuthError::IdpUnavailable)),
                Some(i) => Check::Io(Io::Introspect(i)),
            };
        }
        let started = Instant::now();
        let result = self.validate_jwt(policy, token, now, waited);
        if let Check::Ready(Ok(v)) = &result {
            WorkerCache::with(self.id, self.spec.token_cache_size, |c| c.put(digest, Entry::Valid(v.clone())));
            self.metrics.validation("jwt", started.elapsed().as_secs_f64());
        }
        result
    }

    fn validate_jwt(&self, policy: &Policy, token: &str, now: Now, waited: Waited) -> Check<Rc<Validated>> {
        let parsed = match jwt::parse(token, self.spec.tokens.max_size) {
            Ok(t) => t,
            Err(e) => return Check::Ready(Err(e)),
        };
        let issuer = parsed
            .issuer()
            .and_then(|iss| policy.issuers.iter().copied().find(|i| *self.spec.issuers[*i].issuer == *iss));
        let Some(index) = issuer else { return Check::Ready(Err(AuthError::BadIssuer)) };
        let spec = &self.spec.issuers[index];
        let keys = &self.issuers[index];
        match keys.freshness(now.ms) {
            Freshness::FailedClosed => return Check::Ready(Err(AuthError::IdpUnavailable)),
            Freshness::NotYet if waited.keys => return Check::Ready(Err(AuthError::IdpUnavailable)),
            Freshness::NotYet => return Check::Io(Io::Keys(index)),
            Freshness::Usable => {}
        }
        // Read before the keys: a rotation in between leaves an older version on the entry, so
        // it is re-validated next time rather than trusted.
        let version = keys.version();
        match parsed.verify(&keys.keys(), &spec.algorithms) {
            Ok(()) => {}
            Err(AuthError::UnknownKid) if !waited.keys => return Check::Io(Io::Keys(index)),
            Err(e) => return Check::Ready(Err(e)),
        }
        let claims = match jwt::check_claims(&parsed.claims, spec, now.secs, self.spec.leeway, ClaimsOf::Jwt) {
            Ok(c) => c,
            Err(e) => return Check::Ready(Err(e)),
        };
        let valid_until = claims.expires.map_or(now.secs, |e| e.saturating_add(self.spec.leeway));
        Check::Ready(Ok(Rc::new(Validated {
            issuer: index,
            keys_version: version,
            valid_until,
            claims,
            credential: "jwt",
        })))
    }

    /// Finds the credentials the policy accepts. Refuses ambiguity: several Authorization
    /// headers, or different tokens in the header, query and cookies (token smuggling).
    fn presented<'h>(
        &self,
        head: &'h request::Parts,
        ctx: &RequestCtx,
        policy: &Policy,
    ) -> Result<Presented<'h>, AuthError> {
        let mut p = Presented::default();
        if policy.accepts(Credential::Jwt) {
            let mut found: Option<Cow<'h, str>> = bearer_header(head)?.map(Cow::Borrowed);
            if found.as_deref().is_some_and(|t| !is_token68(t)) {
                return Err(AuthError::Malformed("the token has characters a token cannot have"));
            }
            let mut add = |t: Cow<'h, str>| -> Result<(), AuthError> {
                if !is_token68(&t) {
                    return Err(AuthError::Malformed("the token has characters a token cannot have"));
                }
                match &found {
                    Some(f) if *f != t => Err(AuthError::Malformed("several different tokens in one request")),
                    Some(_) => Ok(()),
                    None => {
                        found = Some(t);
                        Ok(())
                    }
                }
            };
            if let Some(q) = head.uri.query().filter(|_| !self.spec.tokens.uri_params.is_empty()) {
                for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                    if self.spec.tokens.uri_params.iter().any(|n| *n == k) {
                        add(v)?;
                    }
                }
            }
            if !self.spec.tokens.cookies.is_empty() {
                for cookie in head.headers.get_all(header::COOKIE) {
                    let Ok(cookie) = cookie.to_str() else { continue };
                    for pair in cookie.split(';') {
                        let Some((k, v)) = pair.trim().split_once('=') else { continue };
                        if self.spec.tokens.cookies.iter().any(|n| n == k) {
                            add(Cow::Borrowed(v.trim_matches('"')))?;
                        }
                    }
                }
            }
            p.bearer = found;
        }
        if policy.accepts(Credential::ApiKey) {
            let mut keys = head.headers.get_all(&self.spec.api_key_header).iter();
            if let Some(v) = keys.next() {
                if keys.next().is_some() {
                    return Err(AuthError::Malformed("several API key headers"));
                }
                let v = v.to_str().map_err(|_| AuthError::Malformed("the API key is not visible ASCII"))?;
                if !v.is_empty() {
                    p.api_key = Some(v);
                }
            }
        }
        if policy.accepts(Credential::Mtls) || policy.accepts(Credential::Jwt) {
            p.cert = client_cert_sha256(ctx);
        }
        Ok(p)
    }

    /// Sets what the upstream and the later phases learn about the client.
    fn apply(&self, ctx: &mut RequestCtx, head: &mut request::Parts, outcome: Outcome) {
        let names = &self.spec.headers;
        let token = outcome.token.as_deref();
        let consumer = outcome.consumer.as_ref().map(|c| &c.profile);
        let h = &mut head.headers;
        let user = token.and_then(|v| v.claims.user.as_ref()).or(consumer.map(|c| &c.id));
        if let Some(u) = user {
            h.insert(&names.user, u.header.clone());
            ctx.identity.user_id = Some(u.text.to_string());
        }
        if let Some(c) = consumer {
            h.insert(&names.consumer_username, c.name.header.clone());
            h.insert(&names.consumer_id, c.id.header.clone());
            if ctx.identity.consumer.is_none() {
                ctx.identity.consumer = outcome.consumer.clone();
            }
        }
        let workspace = token.and_then(|v| v.claims.workspace.as_ref()).or(consumer.and_then(|c| c.workspace.as_ref()));
        if let Some(w) = workspace {
            h.insert(&names.workspace, w.header.clone());
            ctx.identity.workspace_id = Some(w.text.to_string());
        }
        let scope = match (
            token.and_then(|v| v.claims.scope_header.as_ref()),
            consumer.and_then(|c| c.scope_header.as_ref()),
        ) {
            (Some(a), Some(b)) => joined(a, b),
            (a, b) => a.or(b).cloned(),
        };
        if let Some(s) = scope {
            h.insert(&names.scope, s);
        }
        if !names.forward_credentials && ctx.extensions.get::<super::ForwardLoginToken>().is_none() {
            h.remove(header::AUTHORIZATION);
            h.remove(&self.spec.api_key_header);
        }
        let credential = match (token, outcome.api_key) {
            (Some(v), _) => v.credential,
            (None, true) => "api_key",
            (None, false) => "mtls",
        };
        ctx.identity.credential = Some(credential);
        if let Some(route) = ctx.route_name() {
            self.metrics.success(route, credential);
        }
    }

    /// The slow path: do the I/O, then decide again (at most once per kind of I/O).
    async fn resolve(
        &self,
        ctx: &mut RequestCtx,
        head: &mut request::Parts,
        policy: &Policy,
        mut io: Io,
    ) -> Result<(), GatewayError> {
        let mut waited = Waited::default();
        loop {
            match io {
                Io::Keys(index) => {
                    let keys = &self.issuers[index];
                    if let Some(wait) = keys.breaker().refusing(std::time::Instant::now()) {
                        // The refetch would be refused: the key cannot be checked now.
                        keys.breaker().rejected();
                        let e = AuthError::IdpCircuitOpen { retry_after: retry_after_secs(wait) };
                        return Err(self.refused(ctx, e));
                    }
                    let events = keys.fetch_events();
                    if keys.request_refetch(unix_now_ms()) {
                        keys.wait_fetch(events).await;
                    }
                    waited.keys = true;
                }
                Io::Introspect(index) => {
                    waited.introspected = true;
                    if let Err(e) = self.introspect(ctx, head, policy, index).await {
                        return Err(self.refused(ctx, e));
                    }
                }
                Io::Revocation(jti) => {
                    waited.revocation = true;
                    match self.revocations.lookup(&jti).await {
                        Ok(Lookup::Revoked(_)) => return Err(self.refused(ctx, AuthError::Revoked)),
                        Ok(Lookup::NotRevoked) => {
                            let until = unix_now_ms() + self.revocations.spec().cache_ttl.as_millis() as u64;
                            WorkerCache::with(self.id, self.spec.token_cache_size, |c| c.set_not_revoked(&jti, until));
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "revocation lookup failed");
                            if !self.revocations.store_failed() {
                                return Err(self.refused(ctx, AuthError::RevocationUnavailable));
                            }
                        }
                    }
                }
            }
            match self.decide(ctx, head, policy, Now::get(), waited) {
                Decision::Done(Ok(outcome)) => {
                    self.apply(ctx, head, outcome);
                    return Ok(());
                }
                Decision::Done(Err(e)) => return Err(self.refused(ctx, e)),
                Decision::Io(next) => io = next,
            }
        }
    }

    async fn introspect(
        &self,
        ctx: &RequestCtx,
        head: &request::Parts,
        policy: &Policy,
        index: usize,
    ) -> Result<(), AuthError> {
        let presented = self.presented(head, ctx, policy)?;
        let token = presented.bearer.as_deref().unwrap_or_default();
        let spec = &self.spec.issuers[index];
        let Some(settings) = spec.introspection.as_ref() else { return Err(AuthError::IdpUnavailable) };
        let digest = cache::hash(token);
        let (answer, coalesced) =
            self.flights.run((index, digest), || self.answer(index, settings, token, &digest)).await;
        if coalesced {
            self.metrics.introspection_coalesced(&spec.name);
        }
        let stored = answer?;
        let now = Now::get();
        let entry = self.entry(index, settings, &stored.answer, stored.at, now)?;
        WorkerCache::with(self.id, self.spec.token_cache_size, |c| c.put(digest, entry));
        Ok(())
    }

    /// The answer about one token: from the fleet-wide cache, else from the IdP (then stored in
    /// the fleet-wide cache). Run once for all the requests that want it at the same time.
    async fn answer(
        &self,
        index: usize,
        settings: &IntrospectionSpec,
        token: &str,
        digest: &TokenHash,
    ) -> Result<Arc<Stored>, AuthError> {
        let Some(client) = self.introspectors[index].as_ref() else { return Err(AuthError::IdpUnavailable) };
        let fleet = self.shared[index].as_ref();
        if let Some(fleet) = fleet
            && let Some(stored) = self.shared_lookup(fleet, index, settings, digest).await
        {
            return Ok(Arc::new(stored));
        }
        let keys = &self.issuers[index];
        if keys.introspection_endpoint().is_none() && keys.freshness(unix_now_ms()) == Freshness::NotYet {
            // The endpoint comes from discovery, which has not answered yet: wait for it once.
            let events = keys.fetch_events();
            if keys.request_refetch(unix_now_ms()) {
                keys.wait_fetch(events).await;
            }
        }
        let Some(endpoint) = keys.introspection_endpoint() else {
            keys.warn_limited("no introspection endpoint known (discovery has not succeeded)");
            return Err(AuthError::IdpUnavailable);
        };
        let started = Instant::now();
        let answer = introspect(client, keys.breaker(), &endpoint, settings, token).await;
        let now = Now::get();
        let answer = match answer {
            Ok(answer) => answer,
            Err(IntrospectionError::CircuitOpen(open)) => {
                // Not a call: counted by the breaker, logged when it opened.
                return Err(AuthError::IdpCircuitOpen { retry_after: open.retry_after().unwrap_or(1) });
            }
            Err(IntrospectionError::Failed(why)) => {
                self.metrics.validation("introspection", started.elapsed().as_secs_f64());
                self.metrics.introspection("error");
                keys.warn_limited(&why);
                return Err(AuthError::IdpUnavailable);
            }
        };
        self.metrics.validation("introspection", started.elapsed().as_secs_f64());
        self.metrics.introspection(match answer {
            Introspected::Active(_) => "active",
            Introspected::Inactive => "inactive",
        });
        let stored = Stored { at: now.secs, answer };
        if let Some(fleet) = fleet
            && let Ok(entry) = self.entry(index, settings, &stored.answer, now.secs, now)
        {
            let ttl = match &entry {
                Entry::Valid(v) => shared::active_ttl(settings.cache_ttl, v.claims.expires, now.ms),
                Entry::Inactive { .. } => Some(settings.negative_cache_ttl),
            };
            if let Some(ttl) = ttl {
                fleet.put(digest, &stored, ttl);
            }
        }
        Ok(Arc::new(stored))
    }

    /// What an introspection answer given at `at` (unix seconds) means for this issuer now:
    /// active ones are checked like claims and reused up to `cache_ttl` after `at` (never past
    /// `exp`), inactive ones `negative_cache_ttl` after `at`.
    fn entry(
        &self,
        index: usize,
        settings: &IntrospectionSpec,
        answer: &Introspected,
        at: u64,
        now: Now,
    ) -> Result<Entry, AuthError> {
        // Another node's clock may run ahead: never reuse an answer longer than from now.
        let at = at.min(now.secs);
        match answer {
            Introspected::Active(claims) => {
                let spec = &self.spec.issuers[index];
                let claims = jwt::check_claims(claims, spec, now.secs, self.spec.leeway, ClaimsOf::Introspection)?;
                let mut valid_until = at + settings.cache_ttl.as_secs();
                if let Some(exp) = claims.expires {
                    valid_until = valid_until.min(exp.saturating_add(self.spec.leeway));
                }
                Ok(Entry::Valid(Rc::new(Validated {
                    issuer: index,
                    keys_version: 0,
                    valid_until,
                    claims,
                    credential: "introspection",
                })))
            }
            Introspected::Inactive => Ok(Entry::Inactive { until: at + settings.negative_cache_ttl.as_secs() }),
        }
    }

    /// Looks the token up in the fleet-wide cache. `None` (ask the IdP) on a miss, on a stale
    /// entry and whenever Redis cannot answer: the shared cache never refuses a request itself.
    /// A found answer is checked like one from the IdP (a refusal is this node's own).
    async fn shared_lookup(
        &self,
        shared: &SharedAnswers,
        index: usize,
        settings: &IntrospectionSpec,
        digest: &TokenHash,
    ) -> Option<Stored> {
        let stored = match shared.get(digest).await {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                self.metrics.introspection_cache("miss");
                return None;
            }
            Err(e) => {
                self.metrics.introspection_cache("error");
                tracing::debug!(error = %e, "introspection cache lookup failed; asking the IdP");
                return None;
            }
        };
        // Read after the lookup: the entry must be fresh when the phase decides again.
        let now = Now::get();
        let fresh = match self.entry(index, settings, &stored.answer, stored.at, now) {
            Ok(Entry::Valid(v)) => v.valid_until > now.secs,
            Ok(Entry::Inactive { until }) => until > now.secs,
            Err(_) => true,
        };
        if !fresh {
            self.metrics.introspection_cache("miss");
            return None;
        }
        self.metrics.introspection_cache("hit");
        Some(stored)
    }
}

impl Phase for IdentifyPhase {
    fn name(&self) -> &'static str {
        "identify"
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx, head: &'a mut request::Parts) -> Step<'a> {
        // Whatever the route: identity headers reach the upstream only from us.
        crate::request::remove_present(&mut head.headers, &self.spec.headers.all());
        // A consumer the client-certificate phase identified is asserted under our names too.
        if let Some(c) = ctx.identity.consumer.as_ref().map(|c| &c.profile) {
            head.headers.insert(&self.spec.headers.consumer_username, c.name.header.clone());
            head.headers.insert(&self.spec.headers.consumer_id, c.id.header.clone());
        }
        let policy = match ctx.route.and_then(|r| self.spec.route_policies.get(r)) {
            Some(RoutePolicy::Open) => return Step::Continue,
            Some(RoutePolicy::Policy(p)) => &self.spec.policies[*p],
            // Cannot happen (policies are resolved for every route); deny rather than guess.
            None => return Step::Refuse(self.refused(ctx, AuthError::Missing("a route policy".into()))),
        };
        match self.decide(ctx, head, policy, Now::get(), Waited::default()) {
            Decision::Done(Ok(outcome)) => {
                self.apply(ctx, head, outcome);
                Step::Continue
            }
            Decision::Done(Err(e)) => Step::Refuse(self.refused(ctx, e)),
            Decision::Io(io) => Step::Wait(Box::pin(self.resolve(ctx, head, policy, io))),
        }
    }
}

/// `Authorization: Bearer <token>`; another scheme is no bearer token (an API key policy may
/// still apply), several Authorization headers are refused.
fn bearer_header(head: &request::Parts) -> Result<Option<&str>, AuthError> {
    let mut values = head.headers.get_all(header::AUTHORIZATION).iter();
    let Some(v) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(AuthError::Malformed("several Authorization headers"));
    }
    let s = v.to_str().map_err(|_| AuthError::Malformed("the Authorization header is not visible ASCII"))?;
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::Malformed("the bearer token is empty"));
    }
    Ok(Some(token))
}

/// RFC 6750 b64token / RFC 9110 token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
}

fn joined(a: &HeaderValue, b: &HeaderValue) -> Option<HeaderValue> {
    let mut v = a.as_bytes().to_vec();
    v.push(b' ');
    v.extend_from_slice(b.as_bytes());
    HeaderValue::from_bytes(&v).ok()
}

/// The SHA-256 of the connection's client certificate (RFC 8705 `x5t#S256`), when it verifies
/// against the current snapshot's CAs and CRLs. Plain TCP connections have none.
fn client_cert_sha256(ctx: &RequestCtx) -> Option<[u8; 32]> {
    let tls = ctx.conn.tls.as_ref()?;
    if ctx.client_cert.0 != VerifyStatus::Success {
        return None;
    }
    tls.client_cert.as_ref()?.sha256()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token68() {
        assert!(is_token68("abc.DEF-_~+/=="));
        assert!(!is_token68("a b"));
        assert!(!is_token68("==="));
        assert!(!is_token68("a\"b"));
    }
}
