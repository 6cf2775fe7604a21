//! File schema → validated [`Config`]. Collects every problem instead of stopping at the first,
//! and locates each one in the source text.

mod auth;
mod buffering;
mod consumers;
mod tls;

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
    sync::Arc,
};

use http::{HeaderName, Method};
use ipnet::IpNet;

use super::{
    AuditSpec, Config, ConfigError, Limits, ListenerSpec, MetricsSpec, Problem, ServerSettings,
    locate::{KeyPath, Locator, line_col},
    schema::{FileConfig, RouteSection, ServiceSection, Workers},
};
use crate::{
    route::{HostPattern, Route, RouteTable, normalize_path},
    upstream::ServiceSpec,
};

mod limits;
mod mcp;
mod xdp;

const DEFAULT_AUDIT_QUEUE: usize = 65_536;
const DEFAULT_DEMO_BIND: &str = "127.0.0.1:8081";

pub fn validate(text: &str, file: &str) -> Result<Config, ConfigError> {
    let parsed: FileConfig = toml::from_str(text).map_err(|e| {
        let reason = e.message().trim().to_owned();
        let span = e.span().unwrap_or(0..0);
        // serde reports an unknown key at its table; point at the key itself.
        let unknown = reason.strip_prefix("unknown field `").and_then(|r| r.split('`').next());
        let (offset, key) = match unknown.and_then(|k| find_key(text, span.clone(), k).map(|o| (o, k))) {
            Some((o, k)) => (o, k.to_owned()),
            None => (span.start, String::new()),
        };
        let (line, column) = line_col(text, offset);
        ConfigError::Invalid(vec![Problem { file: file.to_owned(), line, column, key, reason }])
    })?;
    let mut v = Validator { file, locator: Locator::new(text), problems: Vec::new() };
    let config = v.config(parsed);
    if v.problems.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(v.problems)) }
}

struct Validator<'a> {
    file: &'a str,
    locator: Locator<'a>,
    problems: Vec<Problem>,
}

fn root(key: &str) -> KeyPath {
    KeyPath::default().key(key)
}

