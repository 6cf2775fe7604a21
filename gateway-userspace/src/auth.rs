//! Identity at the edge: who is asking, checked once here so upstream services never repeat it.
//!
//! - `spec`: the validated `[auth]` configuration (issuers, policies, consumers, token sources).
//! - `policy`: per route, which credentials are accepted (`jwt`, `api_key`, `mtls`; any-of or
//!   all-of), from which issuers, with which scopes.
//! - `jwt`: token parsing and validation (signature through `jsonwebtoken` on aws-lc-rs, claims with
//!   leeway, every refusal the issue lists).
//! - `jwks`: per-issuer keys from OIDC discovery, a `jwks_uri` or static files; refreshed in the
//!   background on the control runtime within Cache-Control bounds; unknown `kid` refetch limited
//!   to one per interval; IdP outage grace, then fail closed.
//! - `cache`: the per-worker validated-token cache (SHA-256 of the token → claims, until `exp`).
//! - `introspection`: RFC 7662 for opaque tokens, with client credentials, cached per worker
//!   and, with `cache = "redis"`, fleet-wide.
//! - `revocation`: the `jti` denylist (local, and shared through Redis when configured).
//! - `identify`: the request phase that ties them together, strips client-supplied identity
//!   headers and sets ours.
//!
//! Every refusal goes through `IdentifyPhase::refused` (metric, then the `AuthError` as a `GatewayError`). That is
//! where repeat offenders are to be reported to the eBPF L7→L3 feedback (issue 4) once it exists:
//! `ctx.client_ip` for the reasons that mean forgery or probing (`bad_signature`, `malformed`,
//! `unknown_kid`, `invalid_api_key`), never for `missing`, `expired` or `idp_unavailable`, which
//! honest clients hit.
//!
//! No request waits for the network to validate a JWT whose key is known: keys come from memory.
//! A request whose `kid` is unknown waits (at most `fetch_timeout`) for the one refetch that at
//! most every `unknown_kid_refetch_interval` is allowed; other unknown-`kid` requests inside that
//! interval are refused at once with `unknown_kid`.

mod breaker;
mod cache;
mod identify;
mod idp_http;
mod introspection;
mod jwks;
mod jwt;
mod metrics;
mod oidc;
mod policy;
mod revocation;
mod spec;
#[cfg(test)]
pub(crate) mod testkit;

use std::sync::{Arc, Mutex};

use http::{HeaderValue, StatusCode};
use thiserror::Error;

pub use identify::IdentifyPhase;
pub use idp_http::tls_config;
pub use jwks::{Key, KeySet, parse_jwks, parse_pem_key};
pub use metrics::AuthMetrics;
pub use oidc::{
    ClientAuth, ForwardLoginToken, LoginSpec, MemorySessions, OidcError, OidcLoginPhase, OidcMetrics, SessionStoreKind,
};
pub use policy::{Credential, Mode, Policy, RoutePolicy};
pub use revocation::{RevocationError, Revocations, Revoked, default_state_file as default_revocation_state_file};
pub use spec::{
    AuthSpec, BreakerSpec, IdentityHeaders, IntrospectionCacheKind, IntrospectionSpec, IssuerSpec, KeySource, Named,
    OutageMode, RETRIES_WITHIN_GRACE, RefreshSpec, RevocationSpec, RevocationStoreKind, TokenSources, interned,
};

use crate::{kv::Kv, metrics::Readiness};

