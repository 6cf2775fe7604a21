//! `[auth]`, `[[consumers]]` and the routes' `auth` → [`AuthSpec`]. Key files, JWKS files, CA
//! files and client secrets are read here, so a bad one is a located config error (at load and
//! at reload) rather than a surprise on the request path.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use jsonwebtoken::Algorithm;

use super::{KeyPath, Validator, root};
use crate::{
    auth::{
        AuthSpec, BreakerSpec, Credential, IdentityHeaders, IntrospectionCacheKind, IntrospectionSpec, IssuerSpec,
        KeySet, KeySource, Mode, OutageMode, Policy, RETRIES_WITHIN_GRACE, RefreshSpec, RevocationSpec,
        RevocationStoreKind, RoutePolicy, TokenSources, interned, parse_jwks, parse_pem_key,
    },
    config::schema::{
        AuthSection, FailMode, FileConfig, IntrospectionCache, IssuerSection, PolicySection, RevocationStore,
    },
    consumer::Consumers,
};

const ALL_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Headers an identity header must not be named after (the request would break or lie).
const RESERVED_HEADERS: [&str; 13] = [
    "host",
    "authorization",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-request-id",
];

fn fail_mode(m: FailMode) -> OutageMode {
    match m {
        FailMode::FailClosed => OutageMode::FailClosed,
        FailMode::FailOpen => OutageMode::FailOpen,
    }
}

/// Reserved in any spelling: CGI reads `x_forwarded_for` as `X-Forwarded-For`.
fn reserved(name: &str) -> bool {
    RESERVED_HEADERS.contains(&name.replace('_', "-").as_str())
}

