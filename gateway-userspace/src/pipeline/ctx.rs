//! Per-request state shared by the phases, and per-connection facts.

use std::{
    cell::Cell,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, header, request};

use crate::{
    proxy::{BodyObserver, RequestObserver, headers},
    snapshot::LocalSnapshot,
    worker::WorkerLocal,
};

/// Facts about the client connection a request arrived on.
pub struct ConnInfo {
    pub worker: Rc<WorkerLocal>,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `"http"` or `"https"`.
    pub scheme: &'static str,
    /// Requests in flight on this connection (the idle watchdog reads it).
    pub active: Cell<u32>,
    /// When the last request finished (or the connection was accepted).
    pub last_active: Cell<Instant>,
    /// When the first byte of a not-yet-complete request head arrived.
    pub head_started: Cell<Option<Instant>>,
    /// Wakes the connection watchdog when a head starts or the last request ends, so its
    /// deadlines (slow header, park, idle) are exact.
    pub watchdog_wake: tokio::sync::Notify,
    /// Set while an idle HTTP/1 connection is being parked (see `listener::conn`).
    pub park: Cell<bool>,
    /// Set (with `watchdog_wake`) when the connection must end once its requests in flight are
    /// answered: HTTP/2 sends GOAWAY, so the client opens no more streams on it.
    pub close_requested: Cell<bool>,
    /// The TLS session (version, SNI, client certificate), on TLS listeners.
    pub tls: Option<crate::tls::TlsInfo>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response was handed to the client connection.
    Completed,
    /// The upstream failed or stalled while streaming the body.
    UpstreamBodyFailed,
    /// The client went away before the response was complete.
    ClientAborted,
}

/// Instants along the request path; `None` for stages the request did not reach.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub start: Instant,
    pub upstream_start: Option<Instant>,
    pub upstream_head: Option<Instant>,
    pub response_ready: Option<Instant>,
    pub end: Option<Instant>,
}

impl Timings {
    /// From forwarding (connect included) to the upstream's response head.
    pub fn upstream(&self) -> Option<Duration> {
        Some(self.upstream_head?.duration_since(self.upstream_start?))
    }

    /// Time the gateway itself spent: before forwarding, and from the upstream head to ours.
    pub fn gateway(&self) -> Duration {
        let ready = self.response_ready.unwrap_or(self.start);
        let total = ready.duration_since(self.start);
        total.saturating_sub(self.upstream().unwrap_or_default())
    }

    /// Whole request, until the last byte was handed to the client.
    pub fn total(&self) -> Duration {
        self.end.unwrap_or_else(Instant::now).duration_since(self.start)
    }
}

/// Who the client is, once the identify phase has run (all `None` on open routes).
#[derive(Debug, Default, Clone)]
pub struct Identity {
    /// The token's user claim (`sub` by default), or the API consumer's id.
    pub user_id: Option<String>,
    pub workspace_id: Option<String>,
    /// The `[[consumers]]` entry the request's credentials belong to.
    pub consumer: Option<crate::consumer::Consumer>,
    /// How the request was authenticated: `jwt`, `introspection`, `api_key` or `mtls`.
    pub credential: Option<&'static str>,
}

/// What the upstream reported about an AI/MCP exchange.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    pub tokens_used: Option<u64>,
    pub model_name: Option<String>,
    pub tools_used: Vec<String>,
}

/// Everything the phases know about one request.
pub struct RequestCtx {
    pub conn: Rc<ConnInfo>,
    pub snapshot: LocalSnapshot,
    pub request_id: HeaderValue,
    pub method: Method,
    /// The path as the client sent it (for logs).
    pub path: String,
    pub user_agent: Option<HeaderValue>,
    /// The client address after trusted-proxy resolution.
    pub client_ip: IpAddr,
    pub route: Option<usize>,
    pub service: Option<usize>,
    pub target: Option<usize>,
    pub status: u16,
    /// The refusal reason, when the gateway answered itself.
    pub error: Option<&'static str>,
    pub outcome: Option<Outcome>,
    pub timings: Timings,
    pub bytes_received: Rc<Cell<u64>>,
    pub bytes_sent: u64,
    pub identity: Identity,
    pub usage: Usage,
    /// Observers attached by phases to the response body.
    pub response_observers: Vec<Box<dyn BodyObserver>>,
    /// Observers attached by phases to the request body (handed to it when it is forwarded).
    pub request_observers: Vec<Box<dyn RequestObserver>>,
    /// Phase-private data.
    pub extensions: http::Extensions,
}

impl RequestCtx {
    pub fn new(conn: Rc<ConnInfo>, snapshot: LocalSnapshot, head: &request::Parts) -> Self {
        conn.active.set(conn.active.get() + 1);
        conn.head_started.set(None);
        let trusted = &snapshot.config.server.trusted_proxies;
        let client_ip = headers::client_ip(conn.peer.ip(), &head.headers, trusted);
        RequestCtx {
            request_id: headers::request_id(&head.headers),
            method: head.method.clone(),
            path: head.uri.path().to_owned(),
            user_agent: head.headers.get(header::USER_AGENT).cloned(),
            client_ip,
            conn,
            snapshot,
            route: None,
            service: None,
            target: None,
            status: 0,
            error: None,
            outcome: None,
            timings: Timings {
                start: Instant::now(),
                upstream_start: None,
                upstream_head: None,
                response_ready: None,
                end: None,
            },
            bytes_received: Rc::default(),
            bytes_sent: 0,
            identity: Identity::default(),
            usage: Usage::default(),
            response_observers: Vec::new(),
            request_observers: Vec::new(),
            extensions: http::Extensions::new(),
        }
    }

    pub fn route_name(&self) -> Option<&Arc<str>> {
        self.route.and_then(|r| self.snapshot.config.routes.get(r)).map(|r| &r.name)
    }

    pub fn service_name(&self) -> Option<&Arc<str>> {
        self.service.and_then(|s| self.snapshot.services.get(s)).map(|s| &s.spec.name)
    }

    pub fn target_label(&self) -> Option<&Arc<str>> {
        let service = self.snapshot.services.get(self.service?)?;
        service.targets.get(self.target?).map(|t| &t.label)
    }

    pub(crate) fn on_response_data(&mut self, data: &Bytes) {
        self.bytes_sent += data.len() as u64;
        for o in &mut self.response_observers {
            o.on_data(data);
        }
    }

    /// Ends the request: observers, then every phase's log hook. Called exactly once.
    pub(crate) fn finish(&mut self, mut outcome: Outcome) {
        if outcome == Outcome::ClientAborted && (self.method == Method::HEAD || matches!(self.status, 204 | 304)) {
            // Bodiless responses are never polled to the end.
            outcome = Outcome::Completed;
        }
        self.outcome = Some(outcome);
        self.timings.end = Some(Instant::now());
        let mut observers = std::mem::take(&mut self.response_observers);
        for o in &mut observers {
            if outcome == Outcome::Completed {
                o.on_end(self);
            } else {
                o.on_abort(self);
            }
        }
        let snapshot = self.snapshot.clone();
        for phase in snapshot.pipeline.phases() {
            phase.on_log(self);
        }
        self.conn.active.set(self.conn.active.get().saturating_sub(1));
        self.conn.last_active.set(Instant::now());
        if self.conn.active.get() == 0 {
            self.conn.watchdog_wake.notify_one();
        }
    }
}

impl Drop for RequestCtx {
    /// A request dropped before it produced a response (the client went away mid-phase) is
    /// still logged.
    fn drop(&mut self) {
        if self.outcome.is_none() {
            self.finish(Outcome::ClientAborted);
        }
    }
}
