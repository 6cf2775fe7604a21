//! One small builder for the TOML text of test configs: the listener, metrics and admin lines
//! every test repeats, plus helpers for the sections tests vary (services, routes, auth,
//! consumers, limits). It writes TOML, so a test still reads as the config it runs, and anything
//! without a helper goes in with [`ConfigBuilder::toml`].

use std::{fmt::Write as _, net::SocketAddr};

use super::Ports;

/// The TOML of a test config: one listener (`public`), metrics, no admin socket, open routes
/// (`[auth] default_policy = "none"`) unless an `[auth]` table is given.
#[must_use]
pub struct ConfigBuilder<'p> {
    ports: &'p Ports,
    workers: usize,
    server: String,
    admin_socket: String,
    listener_tls: Option<String>,
    auth: Option<String>,
    sections: String,
}

impl<'p> ConfigBuilder<'p> {
    pub fn new(ports: &'p Ports) -> Self {
        ConfigBuilder {
            ports,
            workers: 1,
            server: String::new(),
            admin_socket: String::new(),
            listener_tls: None,
            auth: None,
            sections: String::new(),
        }
    }

    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
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
{server}drain_timeout = "10s"

[[listeners]]
name = "public"
bind = "{listen}"
{listener_tls}
[metrics]
bind = "{metrics}"
proc_root = "/proc"

[admin]
socket = "{admin_socket}"

{auth}
{sections}
"#,
            workers = self.workers,
            server = self.server,
            admin_socket = self.admin_socket,
            listen = self.ports.listen,
            listener_tls = self.listener_tls.unwrap_or_default(),
            metrics = self.ports.metrics,
            sections = self.sections,
        )
    }
}
