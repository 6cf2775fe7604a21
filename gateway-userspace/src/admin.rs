//! The local admin endpoint: HTTP/1.1 on a unix socket (mode 0600, so only the service user and
//! root can use it). `gatewayd` subcommands are its client. Commands that change daemon state
//! are sent to the control loop, which owns that state.

use std::{
    convert::Infallible,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::{
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::state::SharedState;

pub mod changes;
mod inventory;
mod metrics;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// A command for the control loop, with where to send the answer.
pub enum AdminCommand {
    Reload(oneshot::Sender<Result<u64, String>>),
}

#[derive(Debug, Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("admin request failed: {0}")]
    Http(String),
    #[error("admin endpoint answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

pub struct AdminServer {
    shared: Arc<SharedState>,
    registry: Arc<prometheus_client::registry::Registry>,
    commands: mpsc::Sender<AdminCommand>,
    /// Changes waiting for a person's approval (`admin/changes.rs`).
    changes: changes::Changes,
}

impl AdminServer {
    /// Binds the socket (replacing a stale one) and serves on the current runtime.
    pub fn start(
        path: &Path,
        shared: Arc<SharedState>,
        registry: Arc<prometheus_client::registry::Registry>,
        commands: mpsc::Sender<AdminCommand>,
    ) -> Result<(), AdminError> {
        let io = |source| AdminError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let server = Arc::new(AdminServer { shared, registry, commands, changes: changes::Changes::default() });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Ok(())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let Ok(body) = Limited::new(body, MAX_BODY).collect().await.map(|b| b.to_bytes()) else {
            return json(StatusCode::PAYLOAD_TOO_LARGE, &serde_json::json!({"error": "body_too_large"}));
        };
        // Reads at debug: `gatewayd top` polls every second, and would flood the journal.
        if parts.method == Method::GET {
            tracing::debug!(method = %parts.method, path = parts.uri.path(), "admin request");
        } else {
            tracing::info!(method = %parts.method, path = parts.uri.path(), "admin request");
        }
        match (&parts.method, parts.uri.path()) {
            (&Method::GET, "/v1/status") => self.status(),
            (&Method::GET, "/metrics") => metrics::metrics(&self.registry),
            (&Method::POST, "/v1/reload") => self.reload().await,
            (&Method::GET, "/v1/xdp/top") => self.xdp_top(parts.uri.query()).await,
            (&Method::POST, "/v1/xdp/block") => self.xdp_block(&body),
            (&Method::POST, "/v1/xdp/unblock") => self.xdp_unblock(&body),
            (&Method::POST, "/v1/revoke") => self.revoke(&body).await,
            (&Method::GET, "/v1/routes") => self.routes(),
            (&Method::GET, "/v1/refusals") => self.refusals(parts.uri.query()).await,
            (method, path) if path == "/v1/changes" || path.starts_with("/v1/changes/") => {
                self.changes(method, path, parts.uri.query(), &body).await
            }
            _ => {
                drop(body);
                json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not_found"}))
            }
        }
    }

    fn status(&self) -> Response<Full<Bytes>> {
        let s = self.shared.snapshot.load();
        let listeners: Vec<_> = s
            .config
            .listeners
            .iter()
            .map(|l| serde_json::json!({"name": &*l.name, "bind": l.addr.to_string()}))
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config": s.config.source,
                "generation": s.generation,
                "workers": s.config.server.workers,
                "ready": self.shared.readiness.is_ready(),
                "listeners": listeners,
                "routes": s.config.routes.routes().len(),
                "services": s.services.len(),
                "xdp": self.shared.ebpf.xdp.get().map(|x| {
                    x.attachments()
                        .into_iter()
                        .map(|(iface, mode)| serde_json::json!({"iface": iface, "mode": mode.label()}))
                        .collect::<Vec<_>>()
                }),
                "steering": self.shared.ebpf.steering.get().map(|st| st.policy().label()),
                "auth": {
                    "issuers": s.config.auth.issuers.iter().map(|i| &*i.name).collect::<Vec<_>>(),
                    "policies": s.config.auth.policies.len(),
                    "consumers": s.config.auth.consumers.len(),
                    "revoked_jtis": self.shared.parts.auth().revocations().map_or(0, |r| r.local_len()),
                    "revocations_pending": self.shared.parts.auth().revocations().map_or(0, |r| r.pending_len()),
                },
            }),
        )
    }

    async fn reload(&self) -> Response<Full<Bytes>> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(AdminCommand::Reload(tx)).await.is_err() {
            return json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"error": "shutting_down"}));
        }
        match rx.await {
            Ok(Ok(generation)) => {
                json(StatusCode::OK, &serde_json::json!({"reloaded": true, "generation": generation}))
            }
            Ok(Err(reason)) => {
                json(StatusCode::UNPROCESSABLE_ENTITY, &serde_json::json!({"reloaded": false, "error": reason}))
            }
            Err(_) => json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"error": "shutting_down"})),
        }
    }
}

