//! OIDC login at the edge: gatewayd as the OAuth client (relying party) of an issuer already
//! configured for JWT validation, so one route serves API clients (bearer tokens, as before) and
//! people in browsers (authorization code with PKCE, then a server-side session).
//!
//! - `spec`: the validated `[[auth.logins]]` entry.
//! - `provider`: the IdP's endpoints (from the issuer's discovery document) and the token
//!   endpoint calls (code exchange, refresh), with `client_secret_basic` or `client_secret_post`.
//! - `store`: sessions and pending logins, in this process's memory or in Redis (sealed with
//!   ChaCha20-Poly1305 under the configured key, keyed by the SHA-256 of the opaque id).
//! - `phase`: the request phase, before `identify`: the callback, login and logout paths;
//!   otherwise the session's access token becomes the request's `Authorization: Bearer`, which
//!   `identify` then validates like any bearer token (identity headers, scopes, audit user).
//!
//! CSRF: the session cookie is `SameSite=Lax`, so browsers do not send it on cross-site
//! subrequests or cross-site POST/PUT/PATCH/DELETE; state-changing methods on a login route
//! therefore need a same-site origin. Cross-site top-level GET navigations do carry it (GET must
//! be safe). The login itself is bound to the browser that started it (the `state` is also in a
//! `__Host-` cookie and is single use), so an attacker cannot complete their login in a victim's
//! browser. Not covered: a same-site (sibling subdomain) attacker page; upstreams that change
//! state on GET.

mod metrics;
mod phase;
mod provider;
mod spec;
mod store;

use http::{HeaderMap, HeaderValue, StatusCode, header};
use thiserror::Error;

pub use metrics::OidcMetrics;
pub use phase::{ForwardLoginToken, OidcLoginPhase};
pub use spec::{ClientAuth, LoginSpec, SessionStoreKind};
pub use store::MemorySessions;

/// A response the login phase answers itself: a redirect (to the IdP, back to the page, after
/// logout) or a refusal. `reason()` is the audit `error` and the `reason` label.
#[derive(Debug, Clone, Error)]
pub enum OidcError {
    /// Not an error: the phase answers with a redirect (and cookies).
    #[error("redirect ({why})")]
    Redirect { why: &'static str, location: HeaderValue, cookies: Vec<HeaderValue> },
    #[error("the login state is missing, unknown, used already or not this browser's")]
    BadState,
    #[error("the identity provider refused the login: {0}")]
    ProviderError(String),
    #[error("the identity provider refused the authorization code")]
    CodeRefused,
    #[error("the ID token is not valid: {0}")]
    BadIdToken(&'static str),
    #[error("the return URL is not on this site")]
    BadReturnUrl,
    /// No session (unknown, ended or tampered cookie) on a request that is not a browser
    /// navigation; the cookie is cleared.
    #[error("the session has ended; log in again")]
    NoSession { cookies: Vec<HeaderValue> },
    #[error("the identity provider is unavailable")]
    IdpUnavailable,
    #[error("the session store is unavailable")]
    StoreUnavailable,
}

impl crate::error::Refusal for OidcError {
    fn status(&self) -> StatusCode {
        match self {
            OidcError::Redirect { .. } => StatusCode::SEE_OTHER,
            OidcError::BadState | OidcError::BadReturnUrl => StatusCode::BAD_REQUEST,
            OidcError::ProviderError(_)
            | OidcError::CodeRefused
            | OidcError::BadIdToken(_)
            | OidcError::NoSession { .. } => StatusCode::UNAUTHORIZED,
            OidcError::IdpUnavailable | OidcError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            OidcError::Redirect { why, .. } => why,
            OidcError::BadState => "oidc_bad_state",
            OidcError::ProviderError(_) => "oidc_provider_error",
            OidcError::CodeRefused => "oidc_code_refused",
            OidcError::BadIdToken(_) => "oidc_bad_id_token",
            OidcError::BadReturnUrl => "oidc_bad_return_url",
            OidcError::NoSession { .. } => "oidc_no_session",
            OidcError::IdpUnavailable => "idp_unavailable",
            OidcError::StoreUnavailable => "oidc_store_unavailable",
        }
    }

    /// Redirects carry `Location` and cookies; nothing here may be cached.
    fn add_headers(&self, headers: &mut HeaderMap) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            OidcError::Redirect { location, cookies, .. } => {
                headers.insert(header::LOCATION, location.clone());
                for c in cookies {
                    headers.append(header::SET_COOKIE, c.clone());
                }
            }
            OidcError::NoSession { cookies } => {
                for c in cookies {
                    headers.append(header::SET_COOKIE, c.clone());
                }
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gatewayd\""));
            }
            _ => {}
        }
    }
}
