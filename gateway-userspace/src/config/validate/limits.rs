//! Validation of `[redis]`, `[[rate_limits]]` and `[[token_budgets]]`.

use std::{collections::HashSet, str::FromStr, time::Duration};

use http::HeaderName;

use super::{Validator, root};
use crate::{
    budget::{BudgetSpec, Zone},
    config::{
        locate::KeyPath,
        schema::{
            BackendName, FailModeName, FileConfig, KeyList, RateLimitSection, RedisSection, TokenBudgetSection,
            WindowName,
        },
    },
    kv::{FailMode, KvServers, KvSpec, KvTls},
    limits::{Backend, KeySource},
    ratelimit::{LayerSpec, Window, window::MAX_LIMIT},
};

enum PemKind {
    Certs,
    Key,
}

impl Validator<'_> {
    pub(super) fn redis(&mut self, f: &FileConfig) -> Option<KvSpec> {
        let r: &RedisSection = f.redis.as_ref()?;
        let at = || root("redis");
        let servers = match (&r.url, r.cluster.is_empty()) {
            (Some(url), true) => {
                self.redis_url(at().key("url"), url);
                KvServers::Single(url.clone())
            }
            (None, false) => {
                for (i, n) in r.cluster.iter().enumerate() {
                    self.redis_url(at().key("cluster").index(i), n);
                }
                KvServers::Cluster(r.cluster.clone())
            }
            (Some(_), false) => {
                self.problem(at().key("cluster"), "set either url (one node) or cluster (seed nodes), not both");
                KvServers::Single(String::new())
            }
            (None, true) => {
                self.problem(at(), "url (one node) or cluster (seed nodes of a Redis Cluster) is required");
                KvServers::Single(String::new())
            }
        };
        for (key, d) in [("timeout", r.timeout), ("connect_timeout", r.connect_timeout)] {
            if d.is_zero() || d > Duration::from_secs(30) {
                self.problem(at().key(key), "must be greater than zero and at most 30s");
            }
        }
        if r.reconnect_min.is_zero() || r.reconnect_min > r.reconnect_max {
            self.problem(at().key("reconnect_min"), "must be greater than zero and at most reconnect_max");
        }
        if r.key_prefix.is_empty() || !r.key_prefix.bytes().all(|b| b.is_ascii_graphic() && !b"{}".contains(&b)) {
            self.problem(at().key("key_prefix"), "must be non-empty printable ASCII without braces");
        }
        let tls = self.redis_tls(r, &servers);
        Some(KvSpec {
            servers,
            tls,
            timeout: r.timeout,
            connect_timeout: r.connect_timeout,
            reconnect_min: r.reconnect_min,
            reconnect_max: r.reconnect_max.max(r.reconnect_min),
            key_prefix: r.key_prefix.as_str().into(),
        })
    }

    fn redis_url(&mut self, at: KeyPath, url: &str) {
        if let Err(e) = redis::IntoConnectionInfo::into_connection_info(url) {
            self.problem(at, format!("invalid Redis URL: {e} (expected redis://host:port[/db])"));
        } else if !["redis://", "rediss://", "redis+unix://", "unix://"].iter().any(|s| url.starts_with(s)) {
            self.problem(at, "expected redis://host:port[/db], rediss://host:port[/db] (TLS) or redis+unix:///path");
        }
    }

    /// `ca_file`, `client_cert` and `client_key`: only with `rediss://`, read and checked now.
    fn redis_tls(&mut self, r: &RedisSection, servers: &KvServers) -> Option<KvTls> {
        let at = || root("redis");
        let urls: Vec<&String> = match servers {
            KvServers::Single(url) => vec![url],
            KvServers::Cluster(nodes) => nodes.iter().collect(),
        };
        let tls_urls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
        if tls_urls != 0 && tls_urls != urls.len() {
            self.problem(at().key("cluster"), "mixes rediss:// and redis:// nodes: use one scheme for all");
        }
        let files = [("ca_file", &r.ca_file), ("client_cert", &r.client_cert), ("client_key", &r.client_key)];
        if tls_urls == 0 {
            for (key, file) in files {
                if file.is_some() {
                    self.problem(at().key(key), "only used with rediss:// (TLS) URLs");
                }
            }
            return None;
        }
        if r.client_cert.is_some() != r.client_key.is_some() {
            let key = if r.client_cert.is_some() { "client_key" } else { "client_cert" };
            self.problem(at().key(key), "client_cert and client_key go together");
        }
        let ca = r.ca_file.as_ref().and_then(|f| self.pem_file(at().key("ca_file"), f, PemKind::Certs));
        let cert = r.client_cert.as_ref().and_then(|f| self.pem_file(at().key("client_cert"), f, PemKind::Certs));
        let key = r.client_key.as_ref().and_then(|f| self.pem_file(at().key("client_key"), f, PemKind::Key));
        Some(KvTls { ca, client: cert.zip(key) })
    }

    /// The file's bytes once they parse as `kind`.
    fn pem_file(&mut self, at: KeyPath, raw: &str, kind: PemKind) -> Option<Vec<u8>> {
        let path = self.file_path(raw);
        let checked = match kind {
            PemKind::Certs => crate::tls::load_certs(&path).map(drop),
            PemKind::Key => crate::tls::load_key(&path).map(drop),
        };
        match checked.and_then(|()| std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))) {
            Ok(bytes) => Some(bytes),
            Err(reason) => {
                self.problem(at, reason);
                None
            }
        }
    }

    pub(super) fn rate_limits(&mut self, f: &FileConfig, redis: bool, names: &mut HashSet<String>) -> Vec<LayerSpec> {
        let mut out = Vec::new();
        for (i, s) in f.rate_limits.iter().enumerate() {
            let at = || root("rate_limits").index(i);
            let s: &RateLimitSection = s;
            self.layer_name(at().key("name"), &s.name, names);
            let routes = self.route_refs(at().key("routes"), &s.routes, f);
            let key = self.key_sources(at().key("key"), &s.key, f.server.underscores_in_headers);
            self.limit_value(at().key("limit"), s.limit);
            let backend = self.backend(at, s.backend, s.on_redis_error, redis);
            if !(1..=128).contains(&s.ipv6_prefix) {
                self.problem(at().key("ipv6_prefix"), "must be between 1 and 128");
            }
            for (k, v) in &s.overrides {
                self.limit_value(at().key("overrides").key(k), *v);
            }
            out.push(LayerSpec {
                name: s.name.as_str().into(),
                routes,
                key,
                ipv6_prefix: s.ipv6_prefix.clamp(1, 128),
                limit: s.limit,
                window: window(s.window),
                backend,
                overrides: s.overrides.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            });
        }
        out
    }

    pub(super) fn token_budgets(
        &mut self,
        f: &FileConfig,
        redis: bool,
        names: &mut HashSet<String>,
    ) -> Vec<BudgetSpec> {
        let mut out = Vec::new();
        for (i, s) in f.token_budgets.iter().enumerate() {
            let at = || root("token_budgets").index(i);
            let s: &TokenBudgetSection = s;
            self.layer_name(at().key("name"), &s.name, names);
            let routes = self.route_refs(at().key("routes"), &s.routes, f);
            let key = match &s.key {
                Some(k) => self.key_sources(at().key("key"), k, f.server.underscores_in_headers),
                None => vec![KeySource::Workspace],
            };
            if s.daily_tokens == 0 {
                self.problem(at().key("daily_tokens"), "must be at least 1");
            }
            let zone = Zone::parse(&s.timezone).unwrap_or_else(|reason| {
                self.problem(at().key("timezone"), reason);
                Zone::utc()
            });
            let backend = self.backend(at, s.backend, s.on_redis_error, redis);
            let usage_header = s.usage_header.as_ref().and_then(|h| match HeaderName::from_str(h) {
                Ok(name) => Some(name),
                Err(_) => {
                    self.problem(at().key("usage_header"), format!("invalid header name {h:?}"));
                    None
                }
            });
            for (k, v) in &s.overrides {
                if *v == 0 {
                    self.problem(at().key("overrides").key(k), "must be at least 1");
                }
            }
            out.push(BudgetSpec {
                name: s.name.as_str().into(),
                routes,
                key,
                daily_tokens: s.daily_tokens,
                zone,
                backend,
                usage_header,
                overrides: s.overrides.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                workspace_label: s.workspace_label,
            });
        }
        out
    }

    fn layer_name(&mut self, at: KeyPath, name: &str, names: &mut HashSet<String>) {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid {
            self.problem(at, format!("name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"));
        } else if !names.insert(name.to_owned()) {
            self.problem(at, format!("name {name:?} is used by another rate limit or token budget"));
        }
    }

    /// Route names → route indices (`None`: every route).
    fn route_refs(&mut self, at: KeyPath, refs: &[String], f: &FileConfig) -> Option<Vec<usize>> {
        if refs.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for (j, name) in refs.iter().enumerate() {
            match f.routes.iter().position(|r| &r.name == name) {
                Some(i) => out.push(i),
                None => self.problem(at.clone().index(j), format!("unknown route {name:?}")),
            }
        }
        Some(out)
    }

    fn key_sources(&mut self, at: KeyPath, list: &KeyList, underscores: bool) -> Vec<KeySource> {
        let names = list.names();
        if names.is_empty() {
            self.problem(at.clone(), "at least one key source is required");
        }
        let mut out: Vec<KeySource> = Vec::new();
        for (j, n) in names.iter().enumerate() {
            let here = || if matches!(list, KeyList::Many(_)) { at.clone().index(j) } else { at.clone() };
            if let Some(name) = n.strip_prefix("header:")
                && !self.client_header(here(), name, underscores)
            {
                continue;
            }
            match n.parse::<KeySource>() {
                Ok(k) if out.contains(&k) => self.problem(here(), format!("key source {n:?} is listed twice")),
                Ok(k) => out.push(k),
                Err(reason) => self.problem(here(), reason),
            }
        }
        out
    }

    fn limit_value(&mut self, at: KeyPath, limit: u64) {
        if limit == 0 || limit > MAX_LIMIT {
            self.problem(at, format!("must be between 1 and {MAX_LIMIT}"));
        }
    }

    fn backend(
        &mut self,
        at: impl Fn() -> KeyPath,
        backend: BackendName,
        on_error: Option<FailModeName>,
        redis: bool,
    ) -> Backend {
        match (backend, on_error) {
            (BackendName::Memory, None) => Backend::Memory,
            (BackendName::Memory, Some(_)) => {
                self.problem(at().key("on_redis_error"), "only applies to backend = \"redis\"");
                Backend::Memory
            }
            (BackendName::Redis, mode) => {
                if !redis {
                    self.problem(at().key("backend"), "backend = \"redis\" needs a [redis] section");
                }
                let mode = mode.unwrap_or_else(|| {
                    self.problem(
                        at(),
                        "backend = \"redis\" needs on_redis_error: \"fail_open\" (let requests through while Redis cannot answer) or \"fail_closed\" (answer 503)",
                    );
                    FailModeName::FailClosed
                });
                Backend::Redis(match mode {
                    FailModeName::FailOpen => FailMode::Open,
                    FailModeName::FailClosed => FailMode::Closed,
                })
            }
        }
    }
}

