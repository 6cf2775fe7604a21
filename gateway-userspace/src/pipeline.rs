//! The request path, as phases: request id → [phases: before route] → checks → route → [phases: identify, limit, …]
//! → proxy → [phases: response] → [phases: log].
//!
//! Each capability is a [`Phase`] (one small trait, defaults doing nothing), assembled in order
//! in [`Pipeline::standard`]. Phases read and write the per-request [`RequestCtx`] and either
//! continue or refuse with a [`GatewayError`]; refusals become responses in one place
//! (`error.rs`). Policies hang on routes, so routing runs before any phase.

mod ctx;
mod phases;

use std::{future::Future, pin::Pin, rc::Rc, time::Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header, request, response, uri::PathAndQuery};
use hyper::body::Incoming;
use thiserror::Error;

pub use ctx::{ConnInfo, Outcome, RequestCtx, Timings};
pub use phases::LatencyHeaders;

use crate::{
    error::GatewayError,
    proxy::{self, Forward, RequestBody, ResponseBody, headers},
    route::PathError,
    snapshot::Snapshot,
};

const DEFAULT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Problems with the request itself, found before routing.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("invalid request path: {0}")]
    BadPath(#[from] PathError),
    #[error("missing or invalid Host header")]
    BadHost,
    #[error("request body is larger than the {limit} byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("request target is longer than the {limit} byte limit")]
    UriTooLong { limit: usize },
    #[error("request headers are too large")]
    HeadersTooLarge,
}

/// What a phase decided about a request.
pub enum Step<'a> {
    Continue,
    Refuse(GatewayError),
    /// The phase needs I/O (Redis, an IdP); the future resolves to the decision.
    Wait(Pin<Box<dyn Future<Output = Result<(), GatewayError>> + 'a>>),
}

/// One capability on the request path. All hooks have do-nothing defaults.
pub trait Phase: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Before routing, for refusals that do not depend on the route (the connection itself is
    /// refused): the client learns nothing about routes first.
    fn before_route(&self, _ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        Ok(())
    }

    /// After routing, before the request is forwarded. Phases run in pipeline order and the
    /// first refusal wins.
    fn on_request<'a>(&'a self, _ctx: &'a mut RequestCtx, _head: &'a mut request::Parts) -> Step<'a> {
        Step::Continue
    }

    /// On the response head (proxied or refusal) before it is sent to the client.
    fn on_response(&self, _ctx: &mut RequestCtx, _head: &mut response::Parts) {}

    /// Once the response is finished, or the client went away. Must not block.
    fn on_log(&self, _ctx: &RequestCtx) {}
}

/// The ordered phases of a snapshot.
pub struct Pipeline {
    phases: Vec<Box<dyn Phase>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.phases.iter().map(|p| p.name())).finish()
    }
}

impl Pipeline {
    pub fn new(phases: Vec<Box<dyn Phase>>) -> Self {
        Pipeline { phases }
    }

    pub fn phases(&self) -> &[Box<dyn Phase>] {
        &self.phases
    }
}

/// Serves one request on a worker. Never fails: every error becomes a response.
pub async fn serve(req: Request<Incoming>, conn: Rc<ConnInfo>) -> Response<ResponseBody> {
    let snapshot = conn.worker.snapshot();
    let (mut head, body) = req.into_parts();
    let mut ctx = Box::new(RequestCtx::new(conn, snapshot.clone(), &head));
    head.headers.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    match run(&mut ctx, &snapshot, head, body).await {
        Ok(forwarded) => proxied_response(ctx, &snapshot, forwarded),
        Err(error) => refusal(ctx, &snapshot, &error),
    }
}

async fn run(
    ctx: &mut RequestCtx,
    snapshot: &Snapshot,
    mut head: request::Parts,
    body: Incoming,
) -> Result<proxy::Forwarded, GatewayError> {
    let limits = &snapshot.config.server.limits;
    for phase in snapshot.pipeline.phases() {
        phase.before_route(ctx)?;
    }
    let host = check_request_head(&head, limits)?;
    let normalized = crate::route::normalize_path(head.uri.path()).map_err(RequestError::BadPath)?;
    let path = normalized.as_deref().unwrap_or(head.uri.path());
    let found =
        snapshot.config.routes.find(host.as_deref(), path, &head.method, &head.headers).ok_or(GatewayError::NoRoute)?;
    let route = found.route;
    ctx.route = Some(route.index);
    ctx.service = Some(route.service);
    let mut upstream_target = found.upstream_path(path).to_owned();
    if let Some(q) = head.uri.query() {
        upstream_target.push('?');
        upstream_target.push_str(q);
    }
    let path_and_query = PathAndQuery::try_from(upstream_target).map_err(|_| RequestError::BadHost)?;

    for phase in snapshot.pipeline.phases() {
        match phase.on_request(ctx, &mut head) {
            Step::Continue => {}
            Step::Refuse(e) => return Err(e),
            Step::Wait(decision) => decision.await?,
        }
    }

    let preserved_host = if route.preserve_host {
        head.headers.get(header::HOST).cloned().or_else(|| authority_value(&head))
    } else {
        None
    };
    prepare_upstream_headers(ctx, snapshot, &mut head, host.as_deref());
    let service = &snapshot.services[route.service];
    let body = RequestBody::new(body, limits.max_request_body, ctx.bytes_received.clone())
        .observed(std::mem::take(&mut ctx.request_observers));
    ctx.timings.upstream_start = Some(Instant::now());
    let fwd = Forward { service, pool: &ctx.conn.worker.pool, path_and_query, host: preserved_host };
    match proxy::forward(fwd, head, body).await {
        Ok(f) => {
            ctx.target = Some(f.target);
            ctx.timings.upstream_head = Some(Instant::now());
            Ok(f)
        }
        Err(failed) => {
            ctx.target = failed.target;
            Err(failed.error.into())
        }
    }
}

