//! The validated `[auth]` and `[[consumers]]` configuration: what the identity phase needs,
//! nothing file-shaped (header names parsed, static keys loaded, policies resolved to indices).

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use http::HeaderName;
use jsonwebtoken::Algorithm;

pub use super::jwt::Named;
use super::{KeySet, Policy, RoutePolicy};
use crate::consumer::Consumers;

#[derive(Debug)]
pub struct AuthSpec {
    /// Indexed like the file's `[[routes]]` (a route's `index`).
    pub route_policies: Vec<RoutePolicy>,
    pub policies: Vec<Policy>,
    pub issuers: Vec<IssuerSpec>,
    /// The one consumer model (`Config::consumers`): API keys and client certificates resolve
    /// to the same `Consumer`, whose profile carries its identity headers and scopes.
    pub consumers: Arc<Consumers>,
    pub tokens: TokenSources,
    pub api_key_header: HeaderName,
    /// Clock skew tolerated on `exp`, `nbf`, `iat`, in seconds.
    pub leeway: u64,
    pub token_cache_size: usize,
    pub headers: IdentityHeaders,
    pub revocation: RevocationSpec,
    /// `[[auth.logins]]`, in file order (policies' `login` index them).
    pub logins: Vec<super::LoginSpec>,
}

/// Where bearer tokens are read from besides `Authorization: Bearer`.
#[derive(Debug, Clone)]
pub struct TokenSources {
    pub uri_params: Vec<String>,
    pub cookies: Vec<String>,
    /// Longest accepted token in bytes.
    pub max_size: usize,
}

/// Names of the identity headers sent upstream (and always removed from client requests).
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: HeaderName,
    pub consumer_username: HeaderName,
    pub consumer_id: HeaderName,
    pub scope: HeaderName,
    pub workspace: HeaderName,
    /// Forward the client's credentials (`Authorization`, the API key header) upstream after
    /// validating them.
    pub forward_credentials: bool,
}

impl IdentityHeaders {
    pub fn all(&self) -> [&HeaderName; 5] {
        [&self.user, &self.consumer_username, &self.consumer_id, &self.scope, &self.workspace]
    }
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        IdentityHeaders {
            user: HeaderName::from_static("x-forwarded-user"),
            consumer_username: HeaderName::from_static("x-consumer-username"),
            consumer_id: HeaderName::from_static("x-consumer-id"),
            scope: HeaderName::from_static("x-authenticated-scope"),
            workspace: HeaderName::from_static("x-workspace-id"),
            forward_credentials: false,
        }
    }
}

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct IssuerSpec {
    /// The config name (metrics label, policies refer to it).
    pub name: Arc<str>,
    /// The exact `iss` value.
    pub issuer: Arc<str>,
    /// `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this issuer (never HMAC, never `none`).
    pub algorithms: Vec<Algorithm>,
    pub keys: KeySource,
    pub refresh: RefreshSpec,
    /// PEM file of CAs trusted for the IdP's HTTPS certificate; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// TLS settings for HTTPS calls to the IdP (built from `ca_file` when some URL is HTTPS).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The claim that names the user (`X-Forwarded-User`, audit `user_id`).
    pub user_claim: String,
    /// The claim that names the workspace (`X-Workspace-Id`, audit `workspace_id`).
    pub workspace_claim: String,
    pub introspection: Option<IntrospectionSpec>,
    /// The circuit breaker in front of every call to this issuer's IdP.
    pub breaker: BreakerSpec,
}

/// What a running key cache (and its breaker) depends on.
type FetchIdentity<'a> =
    (&'a str, &'a KeySource, &'a RefreshSpec, Option<&'a PathBuf>, Option<&'a str>, &'a BreakerSpec);

impl IssuerSpec {
    /// What a running key cache depends on: same value, same cache (kept across reloads).
    pub fn fetch_identity(&self) -> FetchIdentity<'_> {
        (
            &self.issuer,
            &self.keys,
            &self.refresh,
            self.ca_file.as_ref(),
            self.introspection.as_ref().and_then(|i| i.endpoint.as_deref()),
            &self.breaker,
        )
    }

    /// A URL whose answer (any HTTP status) shows the IdP is reachable again: the breaker's
    /// probe. `None` for issuers that never call an IdP.
    pub fn probe_url(&self) -> Option<&str> {
        match &self.keys {
            KeySource::Discovery { url } | KeySource::JwksUri { url } => Some(url),
            _ => self.introspection.as_ref().and_then(|i| i.endpoint.as_deref()),
        }
    }
}

/// The per-issuer circuit breaker (`breaker_failures`, `breaker_cool_down`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSpec {
    /// Consecutive calls that found the IdP unreachable (timeout, connection or TLS failure)
    /// that open the breaker.
    pub failures: u32,
    /// How long an open breaker fails fast before one call (the background probe, or a
    /// request) is let through.
    pub cool_down: Duration,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        BreakerSpec { failures: 3, cool_down: Duration::from_secs(5) }
    }
}

/// Where an issuer's keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// `<issuer>/.well-known/openid-configuration` → `jwks_uri` (and `introspection_endpoint`).
    Discovery { url: String },
    /// A JWKS URL.
    JwksUri { url: String },
    /// Keys loaded from files at (re)load time; never refreshed, never stale.
    Static { keys: Arc<KeySet>, files: Vec<PathBuf> },
    /// Only opaque tokens through introspection: no signing keys at all.
    None,
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Discovery { url } => write!(f, "Discovery({url})"),
            KeySource::JwksUri { url } => write!(f, "JwksUri({url})"),
            KeySource::Static { keys, files } => write!(f, "Static({} keys from {files:?})", keys.len()),
            KeySource::None => f.write_str("None"),
        }
    }
}

