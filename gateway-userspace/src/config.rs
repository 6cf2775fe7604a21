//! Configuration: the TOML file schema (`schema`), its validation into the immutable
//! [`Config`] the rest of the daemon reads (`validate`), and errors that name the file, line,
//! column, key and reason (`locate`).

mod locate;
pub mod schema;
mod validate;

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ipnet::IpNet;
use thiserror::Error;

pub use crate::ebpf::{FeedbackReason, FeedbackSpec, RateSpec, SteeringPolicy, XdpSpec};
pub use schema::{LbAlgorithm, LogFormat};

use crate::{
    budget::BudgetSpec, consumer::Consumers, kv::KvSpec, ratelimit::LayerSpec, route::RouteTable, tls::ServerTlsSpec,
    upstream::ServiceSpec,
};

/// The configuration `gatewayd` runs on when started without `--config`: HTTP on
/// 127.0.0.1:8080, metrics on 127.0.0.1:9090, and `/demo` routed to the built-in demo upstream.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../../packaging/gatewayd.defaults.toml");

/// A validated configuration: what the request path and the daemon need, nothing file-shaped.
#[derive(Debug)]
pub struct Config {
    /// Where it came from (a path, or `<embedded defaults>`), for logs and errors.
    pub source: String,
    pub server: ServerSettings,
    pub listeners: Vec<ListenerSpec>,
    pub metrics: MetricsSpec,
    pub audit: Option<AuditSpec>,
    pub admin_socket: Option<PathBuf>,
    /// `admin.mcp_listen`: the MCP streamable HTTP address of `gatewayd mcp --http`.
    pub mcp_listen: Option<SocketAddr>,
    pub services: Vec<ServiceSpec>,
    pub routes: RouteTable,
    pub demo: Option<SocketAddr>,
    pub xdp: XdpSpec,
    /// TLS of the listeners that terminate it, by listener name (material loaded and checked).
    pub listener_tls: BTreeMap<Arc<str>, Arc<ServerTlsSpec>>,
    pub consumers: Arc<Consumers>,
    /// Identity: issuers, policies (per route), consumers, identity headers.
    pub auth: Arc<crate::auth::AuthSpec>,
    /// `[redis]`, shared by the fleet.
    pub redis: Option<KvSpec>,
    /// `[[rate_limits]]`, in evaluation order.
    pub rate_limits: Vec<LayerSpec>,
    /// `[[token_budgets]]`.
    pub token_budgets: Vec<BudgetSpec>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub workers: usize,
    pub pin_workers: bool,
    pub trusted_proxies: Vec<IpNet>,
    /// Forward client headers with `_` in their name (see `ClientHeaders`).
    pub underscores_in_headers: bool,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    pub limits: Limits,
    pub steering: SteeringPolicy,
}

/// What a client may send; each limit has its own refusal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_request_body: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_request_line: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub park_after: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_control_frames_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenerSpec {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub http2: bool,
    pub backlog: u32,
}

#[derive(Debug, Clone)]
pub struct MetricsSpec {
    pub addr: SocketAddr,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// With `consumer_label`: how many distinct consumers get their own `consumer_id` value.
    pub consumer_label_limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSpec {
    pub path: PathBuf,
    pub queue_size: usize,
}

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

/// One thing wrong in a config file, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `routes[1].paths[0]`; empty for syntax errors.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.reason)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        Self::load_str(&text, &file)
    }

    /// The embedded defaults.
    pub fn embedded() -> Result<Config, ConfigError> {
        Self::load_str(EMBEDDED_DEFAULTS, "<embedded defaults>")
    }

    /// Validates config text; `file` names it in errors.
    pub fn load_str(text: &str, file: &str) -> Result<Config, ConfigError> {
        validate::validate(text, file)
    }
}

#[cfg(test)]
mod tests;
