//! Forwarding a routed request to its service: pick a target, get a pooled connection, send,
//! wait for the response head; retry connect failures on another target for idempotent methods.

pub mod body;
mod h1;
pub mod headers;
mod policy;
mod pool;
mod spool;

use std::{rc::Rc, time::Duration};

use http::{HeaderValue, Method, Response, Version, request, uri::PathAndQuery};
use thiserror::Error;

pub use body::{
    BodyError, BodyProgress, ClientBody, ClientBodyError, H2Body, RequestBody, ResponseBody, UpstreamLease,
};
pub use policy::{BodyPolicy, SpoolSpec};

pub use h1::{H1Error, UpstreamBody};
pub use pool::{ConnectError, PooledConn, UpstreamPool};

use crate::upstream::{PickError, Service};

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("no healthy upstream target")]
    NoHealthyUpstream,
    #[error("upstream connect failed: {0}")]
    Connect(#[source] ConnectError),
    #[error("upstream did not answer within {0:?}")]
    ResponseTimeout(Duration),
    #[error("upstream connection failed: {0}")]
    Upstream(#[source] H1Error),
    #[error("request body is larger than the {limit} byte limit")]
    ClientBodyTooLarge { limit: u64 },
    #[error("client request body failed: {0}")]
    ClientBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("client sent no request body bytes for {0:?}")]
    ClientBodyTimeout(Duration),
}

impl ProxyError {
    /// A request body that failed while it was read ahead, before anything went upstream:
    /// always the client's doing.
    pub fn unsent_body(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit } => ProxyError::ClientBodyTooLarge { limit },
            BodyError::ClientTimeout(d) => ProxyError::ClientBodyTimeout(d),
            other => ProxyError::ClientBody(Box::new(other)),
        }
    }
}

impl crate::error::Refusal for ProxyError {
    fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            ProxyError::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect(ConnectError::Timeout(_)) | ProxyError::ResponseTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::ClientBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::Connect(c) => c.reason(),
            ProxyError::ResponseTimeout(_) => "read_timeout",
            ProxyError::Upstream(_) => "upstream_reset",
            ProxyError::ClientBodyTooLarge { .. } => "body_too_large",
            ProxyError::ClientBody(_) => "client_body_error",
            ProxyError::ClientBodyTimeout(_) => "client_body_timeout",
        }
    }
}

/// What `forward` needs besides the request itself.
pub struct Forward<'a> {
    pub service: &'a Service,
    pub pool: &'a Rc<UpstreamPool>,
    /// Origin-form target for the upstream (path after strip_path, plus query).
    pub path_and_query: PathAndQuery,
    /// Host header for the upstream; `None` means the target address.
    pub host: Option<HeaderValue>,
    /// The forwarding fields as field lines (`headers::set_forwarded`), written after the
    /// head's own.
    pub forwarding: Vec<u8>,
}

/// The upstream's response head and body, the target that served it, and its connection.
pub struct Forwarded {
    pub response: Response<UpstreamBody>,
    pub target: usize,
    pub lease: UpstreamLease,
}

/// The target index of the last attempt, when an error happened after one was chosen.
pub struct Failed {
    pub error: ProxyError,
    pub target: Option<usize>,
}

/// `head` and `body` are borrowed: the caller keeps them where they are, and the request
/// path's futures (each holding what it was given) do not carry them once per layer.
pub async fn forward(fwd: Forward<'_>, head: &mut request::Parts, body: &mut RequestBody) -> Result<Forwarded, Failed> {
    let service = fwd.service;
    let spec = &service.spec;
    let attempts = if is_idempotent(&head.method) { 1 + spec.retries } else { 1 };
    head.version = Version::HTTP_11;
    head.uri = fwd.path_and_query.into();
    let mut tried = 0u64;
    let mut last: Option<Failed> = None;
    // One clock reading for the pool's idle check and the response wait's start, taken again
    // only after a connect attempt (which may have waited).
    let mut now = std::time::Instant::now();
    for _ in 0..attempts {
        let i = match service.pick(tried) {
            Ok(i) => i,
            Err(PickError::NoHealthyTarget) if last.is_none() => {
                return Err(Failed { error: ProxyError::NoHealthyUpstream, target: None });
            }
            Err(_) => break,
        };
        tried |= 1u64.checked_shl(i as u32).unwrap_or(0);
        let target = &service.targets[i];
        let in_flight = target.state.begin();
        let endpoint = service.endpoint(i);
        let conn = match fwd.pool.get(&endpoint, spec.connect_timeout, spec.idle_timeout, now).await {
            Ok(c) => c,
            Err(e) => {
                now = std::time::Instant::now();
                count_tls(service, &e);
                tracing::warn!(service = %spec.name, target = %target.label, error = %e, "upstream connect failed");
                if target.state.record_failure(spec.max_fails, spec.fail_timeout) {
                    tracing::warn!(service = %spec.name, target = %target.label, "target ejected after consecutive failures");
                }
                last = Some(Failed { error: ProxyError::Connect(e), target: Some(i) });
                continue;
            }
        };
        let out = h1::Outgoing { head, host: fwd.host.as_ref().or(target.host.as_ref()), fields: &fwd.forwarding };
        let lease = UpstreamLease { pool: fwd.pool.clone(), endpoint, max_idle: spec.max_idle_per_target, in_flight };
        // A new connection was waited for: the response wait starts now, not before it.
        let start = if conn.reused { tokio::time::Instant::from_std(now) } else { tokio::time::Instant::now() };
        return send(lease, conn, out, body, service, i, start).await;
    }
    Err(last.unwrap_or(Failed { error: ProxyError::NoHealthyUpstream, target: None }))
}

