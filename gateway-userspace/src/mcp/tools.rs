//! The MCP tools: each one admin-socket call, its answer returned as JSON text. A failing call
//! is a tool error (`isError`), with the daemon's message, so the agent can read why.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use http::Method;
use rmcp::{
    ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{Implementation, ServerCapabilities, ServerConfig},
    schemars, tool, tool_handler, tool_router,
};
use serde::Deserialize;

use crate::{admin::AdminClient, top::scrape::Scrape};

type ToolResult = Result<String, String>;

#[derive(Clone)]
pub struct GatewayTools {
    admin: Arc<AdminClient>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct RefusalsParams {
    /// Only this route (its name in the configuration).
    pub route: Option<String>,
    /// An exact status (`429`) or a class (`4xx`, `5xx`).
    pub status: Option<String>,
    /// Only this consumer (`[[consumers]]` name).
    pub consumer: Option<String>,
    /// Only refusals at or after this time (RFC 3339, e.g. `2026-12-05T10:00:00Z`).
    pub since: Option<String>,
    /// At most this many, newest first (default 50, at most 1000).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct CountParams {
    /// How many (default 20).
    pub count: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct UsageParams {
    /// A consumer name (the `consumer_id` label of the metrics).
    pub consumer: Option<String>,
    /// A workspace id (the `workspace` label of the token budget metrics).
    pub workspace: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct MetricsParams {
    /// Metric name or name prefix, e.g. `gateway_http_requests` (required).
    pub name: String,
    /// Label values the series must have, e.g. `{"route": "payments"}`.
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct ChangeIdParams {
    /// The change id (`chg-…`).
    pub id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct ApproveParams {
    /// The change id (`chg-…`).
    pub id: String,
    /// The approval token a person was given out of band (never guessed: wrong tokens reject
    /// the change).
    pub token: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct BlockParams {
    /// An address or prefix, e.g. `203.0.113.0/24`.
    pub cidr: String,
    /// How long, in seconds; absent: until unblocked.
    pub for_secs: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct UnblockParams {
    /// A prefix blocked before.
    pub cidr: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct RevokeParams {
    /// The token's `jti` claim.
    pub jti: String,
    /// Unix time until which to refuse it (the token's `exp`).
    pub until: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema, Default)]
pub struct DrainParams {
    /// Service name.
    pub service: String,
    /// Target as `ip:port`, as listed by the `routes` tool.
    pub target: String,
    /// `true` (default) drains; `false` returns the target to rotation.
    pub drain: Option<bool>,
}

impl GatewayTools {
    pub fn new(socket: PathBuf) -> Self {
        GatewayTools { admin: Arc::new(AdminClient::new(socket)), tool_router: Self::tool_router() }
    }

    async fn get(&self, path: &str) -> ToolResult {
        self.call(Method::GET, path, None).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> ToolResult {
        match self.admin.call(method, path, body).await {
            Ok(v) => Ok(pretty(&v)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn scrape(&self) -> Result<Scrape, String> {
        let text = self.admin.call_text(Method::GET, "/metrics", None).await.map_err(|e| e.to_string())?;
        Scrape::parse(&text).map_err(|e| e.to_string())
    }

    /// Samples whose name starts with one of `prefixes` and that carry every label in `labels`.
    async fn samples(&self, prefixes: &[&str], labels: &BTreeMap<String, String>) -> ToolResult {
        let scrape = self.scrape().await?;
        let rows: Vec<_> = scrape
            .all()
            .iter()
            .filter(|s| prefixes.iter().any(|p| s.name.starts_with(p)))
            .filter(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v.as_str())))
            .map(|s| {
                let labels: BTreeMap<_, _> = s.labels.iter().cloned().collect();
                serde_json::json!({"name": s.name, "labels": labels, "value": s.value})
            })
            .collect();
        Ok(pretty(&serde_json::json!({"samples": rows})))
    }

    /// Asks the daemon for a pending change; a person approves it.
    async fn request_change(&self, change: serde_json::Value) -> ToolResult {
        let body = serde_json::json!({"change": change, "requested_by": "mcp"});
        let mut answer = match self.admin.call(Method::POST, "/v1/changes", Some(body)).await {
            Ok(v) => v,
            Err(e) => return Err(e.to_string()),
        };
        answer["note"] = serde_json::Value::String(
            "Not applied yet: a person must approve it (on the host: `gatewayd approve ID`; or give you its approval \
             token for approve_change). Check it with change_status."
                .into(),
        );
        Ok(pretty(&answer))
    }
}

#[tool_router]
impl GatewayTools {
    #[tool(
        description = "Daemon status: version, config, generation, readiness, listeners, XDP, auth.",
        annotations(read_only_hint = true)
    )]
    async fn status(&self) -> ToolResult {
        self.get("/v1/status").await
    }

    #[tool(
        description = "Routes and services, with each target's health (up, drained, in flight).",
        annotations(read_only_hint = true)
    )]
    async fn routes(&self) -> ToolResult {
        self.get("/v1/routes").await
    }

    #[tool(
        description = "Recent refusals (status >= 400) from the audit log, newest first; filter by route, status, consumer, time.",
        annotations(read_only_hint = true)
    )]
    async fn recent_refusals(&self, Parameters(p): Parameters<RefusalsParams>) -> ToolResult {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [("route", &p.route), ("status", &p.status), ("consumer", &p.consumer), ("since", &p.since)] {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
            if let Some(limit) = p.limit {
                q.append_pair("limit", &limit.to_string());
            }
            q.finish()
        };
        self.get(&format!("/v1/refusals?{query}")).await
    }

    #[tool(
        description = "Top offending sources at the XDP guard (drops per source and deny entries).",
        annotations(read_only_hint = true)
    )]
    async fn top_offenders(&self, Parameters(p): Parameters<CountParams>) -> ToolResult {
        self.get(&format!("/v1/xdp/top?n={}", p.count.unwrap_or(20).clamp(1, 1000))).await
    }

    #[tool(
        description = "Server certificates and their expiry (unix time and days left).",
        annotations(read_only_hint = true)
    )]
    async fn certificate_expiry(&self) -> ToolResult {
        let scrape = self.scrape().await?;
        let now = crate::admin::changes::unix_now() as f64;
        let certs: Vec<_> = scrape
            .samples("gateway_tls_certificate_expiry_timestamp_seconds")
            .map(|s| {
                let labels: BTreeMap<_, _> = s.labels.iter().cloned().collect();
                serde_json::json!({"labels": labels, "expires_at": s.value, "days_left": ((s.value - now) / 86_400.0 * 10.0).round() / 10.0})
            })
            .collect();
        Ok(pretty(&serde_json::json!({"certificates": certs})))
    }

    #[tool(
        description = "Identity providers: per-issuer JWKS refresh and keys, circuit breaker state, failed-closed issuers.",
        annotations(read_only_hint = true)
    )]
    async fn issuer_health(&self) -> ToolResult {
        self.samples(&["gateway_auth_jwks", "gateway_auth_idp", "gateway_auth_issuer"], &BTreeMap::new()).await
    }

    #[tool(
        description = "Limits and budgets from the metrics. For a consumer: its requests by route and status \
                       (429s are its rate-limit refusals; needs [metrics] consumer_label). For a workspace: its \
                       token budget charges (needs the budget's workspace label). With neither: every rate-limit \
                       decision and token budget series.",
        annotations(read_only_hint = true)
    )]
    async fn limit_usage(&self, Parameters(p): Parameters<UsageParams>) -> ToolResult {
        let mut labels = BTreeMap::new();
        let prefixes: &[&str] = match (p.consumer, p.workspace) {
            (Some(c), None) => {
                labels.insert("consumer_id".to_owned(), c);
                &["gateway_http_requests_total"]
            }
            (None, Some(w)) => {
                labels.insert("workspace".to_owned(), w);
                &["gateway_token_budget_"]
            }
            (None, None) => &["gateway_ratelimit_", "gateway_token_budget_"],
            (Some(_), Some(_)) => return Err("give a consumer or a workspace, not both".into()),
        };
        self.samples(prefixes, &labels).await
    }

    #[tool(
        description = "Query the current metrics: every series whose name starts with `name` and that has the given label values.",
        annotations(read_only_hint = true)
    )]
    async fn metrics_query(&self, Parameters(p): Parameters<MetricsParams>) -> ToolResult {
        if p.name.is_empty() {
            return Err("name: a metric name or prefix (gateway_…)".into());
        }
        self.samples(&[p.name.as_str()], &p.labels.unwrap_or_default()).await
    }

    #[tool(
        description = "Changes requested through this server and their state (pending, applied, rejected, expired, …).",
        annotations(read_only_hint = true)
    )]
    async fn list_changes(&self) -> ToolResult {
        self.get("/v1/changes").await
    }

    #[tool(description = "One change's state and result.", annotations(read_only_hint = true))]
    async fn change_status(&self, Parameters(p): Parameters<ChangeIdParams>) -> ToolResult {
        self.get(&format!("/v1/changes/{}", encode_segment(&p.id))).await
    }

    #[tool(
        description = "Request a configuration reload. Returns a PENDING change; a person must approve it.",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    async fn reload(&self) -> ToolResult {
        self.request_change(serde_json::json!({"kind": "reload"})).await
    }

    #[tool(
        description = "Request an XDP block of a source prefix (drop at the NIC). Returns a PENDING change; a person must approve it.",
        annotations(read_only_hint = false, destructive_hint = true)
    )]
    async fn xdp_block(&self, Parameters(p): Parameters<BlockParams>) -> ToolResult {
        self.request_change(serde_json::json!({"kind": "xdp_block", "cidr": p.cidr, "for_secs": p.for_secs})).await
    }

    #[tool(
        description = "Request removal of an XDP block. Returns a PENDING change; a person must approve it.",
        annotations(read_only_hint = false, destructive_hint = false)
    )]
    async fn xdp_unblock(&self, Parameters(p): Parameters<UnblockParams>) -> ToolResult {
        self.request_change(serde_json::json!({"kind": "xdp_unblock", "cidr": p.cidr})).await
    }

    #[tool(
        description = "Request revocation of a token by jti. Returns a PENDING change; a person must approve it.",
        annotations(read_only_hint = false, destructive_hint = true)
    )]
    async fn revoke_jti(&self, Parameters(p): Parameters<RevokeParams>) -> ToolResult {
        self.request_change(serde_json::json!({"kind": "revoke_jti", "jti": p.jti, "until": p.until})).await
    }

    #[tool(
        description = "Request draining an upstream target (or returning it with drain=false). Returns a PENDING change; a person must approve it.",
        annotations(read_only_hint = false, destructive_hint = true)
    )]
    async fn drain_target(&self, Parameters(p): Parameters<DrainParams>) -> ToolResult {
        let change = serde_json::json!({"kind": "drain_target", "service": p.service, "target": p.target, "drain": p.drain.unwrap_or(true)});
        self.request_change(change).await
    }

    #[tool(
        description = "Approve a pending change with the approval token a person gave you out of band. Without the right token nothing is applied.",
        annotations(read_only_hint = false, destructive_hint = true)
    )]
    async fn approve_change(&self, Parameters(p): Parameters<ApproveParams>) -> ToolResult {
        if p.token.is_empty() {
            return Err("token: the approval token from a person; the host approves with `gatewayd approve ID`".into());
        }
        let path = format!("/v1/changes/{}/approve", encode_segment(&p.id));
        self.call(Method::POST, &path, Some(serde_json::json!({"token": p.token}))).await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for GatewayTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("gatewayd", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools for the gatewayd API gateway. Read-only tools answer at once. Tools that change \
                 something (reload, xdp_block, xdp_unblock, revoke_jti, drain_target) only create a pending \
                 change: tell the person its id and summary; it is applied when they approve it.",
            )
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A change id as one path segment (ids are `chg-<hex>`; anything else must not reach another
/// endpoint through `/` or `?`).
fn encode_segment(id: &str) -> String {
    form_urlencoded::byte_serialize(id.as_bytes()).collect()
}
