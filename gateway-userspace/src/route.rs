//! Routing: which route (and so which service and policies) a request belongs to.
//!
//! Priority, most specific first (documented in the README):
//! 1. host: an exact host beats a wildcard host, a longer wildcard beats a shorter one, and any
//!    host constraint beats none;
//! 2. within the winning host class, the longest matching path prefix;
//! 3. then more header conditions; then a method condition over none;
//! 4. then the order in the file (two routes with identical rules are refused at load).

mod path;

use std::{collections::HashMap, sync::Arc};

use http::{HeaderMap, HeaderName, Method};

pub use path::{PathError, normalize_path};

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the file; the final tie-breaker.
    pub index: usize,
    pub name: Arc<str>,
    /// Index into the snapshot's services.
    pub service: usize,
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<String>,
    pub methods: Vec<Method>,
    /// Header name → accepted values, lowercased.
    pub headers: Vec<(HeaderName, Vec<String>)>,
    pub strip_path: bool,
    pub preserve_host: bool,
    /// What the route asks of the client certificate (checked by `tls::ClientCertPhase`).
    pub client_cert: crate::tls::ClientCertRequirement,
    /// Client body timeout and buffering.
    pub body: crate::proxy::BodyPolicy,
}

/// `api.example.com` or `*.example.org` (stored as the `.example.org` suffix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    /// Parses a configured host; errors say what is wrong.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let host = raw.trim().to_ascii_lowercase();
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        if name.is_empty() || name.contains('*') {
            return Err(format!("invalid host {raw:?}: only a leading \"*.\" wildcard is allowed"));
        }
        let ok = name.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !ok {
            return Err(format!("invalid host {raw:?}: expected a DNS name such as api.example.com"));
        }
        Ok(if wild { HostPattern::Suffix(format!(".{name}")) } else { HostPattern::Exact(name.to_owned()) })
    }
}

/// The route chosen for a request, with how much of the path matched (for `strip_path`).
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
    pub prefix_len: usize,
}

impl RouteMatch<'_> {
    /// The path to send upstream: the request path with the matched prefix removed when the
    /// route says `strip_path`. Always starts with `/`.
    pub fn upstream_path<'p>(&self, path: &'p str) -> &'p str {
        if !self.route.strip_path || self.prefix_len == 0 {
            return path;
        }
        let rest = &path[self.prefix_len..];
        if rest.is_empty() {
            "/"
        } else if rest.starts_with('/') {
            rest
        } else {
            // The prefix ended with '/', so keep that slash.
            &path[self.prefix_len - 1..]
        }
    }
}

/// Two routes that can never be told apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateRoutes {
    pub first: usize,
    pub second: usize,
}

/// All routes, indexed by host class for lookup.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<String, Vec<usize>>,
    /// (suffix, routes), longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    any_host: Vec<usize>,
}

impl RouteTable {
    /// Builds the table; identical match rules on two routes are an error naming both.
    pub fn build(routes: Vec<Route>) -> Result<Self, Vec<DuplicateRoutes>> {
        let mut seen: HashMap<MatchKey, usize> = HashMap::new();
        let mut duplicates = Vec::new();
        for route in &routes {
            if let Some(&first) = seen.get(&MatchKey::of(route)) {
                duplicates.push(DuplicateRoutes { first, second: route.index });
            } else {
                seen.insert(MatchKey::of(route), route.index);
            }
        }
        if !duplicates.is_empty() {
            return Err(duplicates);
        }
        let mut table = RouteTable::default();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            if route.hosts.is_empty() {
                table.any_host.push(i);
            }
            for host in &route.hosts {
                match host {
                    HostPattern::Exact(h) => table.exact.entry(h.clone()).or_default().push(i),
                    HostPattern::Suffix(s) => wildcard.entry(s.clone()).or_default().push(i),
                }
            }
        }
        table.wildcard = wildcard.into_iter().collect();
        table.wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        table.routes = routes;
        Ok(table)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// Finds the route for a request. `host` is the request host without port; `path` is
    /// the normalized path without query.
    pub fn find(&self, host: Option<&str>, path: &str, method: &Method, headers: &HeaderMap) -> Option<RouteMatch<'_>> {
        let req = Request { path, method, headers };
        if let Some(host) = host {
            if let Some(found) = self.exact.get(host).and_then(|c| self.best(c, &req)) {
                return Some(found);
            }
            for (suffix, candidates) in &self.wildcard {
                if host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && let Some(found) = self.best(candidates, &req)
                {
                    return Some(found);
                }
            }
        }
        self.best(&self.any_host, &req)
    }

    fn best(&self, candidates: &[usize], req: &Request<'_>) -> Option<RouteMatch<'_>> {
        let mut best: Option<(Rank, RouteMatch<'_>)> = None;
        for &i in candidates {
            let route = &self.routes[i];
            let Some(prefix_len) = route.matches(req) else { continue };
            let rank = Rank {
                prefix_len,
                headers: route.headers.len(),
                has_methods: !route.methods.is_empty(),
                earlier: usize::MAX - route.index,
            };
            if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                best = Some((rank, RouteMatch { route, prefix_len }));
            }
        }
        best.map(|(_, m)| m)
    }
}

struct Request<'a> {
    path: &'a str,
    method: &'a Method,
    headers: &'a HeaderMap,
}

/// Ordering of candidate matches inside one host class; field order is priority order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    prefix_len: usize,
    headers: usize,
    has_methods: bool,
    earlier: usize,
}

impl Route {
    /// Returns the matched prefix length (0 when the route has no path condition).
    fn matches(&self, req: &Request<'_>) -> Option<usize> {
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return None;
        }
        for (name, accepted) in &self.headers {
            let ok = req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| accepted.iter().any(|a| a.eq_ignore_ascii_case(v.trim()))));
            if !ok {
                return None;
            }
        }
        if self.paths.is_empty() {
            return Some(0);
        }
        self.paths.iter().filter(|p| path::prefix_matches(p, req.path)).map(|p| p.len()).max()
    }
}

/// The match rules of a route in canonical form, to find duplicates.
#[derive(PartialEq, Eq, Hash)]
struct MatchKey {
    hosts: Vec<HostPattern>,
    paths: Vec<String>,
    methods: Vec<String>,
    headers: Vec<(String, Vec<String>)>,
}

impl MatchKey {
    fn of(route: &Route) -> Self {
        let mut hosts = route.hosts.clone();
        hosts.sort();
        hosts.dedup();
        let mut paths = route.paths.clone();
        paths.sort();
        paths.dedup();
        let mut methods: Vec<String> = route.methods.iter().map(|m| m.as_str().to_owned()).collect();
        methods.sort();
        methods.dedup();
        let mut headers: Vec<(String, Vec<String>)> = route
            .headers
            .iter()
            .map(|(n, v)| {
                let mut v = v.clone();
                v.sort();
                v.dedup();
                (n.as_str().to_owned(), v)
            })
            .collect();
        headers.sort();
        MatchKey { hosts, paths, methods, headers }
    }
}

#[cfg(test)]
mod tests;
