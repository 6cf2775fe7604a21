//! `[redis]`, `[[rate_limits]]` and `[[token_budgets]]`: shape and defaults (meaning is checked
//! in `validate/limits.rs`). Every key is documented next to its field, with its default.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

/// `[redis]`: the Redis shared by a fleet of gateways (rate-limit counters, token budgets).
/// Exactly one of `url` and `cluster` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// A single node: `redis://[user:password@]host:port[/db]` or `redis+unix:///path`. Default: none.
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster: `["redis://10.0.0.1:6379", …]`. Default: none.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Time a request may wait for one Redis command; past it the policy's `on_redis_error`
    /// applies. Default: 50ms.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Time to establish a connection. Default: 1s.
    #[serde(default = "default_redis_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts; doubles up to `reconnect_max`. Default: 100ms.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts. Default: 5s.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Prefix of every key gatewayd writes (`<prefix>:rl:…`), to share a Redis with other
    /// fleets. Default: `"gatewayd"`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// With `rediss://`: PEM CA bundle the Redis server's certificate must chain to. Default: the
    /// system's roots.
    pub ca_file: Option<String>,
    /// With `rediss://`: PEM certificate chain gatewayd presents (Redis `tls-auth-clients yes`).
    /// Default: none.
    pub client_cert: Option<String>,
    /// The PEM private key of `client_cert`. Default: none.
    pub client_key: Option<String>,
}

/// One source name, or a list tried in order (`"ip"`, `["user", "ip"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyList {
    One(String),
    Many(Vec<String>),
}

impl KeyList {
    pub fn names(&self) -> &[String] {
        match self {
            KeyList::One(s) => std::slice::from_ref(s),
            KeyList::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowName {
    Second,
    Minute,
    Hour,
    Day,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendName {
    #[default]
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailModeName {
    FailOpen,
    FailClosed,
}

/// `[[rate_limits]]`: one layer. A route's layers run in file order; the first refusal wins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Unique among rate limits and token budgets; the `layer` metric label and the policy
    /// name in `RateLimit` headers (letters, digits, `-`, `_`, `.`). Required.
    pub name: String,
    /// Route names it applies to. Default: every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// What is counted: `"ip"`, `"consumer"`, `"user"`, `"workspace"`, `"api_key"` or
    /// `"header:<name>"`, or a list tried in order (the first present wins; a request with none
    /// of them is not limited by this layer). Required.
    pub key: KeyList,
    /// Requests per window. Required.
    pub limit: u64,
    /// `"second"`, `"minute"`, `"hour"` or `"day"`. Required.
    pub window: WindowName,
    /// `"memory"` (this node) or `"redis"` (shared through `[redis]`). Default: `"memory"`.
    #[serde(default)]
    pub backend: BackendName,
    /// With `backend = "redis"`: `"fail_open"` (let requests through while Redis cannot
    /// answer) or `"fail_closed"` (answer 503). Required with Redis: there is no silent default.
    pub on_redis_error: Option<FailModeName>,
    /// IPv6 clients are counted by this prefix length (a client usually holds a /64).
    /// Default: 64.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Limits for particular key values, e.g. `{ "partner-a" = 1000 }`. Default: none.
    #[serde(default)]
    pub overrides: BTreeMap<String, u64>,
}

/// `[[token_budgets]]`: a daily token budget, checked before a request and charged with the
/// usage its response reports.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBudgetSection {
    /// Unique among rate limits and token budgets; the `layer` metric label. Required.
    pub name: String,
    /// Route names it applies to. Default: every route.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Whose budget, as for rate limits. Default: `"workspace"` (`X-Workspace-Id`, or the
    /// identity's workspace).
    pub key: Option<KeyList>,
    /// Tokens per day. Required.
    pub daily_tokens: u64,
    /// Where the day starts and ends: `"UTC"`, an IANA name (`"Europe/Amsterdam"`) or an offset
    /// (`"+05:30"`). Default: `"UTC"`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// `"memory"` or `"redis"`. Default: `"memory"`.
    #[serde(default)]
    pub backend: BackendName,
    /// As for rate limits; required with `backend = "redis"`.
    pub on_redis_error: Option<FailModeName>,
    /// An upstream response header carrying the total tokens of the exchange; preferred over the
    /// body's `usage` when present. Default: none.
    pub usage_header: Option<String>,
    /// Budgets for particular key values, e.g. `{ "workspace-123" = 5000000 }`. Default: none.
    #[serde(default)]
    pub overrides: BTreeMap<String, u64>,
    /// Add a `workspace` label to `gateway_token_budget_tokens_total` (one series per
    /// workspace: mind the cardinality). Default: false.
    #[serde(default)]
    pub workspace_label: bool,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_redis_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_reconnect_min() -> Duration {
    Duration::from_millis(100)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(5)
}
fn default_key_prefix() -> String {
    "gatewayd".into()
}
fn default_ipv6_prefix() -> u8 {
    64
}
fn default_timezone() -> String {
    "UTC".into()
}