// The XDP guard's run-time controls. Changes are logged by the guard itself.
impl AdminServer {
    fn xdp(&self) -> Result<Arc<crate::ebpf::XdpService>, Box<Response<Full<Bytes>>>> {
        self.shared.ebpf.xdp.get().cloned().ok_or_else(|| {
            Box::new(json(
                StatusCode::CONFLICT,
                &serde_json::json!({"error": "xdp_disabled", "message": "the XDP guard is not enabled (xdp.enabled)"}),
            ))
        })
    }

    async fn xdp_top(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let xdp = match self.xdp() {
            Ok(x) => x,
            Err(resp) => return *resp,
        };
        let n = query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("n=")))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(20)
            .clamp(1, 10_000);
        // Walks the whole source table: off the control thread.
        match tokio::task::spawn_blocking(move || xdp.top(n)).await {
            Ok(Ok(report)) => json(StatusCode::OK, &serde_json::to_value(report).unwrap_or_default()),
            Ok(Err(e)) => json(StatusCode::INTERNAL_SERVER_ERROR, &serde_json::json!({"error": e.to_string()})),
            Err(_) => json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"error": "shutting_down"})),
        }
    }

    fn xdp_block(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let xdp = match self.xdp() {
            Ok(x) => x,
            Err(resp) => return *resp,
        };
        let req: BlockRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return bad_request(&format!("expected {{\"cidr\": \"203.0.113.0/24\", \"for_secs\": 600}}: {e}"));
            }
        };
        let net = match parse_net(&req.cidr) {
            Ok(n) => n,
            Err(resp) => return *resp,
        };
        let duration = req.for_secs.filter(|s| *s > 0).map(std::time::Duration::from_secs);
        match xdp.block(net, duration, gateway_common::xdp::DenyOrigin::Admin) {
            Ok(outcome) => json(StatusCode::OK, &serde_json::to_value(outcome).unwrap_or_default()),
            Err(reason) => json(StatusCode::CONFLICT, &serde_json::json!({"error": "not_blocked", "message": reason})),
        }
    }

    fn xdp_unblock(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let xdp = match self.xdp() {
            Ok(x) => x,
            Err(resp) => return *resp,
        };
        let req: UnblockRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return bad_request(&format!("expected {{\"cidr\": \"203.0.113.0/24\"}}: {e}")),
        };
        let net = match parse_net(&req.cidr) {
            Ok(n) => n,
            Err(resp) => return *resp,
        };
        match xdp.unblock(net) {
            Ok(true) => json(StatusCode::OK, &serde_json::json!({"unblocked": net.to_string()})),
            Ok(false) => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "not_blocked", "message": format!("{net} is not blocked")}),
            ),
            Err(reason) => {
                json(StatusCode::CONFLICT, &serde_json::json!({"error": "not_unblocked", "message": reason}))
            }
        }
    }
}