/// Why a request was refused by the identity phase. `reason()` is the `reason` label of
/// `gateway_auth_failures_total` and the audit log's `error`; the description goes to the client
/// in `WWW-Authenticate` and the JSON body, so it never contains the token or a secret.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("credentials required: {0}")]
    Missing(Arc<str>),
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("invalid token signature: {0}")]
    BadSignature(&'static str),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token issuer is not accepted here")]
    BadIssuer,
    #[error("the token audience is not accepted here")]
    BadAudience,
    #[error("the token signing key is unknown")]
    UnknownKid,
    #[error("the token has been revoked")]
    Revoked,
    #[error("the token is not active")]
    InactiveToken,
    #[error("invalid API key")]
    InvalidApiKey,
    #[error("the token is bound to another client certificate")]
    CertMismatch,
    #[error("a client certificate is required")]
    CertRequired,
    #[error("insufficient scope: {required} required")]
    InsufficientScope { required: Arc<str> },
    #[error("the identity provider is unavailable")]
    IdpUnavailable,
    /// The issuer's circuit breaker is open: the IdP was not asked.
    #[error("the identity provider is unavailable (not asked again for {retry_after}s)")]
    IdpCircuitOpen { retry_after: u64 },
    #[error("the revocation list is unavailable")]
    RevocationUnavailable,
}

impl AuthError {
    /// The stable, low-cardinality reason (metric label, audit `error`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing(_) => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadAudience => "bad_audience",
            AuthError::UnknownKid => "unknown_kid",
            AuthError::Revoked => "revoked",
            AuthError::InactiveToken => "inactive_token",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::CertMismatch => "cert_mismatch",
            AuthError::CertRequired => "cert_required",
            AuthError::InsufficientScope { .. } => "insufficient_scope",
            AuthError::IdpUnavailable | AuthError::IdpCircuitOpen { .. } => "idp_unavailable",
            AuthError::RevocationUnavailable => "revocation_unavailable",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            // Not the client's fault: retry later, do not re-authenticate (which would only add
            // load on an IdP that is already down).
            AuthError::IdpUnavailable | AuthError::IdpCircuitOpen { .. } | AuthError::RevocationUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The RFC 6750 challenge: no error code when no credentials were sent (section 3.1),
    /// `invalid_token` for bad ones, `insufficient_scope` with the scope needed.
    pub fn challenge(&self) -> Option<HeaderValue> {
        let value = match self {
            AuthError::Missing(_) => "Bearer realm=\"gatewayd\"".to_owned(),
            AuthError::InsufficientScope { required } => format!(
                "Bearer realm=\"gatewayd\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                quoted(&self.to_string()),
                quoted(required)
            ),
            AuthError::IdpUnavailable | AuthError::IdpCircuitOpen { .. } | AuthError::RevocationUnavailable => {
                return None;
            }
            _ => format!(
                "Bearer realm=\"gatewayd\", error=\"invalid_token\", error_description=\"{}\"",
                quoted(&self.to_string())
            ),
        };
        HeaderValue::from_str(&value).ok()
    }

    /// Seconds a client should wait before retrying (503s only).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AuthError::IdpCircuitOpen { retry_after } => Some(*retry_after),
            AuthError::IdpUnavailable | AuthError::RevocationUnavailable => Some(5),
            _ => None,
        }
    }
}

impl crate::error::Refusal for AuthError {
    fn status(&self) -> StatusCode {
        AuthError::status(self)
    }

    fn reason(&self) -> &'static str {
        AuthError::reason(self)
    }

    /// The IdP or Redis outage behind these is logged once where it happens.
    fn logged_at_source(&self) -> bool {
        matches!(self, AuthError::IdpUnavailable | AuthError::IdpCircuitOpen { .. } | AuthError::RevocationUnavailable)
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        AuthError::retry_after(self).map(std::time::Duration::from_secs)
    }

    fn add_headers(&self, headers: &mut http::HeaderMap) {
        if let Some(challenge) = self.challenge() {
            headers.insert(http::header::WWW_AUTHENTICATE, challenge);
        }
    }
}

/// A quoted-string body (RFC 9110 5.6.4) made only of characters RFC 6750 allows in
/// `error_description` (printable ASCII without `"` and `\`).
fn quoted(s: &str) -> String {
    s.chars().filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\').collect()
}

/// What the identity phase needs from the process, set up once at startup.
#[derive(Clone)]
pub struct AuthEnv {
    pub metrics: AuthMetrics,
    pub readiness: Arc<Readiness>,
}