/// The checks on a request head that need no route (target and header sizes, declared body
/// size, host), in the order the pipeline runs them; returns the request host. Public so the
/// `request_head` fuzz target drives exactly this.
pub fn check_request_head(
    head: &request::Parts,
    limits: &crate::config::Limits,
) -> Result<Option<String>, RequestError> {
    check_head(head, limits)?;
    request_host(head)
}

fn check_head(head: &request::Parts, limits: &crate::config::Limits) -> Result<(), RequestError> {
    let target_len = head.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > limits.max_request_line {
        return Err(RequestError::UriTooLong { limit: limits.max_request_line });
    }
    // HTTP/2 has no head-size limit in hyper's sense: enforce ours on every version.
    let header_bytes: usize = head.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if header_bytes > limits.max_header_bytes || head.headers.len() > limits.max_headers {
        return Err(RequestError::HeadersTooLarge);
    }
    let declared =
        head.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body) {
        return Err(RequestError::BodyTooLarge { limit: limits.max_request_body });
    }
    Ok(())
}

/// The request host, lower-cased and without port: HTTP/2 `:authority`, else `Host`.
fn request_host(head: &request::Parts) -> Result<Option<String>, RequestError> {
    let raw = match head.uri.authority() {
        Some(a) => a.host().to_owned(),
        None => match head.headers.get(header::HOST) {
            None => return Ok(None),
            Some(v) => {
                let s = v.to_str().map_err(|_| RequestError::BadHost)?;
                let auth: http::uri::Authority = s.parse().map_err(|_| RequestError::BadHost)?;
                auth.host().to_owned()
            }
        },
    };
    Ok(Some(raw.to_ascii_lowercase()))
}

fn authority_value(head: &request::Parts) -> Option<HeaderValue> {
    head.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

fn prepare_upstream_headers(ctx: &RequestCtx, snapshot: &Snapshot, head: &mut request::Parts, host: Option<&str>) {
    let cookies_split =
        head.version == http::Version::HTTP_2 && head.headers.get_all(header::COOKIE).iter().count() > 1;
    if cookies_split {
        // HTTP/2 may split cookies into several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
        let joined: Vec<&str> = head.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
        if let Ok(v) = HeaderValue::from_str(&joined.join("; ")) {
            head.headers.insert(header::COOKIE, v);
        }
    }
    headers::remove_hop_by_hop(&mut head.headers);
    let trusted = &snapshot.config.server.trusted_proxies;
    let peer = ctx.conn.peer.ip();
    let hop = headers::Hop { peer, trusted_peer: headers::is_trusted(peer, trusted), proto: ctx.conn.scheme, host };
    headers::set_forwarded(&mut head.headers, &hop);
}

fn proxied_response(
    mut ctx: Box<RequestCtx>,
    snapshot: &Snapshot,
    forwarded: proxy::Forwarded,
) -> Response<ResponseBody> {
    let (mut head, body) = forwarded.response.into_parts();
    headers::remove_hop_by_hop(&mut head.headers);
    head.headers.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    ctx.status = head.status.as_u16();
    respond_phases(&mut ctx, snapshot, &mut head);
    let read_timeout =
        ctx.service.and_then(|s| snapshot.services.get(s)).map_or(DEFAULT_READ_TIMEOUT, |s| s.spec.read_timeout);
    Response::from_parts(head, ResponseBody::upstream(body, read_timeout, forwarded.lease, ctx))
}

fn refusal(mut ctx: Box<RequestCtx>, snapshot: &Snapshot, error: &GatewayError) -> Response<ResponseBody> {
    let status = error.status();
    if status.is_server_error() && !error.logged_at_source() {
        tracing::warn!(request_id = ?ctx.request_id, reason = error.reason(), error = %error, "request failed");
    } else {
        tracing::debug!(request_id = ?ctx.request_id, reason = error.reason(), error = %error, "request refused");
    }
    ctx.error = Some(error.reason());
    ctx.status = status.as_u16();
    let (mut head, bytes): (response::Parts, Bytes) =
        error.response(ctx.request_id.to_str().unwrap_or("")).into_parts();
    head.headers.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    respond_phases(&mut ctx, snapshot, &mut head);
    Response::from_parts(head, ResponseBody::full(bytes, ctx))
}

fn respond_phases(ctx: &mut RequestCtx, snapshot: &Snapshot, head: &mut response::Parts) {
    ctx.timings.response_ready = Some(Instant::now());
    for phase in snapshot.pipeline.phases() {
        phase.on_response(ctx, head);
    }
}

#[cfg(test)]
mod tests;