impl PartialEq for KeySource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (KeySource::Discovery { url: a }, KeySource::Discovery { url: b }) => a == b,
            (KeySource::JwksUri { url: a }, KeySource::JwksUri { url: b }) => a == b,
            // Files are re-read at every reload: a reload picks up replaced key files.
            (KeySource::Static { keys: a, .. }, KeySource::Static { keys: b, .. }) => Arc::ptr_eq(a, b),
            (KeySource::None, KeySource::None) => true,
            _ => false,
        }
    }
}

/// How keys fetched from the network are kept fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshSpec {
    /// Longest time fetched keys are used without a refresh (and the refresh period when the
    /// response says nothing shorter).
    pub max_interval: Duration,
    /// Shortest refresh period, whatever Cache-Control says.
    pub min_interval: Duration,
    /// At most one refetch per this interval is triggered by tokens with an unknown `kid`.
    pub unknown_kid_interval: Duration,
    pub fetch_timeout: Duration,
    /// How long the issuer keeps working on cached keys while refreshes fail.
    pub outage_grace: Duration,
    pub on_outage: OutageMode,
}

/// Retries of a failed refresh that must fit in `idp_outage_grace` (see [`RefreshSpec::grace_needed`]).
pub const RETRIES_WITHIN_GRACE: u32 = 3;

impl RefreshSpec {
    /// The wait before the next attempt after `failures` consecutive failed refreshes: 1 s,
    /// 2 s, 4 s, … at most `min_refresh_interval`.
    pub fn retry_delay(&self, failures: u32) -> Duration {
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(10)).min(self.min_interval)
    }

    /// The shortest `idp_outage_grace` that works: the grace is counted from the first failed
    /// refresh, and [`RETRIES_WITHIN_GRACE`] retries (each waiting its retry delay, then at most
    /// `fetch_timeout`) must fail before the issuer fails closed.
    pub fn grace_needed(&self) -> Duration {
        (1..=RETRIES_WITHIN_GRACE).map(|n| self.retry_delay(n) + self.fetch_timeout).sum()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageMode {
    /// After the grace period, refuse every token of the issuer (503 `idp_unavailable`).
    FailClosed,
    /// Keep validating with the last keys fetched, however old.
    FailOpen,
}

/// RFC 7662 token introspection for opaque tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionSpec {
    /// `None`: the `introspection_endpoint` of the discovery document.
    pub endpoint: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    /// Active results are reused up to this long (never past the token's `exp`).
    pub cache_ttl: Duration,
    /// Inactive results are reused this long.
    pub negative_cache_ttl: Duration,
    pub timeout: Duration,
    /// Whether answers are also shared through Redis.
    pub cache: IntrospectionCacheKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionCacheKind {
    /// Each worker's token cache only.
    Memory,
    /// Also `<key_prefix>:auth:introspection:<SHA-256(token)>` in Redis (`[redis]`), for the fleet.
    Redis,
}

impl fmt::Debug for IntrospectionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionSpec")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("cache_ttl", &self.cache_ttl)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// Header names and values taken from the configuration are interned as `'static`: cloning a
/// static `HeaderName`/`HeaderValue` touches no reference count, so workers inserting them into
/// every request share no cache line. The set only grows with distinct configured strings.
pub mod interned {
    use std::{
        collections::HashSet,
        sync::{Mutex, OnceLock},
    };

    use http::{HeaderName, HeaderValue};

    use super::Named;

    fn intern(s: &str) -> &'static str {
        static SET: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let mut set = SET.get_or_init(Mutex::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match set.get(s) {
            Some(existing) => existing,
            None => {
                let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
                set.insert(leaked);
                leaked
            }
        }
    }

    pub fn header_name(s: &str) -> Result<HeaderName, String> {
        let lower = s.to_ascii_lowercase();
        HeaderName::from_bytes(lower.as_bytes()).map_err(|_| format!("invalid header name {s:?}"))?;
        Ok(HeaderName::from_static(intern(&lower)))
    }

    pub fn header_value(s: &str) -> Result<HeaderValue, String> {
        let visible = !s.is_empty() && s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !visible {
            return Err(format!("{s:?} must be non-empty visible ASCII (it is sent as a header value)"));
        }
        Ok(HeaderValue::from_static(intern(s)))
    }

    pub fn named(s: &str) -> Result<Named, String> {
        Ok(Named { text: s.into(), header: header_value(s)? })
    }

    /// Like [`named`], with bytes outside visible ASCII percent-encoded in the header value
    /// (consumer names may be any UTF-8).
    pub fn named_lenient(s: &str) -> Named {
        let mut encoded = String::with_capacity(s.len());
        for b in s.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        if encoded.is_empty() {
            encoded.push('-');
        }
        let header = header_value(&encoded).unwrap_or_else(|_| HeaderValue::from_static("-"));
        Named { text: s.into(), header }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSpec {
    pub store: RevocationStoreKind,
    /// When the shared store cannot answer.
    pub on_store_error: OutageMode,
    /// How long a worker reuses a "not revoked" answer from the shared store (revocations
    /// published by other nodes apply at once regardless).
    pub cache_ttl: Duration,
    /// Where the list survives restarts; `None`: it does not.
    pub state_file: Option<std::path::PathBuf>,
}

impl Default for RevocationSpec {
    fn default() -> Self {
        RevocationSpec {
            store: RevocationStoreKind::Memory,
            on_store_error: OutageMode::FailClosed,
            cache_ttl: Duration::from_secs(5),
            state_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationStoreKind {
    /// This process only (lost at restart).
    Memory,
    /// Redis (`[redis]`), shared by the fleet, with pub/sub.
    Redis,
}
