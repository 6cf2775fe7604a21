//! The login phase (before `identify`). On a route whose policy has a `login`:
//! - the callback path finishes a login (state, code exchange with the PKCE verifier, ID token);
//! - the login path starts one (`?return_to=`, same site only); the logout path ends the session;
//! - a request with a session cookie gets the session's access token as `Authorization: Bearer`
//!   (refreshed first when it is about to expire, once per session however many requests ask);
//! - a browser navigation without a session is sent to the IdP; anything else goes on to
//!   `identify`, which answers 401 as for any route without credentials.
//!
//! A request that brings its own `Authorization` is left alone: API clients keep working.

use std::{sync::Arc, time::Duration};

use aws_lc_rs::{constant_time::verify_slices_are_equal, digest};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{HeaderMap, HeaderValue, Method, header, request};

use super::{
    LoginSpec, MemorySessions, OidcError, OidcMetrics,
    provider::{Provider, TokenFailure, Tokens},
    store::{self, Digest, Pending, Session, SessionStore},
};
use crate::{
    auth::{
        AuthSpec, RoutePolicy,
        introspection::single_flight::SingleFlight,
        jwks::IssuerKeys,
        jwt::{self, ClaimsOf},
        unix_now_ms,
    },
    error::GatewayError,
    kv::Kv,
    request::{Phase, RequestCtx, Step},
};

/// Set in `RequestCtx::extensions` when the session's access token is to reach the upstream
/// (`identify` otherwise removes credentials it validated).
#[derive(Debug, Clone, Copy)]
pub struct ForwardLoginToken;

struct Login {
    spec: LoginSpec,
    keys: Arc<IssuerKeys>,
    /// The issuer's settings with `aud` = our client id: what an ID token is checked against.
    id_token_issuer: crate::auth::IssuerSpec,
    provider: Provider,
    store: SessionStore,
    flights: SingleFlight<Digest, Result<Arc<Session>, OidcError>>,
    /// `<cookie_name>-state`: binds a login to the browser that started it.
    state_cookie: String,
}

pub struct OidcLoginPhase {
    spec: Arc<AuthSpec>,
    logins: Vec<Login>,
    metrics: OidcMetrics,
}

impl std::fmt::Debug for OidcLoginPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcLoginPhase").field("logins", &self.logins.len()).finish_non_exhaustive()
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // aws-lc-rs's system RNG; it does not fail on Linux with getrandom.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now_secs() -> u64 {
    unix_now_ms() / 1000
}

/// The value of cookie `name` (every Cookie field: HTTP/2 may split them).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Removes our cookies from what goes upstream: the session id is the browser's credential.
fn strip_cookies(headers: &mut HeaderMap, names: [&str; 2]) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !names.iter().any(|n| pair.split_once('=').is_some_and(|(k, _)| k == *n)))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    // `__Host-`: Secure, Path=/ and no Domain, so no subdomain can set or read it.
    HeaderValue::from_str(&format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// A top-level browser navigation: GET (or HEAD) that accepts HTML.
fn is_browser(head: &request::Parts) -> bool {
    (head.method == Method::GET || head.method == Method::HEAD)
        && head.headers.get_all(header::ACCEPT).iter().any(|v| v.as_bytes().windows(9).any(|w| w == b"text/html"))
}

/// A same-site place to return to: a path on this origin (never `//host` or `/\host`, which
/// browsers read as another host), or an absolute URL on the redirect URI's origin.
pub fn same_site_target(raw: &str, origin: &str) -> Option<String> {
    let path = match raw.strip_prefix(origin) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        Some(_) => return None,
        None => raw,
    };
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    ok.then(|| path.to_owned())
}

