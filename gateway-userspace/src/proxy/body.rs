//! Bodies that stream through the gateway without being buffered: the client's request body
//! (size-limited, counted) and the response body (counted, read-timed, observed, and the place
//! where a request is finished: pooled connection returned, log phases run).

use std::{
    cell::Cell,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use thiserror::Error;
use tokio::time::{Instant, Sleep};

use crate::{
    pipeline::{Outcome, RequestCtx},
    upstream::{InFlight, UpstreamPool},
};

/// Why a body stream failed.
#[derive(Debug, Error)]
pub enum BodyError {
    #[error("request body is larger than the {limit} byte limit")]
    TooLarge { limit: u64 },
    #[error("client body stream failed: {0}")]
    Client(#[source] hyper::Error),
    #[error("upstream body stream failed: {0}")]
    Upstream(#[source] hyper::Error),
    #[error("upstream sent nothing for {0:?}")]
    UpstreamTimeout(Duration),
}

/// Something that watches a body go by without holding it (e.g. token accounting).
pub trait BodyObserver {
    fn on_data(&mut self, data: &Bytes);
    /// Called once when the body ended cleanly, before the log phases run.
    fn on_end(&mut self, ctx: &mut RequestCtx);
    /// Called once instead of `on_end` when the body did not end cleanly (client gone, upstream
    /// failed), before the log phases run: what was seen so far may still count.
    fn on_abort(&mut self, _ctx: &mut RequestCtx) {}
}

/// Something that watches the request body go upstream (e.g. MCP tool calls). It runs where
/// the body is polled (the upstream connection's task), so it cannot reach the request context:
/// share state with a phase through the observer itself.
pub trait RequestObserver {
    fn on_data(&mut self, data: &Bytes);
    /// Called once when the whole body was read.
    fn on_end(&mut self);
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: Option<Incoming>,
    limit: u64,
    received: Rc<Cell<u64>>,
    observers: Vec<Box<dyn RequestObserver>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64, received: Rc<Cell<u64>>) -> Self {
        RequestBody { inner: Some(inner), limit, received, observers: Vec::new() }
    }

    pub fn empty() -> Self {
        RequestBody { inner: None, limit: 0, received: Rc::default(), observers: Vec::new() }
    }

    /// Adds observers that see the body as it is sent.
    pub fn observed(mut self, observers: Vec<Box<dyn RequestObserver>>) -> Self {
        self.observers = observers;
        self
    }

    fn ended(&mut self) {
        for mut o in std::mem::take(&mut self.observers) {
            o.on_end();
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let frame = match ready!(Pin::new(inner).poll_frame(cx)) {
            None => {
                self.ended();
                return Poll::Ready(None);
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(BodyError::Client(e)))),
            Some(Ok(f)) => f,
        };
        if let Some(data) = frame.data_ref() {
            let total = self.received.get() + data.len() as u64;
            self.received.set(total);
            if total > self.limit {
                self.inner = None;
                self.observers.clear();
                return Poll::Ready(Some(Err(BodyError::TooLarge { limit: self.limit })));
            }
            for o in &mut self.observers {
                o.on_data(data);
            }
        }
        if self.inner.as_ref().is_some_and(Body::is_end_stream) {
            self.ended();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// An upstream connection borrowed for one request; back to the pool when the response body ends.
pub struct UpstreamLease {
    pub pool: Rc<UpstreamPool>,
    pub endpoint: crate::upstream::Endpoint,
    pub sender: SendRequest<RequestBody>,
    pub max_idle: usize,
    pub in_flight: InFlight,
}

enum Source {
    Full(Option<Bytes>),
    Upstream { body: Incoming, read_timeout: Duration, timer: Option<Pin<Box<Sleep>>>, lease: Option<UpstreamLease> },
}

/// The response body sent to the client. Owns the request's context: when the body ends, fails
/// or is dropped (client gone), the request is finished exactly once.
pub struct ResponseBody {
    source: Source,
    ctx: Option<Box<RequestCtx>>,
}

impl ResponseBody {
    pub fn full(bytes: Bytes, ctx: Box<RequestCtx>) -> Self {
        ResponseBody { source: Source::Full(Some(bytes).filter(|b| !b.is_empty())), ctx: Some(ctx) }
    }

    pub fn upstream(body: Incoming, read_timeout: Duration, lease: UpstreamLease, ctx: Box<RequestCtx>) -> Self {
        ResponseBody {
            source: Source::Upstream { body, read_timeout, timer: None, lease: Some(lease) },
            ctx: Some(ctx),
        }
    }

    /// A body with no request behind it (for responses outside the pipeline).
    pub fn detached(bytes: Bytes) -> Self {
        ResponseBody { source: Source::Full(Some(bytes)), ctx: None }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Source::Upstream { lease, .. } = &mut self.source
            && let (Some(l), Outcome::Completed) = (lease.take(), outcome)
        {
            l.pool.checkin(&l.endpoint, l.sender, l.max_idle);
        }
        if let Some(mut ctx) = self.ctx.take() {
            ctx.finish(outcome);
        }
    }

    fn on_data(&mut self, data: &Bytes) {
        if let Some(ctx) = self.ctx.as_mut() {
            ctx.on_response_data(data);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream { body, read_timeout, timer, .. } => poll_upstream(body, *read_timeout, timer, cx),
        };
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish(Outcome::Completed);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body aborted");
                this.finish(Outcome::UpstreamBodyFailed);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.on_data(data);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(b) => b.is_none(),
            Source::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Upstream { body, .. } => body.size_hint(),
        }
    }
}

/// Polls the upstream body; a read timer is armed only while we actually wait.
fn poll_upstream(
    body: &mut Incoming,
    read_timeout: Duration,
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(r) => {
            *timer = None;
            Poll::Ready(r.map(|r| r.map_err(BodyError::Upstream)))
        }
        Poll::Pending => {
            let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + read_timeout)));
            match t.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::UpstreamTimeout(read_timeout)))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Still holding the context means the client went away before the body ended.
        if self.ctx.is_some() {
            let outcome = if self.is_end_stream() { Outcome::Completed } else { Outcome::ClientAborted };
            self.finish(outcome);
        }
    }
}

use std::future::Future as _;