impl Validator<'_> {
    pub(super) fn auth(&mut self, f: &FileConfig, consumers: &Arc<Consumers>) -> AuthSpec {
        let a = &f.auth;
        let at = || root("auth");
        if a.leeway.as_secs() > 600 {
            self.problem(at().key("leeway"), "must be at most 10m (clock skew, not token lifetime)");
        }
        if a.max_token_size.0 < 256 || a.max_token_size.0 > 64 << 10 {
            self.problem(at().key("max_token_size"), "must be between 256 bytes and 64KiB");
        }
        if a.token_cache_size == 0 || a.token_cache_size > 10_000_000 {
            self.problem(at().key("token_cache_size"), "must be between 1 and 10000000");
        }
        for (key, names) in [("uri_param_names", &a.uri_param_names), ("cookie_names", &a.cookie_names)] {
            for (i, n) in names.iter().enumerate() {
                let ok = !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && !b"=;,&\"".contains(&b));
                if !ok {
                    self.problem(at().key(key).index(i), format!("invalid name {n:?}"));
                }
            }
        }
        let api_key_header = self.header_name(at().key("api_key_header"), &a.api_key_header);
        self.client_header(at().key("api_key_header"), &a.api_key_header, f.server.underscores_in_headers);
        let headers = self.identity_headers(a);
        let issuers: Vec<IssuerSpec> = a.issuers.iter().enumerate().filter_map(|(i, s)| self.issuer(i, s)).collect();
        let mut policies = self.policies(a, &issuers);
        let logins = self.logins(a, &issuers, f.redis.is_some());
        self.policy_logins(a, &mut policies, &logins);
        let route_policies = self.route_policies(f, &policies);
        if a.revocation.store == RevocationStore::Redis && f.redis.is_none() {
            self.problem(root("auth").key("revocation").key("store"), "\"redis\" needs a [redis] section");
        }
        for (i, s) in a.issuers.iter().enumerate() {
            if s.introspection.as_ref().is_some_and(|x| x.cache == IntrospectionCache::Redis) && f.redis.is_none() {
                let at = root("auth").key("issuers").index(i).key("introspection").key("cache");
                self.problem(at, "\"redis\" needs a [redis] section");
            }
        }
        if a.revocation.cache_ttl.is_some_and(|t| t.as_secs() > 300) {
            self.problem(root("auth").key("revocation").key("cache_ttl"), "must be at most 5m");
        }
        let revocation = RevocationSpec {
            store: match a.revocation.store {
                RevocationStore::Memory => RevocationStoreKind::Memory,
                RevocationStore::Redis => RevocationStoreKind::Redis,
            },
            on_store_error: fail_mode(a.revocation.on_store_error),
            cache_ttl: a.revocation.cache_ttl.unwrap_or(std::time::Duration::from_secs(5)),
            state_file: match a.revocation.state_file.as_deref() {
                None => Some(crate::auth::default_revocation_state_file()),
                Some("") => None,
                Some(p) if !p.starts_with('/') => {
                    self.problem(root("auth").key("revocation").key("state_file"), "must be an absolute path");
                    None
                }
                Some(p) => Some(std::path::PathBuf::from(p)),
            },
        };
        AuthSpec {
            route_policies,
            policies,
            issuers,
            consumers: consumers.clone(),
            tokens: TokenSources {
                uri_params: a.uri_param_names.clone(),
                cookies: a.cookie_names.clone(),
                max_size: a.max_token_size.0 as usize,
            },
            api_key_header: api_key_header.unwrap_or_else(|| http::HeaderName::from_static("x-api-key")),
            leeway: a.leeway.as_secs(),
            token_cache_size: a.token_cache_size.max(1),
            headers,
            revocation,
            logins,
        }
    }

    fn header_name(&mut self, path: KeyPath, raw: &str) -> Option<http::HeaderName> {
        match interned::header_name(raw) {
            Ok(h) if reserved(h.as_str()) => {
                self.problem(path, format!("{raw:?} is a header the gateway or HTTP itself manages"));
                None
            }
            Ok(h) => Some(h),
            Err(reason) => {
                self.problem(path, reason);
                None
            }
        }
    }

    fn identity_headers(&mut self, a: &AuthSection) -> IdentityHeaders {
        let h = &a.headers;
        let at = |k: &str| root("auth").key("headers").key(k);
        let defaults = IdentityHeaders::default();
        let mut out = IdentityHeaders { forward_credentials: h.forward_credentials, ..defaults };
        let fields: [(&str, &String, &mut http::HeaderName); 5] = [
            ("user", &h.user, &mut out.user),
            ("consumer_username", &h.consumer_username, &mut out.consumer_username),
            ("consumer_id", &h.consumer_id, &mut out.consumer_id),
            ("scope", &h.scope, &mut out.scope),
            ("workspace", &h.workspace, &mut out.workspace),
        ];
        let mut seen = HashSet::new();
        let mut problems = Vec::new();
        for (key, raw, slot) in fields {
            match interned::header_name(raw) {
                Ok(name) if reserved(name.as_str()) => {
                    problems.push((at(key), format!("{raw:?} is a header the gateway or HTTP itself manages")));
                }
                Ok(name) if !seen.insert(name.clone()) => {
                    problems.push((at(key), format!("{raw:?} is used for two identity headers")));
                }
                Ok(name) => *slot = name,
                Err(reason) => problems.push((at(key), reason)),
            }
        }
        if let Ok(api) = interned::header_name(&a.api_key_header)
            && seen.contains(&api)
        {
            problems.push((root("auth").key("api_key_header"), "is also an identity header name".into()));
        }
        for (path, reason) in problems {
            self.problem(path, reason);
        }
        out
    }

    /// A client secret from its file (one trailing newline dropped); empty and unreadable files
    /// are problems at `path`.
    fn secret_file(&mut self, path: KeyPath, raw: &str) -> String {
        let file = self.config_relative(raw);
        match std::fs::read_to_string(&file) {
            Ok(s) if !s.trim().is_empty() => s.trim_end_matches(['\n', '\r']).to_owned(),
            Ok(_) => {
                self.problem(path, format!("{} is empty", file.display()));
                String::new()
            }
            Err(e) => {
                self.problem(path, format!("cannot read {}: {e}", file.display()));
                String::new()
            }
        }
    }

    /// Relative paths are relative to the config file's directory.
    fn config_relative(&self, raw: &str) -> PathBuf {
        let p = Path::new(raw);
        if p.is_absolute() {
            return p.to_owned();
        }
        Path::new(self.file).parent().map_or_else(|| p.to_owned(), |dir| dir.join(p))
    }

    /// An IdP URL: HTTPS, or plain HTTP to a loopback address only.
    fn idp_url(&mut self, path: KeyPath, raw: &str) -> Option<bool> {
        let Ok(uri) = raw.parse::<http::Uri>() else {
            self.problem(path, format!("invalid URL {raw:?}"));
            return None;
        };
        let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
        match uri.scheme_str() {
            Some("https") if !host.is_empty() => Some(true),
            Some("http") if is_loopback(host) => Some(false),
            Some("http") => {
                self.problem(
                    path,
                    format!("{raw:?}: plain HTTP to an identity provider is only allowed on loopback; use https"),
                );
                None
            }
            _ => {
                self.problem(path, format!("invalid URL {raw:?}: expected https://host/…"));
                None
            }
        }
    }

    fn issuer(&mut self, i: usize, s: &IssuerSection) -> Option<IssuerSpec> {
        let at = || root("auth").key("issuers").index(i);
        let before = self.problems.len();
        if s.name.is_empty() || s.name == "none" {
            self.problem(at().key("name"), "must be a non-empty name other than \"none\"");
        }
        if s.issuer.is_empty() {
            self.problem(at().key("issuer"), "must be the exact iss of the issuer's tokens");
        }
        if s.audiences.is_empty() || s.audiences.iter().any(String::is_empty) {
            self.problem(at().key("audiences"), "at least one non-empty audience is required (tokens minted for other services must not be accepted here)");
        }
        let mut algorithms = Vec::new();
        for (j, raw) in s.algorithms.iter().enumerate() {
            match raw.parse::<Algorithm>() {
                Ok(a) if ALL_ALGORITHMS.contains(&a) => algorithms.push(a),
                Ok(_) => self.problem(
                    at().key("algorithms").index(j),
                    format!("{raw}: HMAC (shared-secret) algorithms are not accepted; use RS*, PS*, ES* or EdDSA"),
                ),
                Err(_) => self.problem(
                    at().key("algorithms").index(j),
                    format!("unknown algorithm {raw:?} (RS256/384/512, PS256/384/512, ES256/384, EdDSA)"),
                ),
            }
        }
        if s.algorithms.is_empty() {
            algorithms = ALL_ALGORITHMS.to_vec();
        }
        let mut https = false;
        let explicit =
            usize::from(s.jwks_uri.is_some()) + usize::from(s.jwks_file.is_some()) + usize::from(!s.keys.is_empty());
        let keys = if explicit > 1 || (explicit == 1 && s.discovery == Some(true)) {
            self.problem(at(), "choose one key source: discovery, jwks_uri, jwks_file or keys");
            KeySource::None
        } else if let Some(uri) = &s.jwks_uri {
            https |= self.idp_url(at().key("jwks_uri"), uri).unwrap_or(false);
            KeySource::JwksUri { url: uri.clone() }
        } else if let Some(file) = &s.jwks_file {
            let path = self.config_relative(file);
            match std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|b| parse_jwks(&b))
            {
                Ok((set, _skipped)) => KeySource::Static { keys: Arc::new(set), files: vec![path] },
                Err(reason) => {
                    self.problem(at().key("jwks_file"), reason);
                    KeySource::None
                }
            }
        } else if !s.keys.is_empty() {
            let mut keys = Vec::new();
            let mut files = Vec::new();
            let mut kids = HashSet::new();
            for (j, k) in s.keys.iter().enumerate() {
                if let Some(kid) = &k.kid
                    && !kids.insert(kid.as_str())
                {
                    self.problem(at().key("keys").index(j).key("kid"), format!("kid {kid:?} is used twice"));
                }
                let path = self.config_relative(&k.pem_file);
                let parsed = std::fs::read(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|pem| parse_pem_key(&pem, k.kid.as_deref()));
                match parsed {
                    Ok(key) => keys.push(key),
                    Err(reason) => self.problem(at().key("keys").index(j).key("pem_file"), reason),
                }
                files.push(path);
            }
            KeySource::Static { keys: Arc::new(KeySet::new(keys)), files }
        } else if s.discovery == Some(false) {
            KeySource::None
        } else {
            let base = s.issuer.trim_end_matches('/');
            https |= self.idp_url(at().key("issuer"), &s.issuer).unwrap_or(false);
            KeySource::Discovery { url: format!("{base}/.well-known/openid-configuration") }
        };
        let r = RefreshSpec {
            max_interval: s.refresh_interval,
            min_interval: s.min_refresh_interval,
            unknown_kid_interval: s.unknown_kid_refetch_interval,
            fetch_timeout: s.fetch_timeout,
            outage_grace: s.idp_outage_grace,
            on_outage: fail_mode(s.on_idp_outage),
        };
        if r.min_interval.as_millis() < 1000 || r.min_interval > r.max_interval {
            self.problem(at().key("min_refresh_interval"), "must be at least 1s and at most refresh_interval");
        }
        if r.unknown_kid_interval.as_millis() < 1000 {
            self.problem(at().key("unknown_kid_refetch_interval"), "must be at least 1s");
        }
        if r.fetch_timeout.is_zero() || r.fetch_timeout.as_secs() > 60 {
            self.problem(at().key("fetch_timeout"), "must be between 1ms and 60s");
        }
        let refreshed = matches!(keys, KeySource::Discovery { .. } | KeySource::JwksUri { .. });
        if r.outage_grace.is_zero() {
            self.problem(at().key("idp_outage_grace"), "must be greater than zero");
        } else if refreshed && r.on_outage == OutageMode::FailClosed && r.outage_grace < r.grace_needed() {
            self.problem(
                at().key("idp_outage_grace"),
                format!(
                    "must be at least {:?} with these settings: the grace counts from the first failed key refresh, \
                     and {RETRIES_WITHIN_GRACE} retries (after 1s, 2s, 4s, each at most min_refresh_interval, plus \
                     fetch_timeout each) must fail before the issuer fails closed",
                    r.grace_needed()
                ),
            );
        }
        let breaker = BreakerSpec { failures: s.breaker_failures, cool_down: s.breaker_cool_down };
        if !(1..=100).contains(&breaker.failures) {
            self.problem(at().key("breaker_failures"), "must be between 1 and 100");
        }
        if breaker.cool_down < Duration::from_millis(100) || breaker.cool_down > Duration::from_secs(600) {
            self.problem(at().key("breaker_cool_down"), "must be between 100ms and 10m");
        }
        for (key, claim) in [("user_claim", &s.user_claim), ("workspace_claim", &s.workspace_claim)] {
            if claim.is_empty() {
                self.problem(at().key(key), "must name a claim");
            }
        }
        let introspection = match &s.introspection {
            None => None,
            Some(intro) => {
                let ip = || at().key("introspection");
                if let Some(e) = &intro.endpoint {
                    https |= self.idp_url(ip().key("endpoint"), e).unwrap_or(false);
                } else if !matches!(keys, KeySource::Discovery { .. }) {
                    self.problem(ip().key("endpoint"), "required when the issuer does not use discovery");
                }
                if intro.client_id.is_empty() {
                    self.problem(ip().key("client_id"), "must not be empty");
                }
                let secret = self.secret_file(ip().key("client_secret_file"), &intro.client_secret_file);
                if intro.cache_ttl.as_millis() < 1000 || intro.negative_cache_ttl.as_millis() < 1000 {
                    self.problem(ip(), "cache_ttl and negative_cache_ttl must be at least 1s");
                }
                if intro.timeout.is_zero() {
                    self.problem(ip().key("timeout"), "must be greater than zero");
                }
                Some(IntrospectionSpec {
                    endpoint: intro.endpoint.clone(),
                    client_id: intro.client_id.clone(),
                    client_secret: secret,
                    cache_ttl: intro.cache_ttl,
                    negative_cache_ttl: intro.negative_cache_ttl,
                    timeout: intro.timeout,
                    cache: match intro.cache {
                        IntrospectionCache::Memory => IntrospectionCacheKind::Memory,
                        IntrospectionCache::Redis => IntrospectionCacheKind::Redis,
                    },
                })
            }
        };
        if matches!(keys, KeySource::None) && introspection.is_none() && self.problems.len() == before {
            self.problem(
                at().key("discovery"),
                "an issuer needs keys (discovery, jwks_uri, jwks_file, keys) or introspection",
            );
        }
        let ca_file = s.ca_file.as_deref().map(|f| self.config_relative(f));
        let tls = if https || ca_file.is_some() {
            match crate::auth::tls_config(ca_file.as_deref()) {
                Ok(t) => Some(t),
                Err(reason) => {
                    self.problem(at().key("ca_file"), reason);
                    None
                }
            }
        } else {
            None
        };
        (self.problems.len() == before).then(|| IssuerSpec {
            name: s.name.as_str().into(),
            issuer: s.issuer.as_str().into(),
            audiences: s.audiences.clone(),
            algorithms,
            keys,
            refresh: r,
            ca_file,
            tls,
            user_claim: s.user_claim.clone(),
            workspace_claim: s.workspace_claim.clone(),
            introspection,
            breaker,
        })
    }

    pub(super) fn scopes(&mut self, path: KeyPath, raw: &[String]) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        for (j, s) in raw.iter().enumerate() {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                self.problem(path.clone().index(j), format!("invalid scope {s:?} (visible ASCII, no spaces)"));
            } else if !out.iter().any(|o| **o == **s) {
                out.push(s.as_str().into());
            }
        }
        out
    }

    fn policies(&mut self, a: &AuthSection, issuers: &[IssuerSpec]) -> Vec<Policy> {
        let mut out = Vec::new();
        let mut names = HashSet::new();
        for (i, p) in a.policies.iter().enumerate() {
            let at = || root("auth").key("policies").index(i);
            if p.name.is_empty() || p.name == "none" {
                self.problem(at().key("name"), "must be a non-empty name other than \"none\"");
            } else if !names.insert(p.name.as_str()) {
                self.problem(at().key("name"), format!("policy name {:?} is used twice", p.name));
            }
            let Some((mode, key, list)) = self.policy_mode(p, i) else { continue };
            let mut credentials = Vec::new();
            for (j, c) in list.iter().enumerate() {
                match Credential::parse(c) {
                    Some(c) if credentials.contains(&c) => self.problem(at().key(key).index(j), "listed twice"),
                    Some(c) => credentials.push(c),
                    None => self.problem(
                        at().key(key).index(j),
                        format!("unknown credential {c:?} (\"jwt\", \"api_key\" or \"mtls\")"),
                    ),
                }
            }
            let mut accepted = Vec::new();
            for (j, name) in p.issuers.iter().enumerate() {
                if !a.issuers.iter().any(|s| s.name == *name) {
                    self.problem(at().key("issuers").index(j), format!("unknown issuer {name:?}"));
                } else if let Some(pos) = issuers.iter().position(|s| *s.name == *name) {
                    // (An invalid issuer is missing from `issuers`; it was reported already.)
                    accepted.push(pos);
                }
            }
            if p.issuers.is_empty() {
                accepted = (0..issuers.len()).collect();
            }
            if credentials.contains(&Credential::Jwt) && accepted.is_empty() && a.issuers.is_empty() {
                self.problem(at().key(key), "accepts jwt but no [[auth.issuers]] is configured");
            }
            let scopes = self.scopes(at().key("scopes"), &p.scopes);
            out.push(Policy::new(&p.name, mode, credentials, accepted, scopes));
        }
        out
    }

    fn policy_mode<'p>(&mut self, p: &'p PolicySection, i: usize) -> Option<(Mode, &'static str, &'p [String])> {
        let at = || root("auth").key("policies").index(i);
        match (&p.any_of, &p.all_of) {
            (Some(list), None) if !list.is_empty() => Some((Mode::AnyOf, "any_of", list)),
            (None, Some(list)) if !list.is_empty() => Some((Mode::AllOf, "all_of", list)),
            (Some(_), Some(_)) => {
                self.problem(at(), "set either any_of or all_of, not both");
                None
            }
            _ => {
                self.problem(at(), "set any_of or all_of to a non-empty list of credentials");
                None
            }
        }
    }

    fn route_policies(&mut self, f: &FileConfig, policies: &[Policy]) -> Vec<RoutePolicy> {
        let resolve = |name: &str| -> Option<RoutePolicy> {
            if name == "none" {
                return Some(RoutePolicy::Open);
            }
            policies.iter().position(|p| *p.name == *name).map(RoutePolicy::Policy)
        };
        let default = match f.auth.default_policy.as_deref() {
            None => None,
            Some(name) => match resolve(name) {
                Some(p) => Some(p),
                None => {
                    self.problem(
                        root("auth").key("default_policy"),
                        format!("unknown policy {name:?} (\"none\" or an [[auth.policies]] name)"),
                    );
                    Some(RoutePolicy::Policy(usize::MAX))
                }
            },
        };
        let mut out = Vec::new();
        for (i, r) in f.routes.iter().enumerate() {
            let policy = match (r.auth.as_deref(), default) {
                (Some(name), _) => resolve(name).unwrap_or_else(|| {
                    self.problem(
                        root("routes").index(i).key("auth"),
                        format!("unknown policy {name:?} (\"none\" or an [[auth.policies]] name)"),
                    );
                    RoutePolicy::Policy(usize::MAX)
                }),
                (None, Some(d)) => d,
                (None, None) => {
                    self.problem(
                        root("routes").index(i),
                        format!(
                            "route {:?} has no auth policy: set auth = \"none\" to leave it open, or the name of an [[auth.policies]] entry (or set auth.default_policy)",
                            r.name
                        ),
                    );
                    RoutePolicy::Policy(usize::MAX)
                }
            };
            out.push(policy);
        }
        out
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

mod oidc;
#[cfg(test)]
mod tests;
