//! Signing keys per issuer: parsed from JWKS documents or PEM files, and kept fresh.
//!
//! [`IssuerKeys`] is the running cache of one issuer. Workers read its key set lock-free
//! (`ArcSwap`); a task on the control runtime refreshes it: OIDC discovery (when configured),
//! then the JWKS, every `max-age` of the answer clamped to `[min_refresh_interval,
//! refresh_interval]`, sooner when a token names an unknown `kid` (at most once per
//! `unknown_kid_refetch_interval`). A failed refresh is retried (1 s, 2 s, 4 s, … at most
//! `min_refresh_interval`) and the last keys stay in use; once refreshes have been failing for
//! `idp_outage_grace`, counted from the first failed one, the issuer fails closed (unless
//! configured to fail open) — logged once, counted, and shown in `/readyz`. A healthy IdP never
//! makes an issuer fail closed, whatever `refresh_interval` is. Every fetch goes through the
//! issuer's circuit breaker ([`Breaker`]), which the introspection calls share.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use super::{
    AuthEnv, IssuerSpec, KeySource, OutageMode,
    breaker::Breaker,
    idp_http::{IdpClient, max_age},
    unix_now_ms,
};

/// Smallest RSA modulus accepted (bits).
const MIN_RSA_BITS: usize = 2048;
const RSA_ALGS: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<Box<str>>,
    /// The algorithms this key may verify: its type's, narrowed to the JWK's `alg` if it has one.
    pub algorithms: Vec<Algorithm>,
    pub decoding: DecodingKey,
    /// The key material, to tell a rotation from a refresh that changed nothing.
    material: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("algorithms", &self.algorithms).finish()
    }
}

/// The keys of one issuer. Usually a handful: looked up linearly.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    pub fn new(keys: Vec<Key>) -> Self {
        KeySet { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    pub fn for_algorithm(&self, alg: Algorithm) -> impl Iterator<Item = &Key> {
        self.keys.iter().filter(move |k| k.algorithms.contains(&alg))
    }

    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("(none)")).collect()
    }

    fn same_keys(&self, other: &KeySet) -> bool {
        self.keys.len() == other.keys.len()
            && self.keys.iter().all(|k| other.keys.iter().any(|o| o.kid == k.kid && o.material == k.material))
    }
}

#[derive(Deserialize)]
struct JwkDoc {
    keys: Vec<serde_json::Value>,
}

/// One JWK as we read it; unknown members are ignored (RFC 7517 4).
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS document. Keys we cannot or must not use are skipped (and named in the second
/// value): symmetric (`oct`) keys, encryption keys, unknown types or curves, RSA under 2048
/// bits. A document without a single usable key is an error.
pub fn parse_jwks(body: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let doc: JwkDoc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        let parsed = serde_json::from_value::<RawJwk>(raw).map_err(|e| e.to_string()).and_then(|jwk| jwk_key(&jwk));
        match parsed {
            Ok(k) if keys.iter().any(|o: &Key| o.kid.is_some() && o.kid == k.kid) => {
                skipped.push(format!("key {i}: duplicate kid"));
            }
            Ok(k) => keys.push(k),
            Err(why) => skipped.push(format!("key {i}: {why}")),
        }
    }
    if keys.is_empty() {
        return Err(format!("no usable signing key ({})", skipped.join("; ")));
    }
    Ok((KeySet::new(keys), skipped))
}

fn b64(field: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let v = field.as_deref().ok_or_else(|| format!("missing {name}"))?;
    URL_SAFE_NO_PAD.decode(v).map_err(|_| format!("{name} is not base64url"))
}

