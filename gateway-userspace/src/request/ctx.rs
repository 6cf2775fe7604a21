//! Per-request state shared by the phases: the request's facts, not the process's.

use std::{
    cell::Cell,
    net::IpAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, header, request, uri::PathAndQuery};

use super::{BodyObserver, ConnInfo, Pipeline, RequestObserver, VerifyStatus};

/// What a request may know of the snapshot it runs on: the names behind its indexes, and the
/// phases whose log hooks end it. The snapshot implements it; holding it keeps that snapshot
/// alive until the request is logged (a reload never changes a request mid-way).
pub trait SnapshotView {
    fn pipeline(&self) -> &Pipeline;
    fn route_name(&self, route: usize) -> Option<&Arc<str>>;
    fn service_name(&self, service: usize) -> Option<&Arc<str>>;
    fn target_label(&self, service: usize, target: usize) -> Option<&Arc<str>>;
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
    /// Set through [`Timings::set_response_ready`].
    pub response_ready: Option<Instant>,
    pub end: Option<Instant>,
    /// `upstream()` and `gateway()`, worked out once when the response is ready: the latency
    /// headers read both, and the request metrics again (each an `Instant` subtraction or two).
    spans: Option<(Option<Duration>, Duration)>,
}

impl Timings {
    fn new(start: Instant) -> Self {
        Timings { start, upstream_start: None, upstream_head: None, response_ready: None, end: None, spans: None }
    }

    /// The response head is ready to go to the client at `ready`; the other instants before it
    /// are final.
    pub fn set_response_ready(&mut self, ready: Instant) {
        self.response_ready = Some(ready);
        self.spans = None;
        let upstream = self.upstream();
        let gateway = ready.duration_since(self.start).saturating_sub(upstream.unwrap_or_default());
        self.spans = Some((upstream, gateway));
    }

    /// From forwarding (connect included) to the upstream's response head.
    pub fn upstream(&self) -> Option<Duration> {
        match self.spans {
            Some((upstream, _)) => upstream,
            None => Some(self.upstream_head?.duration_since(self.upstream_start?)),
        }
    }

    /// Time the gateway itself spent: before forwarding, and from the upstream head to ours.
    pub fn gateway(&self) -> Duration {
        if let Some((_, gateway)) = self.spans {
            return gateway;
        }
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
    view: Rc<dyn SnapshotView>,
    pub request_id: HeaderValue,
    pub method: Method,
    /// The request target as the client sent it (for logs; `path()`): a clone shares the
    /// head's bytes, where an owned copy of the path cost an allocation per request.
    client_target: Option<PathAndQuery>,
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
    /// The client certificate's status and, when it fails, why (set by the client-certificate
    /// phase; read by the audit log).
    pub client_cert: (VerifyStatus, Option<&'static str>),
    pub usage: Usage,
    /// Observers attached by phases to the response body.
    pub response_observers: Vec<Box<dyn BodyObserver>>,
    /// Observers attached by phases to the request body (handed to it when it is forwarded).
    pub request_observers: Vec<Box<dyn RequestObserver>>,
    /// Phase-private data.
    pub extensions: http::Extensions,
}

impl RequestCtx {
    /// A request's context; `request_id` and `client_ip` are the driver's to decide (header
    /// rules and trusted proxies). Boxed here, built where it lives: the context (~600 bytes)
    /// stays on the heap for the request's life, and built by value it was copied into its box.
    pub fn new(
        conn: Rc<ConnInfo>,
        view: Rc<dyn SnapshotView>,
        head: &request::Parts,
        request_id: HeaderValue,
        client_ip: IpAddr,
    ) -> Box<Self> {
        conn.active.set(conn.active.get() + 1);
        conn.head_started.set(None);
        Box::new(RequestCtx {
            request_id,
            method: head.method.clone(),
            client_target: head.uri.path_and_query().cloned(),
            user_agent: head.headers.get(header::USER_AGENT).cloned(),
            client_ip,
            conn,
            view,
            route: None,
            service: None,
            target: None,
            status: 0,
            error: None,
            outcome: None,
            timings: Timings::new(Instant::now()),
            bytes_received: Rc::default(),
            bytes_sent: 0,
            identity: Identity::default(),
            client_cert: (VerifyStatus::Absent, None),
            usage: Usage::default(),
            response_observers: Vec::new(),
            request_observers: Vec::new(),
            extensions: http::Extensions::new(),
        })
    }

    /// The path as the client sent it, as `Uri::path` gives it.
    pub fn path(&self) -> &str {
        self.client_target.as_ref().map_or("", PathAndQuery::path)
    }

    pub fn route_name(&self) -> Option<&Arc<str>> {
        self.view.route_name(self.route?)
    }

    pub fn service_name(&self) -> Option<&Arc<str>> {
        self.view.service_name(self.service?)
    }

    pub fn target_label(&self) -> Option<&Arc<str>> {
        self.view.target_label(self.service?, self.target?)
    }

    pub fn on_response_data(&mut self, data: &Bytes) {
        self.bytes_sent += data.len() as u64;
        for o in &mut self.response_observers {
            o.on_data(data);
        }
    }

    /// Ends the request: observers, then every phase's log hook. Called exactly once.
    pub fn finish(&mut self, outcome: Outcome) {
        self.finish_at(outcome, Instant::now());
    }

    /// `finish` with the caller's clock reading of the end (the response body reads it once for
    /// this and for its pooled connection's idle start).
    pub fn finish_at(&mut self, mut outcome: Outcome, end: Instant) {
        if outcome == Outcome::ClientAborted && (self.method == Method::HEAD || matches!(self.status, 204 | 304)) {
            // Bodiless responses are never polled to the end.
            outcome = Outcome::Completed;
        }
        self.outcome = Some(outcome);
        self.timings.end = Some(end);
        let mut observers = std::mem::take(&mut self.response_observers);
        for o in &mut observers {
            if outcome == Outcome::Completed {
                o.on_end(self);
            } else {
                o.on_abort(self);
            }
        }
        let view = self.view.clone();
        for phase in view.pipeline().phases() {
            phase.on_log(self);
        }
        self.conn.active.set(self.conn.active.get().saturating_sub(1));
        if self.conn.active.get() == 0 {
            self.conn.note_idle(end);
        } else {
            self.conn.last_active.set(end);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The spans worked out when the response is ready are the ones the instants give.
    #[test]
    fn spans_are_fixed_when_the_response_is_ready() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut t = Timings::new(start);
        t.upstream_start = Some(at(2));
        t.upstream_head = Some(at(7));
        assert_eq!((t.upstream(), t.gateway()), (Some(Duration::from_millis(5)), Duration::ZERO));
        t.set_response_ready(at(10));
        assert_eq!((t.upstream(), t.gateway()), (Some(Duration::from_millis(5)), Duration::from_millis(5)));
        let mut refused = Timings::new(start);
        refused.set_response_ready(at(3));
        assert_eq!((refused.upstream(), refused.gateway()), (None, Duration::from_millis(3)));
    }
}