impl Validator<'_> {
    fn problem(&mut self, path: KeyPath, reason: impl Into<String>) {
        let (line, column) = self.locator.line_col(&path);
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            column,
            key: path.to_string(),
            reason: reason.into(),
        });
    }

    fn config(&mut self, f: FileConfig) -> Config {
        let server = self.server(&f);
        let listeners = self.listeners(&f);
        let metrics = self.metrics(&f, &listeners);
        let audit = self.audit(&f);
        let listener_tls = self.listener_tls(&f);
        let services = self.services(&f.services);
        let body_defaults = self.body_defaults(&f);
        let routes = self.routes(&f.routes, &services, f.server.underscores_in_headers, &body_defaults);
        self.check_temp_dir(&body_defaults, f.routes.iter().map(|r| r.response_buffering == Some(true)));
        let consumers = Arc::new(self.consumers(&f));
        self.route_client_certs(&f, &listener_tls, &consumers);
        let demo = if f.demo.enabled {
            let bind = f.demo.bind.as_deref().unwrap_or(DEFAULT_DEMO_BIND);
            self.socket_addr(root("demo").key("bind"), bind)
        } else {
            None
        };
        let admin_socket = (!f.admin.socket.is_empty()).then(|| PathBuf::from(&f.admin.socket));
        let mcp_listen = self.mcp_listen(&f.admin, &listeners);
        let xdp = self.xdp(&f.xdp, &listeners);
        self.nic_steering(&xdp, &server);
        let auth = Arc::new(self.auth(&f, &consumers));
        let redis = self.redis(&f);
        let mut layer_names = HashSet::new();
        let rate_limits = self.rate_limits(&f, redis.is_some(), &mut layer_names);
        let token_budgets = self.token_budgets(&f, redis.is_some(), &mut layer_names);
        Config {
            source: self.file.to_owned(),
            server,
            listeners,
            metrics,
            audit,
            admin_socket,
            mcp_listen,
            services,
            routes,
            demo,
            xdp,
            auth,
            listener_tls,
            consumers,
            redis,
            rate_limits,
            token_budgets,
        }
    }

    fn server(&mut self, f: &FileConfig) -> ServerSettings {
        let s = &f.server;
        let workers = match s.workers {
            Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Workers::Count(0) => {
                self.problem(root("server").key("workers"), "must be \"auto\" or at least 1");
                1
            }
            Workers::Count(n) => n as usize,
        };
        let mut trusted_proxies = Vec::new();
        for (i, raw) in s.trusted_proxies.iter().enumerate() {
            match parse_cidr(raw) {
                Ok(net) => trusted_proxies.push(net),
                Err(reason) => self.problem(root("server").key("trusted_proxies").index(i), reason),
            }
        }
        let l = &s.limits;
        let limits_path = || root("server").key("limits");
        if l.max_header_bytes.0 < 1024 || l.max_header_bytes.0 > 1 << 20 {
            self.problem(limits_path().key("max_header_bytes"), "must be between 1KiB and 1MiB");
        }
        if l.max_request_line.0 < 256 || l.max_request_line.0 > l.max_header_bytes.0 {
            self.problem(
                limits_path().key("max_request_line"),
                "must be at least 256 bytes and at most max_header_bytes",
            );
        }
        if l.max_headers == 0 || l.max_headers > 1000 {
            self.problem(limits_path().key("max_headers"), "must be between 1 and 1000");
        }
        if l.header_read_timeout.is_zero() || l.idle_timeout.is_zero() || l.park_after.is_zero() {
            self.problem(limits_path(), "timeouts must be greater than zero");
        }
        if l.h2_control_frames_per_second < 10 {
            self.problem(
                limits_path().key("h2_control_frames_per_second"),
                "must be at least 10 (a client opening a connection sends a few SETTINGS and WINDOW_UPDATE frames)",
            );
        }
        let steering = self.steering(s.steering, workers);
        ServerSettings {
            workers,
            steering,
            pin_workers: s.pin_workers,
            trusted_proxies,
            underscores_in_headers: s.underscores_in_headers,
            drain_timeout: s.drain_timeout,
            log_format: s.log_format,
            log_level: s.log_level.clone(),
            limits: Limits {
                max_request_body: l.max_request_body.0,
                max_header_bytes: l.max_header_bytes.0 as usize,
                max_headers: l.max_headers,
                max_request_line: l.max_request_line.0 as usize,
                header_read_timeout: l.header_read_timeout,
                idle_timeout: l.idle_timeout,
                park_after: l.park_after,
                h2_max_concurrent_streams: l.h2_max_concurrent_streams.max(1),
                h2_control_frames_per_second: l.h2_control_frames_per_second,
            },
        }
    }

    fn listeners(&mut self, f: &FileConfig) -> Vec<ListenerSpec> {
        if f.listeners.is_empty() {
            self.problem(root("listeners"), "at least one [[listeners]] entry is required");
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in f.listeners.iter().enumerate() {
            let path = || root("listeners").index(i);
            if l.name.is_empty() || !names.insert(l.name.as_str()) {
                self.problem(path().key("name"), format!("listener name {:?} is empty or used twice", l.name));
            }
            let Some(addr) = self.socket_addr(path().key("bind"), &l.bind) else { continue };
            if !addrs.insert(addr) {
                self.problem(path().key("bind"), format!("{addr} is bound by another listener"));
            }
            out.push(ListenerSpec { name: l.name.as_str().into(), addr, http2: l.http2, backlog: l.backlog.max(1) });
        }
        out
    }

    fn metrics(&mut self, f: &FileConfig, listeners: &[ListenerSpec]) -> MetricsSpec {
        let m = &f.metrics;
        let addr = self.socket_addr(root("metrics").key("bind"), &m.bind).unwrap_or(([127, 0, 0, 1], 9090).into());
        if listeners.iter().any(|l| l.addr == addr) {
            self.problem(root("metrics").key("bind"), format!("{addr} is also a listener address"));
        }
        if m.consumer_label_limit == 0 {
            self.problem(root("metrics").key("consumer_label_limit"), "must be at least 1");
        }
        MetricsSpec {
            addr,
            proc_root: PathBuf::from(&m.proc_root),
            sys_root: PathBuf::from(&m.sys_root),
            consumer_label_limit: m.consumer_label.then_some(m.consumer_label_limit),
        }
    }

    fn audit(&mut self, f: &FileConfig) -> Option<AuditSpec> {
        let path = f.audit.path.as_ref()?;
        let queue_size = f.audit.queue_size.unwrap_or(DEFAULT_AUDIT_QUEUE);
        if path.is_empty() {
            self.problem(root("audit").key("path"), "must not be empty (leave it out to disable the audit log)");
        }
        if queue_size == 0 {
            self.problem(root("audit").key("queue_size"), "must be at least 1");
        }
        Some(AuditSpec { path: PathBuf::from(path), queue_size: queue_size.max(1) })
    }

    fn services(&mut self, sections: &[ServiceSection]) -> Vec<ServiceSpec> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, s) in sections.iter().enumerate() {
            let path = || root("services").index(i);
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                self.problem(path().key("name"), format!("service name {:?} is empty or used twice", s.name));
            }
            if s.targets.is_empty() {
                self.problem(path().key("targets"), "at least one target is required");
            }
            let mut targets = Vec::new();
            let mut hosts = Vec::new();
            for (j, t) in s.targets.iter().enumerate() {
                match resolve_target(t) {
                    Ok(addr) if targets.contains(&addr) => {
                        self.problem(path().key("targets").index(j), format!("target {t:?} is listed twice"));
                    }
                    Ok(addr) => {
                        targets.push(addr);
                        hosts.push((j, t.as_str()));
                    }
                    Err(reason) => self.problem(path().key("targets").index(j), reason),
                }
            }
            let tls = self.service_tls(s, i, &hosts);
            if s.connect_timeout.is_zero() || s.read_timeout.is_zero() {
                self.problem(path(), "connect_timeout and read_timeout must be greater than zero");
            }
            if s.max_fails == 0 {
                self.problem(path().key("max_fails"), "must be at least 1");
            }
            out.push(ServiceSpec {
                name: s.name.as_str().into(),
                targets,
                lb: s.lb,
                connect_timeout: s.connect_timeout,
                read_timeout: s.read_timeout,
                max_fails: s.max_fails.max(1),
                fail_timeout: s.fail_timeout,
                retries: s.retries,
                max_idle_per_target: s.max_idle_per_target,
                idle_timeout: s.idle_timeout,
                tls,
            });
        }
        out
    }

    fn routes(
        &mut self,
        sections: &[RouteSection],
        services: &[ServiceSpec],
        underscores: bool,
        body_defaults: &buffering::BodyDefaults,
    ) -> RouteTable {
        let mut names = HashSet::new();
        let mut routes = Vec::new();
        for (i, r) in sections.iter().enumerate() {
            let path = || root("routes").index(i);
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                self.problem(path().key("name"), format!("route name {:?} is empty or used twice", r.name));
            }
            let Some(service) = services.iter().position(|s| *s.name == r.service) else {
                self.problem(path().key("service"), format!("unknown service {:?}", r.service));
                continue;
            };
            let route = Route {
                index: i,
                name: Arc::from(r.name.as_str()),
                service,
                hosts: self.route_hosts(r, i),
                paths: self.route_paths(r, i),
                methods: self.route_methods(r, i),
                headers: self.route_headers(r, i, underscores),
                strip_path: r.strip_path,
                preserve_host: r.preserve_host,
                client_cert: r.client_cert,
                body: self.route_body(r, i, body_defaults),
            };
            routes.push(route);
        }
        match RouteTable::build(routes) {
            Ok(table) => table,
            Err(duplicates) => {
                for d in duplicates {
                    let first = &sections[d.first].name;
                    let second = &sections[d.second].name;
                    self.problem(
                        root("routes").index(d.second),
                        format!("route {second:?} has the same match rules as route {first:?} (routes[{}]); one of them can never match", d.first),
                    );
                }
                RouteTable::default()
            }
        }
    }

    fn route_hosts(&mut self, r: &RouteSection, i: usize) -> Vec<HostPattern> {
        let mut out = Vec::new();
        for (j, h) in r.hosts.iter().enumerate() {
            match HostPattern::parse(h) {
                Ok(p) => out.push(p),
                Err(reason) => self.problem(root("routes").index(i).key("hosts").index(j), reason),
            }
        }
        out
    }

    fn route_paths(&mut self, r: &RouteSection, i: usize) -> Vec<String> {
        let mut out = Vec::new();
        for (j, p) in r.paths.iter().enumerate() {
            let at = || root("routes").index(i).key("paths").index(j);
            match normalize_path(p) {
                Ok(None) if !p.contains('?') => out.push(p.clone()),
                Ok(None) => self.problem(at(), format!("path {p:?} must not contain a query")),
                Ok(Some(_)) => self.problem(at(), format!("path {p:?} contains '.' or '..' segments")),
                Err(e) => self.problem(at(), format!("path {p:?}: {e}")),
            }
        }
        out
    }

    fn route_methods(&mut self, r: &RouteSection, i: usize) -> Vec<Method> {
        let mut out = Vec::new();
        for (j, m) in r.methods.iter().enumerate() {
            let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
            match m.parse::<Method>() {
                Ok(method) if valid => out.push(method),
                _ => self.problem(
                    root("routes").index(i).key("methods").index(j),
                    format!("invalid method {m:?} (use upper case, e.g. \"GET\")"),
                ),
            }
        }
        out
    }

    fn route_headers(&mut self, r: &RouteSection, i: usize, underscores: bool) -> Vec<(HeaderName, Vec<String>)> {
        let mut out = Vec::new();
        for (name, values) in &r.headers {
            let at = || root("routes").index(i).key("headers").key(name);
            if !self.client_header(at(), name, underscores) {
                continue;
            }
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) if !values.is_empty() => out.push((h, values.iter().map(|v| v.to_ascii_lowercase()).collect())),
                Ok(_) => self.problem(at(), "at least one accepted value is required"),
                Err(_) => self.problem(at(), format!("invalid header name {name:?}")),
            }
        }
        out
    }

    /// Whether the gateway can read client header `name` at all: with `underscores_in_headers`
    /// off, names with `_` are dropped before routing.
    fn client_header(&mut self, at: KeyPath, name: &str, underscores: bool) -> bool {
        if underscores || !name.contains('_') {
            return true;
        }
        self.problem(
            at,
            format!(
                "header {name:?} is never read: client headers with \"_\" are dropped before routing \
                 ([server] underscores_in_headers = true keeps them)"
            ),
        );
        false
    }

    fn socket_addr(&mut self, path: KeyPath, raw: &str) -> Option<SocketAddr> {
        match raw.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    path,
                    format!("invalid address {raw:?}: expected ip:port, e.g. \"0.0.0.0:80\" or \"[::]:443\""),
                );
                None
            }
        }
    }
}