fn jwk_key(jwk: &RawJwk) -> Result<Key, String> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("not a signature key (use)".into());
    }
    if jwk.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|o| o == "verify")) {
        return Err("key_ops does not allow verify".into());
    }
    let (algorithms, decoding, material) = match jwk.kty.as_str() {
        "RSA" => {
            let (n, e) = (b64(&jwk.n, "n")?, b64(&jwk.e, "e")?);
            rsa_key(&n, &e)?
        }
        "EC" => {
            let (x, y) = (b64(&jwk.x, "x")?, b64(&jwk.y, "y")?);
            let (alg, len) = match jwk.crv.as_deref() {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                other => return Err(format!("unsupported curve {other:?}")),
            };
            if x.len() != len || y.len() != len {
                return Err("EC coordinates of the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (vec![alg], DecodingKey::from_ec_der(&point), point)
        }
        "OKP" => {
            if jwk.crv.as_deref() != Some("Ed25519") {
                return Err(format!("unsupported curve {:?}", jwk.crv));
            }
            let x = b64(&jwk.x, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key of the wrong length".into());
            }
            (vec![Algorithm::EdDSA], DecodingKey::from_ed_der(&x), x)
        }
        "oct" => return Err("symmetric keys are never used".into()),
        other => return Err(format!("unsupported key type {other:?}")),
    };
    let algorithms = match jwk.alg.as_deref() {
        None => algorithms,
        Some(a) => match a.parse::<Algorithm>() {
            Ok(alg) if algorithms.contains(&alg) => vec![alg],
            _ => return Err(format!("alg {a:?} does not fit the key")),
        },
    };
    Ok(Key { kid: jwk.kid.as_deref().map(Box::from), algorithms, decoding, material })
}

fn rsa_key(n: &[u8], e: &[u8]) -> Result<(Vec<Algorithm>, DecodingKey, Vec<u8>), String> {
    let n = &n[n.iter().position(|b| *b != 0).unwrap_or(n.len())..];
    if n.len() * 8 < MIN_RSA_BITS {
        return Err(format!("RSA key shorter than {MIN_RSA_BITS} bits"));
    }
    if e.is_empty() {
        return Err("empty RSA exponent".into());
    }
    let mut material = n.to_vec();
    material.extend_from_slice(e);
    Ok((RSA_ALGS.to_vec(), DecodingKey::from_rsa_raw_components(n, e), material))
}

/// A public key from a PEM file (`PUBLIC KEY` or `RSA PUBLIC KEY`). Private keys are refused:
/// they do not belong on the edge.
pub fn parse_pem_key(pem: &[u8], kid: Option<&str>) -> Result<Key, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    if text.contains("PRIVATE KEY-----") {
        return Err("this is a private key; configure the issuer's public key".into());
    }
    if !text.contains("-----BEGIN PUBLIC KEY-----") && !text.contains("-----BEGIN RSA PUBLIC KEY-----") {
        return Err("expected a PEM public key (BEGIN PUBLIC KEY)".into());
    }
    let (algorithms, decoding, material) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        let der = k.try_get_as_bytes().map_err(|e| e.to_string())?;
        let (n, e) = (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.key_utils.rsa_pub_components_from_public_key)(der)
            .map_err(|e| format!("invalid RSA public key: {e}"))?;
        rsa_key(&n, &e)?
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        let point = k.try_get_as_bytes().map_err(|e| e.to_string())?.to_vec();
        let alg = match point.len() {
            65 => Algorithm::ES256,
            97 => Algorithm::ES384,
            _ => return Err("unsupported EC curve (P-256 and P-384 are)".into()),
        };
        (vec![alg], k, point)
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        let x = k.try_get_as_bytes().map_err(|e| e.to_string())?.to_vec();
        if x.len() != 32 {
            return Err("unsupported Edwards curve (Ed25519 is)".into());
        }
        (vec![Algorithm::EdDSA], k, x)
    } else {
        return Err("unsupported or invalid public key".into());
    };
    Ok(Key { kid: kid.map(Box::from), algorithms, decoding, material })
}

/// The state of an issuer's keys as the request path sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Never fetched yet: a request may wait for the first fetch.
    NotYet,
    Usable,
    /// Refreshes failing for longer than the grace period and the issuer fails closed.
    FailedClosed,
}

/// The running key cache of one issuer.
pub struct IssuerKeys {
    spec: IssuerSpec,
    keys: ArcSwap<KeySet>,
    /// Bumped whenever the key material changes; cached validations of older versions are
    /// re-checked.
    version: AtomicU64,
    /// Unix ms of the last successful fetch; 0 = never; `u64::MAX` for static keys.
    last_success_ms: AtomicU64,
    /// Unix ms of the first failed fetch since the last success; 0 = the last fetch succeeded.
    /// The grace period counts from here.
    first_failure_ms: AtomicU64,
    /// In front of every call to this issuer's IdP (keys and introspection).
    breaker: Arc<Breaker>,
    /// Completed fetch attempts, successful or not (requests waiting for keys watch it).
    fetches: watch::Sender<u64>,
    wake: Arc<Notify>,
    last_kid_refetch_ms: AtomicU64,
    fetching: AtomicBool,
    /// The introspection endpoint: configured, or from the discovery document.
    introspection_endpoint: ArcSwapOption<String>,
    reported_closed: AtomicBool,
    reported_failing: AtomicBool,
    /// Unix ms of the last rate-limited warning.
    last_warning_ms: AtomicU64,
    /// Replaced or removed by a reload: stops refreshing and reporting (the current cache of
    /// the same name owns the readiness detail and the gauges).
    retired: AtomicBool,
    env: AuthEnv,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys").field("issuer", &self.spec.name).finish_non_exhaustive()
    }
}

