//! The request path, as phases: request id → [phases: before route] → checks → route → [phases: identify, limit, …]
//! → proxy → [phases: response] → [phases: log].
//!
//! Each capability is a [`Phase`] (one small trait, defaults doing nothing), assembled in order
//! in [`Pipeline::standard`]. Phases read and write the per-request [`RequestCtx`] and either
//! continue or refuse with a [`GatewayError`]; refusals become responses in one place
//! (`error.rs`). Policies hang on routes, so routing runs before any phase.

#[cfg(test)]
mod future_size;
mod head;

use std::{rc::Rc, time::Instant};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header, request, response, uri::PathAndQuery};
use thiserror::Error;

use crate::{
    error::GatewayError,
    proxy::UpstreamPool,
    proxy::{self, ClientBody, Forward, RequestBody, ResponseBody, headers},
    request::{ConnInfo, RequestCtx, SnapshotView, Step},
    route::PathError,
    snapshot::{LocalSnapshot, Snapshot},
};

/// Fields the gateway adds to a request head on the common path. An HTTP/1 codec that builds
/// the map itself sizes it with this room, so that `serve`'s reserve finds it and does not grow
/// (and rehash) a map just built.
pub(crate) const UPSTREAM_FIELDS: usize = 8;
const DEFAULT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Problems with the request itself, found before routing.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("no route matched the request")]
    NoRoute,
    #[error("invalid request path: {0}")]
    BadPath(#[from] PathError),
    #[error("invalid Host header")]
    BadHost,
    #[error("an HTTP/1.1 request needs a Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("the Host header names another authority than :authority")]
    AuthorityMismatch,
    #[error("request body is larger than the {limit} byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("request line (method and target) is longer than the {limit} byte limit")]
    UriTooLong { limit: usize },
    #[error("request headers are too large")]
    HeadersTooLarge,
    #[error("transfer coding {0:?} is not implemented: only \"chunked\" alone")]
    UnsupportedTransferCoding(String),
    #[error("more than one Transfer-Encoding header")]
    RepeatedTransferEncoding,
    /// hyper's HTTP/1 parser refused the request head (the connection answers it, see
    /// `listener::parse_refusal`).
    #[error("the request could not be parsed as HTTP")]
    Unparseable,
}

impl crate::error::Refusal for RequestError {
    fn status(&self) -> StatusCode {
        match self {
            RequestError::NoRoute => StatusCode::NOT_FOUND,
            RequestError::BadPath(_)
            | RequestError::BadHost
            | RequestError::MissingHost
            | RequestError::DuplicateHost
            | RequestError::AuthorityMismatch
            | RequestError::RepeatedTransferEncoding
            | RequestError::Unparseable => StatusCode::BAD_REQUEST,
            RequestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            RequestError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestError::UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            RequestError::NoRoute => "no_route",
            RequestError::BadPath(_) => "bad_path",
            RequestError::BadHost => "bad_host",
            RequestError::MissingHost => "missing_host",
            RequestError::DuplicateHost => "duplicate_host",
            RequestError::AuthorityMismatch => "host_mismatch",
            RequestError::BodyTooLarge { .. } => "body_too_large",
            RequestError::UriTooLong { .. } => "uri_too_long",
            RequestError::HeadersTooLarge => "headers_too_large",
            RequestError::UnsupportedTransferCoding(_) => "unsupported_transfer_coding",
            RequestError::RepeatedTransferEncoding => "bad_framing",
            RequestError::Unparseable => "bad_request",
        }
    }
}

/// Serves one request on a worker. Never fails: every error becomes a response.
///
/// `snapshot` is the worker's current one, `pool` its upstream connections. `body`: `None` for
/// a request whose head said it has none (an HTTP/1 codec that reads heads itself hands over no
/// body at all).
pub async fn serve(
    mut head: request::Parts,
    body: Option<ClientBody>,
    conn: Rc<ConnInfo>,
    snapshot: LocalSnapshot,
    pool: Rc<UpstreamPool>,
) -> Response<ResponseBody> {
    // hyper sizes the map for the client's fields; the gateway adds about eight (request id,
    // forwarding, identity): grow once now rather than rehash twice on the way.
    head.headers.reserve(UPSTREAM_FIELDS);
    let request_id = headers::request_id(&head.headers);
    let client_ip = headers::client_ip(conn.peer.ip(), &head.headers, &snapshot.config.server.trusted_proxies);
    let view: Rc<dyn SnapshotView> = snapshot.clone();
    let mut ctx = RequestCtx::new(conn, view, &head, request_id, client_ip);
    head.headers.insert(headers::name::X_REQUEST_ID, ctx.request_id.clone());
    // ACME http-01 challenges win over every route (and every check a route would bring).
    if let Some(answer) = snapshot.tls.parts().and_then(|p| p.acme.http01_answer(head.uri.path())) {
        return Response::new(ResponseBody::full(answer.into(), ctx));
    }
    match run(&mut ctx, &snapshot, &pool, &mut head, body).await {
        Ok(forwarded) => proxied_response(ctx, &snapshot, forwarded),
        Err(error) => refusal(ctx, &snapshot, &error),
    }
}