/// The identity parts that outlive a snapshot: per-issuer key caches (with their refresh tasks)
/// and the revocation list. A reload keeps each issuer whose key source did not change, so keys,
/// outage state and revocations survive it.
pub struct AuthHolder {
    env: AuthEnv,
    issuers: Mutex<Vec<Arc<jwks::IssuerKeys>>>,
    revocations: Mutex<Option<Arc<Revocations>>>,
    /// Login sessions kept in this process (`session_store = "memory"`): a reload keeps them.
    sessions: Arc<MemorySessions>,
}

impl AuthHolder {
    pub fn new(env: AuthEnv) -> Self {
        AuthHolder { env, issuers: Mutex::default(), revocations: Mutex::default(), sessions: Arc::default() }
    }

    /// The phase for `spec`, reusing running issuers and the revocation list where the
    /// configuration allows. Starts refresh tasks on the current runtime (the control runtime).
    pub fn phase(&self, spec: Arc<AuthSpec>, kv: Option<Kv>) -> IdentifyPhase {
        let mut running = self.issuers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let issuers: Vec<Arc<jwks::IssuerKeys>> = spec
            .issuers
            .iter()
            .map(|i| match running.iter().find(|r| r.reusable_for(i)) {
                Some(r) => r.clone(),
                None => jwks::IssuerKeys::start(i, &self.env),
            })
            .collect();
        for old in running.iter().filter(|o| !issuers.iter().any(|n| Arc::ptr_eq(n, o))) {
            old.retire();
            if !spec.issuers.iter().any(|i| i.name == old.spec().name) {
                old.forget();
            }
        }
        running.clone_from(&issuers);
        drop(running);
        let mut current = self.revocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let revocation_kv = kv.clone().filter(|_| spec.revocation.store == RevocationStoreKind::Redis);
        let revocations = match current.as_ref() {
            Some(r) if r.reusable_for(&spec.revocation, revocation_kv.as_ref()) => r.clone(),
            previous => Revocations::new(
                spec.revocation.clone(),
                revocation_kv,
                self.env.metrics.clone(),
                previous.map(|p| &**p),
            ),
        };
        *current = Some(revocations.clone());
        drop(current);
        IdentifyPhase::new(spec, issuers, revocations, kv, self.env.metrics.clone())
    }

    /// The OIDC login phase for `spec` (after [`AuthHolder::phase`], whose issuers it uses), or
    /// `None` when no policy has a login.
    pub fn login_phase(&self, spec: Arc<AuthSpec>, kv: Option<Kv>) -> Option<OidcLoginPhase> {
        let issuers = self.issuers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        OidcLoginPhase::new(spec, &issuers, self.sessions.clone(), kv, self.env.metrics.oidc().clone())
    }

    /// The running revocation list (for the admin endpoint).
    pub fn revocations(&self) -> Option<Arc<Revocations>> {
        self.revocations.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc6750() {
        let missing = AuthError::Missing("a bearer token".into()).challenge().unwrap();
        assert_eq!(missing, "Bearer realm=\"gatewayd\"");
        let bad = AuthError::Expired.challenge().unwrap();
        assert_eq!(
            bad,
            "Bearer realm=\"gatewayd\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
        let scope = AuthError::InsufficientScope { required: "a b".into() }.challenge().unwrap();
        assert!(scope.to_str().unwrap().contains("error=\"insufficient_scope\""), "{scope:?}");
        assert!(scope.to_str().unwrap().ends_with("scope=\"a b\""), "{scope:?}");
        assert_eq!(AuthError::InsufficientScope { required: "x".into() }.status(), 403);
        assert_eq!(AuthError::IdpUnavailable.status(), 503);
        assert!(AuthError::IdpUnavailable.challenge().is_none());
        let open = AuthError::IdpCircuitOpen { retry_after: 3 };
        assert_eq!((open.status().as_u16(), open.reason(), open.retry_after()), (503, "idp_unavailable", Some(3)));
        assert!(open.challenge().is_none());
    }

    #[test]
    fn descriptions_cannot_break_the_header() {
        assert_eq!(quoted("a\"b\\c\nd"), "abcd");
    }
}