impl IssuerKeys {
    /// Builds the cache and, for keys fetched from the network, starts its refresh task on the
    /// current runtime (the control runtime).
    pub fn start(spec: &IssuerSpec, env: &AuthEnv) -> Arc<IssuerKeys> {
        let (keys, last) = match &spec.keys {
            KeySource::Static { keys, .. } => (KeySet::clone(keys), u64::MAX),
            KeySource::None => (KeySet::default(), u64::MAX),
            _ => (KeySet::default(), 0),
        };
        let wake = Arc::new(Notify::new());
        let breaker =
            Arc::new(Breaker::new(spec.name.clone(), spec.breaker.clone(), env.metrics.clone(), Some(wake.clone())));
        if let Some(url) = spec.probe_url() {
            let timeout = match &spec.keys {
                KeySource::Discovery { .. } | KeySource::JwksUri { .. } => spec.refresh.fetch_timeout,
                _ => spec.introspection.as_ref().map_or(spec.refresh.fetch_timeout, |i| i.timeout),
            };
            breaker.start_probe(IdpClient::new(spec.tls.clone()), url.to_owned(), timeout);
        }
        let this = Arc::new(IssuerKeys {
            spec: spec.clone(),
            keys: ArcSwap::from_pointee(keys),
            version: AtomicU64::new(1),
            last_success_ms: AtomicU64::new(last),
            first_failure_ms: AtomicU64::new(0),
            breaker,
            fetches: watch::Sender::new(0),
            wake,
            last_kid_refetch_ms: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            introspection_endpoint: ArcSwapOption::new(
                spec.introspection.as_ref().and_then(|i| i.endpoint.clone()).map(Arc::new),
            ),
            reported_closed: AtomicBool::new(false),
            reported_failing: AtomicBool::new(false),
            last_warning_ms: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            env: env.clone(),
        });
        let name = spec.name.clone();
        env.metrics.set_keys(&name, this.keys.load().len());
        if matches!(spec.keys, KeySource::Discovery { .. } | KeySource::JwksUri { .. }) {
            env.readiness.set_detail(&this.detail_name(), Some("fetching keys".into()));
            let client = IdpClient::new(spec.tls.clone());
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(refresh_loop(Arc::downgrade(&this), this.wake.clone(), client));
                }
                Err(_) => {
                    tracing::error!(issuer = %name, "no runtime to refresh keys on; the issuer stays without keys")
                }
            }
        }
        this
    }

    /// Stops the refresh task and all reporting; requests still in flight on an older snapshot
    /// keep using the keys.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.breaker.retire();
        self.wake.notify_one();
    }

    /// The issuer's circuit breaker (introspection calls go through it too).
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Clears what a removed issuer left in `/readyz` and the gauges.
    pub fn forget(&self) {
        self.env.readiness.set_detail(&self.detail_name(), None);
        self.env.metrics.forget_issuer(&self.spec.name);
    }

    /// A running cache can serve a new config's issuer if everything it fetches with is equal.
    pub fn reusable_for(&self, spec: &IssuerSpec) -> bool {
        self.spec.name == spec.name && self.spec.fetch_identity() == spec.fetch_identity()
    }

    pub fn spec(&self) -> &IssuerSpec {
        &self.spec
    }

    fn detail_name(&self) -> String {
        format!("auth.issuer.{}", self.spec.name)
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn introspection_endpoint(&self) -> Option<Arc<String>> {
        self.introspection_endpoint.load_full()
    }

    /// Logs a problem of the request path at most every 10 seconds per issuer (an outage must
    /// not turn into a log flood).
    pub fn warn_limited(&self, what: &str) {
        let now = unix_now_ms();
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self.last_warning_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(issuer = %self.spec.name, error = what, "identity provider call failed");
        }
    }

    pub fn freshness(&self, now_ms: u64) -> Freshness {
        if self.last_success_ms.load(Ordering::Acquire) == 0 {
            return Freshness::NotYet;
        }
        match self.grace_deadline_ms() {
            Some(deadline) if now_ms >= deadline => Freshness::FailedClosed,
            _ => Freshness::Usable,
        }
    }

    /// Records a completed fetch: a success ends a failing streak, the first failure of a
    /// streak starts the grace period.
    fn record_fetch(&self, ok: bool, now_ms: u64) {
        if ok {
            self.last_success_ms.store(now_ms, Ordering::Release);
            self.first_failure_ms.store(0, Ordering::Release);
        } else {
            let _ = self.first_failure_ms.compare_exchange(0, now_ms.max(1), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Subscribes to fetch completions (before asking for a refetch, so none is missed).
    pub fn fetch_events(&self) -> watch::Receiver<u64> {
        self.fetches.subscribe()
    }

    /// A token named a `kid` we do not know (or keys were never fetched). Returns whether a
    /// fetch is under way or now triggered, i.e. whether waiting for it makes sense. At most one
    /// such refetch per `unknown_kid_refetch_interval`, so garbage tokens cannot make us hammer
    /// the IdP.
    pub fn request_refetch(&self, now_ms: u64) -> bool {
        if !matches!(self.spec.keys, KeySource::Discovery { .. } | KeySource::JwksUri { .. }) {
            return false;
        }
        if self.fetching.load(Ordering::Acquire) {
            return true;
        }
        let interval = self.spec.refresh.unknown_kid_interval.as_millis() as u64;
        let last = self.last_kid_refetch_ms.load(Ordering::Acquire);
        if last != 0 && now_ms.saturating_sub(last) < interval {
            return false;
        }
        if self.last_kid_refetch_ms.compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.env.metrics.kid_refetch(&self.spec.name);
            self.wake.notify_one();
        }
        true
    }

    /// Waits (at most the fetch timeout) for the next completed fetch.
    pub async fn wait_fetch(&self, mut events: watch::Receiver<u64>) {
        let _ =
            tokio::time::timeout(self.spec.refresh.fetch_timeout + Duration::from_millis(100), events.changed()).await;
    }

    async fn fetch(&self, client: &IdpClient) -> Result<Duration, String> {
        let timeout = self.spec.refresh.fetch_timeout;
        let jwks_url = match &self.spec.keys {
            KeySource::Discovery { url } => {
                let doc =
                    self.breaker.call(client.get(url, timeout)).await.map_err(|e| format!("discovery {url}: {e}"))?;
                if !doc.status.is_success() {
                    return Err(format!("discovery {url}: answered {}", doc.status));
                }
                let meta: Discovery = serde_json::from_slice(&doc.body)
                    .map_err(|e| format!("discovery {url}: not a discovery document: {e}"))?;
                // OIDC Discovery 4.3: the document must name the issuer we asked about.
                if meta.issuer != *self.spec.issuer {
                    return Err(format!(
                        "discovery {url}: the document is for issuer {:?}, not {:?}",
                        meta.issuer, self.spec.issuer
                    ));
                }
                if self.spec.introspection.as_ref().is_some_and(|i| i.endpoint.is_none()) {
                    self.introspection_endpoint.store(meta.introspection_endpoint.map(Arc::new));
                }
                meta.jwks_uri.ok_or_else(|| format!("discovery {url}: no jwks_uri"))?
            }
            KeySource::JwksUri { url } => url.clone(),
            KeySource::Static { .. } | KeySource::None => return Ok(self.spec.refresh.max_interval),
        };
        if !(jwks_url.starts_with("https://") || jwks_url.starts_with("http://")) {
            return Err(format!("jwks_uri {jwks_url:?} is not an http(s) URL"));
        }
        let answer =
            self.breaker.call(client.get(&jwks_url, timeout)).await.map_err(|e| format!("jwks {jwks_url}: {e}"))?;
        if !answer.status.is_success() {
            return Err(format!("jwks {jwks_url}: answered {}", answer.status));
        }
        let (set, skipped) = parse_jwks(&answer.body).map_err(|e| format!("jwks {jwks_url}: {e}"))?;
        let current = self.keys.load();
        if !current.same_keys(&set) {
            tracing::info!(issuer = %self.spec.name, kids = ?set.kids(), previous = ?current.kids(), skipped = ?skipped, "issuer keys updated");
            self.keys.store(Arc::new(set));
            self.version.fetch_add(1, Ordering::AcqRel);
            if !self.retired.load(Ordering::Acquire) {
                self.env.metrics.set_keys(&self.spec.name, self.keys.load().len());
            }
        }
        let ttl = max_age(&answer.headers).unwrap_or(self.spec.refresh.max_interval);
        Ok(ttl.clamp(self.spec.refresh.min_interval, self.spec.refresh.max_interval))
    }

    /// Reports state transitions once each: log line, readiness detail, gauge.
    fn report(&self, now_ms: u64, error: Option<&str>) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        let name = &self.spec.name;
        let detail = self.detail_name();
        match self.freshness(now_ms) {
            Freshness::FailedClosed => {
                if !self.reported_closed.swap(true, Ordering::AcqRel) {
                    tracing::error!(issuer = %name, grace = ?self.spec.refresh.outage_grace, error = error.unwrap_or(""), "key refreshes failing for longer than the grace period: refusing this issuer's tokens until a key refresh succeeds");
                    self.env.metrics.set_failed_closed(name, true);
                }
                self.env.readiness.set_detail(
                    &detail,
                    Some(format!("failed closed: key refreshes failing for over {:?}", self.spec.refresh.outage_grace)),
                );
            }
            Freshness::NotYet => {
                self.env.readiness.set_detail(&detail, Some(format!("no keys yet: {}", error.unwrap_or("fetching"))));
            }
            Freshness::Usable if error.is_some() => {
                if !self.reported_failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(issuer = %name, error = error.unwrap_or(""), "key refresh failed; still using the cached keys");
                }
                let age = now_ms.saturating_sub(self.last_success_ms.load(Ordering::Acquire)) / 1000;
                self.env.readiness.set_detail(
                    &detail,
                    Some(format!("refresh failing, using cached keys fetched {age}s ago: {}", error.unwrap_or(""))),
                );
            }
            Freshness::Usable => {
                if self.reported_closed.swap(false, Ordering::AcqRel)
                    || self.reported_failing.swap(false, Ordering::AcqRel)
                {
                    tracing::info!(issuer = %name, "identity provider reachable again; keys refreshed");
                }
                self.env.metrics.set_failed_closed(name, false);
                self.env.readiness.set_detail(&detail, Some("ok".into()));
            }
        }
    }

    /// When (unix ms) the issuer fails closed unless a refresh succeeds first: the grace period
    /// after the first failed refresh. `None` while refreshes succeed (or in fail-open mode).
    fn grace_deadline_ms(&self) -> Option<u64> {
        let first = self.first_failure_ms.load(Ordering::Acquire);
        (self.spec.refresh.on_outage == OutageMode::FailClosed && first != 0)
            .then(|| first.saturating_add(self.spec.refresh.outage_grace.as_millis() as u64 + 1))
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
}