async fn run(
    ctx: &mut RequestCtx,
    snapshot: &Snapshot,
    pool: &Rc<UpstreamPool>,
    head: &mut request::Parts,
    body: Option<ClientBody>,
) -> Result<proxy::Forwarded, GatewayError> {
    let limits = &snapshot.config.server.limits;
    for phase in snapshot.pipeline.phases() {
        phase.before_route(ctx)?;
    }
    let authority = head::check(head, limits)?;
    snapshot.client_headers.drop_from(&mut head.headers, &ctx.conn.metrics);
    let host = authority.as_ref().map(head::Authority::host);
    let normalized = crate::route::normalize_path(head.uri.path()).map_err(RequestError::BadPath)?;
    let path = normalized.as_deref().unwrap_or(head.uri.path());
    let found = snapshot.config.routes.find(host, path, &head.method, &head.headers).ok_or(RequestError::NoRoute)?;
    let route = found.route;
    ctx.route = Some(route.index);
    ctx.service = Some(route.service);
    // Sized exactly: a `String` whose length is its capacity becomes the `PathAndQuery`'s bytes
    // without a second allocation.
    let upstream_path = found.upstream_path(path);
    let query = head.uri.query();
    let mut upstream_target = String::with_capacity(upstream_path.len() + query.map_or(0, |q| q.len() + 1));
    upstream_target.push_str(upstream_path);
    if let Some(q) = query {
        upstream_target.push('?');
        upstream_target.push_str(q);
    }
    let path_and_query = PathAndQuery::try_from(upstream_target).map_err(|_| RequestError::BadHost)?;

    for phase in snapshot.pipeline.phases() {
        match phase.on_request(ctx, head) {
            Step::Continue => {}
            Step::Refuse(e) => return Err(e),
            Step::Wait(decision) => decision.await?,
        }
    }

    // Route and upstream agree on the authority (absolute-form and :authority win over Host).
    let preserved_host = authority.as_ref().filter(|_| route.preserve_host).and_then(head::Authority::header_value);
    let chunked = body.as_ref().is_some_and(|b| head::needs_chunked_framing(&head.method, b));
    let forwarding =
        prepare_upstream_headers(ctx, snapshot, head, authority.as_ref().map(head::Authority::as_str), chunked);
    let service = &snapshot.services[route.service];
    // The upload counts as upstream time whether it is read ahead or streamed.
    let now = Instant::now();
    ctx.timings.upstream_start = Some(now);
    let mut body = RequestBody::new(
        body,
        limits.max_request_body,
        ctx.bytes_received.clone(),
        route.body.client_body_timeout,
        now,
    )
    .observed(std::mem::take(&mut ctx.request_observers));
    body.read_ahead(route.body.request_buffer).await.map_err(proxy::ProxyError::unsent_body)?;
    let fwd = Forward { service, pool, path_and_query, host: preserved_host, forwarding };
    match proxy::forward(fwd, head, &mut body).await {
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

/// The checks on a request head that need no route (request line and header sizes, Host rules
/// and the one authority, framing, declared body size), as the pipeline runs them; returns the
/// request host. Public so the `request_head` fuzz target drives exactly this.
pub fn check_request_head(
    head: &request::Parts,
    limits: &crate::config::Limits,
) -> Result<Option<String>, RequestError> {
    Ok(head::check(head, limits)?.as_ref().map(|a| a.host().to_owned()))
}

/// Rewrites the head for the upstream; returns the forwarding fields as field lines (`Forward::forwarding`).
fn prepare_upstream_headers(
    ctx: &RequestCtx,
    snapshot: &Snapshot,
    head: &mut request::Parts,
    host: Option<&str>,
    chunked: bool,
) -> Vec<u8> {
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
    if chunked {
        head.headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    let trusted = &snapshot.config.server.trusted_proxies;
    let peer = ctx.conn.peer.ip();
    let hop = headers::Hop {
        peer,
        trusted_peer: headers::is_trusted(peer, trusted),
        proto: ctx.conn.scheme,
        host,
        port: ctx.conn.local.port(),
    };
    headers::set_forwarded(&mut head.headers, &hop)
}

fn proxied_response(
    mut ctx: Box<RequestCtx>,
    snapshot: &Snapshot,
    forwarded: proxy::Forwarded,
) -> Response<ResponseBody> {
    let (mut head, body) = forwarded.response.into_parts();
    // The upstream client read the hop-by-hop fields (and those `Connection` named) for framing
    // and reuse and left them out of the map (`proxy::h1::decode`): nothing to remove here.
    debug_assert!(!headers::has_hop_by_hop(&head.headers));
    head.headers.insert(headers::name::X_REQUEST_ID, ctx.request_id.clone());
    ctx.status = head.status.as_u16();
    // The upstream's head is ready to go back: one clock read for both instants.
    let ready = ctx.timings.upstream_head.unwrap_or_else(Instant::now);
    respond_phases(&mut ctx, snapshot, &mut head, ready);
    let read_timeout =
        ctx.service.and_then(|s| snapshot.services.get(s)).map_or(DEFAULT_READ_TIMEOUT, |s| s.spec.read_timeout);
    let buffering = ctx.route.and_then(|r| snapshot.config.routes.get(r)).and_then(|r| r.body.response_buffer.clone());
    let spool = buffering.map(|spec| (spec, ctx.conn.metrics.shared().clone()));
    Response::from_parts(head, ResponseBody::upstream(body, read_timeout, forwarded.lease, spool, ctx))
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
    head.headers.insert(headers::name::X_REQUEST_ID, ctx.request_id.clone());
    respond_phases(&mut ctx, snapshot, &mut head, Instant::now());
    Response::from_parts(head, ResponseBody::full(bytes, ctx))
}

fn respond_phases(ctx: &mut RequestCtx, snapshot: &Snapshot, head: &mut response::Parts, ready: Instant) {
    ctx.timings.set_response_ready(ready);
    for phase in snapshot.pipeline.phases() {
        phase.on_response(ctx, head);
    }
}