fn query_param(head: &request::Parts, name: &str) -> Option<String> {
    form_urlencoded::parse(head.uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl OidcLoginPhase {
    /// `None` when no policy has a login (the phase would do nothing).
    pub fn new(
        spec: Arc<AuthSpec>,
        issuers: &[Arc<IssuerKeys>],
        memory: Arc<MemorySessions>,
        kv: Option<Kv>,
        metrics: OidcMetrics,
    ) -> Option<OidcLoginPhase> {
        if spec.logins.is_empty() {
            return None;
        }
        let logins = spec
            .logins
            .iter()
            .filter_map(|l| {
                let keys = issuers.get(l.issuer)?.clone();
                let mut id_token_issuer = keys.spec().clone();
                id_token_issuer.audiences = vec![l.client_id.clone()];
                Some(Login {
                    provider: Provider::new(keys.spec()),
                    keys,
                    id_token_issuer,
                    store: SessionStore::new(l.name.clone(), &l.store, memory.clone(), kv.clone()),
                    flights: SingleFlight::default(),
                    state_cookie: format!("{}-state", l.cookie_name),
                    spec: l.clone(),
                })
            })
            .collect();
        Some(OidcLoginPhase { spec, logins, metrics })
    }

    fn fail(&self, login: &Login, e: OidcError) -> GatewayError {
        if !matches!(e, OidcError::Redirect { .. }) {
            self.metrics.failure(&login.spec.name, crate::error::Refusal::reason(&e).trim_start_matches("oidc_"));
        }
        GatewayError::from(e)
    }

    /// Sends the browser to the IdP: a new state (also in a cookie), PKCE verifier, nonce.
    async fn begin(&self, login: &Login, return_to: String, mut cookies: Vec<HeaderValue>) -> Result<(), GatewayError> {
        let endpoints =
            login.provider.endpoints(&login.spec, &login.id_token_issuer).await.map_err(|e| self.fail(login, e))?;
        let (state, verifier, nonce) = (random_token(), random_token(), random_token());
        let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
        let pending = Pending { verifier, nonce: nonce.clone(), return_to };
        login.store.put_pending(&store::digest(&state), pending).await.map_err(|e| self.fail(login, e))?;
        let spec = &login.spec;
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &spec.client_id)
            .append_pair("redirect_uri", &spec.redirect_uri)
            .append_pair("scope", &spec.scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if endpoints.authorization_endpoint.contains('?') { '&' } else { '?' };
        let location = HeaderValue::from_str(&format!("{}{sep}{query}", endpoints.authorization_endpoint))
            .map_err(|_| self.fail(login, OidcError::IdpUnavailable))?;
        cookies.push(set_cookie(&login.state_cookie, &state, store::PENDING_TTL.as_secs()));
        self.metrics.redirect(&spec.name);
        Err(GatewayError::from(OidcError::Redirect { why: "oidc_login_redirect", location, cookies }))
    }

    /// The IdP sent the browser back: check everything, then open a session.
    async fn callback(&self, login: &Login, head: &request::Parts) -> Result<(), GatewayError> {
        let fail = |e| self.fail(login, e);
        if let Some(error) = query_param(head, "error") {
            let shown: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            return Err(fail(OidcError::ProviderError(shown)));
        }
        let state = query_param(head, "state").ok_or_else(|| fail(OidcError::BadState))?;
        let bound = cookie(&head.headers, &login.state_cookie).ok_or_else(|| fail(OidcError::BadState))?;
        if verify_slices_are_equal(state.as_bytes(), bound.as_bytes()).is_err() {
            return Err(fail(OidcError::BadState));
        }
        // Taken (deleted) before the code is used: a replayed callback finds no state.
        let pending = login
            .store
            .take_pending(&store::digest(&state))
            .await
            .map_err(&fail)?
            .ok_or_else(|| fail(OidcError::BadState))?;
        let code = query_param(head, "code").ok_or_else(|| fail(OidcError::CodeRefused))?;
        let endpoints = login.provider.endpoints(&login.spec, &login.id_token_issuer).await.map_err(&fail)?;
        let params = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", login.spec.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let tokens = login.provider.token(&login.spec, &endpoints.token_endpoint, &params).await.map_err(|f| {
            fail(match f {
                TokenFailure::Refused => OidcError::CodeRefused,
                TokenFailure::Unavailable => OidcError::IdpUnavailable,
            })
        })?;
        let id_token = tokens.id_token.as_deref().ok_or_else(|| fail(OidcError::BadIdToken("no id_token")))?;
        let user = self.check_id_token(login, id_token, &pending.nonce).await.map_err(&fail)?;
        let now = now_secs();
        let session = Session {
            access_expires: access_expiry(&tokens, now),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            id_token: tokens.id_token,
            expires: now + login.spec.session_lifetime.as_secs(),
            user,
        };
        let user = session.user.clone();
        let id = random_token();
        login.store.put_session(&store::digest(&id), session).await.map_err(&fail)?;
        self.metrics.login(&login.spec.name);
        tracing::info!(login = %login.spec.name, user = %user, "OIDC login");
        let location = HeaderValue::from_str(&pending.return_to).unwrap_or(HeaderValue::from_static("/"));
        let cookies = vec![
            set_cookie(&login.spec.cookie_name, &id, login.spec.session_lifetime.as_secs()),
            set_cookie(&login.state_cookie, "", 0),
        ];
        Err(GatewayError::from(OidcError::Redirect { why: "oidc_login", location, cookies }))
    }

    /// Signature (the issuer's keys, refetched once for an unknown `kid`), iss, aud = client id,
    /// exp/nbf/iat, nonce. Returns the user.
    async fn check_id_token(&self, login: &Login, id_token: &str, nonce: &str) -> Result<String, OidcError> {
        let bad = |e: crate::auth::AuthError| OidcError::BadIdToken(e.reason());
        let token = jwt::parse(id_token, self.spec.tokens.max_size.max(16 << 10)).map_err(bad)?;
        let algorithms = &login.id_token_issuer.algorithms;
        let mut verified = token.verify(&login.keys.keys(), algorithms);
        if matches!(verified, Err(crate::auth::AuthError::UnknownKid)) {
            let events = login.keys.fetch_events();
            if login.keys.request_refetch(unix_now_ms()) {
                login.keys.wait_fetch(events).await;
                verified = token.verify(&login.keys.keys(), algorithms);
            }
        }
        verified.map_err(bad)?;
        let claims =
            jwt::check_claims(&token.claims, &login.id_token_issuer, now_secs(), self.spec.leeway, ClaimsOf::Jwt)
                .map_err(bad)?;
        let got = token.claims.get("nonce").and_then(|v| v.as_str()).unwrap_or("");
        if verify_slices_are_equal(got.as_bytes(), nonce.as_bytes()).is_err() {
            return Err(OidcError::BadIdToken("nonce"));
        }
        Ok(claims.user.map(|u| u.text.to_string()).unwrap_or_default())
    }

    async fn logout(&self, login: &Login, head: &request::Parts) -> Result<(), GatewayError> {
        let mut id_token = None;
        if let Some(id) = cookie(&head.headers, &login.spec.cookie_name) {
            let key = store::digest(id);
            id_token = login.store.session(&key).await.ok().flatten().and_then(|s| s.id_token.clone());
            login.store.end_session(&key).await.map_err(|e| self.fail(login, e))?;
            self.metrics.logout(&login.spec.name);
        }
        let spec = &login.spec;
        let endpoints = login.provider.endpoints(spec, &login.id_token_issuer).await.ok();
        let target = match endpoints.as_ref().and_then(|e| e.end_session_endpoint.as_deref()) {
            Some(end) => {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("client_id", &spec.client_id);
                q.append_pair("post_logout_redirect_uri", &spec.post_logout_redirect_uri);
                if let Some(hint) = &id_token {
                    q.append_pair("id_token_hint", hint);
                }
                let sep = if end.contains('?') { '&' } else { '?' };
                format!("{end}{sep}{}", q.finish())
            }
            None => spec.post_logout_redirect_uri.clone(),
        };
        let location = HeaderValue::from_str(&target).unwrap_or(HeaderValue::from_static("/"));
        let cookies = vec![set_cookie(&spec.cookie_name, "", 0)];
        Err(GatewayError::from(OidcError::Redirect { why: "oidc_logout", location, cookies }))
    }

    /// The session's tokens, refreshed when the access token is about to expire. One refresh per
    /// session at a time: concurrent requests of the session wait for it.
    async fn fresh(&self, login: &Login, key: Digest, session: Arc<Session>) -> Result<Arc<Session>, OidcError> {
        let (result, coalesced) = login.flights.run(key, || self.refresh(login, key, session.clone())).await;
        if coalesced {
            self.metrics.refresh(&login.spec.name, "coalesced");
        }
        match result {
            // The IdP cannot answer now but the token still works: use it.
            Err(OidcError::IdpUnavailable) if session.access_expires > now_secs() => Ok(session),
            other => other,
        }
    }

    async fn refresh(&self, login: &Login, key: Digest, session: Arc<Session>) -> Result<Arc<Session>, OidcError> {
        let name = &login.spec.name;
        // Another node (or an earlier flight) may have refreshed it already.
        if let Ok(Some(current)) = login.store.session(&key).await
            && !needs_refresh(&login.spec, &current)
        {
            return Ok(current);
        }
        let ended = async || {
            self.metrics.refresh(name, "failed");
            let _ = login.store.end_session(&key).await;
            tracing::info!(login = %name, user = %session.user, "OIDC refresh refused; session ended");
            Err(OidcError::NoSession { cookies: Vec::new() })
        };
        let Some(refresh_token) = session.refresh_token.as_deref() else { return ended().await };
        let endpoints = login.provider.endpoints(&login.spec, &login.id_token_issuer).await?;
        let params = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
        match login.provider.token(&login.spec, &endpoints.token_endpoint, &params).await {
            Ok(tokens) => {
                let now = now_secs();
                let renewed = Session {
                    access_expires: access_expiry(&tokens, now),
                    access_token: tokens.access_token,
                    refresh_token: tokens.refresh_token.or_else(|| session.refresh_token.clone()),
                    id_token: tokens.id_token.or_else(|| session.id_token.clone()),
                    expires: session.expires,
                    user: session.user.clone(),
                };
                login.store.put_session(&key, renewed.clone()).await?;
                self.metrics.refresh(name, "ok");
                Ok(Arc::new(renewed))
            }
            Err(TokenFailure::Refused) => ended().await,
            Err(TokenFailure::Unavailable) => {
                self.metrics.refresh(name, "unavailable");
                Err(OidcError::IdpUnavailable)
            }
        }
    }

    /// No usable session: a browser is sent to log in, anything else is told (401) and its
    /// cookie cleared.
    async fn no_session(&self, login: &Login, head: &request::Parts, target: String) -> Result<(), GatewayError> {
        let cleared = vec![set_cookie(&login.spec.cookie_name, "", 0)];
        if is_browser(head) {
            return self.begin(login, target, cleared).await;
        }
        Err(self.fail(login, OidcError::NoSession { cookies: cleared }))
    }

    fn use_session(login: &Login, ctx: &mut RequestCtx, head: &mut request::Parts, session: &Session) -> bool {
        let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {}", session.access_token)) else { return false };
        head.headers.insert(header::AUTHORIZATION, bearer);
        if login.spec.forward_access_token {
            ctx.extensions.insert(ForwardLoginToken);
        }
        true
    }
}

