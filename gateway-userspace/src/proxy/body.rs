//! Bodies on their way through the gateway: the client's request body (`body/client.rs`: as
//! the listener hands it over, HTTP/1 or HTTP/2; `body/request.rs`:
//! size-limited, timed, optionally read ahead) and the response body (counted, read-timed,
//! observed, optionally spooled, and the place where a request is finished: pooled connection
//! returned, log phases run).

mod client;
mod request;

pub use client::{ClientBody, ClientBodyError, H2Body};
pub use request::{BodyProgress, RequestBody};

use std::{
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use thiserror::Error;
use tokio::time::{Instant, Sleep};

use super::{
    SpoolSpec,
    h1::{H1Error, UpstreamBody},
    spool::Spool,
};
use crate::{
    metrics::Metrics,
    proxy::UpstreamPool,
    request::{Outcome, RequestCtx},
    upstream::InFlight,
};

/// Why a body stream failed.
#[derive(Debug, Error)]
pub enum BodyError {
    #[error("request body is larger than the {limit} byte limit")]
    TooLarge { limit: u64 },
    #[error("client body stream failed: {0}")]
    Client(#[source] ClientBodyError),
    #[error("upstream body stream failed: {0}")]
    Upstream(#[source] H1Error),
    #[error("upstream sent nothing for {0:?}")]
    UpstreamTimeout(Duration),
    #[error("client sent no request body bytes for {0:?}")]
    ClientTimeout(Duration),
    #[error("response temp file failed: {0}")]
    Spool(#[source] std::io::Error),
}

/// Where an upstream connection borrowed for one request goes back to when the response body
/// (which holds the connection) ends.
pub struct UpstreamLease {
    pub pool: Rc<UpstreamPool>,
    pub endpoint: crate::upstream::Endpoint,
    pub max_idle: usize,
    pub in_flight: InFlight,
}

impl UpstreamLease {
    /// Returns the body's connection to the pool if it can serve another request; idle from
    /// `now` on.
    pub fn release(self, body: &mut UpstreamBody, now: std::time::Instant) {
        if let Some(conn) = body.take_reusable() {
            self.pool.checkin(&self.endpoint, conn, self.max_idle, now);
        }
    }
}

enum Source {
    Full(Option<Bytes>),
    Upstream {
        body: UpstreamBody,
        read_timeout: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        lease: Option<UpstreamLease>,
    },
    /// Read ahead of the client by a pump task (response buffering).
    Spooled(Spool),
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

    /// The upstream's body: streamed at the client's pace, or spooled when the route buffers
    /// responses (and there is a body at all).
    /// `spool`: the route's response buffering and the metrics it counts into, when it buffers.
    pub fn upstream(
        body: UpstreamBody,
        read_timeout: Duration,
        lease: UpstreamLease,
        spool: Option<(Arc<SpoolSpec>, Arc<Metrics>)>,
        ctx: Box<RequestCtx>,
    ) -> Self {
        let source = match spool {
            Some((spec, metrics)) if !body.is_end_stream() => {
                Source::Spooled(Spool::start(body, read_timeout, lease, spec, metrics))
            }
            _ => Source::Upstream { body, read_timeout, timer: None, lease: Some(lease) },
        };
        ResponseBody { source, ctx: Some(ctx) }
    }

    /// A body with no request behind it (for responses outside the pipeline).
    pub fn detached(bytes: Bytes) -> Self {
        ResponseBody { source: Source::Full(Some(bytes)), ctx: None }
    }

    fn finish(&mut self, outcome: Outcome) {
        // One clock reading for the request's end and its connection's idle start.
        let now = std::time::Instant::now();
        if let Source::Upstream { lease, body, .. } = &mut self.source
            && let (Some(l), Outcome::Completed) = (lease.take(), outcome)
        {
            l.release(body, now);
        }
        if let Some(mut ctx) = self.ctx.take() {
            ctx.finish_at(outcome, now);
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
            Source::Spooled(spool) => spool.poll_frame(cx),
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
            Source::Spooled(spool) => spool.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Upstream { body, .. } => body.size_hint(),
            Source::Spooled(spool) => spool.size_hint(),
        }
    }
}

/// Polls the upstream body; a read timer is armed only while we actually wait.
pub(super) fn poll_upstream(
    body: &mut UpstreamBody,
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