impl AdminServer {
    /// `{"jti": "…", "until": <unix seconds>}`: adds the jti to the revocation list until then.
    async fn revoke(&self, body: &[u8]) -> Response<Full<Bytes>> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Revoke {
            jti: String,
            until: u64,
        }
        let req: Revoke = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "bad_request", "message": format!("expected {{\"jti\": string, \"until\": unix seconds}}: {e}")}),
                );
            }
        };
        let Some(revocations) = self.shared.parts.auth().revocations() else {
            return json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"error": "not_ready"}));
        };
        match revocations.revoke(&req.jti, req.until, "admin").await {
            Ok(outcome) => {
                use crate::auth::Revoked;
                // Queued: applied here, published by this node as soon as Redis answers.
                let (published, queued) = match outcome {
                    Revoked::Local => (false, false),
                    Revoked::Published => (true, false),
                    Revoked::Queued => (false, true),
                };
                json(
                    StatusCode::OK,
                    &serde_json::json!({"revoked": true, "jti": req.jti, "until": req.until, "published": published, "queued": queued}),
                )
            }
            Err(e @ crate::auth::RevocationError::Store(_)) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": "store_unavailable", "message": e.to_string()}),
            ),
            Err(e) => {
                json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": "bad_request", "message": e.to_string()}))
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockRequest {
    cidr: String,
    for_secs: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UnblockRequest {
    cidr: String,
}

/// The CLI checks the same way before it calls; this is for other callers of the endpoint.
fn parse_net(raw: &str) -> Result<ipnet::IpNet, Box<Response<Full<Bytes>>>> {
    crate::ebpf::parse_list_entry(raw).map_err(|reason| Box::new(bad_request(&reason)))
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": "bad_request", "message": message}))
}

/// `gatewayd xdp top` as a table. Numbers are formatted as strings first: `serde_json::Value`'s
/// `Display` ignores width and alignment.
pub fn format_top(report: &serde_json::Value) -> String {
    let row = |source: &str, dropped: &str, syn: &str, kind: &str, expires: &str| {
        format!("{source:<44} {dropped:>12} {syn:>12}  {kind:<10} {expires}\n")
    };
    let number = |v: &serde_json::Value| v.as_u64().map_or_else(|| "?".to_owned(), |n| n.to_string());
    let mut out = format!("tracked sources: {}\n", report["tracked_sources"]);
    out.push_str(&row("SOURCE", "DROPPED", "SYN DROPPED", "KIND", "EXPIRES"));
    for e in report["entries"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let expires = match e["expires_in_secs"].as_u64() {
            Some(s) => humantime::format_duration(std::time::Duration::from_secs(s)).to_string(),
            None => "-".to_owned(),
        };
        out.push_str(&row(
            e["source"].as_str().unwrap_or("?"),
            &number(&e["dropped"]),
            &number(&e["syn_dropped"]),
            e["kind"].as_str().unwrap_or("?"),
            &expires,
        ));
    }
    out
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{v}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

/// A client for the admin socket (used by `gatewayd` subcommands).
pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AdminClient { path: path.into() }
    }

    /// Sends one request and returns the JSON answer; non-2xx statuses are errors.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, AdminError> {
        let text = self.call_text(method, path, body).await?;
        serde_json::from_str(&text).map_err(|e| AdminError::Http(format!("bad JSON from admin endpoint: {e}")))
    }

    /// Sends one request and returns the answer's body as text; non-2xx statuses are errors.
    pub async fn call_text(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, AdminError> {
        let stream = UnixStream::connect(&self.path)
            .await
            .map_err(|source| AdminError::Io { path: self.path.display().to_string(), source })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| AdminError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "gatewayd")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| AdminError::Http(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| AdminError::Http(e.to_string()))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| AdminError::Http(e.to_string()))?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            return Err(AdminError::Status { status, body: text });
        }
        Ok(text)
    }
}

/// Runs an admin call from synchronous code (the CLI).
pub fn call_blocking(
    path: &Path,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, AdminError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AdminError::Http(e.to_string()))?;
    rt.block_on(AdminClient::new(path).call(method, uri, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_columns_line_up() {
        let report = serde_json::json!({
            "tracked_sources": 3,
            "entries": [
                {"source": "203.0.113.7/32", "dropped": 123456, "syn_dropped": 7, "kind": "source", "expires_in_secs": null},
                {"source": "2001:db8:aaaa:bbbb::/64", "dropped": 5, "syn_dropped": 4_000_000, "kind": "deny", "expires_in_secs": 600},
            ]
        });
        let table = format_top(&report);
        let lines: Vec<&str> = table.lines().skip(1).collect();
        assert_eq!(lines.len(), 3, "{table}");
        // Right-aligned numbers end where their header ends; the kind column starts at one offset.
        let end_of = |line: &str, field: &str| line.find(field).map(|i| i + field.len());
        let header = lines[0];
        for (line, dropped, syn, kind) in [(lines[1], "123456", "7", "source"), (lines[2], "5", "4000000", "deny")] {
            assert_eq!(end_of(line, &format!(" {dropped} ")), end_of(header, " DROPPED "), "{table}");
            assert_eq!(end_of(line, &format!(" {syn}  ")), end_of(header, " SYN DROPPED  "), "{table}");
            assert_eq!(line.find(kind), header.find("KIND"), "{table}");
        }
    }
}