/// `10.0.0.0/8`, or a bare address meaning just that host.
fn parse_cidr(raw: &str) -> Result<IpNet, String> {
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid CIDR {raw:?}: expected e.g. \"10.0.0.0/8\" or \"192.0.2.1\""))
}

/// `ip:port`, or `host:port` resolved once at load time (DNS changes need a reload).
fn resolve_target(raw: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !raw.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
        return Err(format!("invalid target {raw:?}: expected host:port, e.g. \"127.0.0.1:5000\""));
    }
    raw.to_socket_addrs()
        .map_err(|e| format!("cannot resolve target {raw:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("target {raw:?} resolves to no address"))
}

/// Byte offset of the line that assigns `key` in the table starting at `span` (the table's
/// header line and its body, up to the next header).
fn find_key(text: &str, span: std::ops::Range<usize>, key: &str) -> Option<usize> {
    let region = text.get(span.start..)?;
    let mut offset = span.start;
    for (i, line) in region.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if i > 0 && trimmed.starts_with('[') && offset >= span.end {
            return None;
        }
        let rest = trimmed.strip_prefix(key).or_else(|| trimmed.strip_prefix(&format!("\"{key}\"")));
        if rest.is_some_and(|r| r.trim_start().starts_with('=')) {
            return Some(offset + (line.len() - trimmed.len()));
        }
        offset += line.len();
    }
    None
}
