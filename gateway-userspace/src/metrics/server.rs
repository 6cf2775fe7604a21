//! The metrics listener: `/metrics` (Prometheus text 0.0.4 or OpenMetrics, by `Accept`), `/healthz` (the process answers) and
//! `/readyz` (listeners bound and config loaded; JSON detail either way).

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::{Readiness, exposition};

pub struct MetricsServer {
    registry: Arc<Registry>,
    readiness: Arc<Readiness>,
}

impl MetricsServer {
    pub fn new(registry: Arc<Registry>, readiness: Arc<Readiness>) -> Arc<Self> {
        Arc::new(MetricsServer { registry, readiness })
    }

    /// Binds now (so a port clash is a startup error), then serves on the current runtime.
    pub async fn bind(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = TcpListener::bind(addr).await?;
        Ok(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let this = self.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let this = this.clone();
                        async move { Ok::<_, Infallible>(this.handle(&req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }))
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/metrics" => {
                let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
                exposition(&self.registry, exposition::negotiate(accept))
            }
            "/healthz" => text(StatusCode::OK, "application/json", "{\"status\":\"ok\"}\n".into()),
            "/readyz" => self.readyz(),
            _ => text(StatusCode::NOT_FOUND, "application/json", "{\"error\":\"not_found\"}\n".into()),
        }
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let ready = self.readiness.is_ready();
        let body = serde_json::json!({ "ready": ready, "details": self.readiness.details() });
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        text(status, "application/json", format!("{body}\n"))
    }
}

/// The registry as a `/metrics` answer in `format` (also served on the admin socket, for
/// `gatewayd top`).
pub fn exposition(registry: &Registry, format: exposition::Format) -> Response<Full<Bytes>> {
    let mut out = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => {
            let body = match format {
                exposition::Format::OpenMetrics => out,
                exposition::Format::Text => exposition::openmetrics_to_text(&out),
            };
            text(StatusCode::OK, format.content_type(), body)
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "metrics encoding failed\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    resp
}