/// Fetch, wait, repeat, for as long as the cache is in use. Holds only a weak reference while
/// waiting, so it ends soon after a reload dropped the issuer.
async fn refresh_loop(weak: Weak<IssuerKeys>, wake: Arc<Notify>, client: IdpClient) {
    let mut failures: u32 = 0;
    loop {
        let (next_fetch, error) = {
            let Some(this) = weak.upgrade().filter(|t| !t.retired.load(Ordering::Acquire)) else { return };
            this.fetching.store(true, Ordering::Release);
            let result = this.fetch(&client).await;
            this.fetching.store(false, Ordering::Release);
            let now = unix_now_ms();
            this.record_fetch(result.is_ok(), now);
            this.env.metrics.refreshed(&this.spec.name, result.is_ok(), now);
            let (next, error) = match result {
                Ok(ttl) => {
                    failures = 0;
                    (ttl, None)
                }
                Err(e) => {
                    failures += 1;
                    tracing::debug!(issuer = %this.spec.name, error = %e, attempt = failures, "key refresh failed");
                    (this.spec.refresh.retry_delay(failures), Some(e))
                }
            };
            this.report(now, error.as_deref());
            this.fetches.send_modify(|n| *n += 1);
            (tokio::time::Instant::now() + next, error)
        };
        // Sleep until the next fetch, a refetch request, or the end of the grace period (to
        // report the switch to fail-closed when it happens, not at the next attempt).
        loop {
            let until = {
                let Some(this) = weak.upgrade().filter(|t| !t.retired.load(Ordering::Acquire)) else { return };
                let grace = this
                    .grace_deadline_ms()
                    .filter(|_| !this.reported_closed.load(Ordering::Acquire))
                    .map(|at| tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(unix_now_ms())));
                grace.map_or(next_fetch, |g| g.min(next_fetch))
            };
            let woken = tokio::select! {
                () = wake.notified() => true,
                () = tokio::time::sleep_until(until) => false,
            };
            if woken || tokio::time::Instant::now() >= next_fetch {
                break;
            }
            let Some(this) = weak.upgrade().filter(|t| !t.retired.load(Ordering::Acquire)) else { return };
            this.report(unix_now_ms(), error.as_deref());
        }
    }
}

#[cfg(test)]
mod tests;