/// Sends on a leased connection. A pooled connection the upstream closed as we sent, without a
/// byte of answer, gets the request once more on a fresh connection to the same target, when
/// that is safe: an idempotent method and no body (nothing consumed that could not be resent).
async fn send(
    lease: UpstreamLease,
    conn: PooledConn,
    out: h1::Outgoing<'_>,
    body: &mut RequestBody,
    service: &Service,
    i: usize,
    start: tokio::time::Instant,
) -> Result<Forwarded, Failed> {
    let spec = &service.spec;
    let target = &service.targets[i];
    let fail = |error| Failed { error, target: Some(i) };
    let progress = body.progress();
    let resendable = conn.reused && http_body::Body::is_end_stream(body) && is_idempotent(&out.head.method);
    // Pinned here and lent to the stall watch, which then holds a pointer, not a second
    // exchange state of its own.
    let mut conn = conn;
    let mut timer = conn.conn.take_response_timer();
    let sent = {
        let exchange = std::pin::pin!(h1::exchange(conn.conn, out, body));
        response_or_stall(exchange, &progress, spec.read_timeout, start, &mut timer).await
    };
    let error = match sent {
        Some(Ok(mut response)) => {
            if let Some(timer) = timer {
                response.body_mut().keep_response_timer(timer);
            }
            target.state.record_success();
            return Ok(Forwarded { response, target: i, lease });
        }
        None => {
            target.state.record_failure(spec.max_fails, spec.fail_timeout);
            return Err(fail(ProxyError::ResponseTimeout(spec.read_timeout)));
        }
        Some(Err(e)) if resendable && h1::stale(&e) => {
            // An idle timeout of zero skips the pool: we just saw a pooled connection fail.
            let now = std::time::Instant::now();
            let conn = match lease.pool.get(&lease.endpoint, spec.connect_timeout, Duration::ZERO, now).await {
                Ok(c) => c,
                Err(e) => {
                    count_tls(service, &e);
                    target.state.record_failure(spec.max_fails, spec.fail_timeout);
                    return Err(fail(ProxyError::Connect(e)));
                }
            };
            return Box::pin(send(lease, conn, out, body, service, i, tokio::time::Instant::now())).await;
        }
        Some(Err(e)) => e,
    };
    Err(fail(classify(error, service, i, &progress)))
}

/// Waits for the response head, sent at `start`, with the connection's `timer` (made here
/// the first time); `None` when the upstream stalled. The upstream is at fault only
/// when it sat `read_timeout` on a complete request, or did not take the body it was offered
/// for as long; while the client owes body bytes the client's own `client_body_timeout` runs
/// (the body then fails with 408) and the upstream's clock waits.
async fn response_or_stall<F: std::future::Future>(
    mut response: std::pin::Pin<&mut F>,
    progress: &BodyProgress,
    read_timeout: Duration,
    start: tokio::time::Instant,
    timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
) -> Option<F::Output> {
    let upstream_deadline = || progress.last().max(start) + read_timeout;
    let wake_at = || {
        if progress.awaiting_client() { tokio::time::Instant::now() + read_timeout } else { upstream_deadline() }
    };
    // One timer, reset when it fires early, rather than a new one per wake-up; `biased`: the
    // response first, and no random branch order drawn at every poll.
    let timer = match timer {
        // Left where it is when it would fire no later than this wait's deadline: firing early
        // only costs a check and a reset below (about once per `read_timeout` on a busy
        // connection), and not moving it spares a clock-to-tick conversion per request.
        Some(t) if t.deadline() <= wake_at() => t,
        Some(t) => {
            t.as_mut().reset(wake_at());
            t
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(wake_at()))),
    };
    loop {
        tokio::select! {
            biased;
            out = response.as_mut() => return Some(out),
            () = timer.as_mut() => {
                if !progress.awaiting_client() && tokio::time::Instant::now() >= upstream_deadline() {
                    return None;
                }
                timer.as_mut().reset(wake_at());
            }
        }
    }
}

/// `gateway_upstream_tls_errors_total{service,reason}`.
fn count_tls(service: &Service, e: &ConnectError) {
    if let (ConnectError::Tls(t), Some(tls)) = (e, &service.tls) {
        tls.count(t);
    }
}

/// Separates the client's fault (its body) from the upstream's; only the latter counts against
/// the target's health, and a connection that fails while the client still owes body bytes is
/// not held against the target either (the upstream most likely gave up on that client). A
/// TLS alert on the first exchange is the upstream refusing our TLS (in TLS 1.3 it rejects a
/// client certificate after our side of the handshake is done): that is a TLS connect
/// failure, with its reason.
fn classify(error: h1::SendError, service: &Service, i: usize, progress: &BodyProgress) -> ProxyError {
    let target = &service.targets[i];
    let error = match error {
        h1::SendError::ClientBody(e) => return ProxyError::unsent_body(e),
        h1::SendError::Upstream { error, .. } => error,
    };
    if service.tls.is_some()
        && let Some(tls) = crate::tls::tls_error_in(target.addr, &error)
    {
        let e = ConnectError::Tls(tls);
        count_tls(service, &e);
        tracing::warn!(service = %service.spec.name, target = %target.label, error = %e, "upstream refused the TLS session");
        target.state.record_failure(service.spec.max_fails, service.spec.fail_timeout);
        return ProxyError::Connect(e);
    }
    if !progress.awaiting_client() {
        target.state.record_failure(u32::MAX, Duration::ZERO);
    }
    ProxyError::Upstream(error)
}

/// Methods that may be sent twice (RFC 9110 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE)
}
