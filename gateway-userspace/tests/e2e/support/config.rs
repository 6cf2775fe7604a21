//! One small builder for the TOML text of test configs: the listener, metrics and admin lines
//! every test repeats, plus helpers for the sections tests vary (listeners with TLS, services,
//! routes, auth, consumers, limits). It writes TOML, so a test still reads as the config it runs, and anything
//! without a helper goes in with [`ConfigBuilder::toml`].

use std::{fmt::Write as _, net::SocketAddr};

use super::Ports;

/// The TOML of a test config: one listener (`public` on `ports.listen`), metrics, no admin
/// socket, a 10 s drain, open routes (`[auth] default_policy = "none"`) unless an `[auth]` table
/// is given.
#[must_use]
pub struct ConfigBuilder<'p> {
    ports: &'p Ports,
    workers: usize,
    drain_timeout: &'static str,
    server: String,
    listener_name: String,
    listener_bind: SocketAddr,
    metrics: String,
    /// Listeners after the first one, each with its own tables.
    listeners: String,
    admin_socket: String,
    admin: String,
    listener_tls: Option<String>,
    auth: Option<String>,
    sections: String,
}

impl<'p> ConfigBuilder<'p> {
    pub fn new(ports: &'p Ports) -> Self {
        ConfigBuilder {
            ports,
            workers: 1,
            drain_timeout: "10s",
            server: String::new(),
            listener_name: "public".into(),
            listener_bind: ports.listen,
            metrics: String::new(),
            listeners: String::new(),
            admin_socket: String::new(),
            admin: String::new(),
            listener_tls: None,
            auth: None,
            sections: String::new(),
        }
    }

    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// `server.drain_timeout` (10 s unless given).
    pub fn drain_timeout(mut self, timeout: &'static str) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The first listener's name and address (`public` on `ports.listen` unless given).
    pub fn listener(mut self, name: &str, bind: SocketAddr) -> Self {
        self.listener_name = name.into();
        self.listener_bind = bind;
        self
    }

    /// One more `[[listeners]]` entry, with `[listeners.tls]` lines when it serves TLS.
    pub fn add_listener(mut self, name: &str, bind: impl std::fmt::Display, tls: Option<&str>) -> Self {
        let _ = write!(self.listeners, "\n[[listeners]]\nname = \"{name}\"\nbind = \"{bind}\"\n");
        if let Some(tls) = tls {
            let _ = write!(self.listeners, "\n[listeners.tls]\n{}\n", tls.trim());
        }
        self
    }

    /// Lines added to the `[metrics]` table (`consumer_label = true`, …).
    pub fn metrics(mut self, lines: &str) -> Self {
        self.metrics.push_str(lines.trim());
        self.metrics.push('\n');
        self
    }

    /// Lines added to the `[server]` table (`trusted_proxies = […]`, …).
    pub fn server(mut self, lines: &str) -> Self {
        self.server.push_str(lines.trim());
        self.server.push('\n');
        self
    }

    /// The listener serves TLS: `[listeners.tls]` with these lines (certificates, client_auth, …).
    pub fn listener_tls(mut self, lines: &str) -> Self {
        self.listener_tls = Some(format!("\n[listeners.tls]\n{}\n", lines.trim()));
        self
    }

    /// The admin socket at `path` (none by default).
    pub fn admin_socket(mut self, path: &std::path::Path) -> Self {
        self.admin_socket = path.display().to_string();
        self
    }

    /// Lines added to the `[admin]` table (`mcp_listen = …`).
    pub fn admin(mut self, lines: &str) -> Self {
        self.admin.push_str(lines.trim());
        self.admin.push('\n');
        self
    }

    /// `[server.limits]` with these lines.
    pub fn limits(self, lines: &str) -> Self {
        self.table("[server.limits]", lines)
    }

    /// `[[services]]` named `name` with these targets.
    pub fn service(mut self, name: &str, targets: &[SocketAddr]) -> Self {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let _ = write!(self.sections, "\n[[services]]\nname = \"{name}\"\ntargets = [{}]\n", targets.join(", "));
        self
    }

    /// `[[services]]` named `name` with these targets and further lines (timeouts, retries, …).
    pub fn service_with(self, name: &str, targets: &[SocketAddr], lines: &str) -> Self {
        self.service(name, targets).toml(lines.trim())
    }

    /// Service `s` with this one target and the open catch-all route `r` to it.
    pub fn catch_all(self, target: SocketAddr) -> Self {
        self.service("s", &[target]).route("r", "s", "")
    }

    /// `[[routes]]` named `name` to `service`, with further lines (`paths = […]`, `auth = …`).
    pub fn route(self, name: &str, service: &str, lines: &str) -> Self {
        self.table("[[routes]]", &format!("name = \"{name}\"\nservice = \"{service}\"\n{lines}"))
    }

    /// The `[auth]` table with these lines (replacing the open default).
    pub fn auth(mut self, lines: &str) -> Self {
        self.auth = Some(format!("[auth]\n{}\n", lines.trim()));
        self
    }

    /// A `[[consumers]]` entry with these lines.
    pub fn consumer(self, lines: &str) -> Self {
        self.table("[[consumers]]", lines)
    }

    /// A `[[rate_limits]]` layer with these lines.
    pub fn rate_limit(self, lines: &str) -> Self {
        self.table("[[rate_limits]]", lines)
    }

    /// Any table: its header line (`[redis]`, `[[auth.issuers]]`) and its lines.
    pub fn table(mut self, header: &str, lines: &str) -> Self {
        let _ = write!(self.sections, "\n{header}\n{}\n", lines.trim());
        self
    }

    /// Raw TOML appended as is (for what has no helper).
    pub fn toml(mut self, text: &str) -> Self {
        self.sections.push('\n');
        self.sections.push_str(text);
        self.sections.push('\n');
        self
    }

    pub fn build(self) -> String {
        let has_auth = self.auth.is_some() || self.sections.contains("[auth]");
        let auth = self
            .auth
            .unwrap_or_else(|| if has_auth { String::new() } else { "[auth]\ndefault_policy = \"none\"\n".into() });
        format!(
            r#"
[server]
workers = {workers}
{server}drain_timeout = "{drain_timeout}"

[[listeners]]
name = "{listener_name}"
bind = "{listen}"
{listener_tls}{listeners}
[metrics]
bind = "{metrics}"
proc_root = "/proc"
{metrics_lines}
[admin]
socket = "{admin_socket}"
{admin}
{auth}
{sections}
"#,
            workers = self.workers,
            drain_timeout = self.drain_timeout,
            listener_name = self.listener_name,
            listeners = self.listeners,
            metrics_lines = self.metrics,
            server = self.server,
            admin_socket = self.admin_socket,
            admin = self.admin,
            listen = self.listener_bind,
            listener_tls = self.listener_tls.unwrap_or_default(),
            metrics = self.ports.metrics,
            sections = self.sections,
        )
    }
}