fn needs_refresh(spec: &LoginSpec, s: &Session) -> bool {
    s.access_expires <= now_secs() + spec.refresh_before.as_secs()
}

/// When the access token expires: `expires_in`, else its own `exp`, else in a minute.
fn access_expiry(tokens: &Tokens, now: u64) -> u64 {
    if let Some(secs) = tokens.expires_in {
        return now + secs;
    }
    let exp = jwt::parse(&tokens.access_token, usize::MAX)
        .ok()
        .and_then(|t| t.claims.get("exp").and_then(serde_json::Value::as_u64));
    exp.unwrap_or(now + Duration::from_secs(60).as_secs())
}

impl Phase for OidcLoginPhase {
    fn name(&self) -> &'static str {
        "oidc-login"
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx, head: &'a mut request::Parts) -> Step<'a> {
        let Some(RoutePolicy::Policy(p)) = ctx.route.and_then(|r| self.spec.route_policies.get(r)) else {
            return Step::Continue;
        };
        let Some(login) = self.spec.policies.get(*p).and_then(|p| p.login).and_then(|l| self.logins.get(l)) else {
            return Step::Continue;
        };
        let path = head.uri.path();
        if path == login.spec.callback_path {
            return Step::Wait(Box::pin(self.callback(login, head)));
        }
        if path == login.spec.logout_path {
            return Step::Wait(Box::pin(self.logout(login, head)));
        }
        if path == login.spec.login_path {
            let raw = query_param(head, "return_to").unwrap_or_else(|| "/".into());
            return match same_site_target(&raw, &login.spec.origin) {
                Some(target) => Step::Wait(Box::pin(self.begin(login, target, Vec::new()))),
                None => Step::Refuse(self.fail(login, OidcError::BadReturnUrl)),
            };
        }
        if head.headers.contains_key(header::AUTHORIZATION) {
            return Step::Continue;
        }
        let here = head.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let target = same_site_target(here, &login.spec.origin).unwrap_or_else(|| "/".into());
        let Some(id) = cookie(&head.headers, &login.spec.cookie_name) else {
            if is_browser(head) {
                return Step::Wait(Box::pin(self.begin(login, target, Vec::new())));
            }
            return Step::Continue;
        };
        let key = store::digest(id);
        strip_cookies(&mut head.headers, [&login.spec.cookie_name, &login.state_cookie]);
        // The memory store answers at once: no future for a logged-in request's common case.
        if let Some(found) = login.store.session_now(&key)
            && let Some(s) = found.as_ref().filter(|s| !needs_refresh(&login.spec, s))
            && Self::use_session(login, ctx, head, s)
        {
            return Step::Continue;
        }
        Step::Wait(Box::pin(async move {
            let session = login.store.session(&key).await.map_err(|e| self.fail(login, e))?;
            let Some(session) = session else { return self.no_session(login, head, target).await };
            let session = if needs_refresh(&login.spec, &session) {
                match self.fresh(login, key, session).await {
                    Ok(s) => s,
                    Err(OidcError::NoSession { .. }) => return self.no_session(login, head, target).await,
                    Err(e) => return Err(self.fail(login, e)),
                }
            } else {
                session
            };
            if !Self::use_session(login, ctx, head, &session) {
                return self.no_session(login, head, target).await;
            }
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_site_targets() {
        let origin = "https://app.example";
        assert_eq!(same_site_target("/a?b=c", origin).as_deref(), Some("/a?b=c"));
        assert_eq!(same_site_target("https://app.example/x", origin).as_deref(), Some("/x"));
        assert_eq!(same_site_target("https://app.example", origin).as_deref(), Some("/"));
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "https://app.example.evil/",
            "https://app.example@evil/",
            "javascript:alert(1)",
            "evil",
            "/a b",
        ] {
            assert_eq!(same_site_target(bad, origin), None, "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_and_stripped() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; __Host-s=abc; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("__Host-s-state=xyz"));
        assert_eq!(cookie(&h, "__Host-s"), Some("abc"));
        assert_eq!(cookie(&h, "__Host-s-state"), Some("xyz"));
        strip_cookies(&mut h, ["__Host-s", "__Host-s-state"]);
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2"]);
    }
}