fn window(w: WindowName) -> Window {
    match w {
        WindowName::Second => Window::Second,
        WindowName::Minute => Window::Minute,
        WindowName::Hour => Window::Hour,
        WindowName::Day => Window::Day,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Problem};

    const BASE: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:18080"

[metrics]
bind = "127.0.0.1:19090"

[[services]]
name = "s"
targets = ["127.0.0.1:5000"]

[[routes]]
name = "chat"
service = "s"
paths = ["/v1"]
auth = "none"
"#;

    fn load(extra: &str) -> Result<Config, Vec<Problem>> {
        match Config::load_str(&format!("{BASE}{extra}"), "t.toml") {
            Ok(c) => Ok(c),
            Err(ConfigError::Invalid(p)) => Err(p),
            Err(e) => panic!("{e}"),
        }
    }

    fn keys(extra: &str) -> Vec<String> {
        load(extra).expect_err("invalid").into_iter().map(|p| format!("{}: {}", p.key, p.reason)).collect()
    }

    #[test]
    fn the_seed_layers_load() {
        let c = load(
            r#"
[redis]
url = "redis://:secret@127.0.0.1:6379/0"

[[rate_limits]]
name = "per-ip"
key = "ip"
limit = 100
window = "minute"

[[rate_limits]]
name = "per-user"
routes = ["chat"]
key = ["user", "api_key"]
limit = 1000
window = "hour"
backend = "redis"
on_redis_error = "fail_open"
overrides = { "partner-a" = 5000 }

[[token_budgets]]
name = "workspace-daily"
daily_tokens = 1000000
timezone = "+02:00"
usage_header = "x-usage-tokens"
"#,
        )
        .unwrap();
        assert_eq!(c.rate_limits.len(), 2);
        assert_eq!(c.rate_limits[1].routes, Some(vec![0]));
        assert_eq!(c.rate_limits[1].backend, crate::limits::Backend::Redis(crate::kv::FailMode::Open));
        assert_eq!(c.rate_limits[1].overrides["partner-a"], 5000);
        assert_eq!(c.token_budgets[0].key, vec![crate::limits::KeySource::Workspace], "default key");
        let redis = c.redis.unwrap();
        assert_eq!(redis.timeout, std::time::Duration::from_millis(50));
        assert_eq!(&*redis.key_prefix, "gatewayd");
    }

    #[test]
    fn redis_needs_an_explicit_fail_mode_and_a_redis_section() {
        let k =
            keys("[[rate_limits]]\nname = \"a\"\nkey = \"ip\"\nlimit = 1\nwindow = \"second\"\nbackend = \"redis\"\n");
        assert!(k.iter().any(|k| k.starts_with("rate_limits[0].backend: ") && k.contains("[redis]")), "{k:?}");
        assert!(k.iter().any(|k| k.starts_with("rate_limits[0]: ") && k.contains("on_redis_error")), "{k:?}");
        let k = keys(
            "[[rate_limits]]\nname = \"a\"\nkey = \"ip\"\nlimit = 1\nwindow = \"second\"\non_redis_error = \"fail_open\"\n",
        );
        assert!(k[0].starts_with("rate_limits[0].on_redis_error: only applies"), "{k:?}");
    }

    #[test]
    fn bad_values_are_located() {
        let k = keys(
            r#"
[redis]
url = "rediss://10.0.0.1:6380"
cluster = ["redis://a:1"]

[[rate_limits]]
name = "bad name"
routes = ["nope"]
key = ["ip", "cookie", "ip"]
limit = 0
window = "minute"
ipv6_prefix = 0

[[token_budgets]]
name = "bad name"
daily_tokens = 0
timezone = "Mars/Olympus"
usage_header = "bad header"
"#,
        );
        for expected in [
            "redis.cluster: set either url",
            "rate_limits[0].name: name \"bad name\" must be",
            "rate_limits[0].routes[0]: unknown route \"nope\"",
            "rate_limits[0].key[1]: unknown key \"cookie\"",
            "rate_limits[0].key[2]: key source \"ip\" is listed twice",
            "rate_limits[0].limit: must be between 1 and",
            "rate_limits[0].ipv6_prefix: must be between 1 and 128",
            "token_budgets[0].daily_tokens: must be at least 1",
            "token_budgets[0].timezone: unknown time zone",
            "token_budgets[0].usage_header: invalid header name",
        ] {
            assert!(k.iter().any(|k| k.starts_with(expected)), "missing {expected:?} in {k:#?}");
        }
        assert!(load("[redis]\nurl = \"rediss://h:1\"\n").is_ok(), "TLS with the system's roots");
        let k = keys("[redis]\nurl = \"redis://h:1\"\nca_file = \"ca.pem\"\n");
        assert!(k[0].starts_with("redis.ca_file: only used with rediss://"), "{k:?}");
        let k = keys("[redis]\nurl = \"rediss://h:1\"\nca_file = \"/nonexistent/ca.pem\"\nclient_cert = \"c.pem\"\n");
        assert!(k.iter().any(|k| k.starts_with("redis.client_key: client_cert and client_key go together")), "{k:?}");
        assert!(k.iter().any(|k| k.starts_with("redis.ca_file: ") && k.contains("/nonexistent/ca.pem")), "{k:?}");
        let k = keys("[redis]\ncluster = [\"rediss://a:1\", \"redis://b:2\"]\n");
        assert!(k[0].starts_with("redis.cluster: mixes rediss:// and redis://"), "{k:?}");
    }

    #[test]
    fn names_are_unique_across_limits_and_budgets() {
        let k = keys(
            "[[rate_limits]]\nname = \"x\"\nkey = \"ip\"\nlimit = 1\nwindow = \"day\"\n[[token_budgets]]\nname = \"x\"\ndaily_tokens = 5\n",
        );
        assert!(k[0].starts_with("token_budgets[0].name: name \"x\" is used by another"), "{k:?}");
    }

    #[test]
    fn unknown_windows_are_refused_with_the_choices() {
        let p = load("[[rate_limits]]\nname = \"x\"\nkey = \"ip\"\nlimit = 1\nwindow = \"fortnight\"\n").unwrap_err();
        assert!(p[0].reason.contains("second") && p[0].reason.contains("day"), "{}", p[0].reason);
    }
}
