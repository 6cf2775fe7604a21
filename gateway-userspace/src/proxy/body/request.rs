//! The client's request body on its way upstream: size-limited, timed (a client that pauses
//! longer than the route's `client_body_timeout` gets 408), observed, and optionally read into
//! memory before an upstream connection is taken.

use std::{
    cell::Cell,
    collections::VecDeque,
    future::{Future as _, poll_fn},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{BodyError, ClientBody};
use crate::request::RequestObserver;

/// How far the request body got, shared with the code that waits for the upstream's answer:
/// only an upstream that stalls while it has the whole body (or while it does not take the body
/// we have) is at fault; a client that stalls is not.
#[derive(Debug)]
pub struct BodyProgress {
    complete: Cell<bool>,
    awaiting_client: Cell<bool>,
    last: Cell<Instant>,
}

impl Default for BodyProgress {
    fn default() -> Self {
        BodyProgress { complete: Cell::new(false), awaiting_client: Cell::new(false), last: Cell::new(Instant::now()) }
    }
}

impl BodyProgress {
    /// The whole body was read from the client.
    pub fn complete(&self) -> bool {
        self.complete.get()
    }

    /// The body is waiting for bytes the client has not sent yet.
    pub fn awaiting_client(&self) -> bool {
        self.awaiting_client.get() && !self.complete.get()
    }

    /// When the body last moved (a read, a wait starting, the end).
    pub fn last(&self) -> Instant {
        self.last.get()
    }

    fn moved(&self, awaiting_client: bool) {
        self.awaiting_client.set(awaiting_client);
        self.last.set(Instant::now());
    }

    fn ended(&self) {
        self.complete.set(true);
        self.moved(false);
    }
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: Option<ClientBody>,
    /// Frames read ahead (request buffering), sent before anything else.
    held: VecDeque<Frame<Bytes>>,
    held_bytes: u64,
    limit: u64,
    received: Rc<Cell<u64>>,
    observers: Vec<Box<dyn RequestObserver>>,
    client_timeout: Duration,
    /// The client body timer, allocated at the first wait and reset for each later one (a
    /// streaming upload waits between most of its frames).
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` runs for the current wait.
    waiting: bool,
    progress: Rc<BodyProgress>,
}

impl RequestBody {
    /// `now`: the caller's clock reading as forwarding starts (one read serves both).
    pub fn new(
        inner: Option<ClientBody>,
        limit: u64,
        received: Rc<Cell<u64>>,
        client_timeout: Duration,
        now: std::time::Instant,
    ) -> Self {
        // A body that has already ended (most requests) starts complete; `ended()` would read
        // the clock once more.
        let complete = inner.as_ref().is_none_or(Body::is_end_stream);
        let progress = BodyProgress {
            complete: Cell::new(complete),
            awaiting_client: Cell::new(false),
            last: Cell::new(Instant::from_std(now)),
        };
        RequestBody {
            inner,
            held: VecDeque::new(),
            held_bytes: 0,
            limit,
            received,
            observers: Vec::new(),
            client_timeout,
            timer: None,
            waiting: false,
            progress: Rc::new(progress),
        }
    }

    pub fn empty() -> Self {
        let progress = BodyProgress::default();
        progress.ended();
        RequestBody {
            inner: None,
            held: VecDeque::new(),
            held_bytes: 0,
            limit: 0,
            received: Rc::default(),
            observers: Vec::new(),
            client_timeout: Duration::MAX,
            timer: None,
            waiting: false,
            progress: Rc::new(progress),
        }
    }

    /// Adds observers that see the body as it is sent.
    pub fn observed(mut self, observers: Vec<Box<dyn RequestObserver>>) -> Self {
        self.observers = observers;
        self
    }

    pub fn progress(&self) -> Rc<BodyProgress> {
        self.progress.clone()
    }

    /// Reads the body into memory while it fits in `memory` bytes (nginx's
    /// `proxy_request_buffering`): a body that ends within it is complete before an upstream
    /// connection is taken, so a slow client holds none. A body announced larger than `memory`
    /// is not read ahead; one that turns out larger streams on from what was read.
    pub async fn read_ahead(&mut self, memory: u64) -> Result<(), BodyError> {
        if memory == 0 || self.size_hint().lower() > memory {
            return Ok(());
        }
        while self.held_bytes <= memory && !self.inner_done() {
            match poll_fn(|cx| self.poll_client(cx)).await {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    self.held_bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                    self.held.push_back(frame);
                }
            }
        }
        Ok(())
    }

    fn inner_done(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn ended(&mut self) {
        self.progress.ended();
        for mut o in std::mem::take(&mut self.observers) {
            o.on_end();
        }
    }

    /// One frame from the client: counted, checked against the limit, observed, timed.
    fn poll_client(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(inner).poll_frame(cx);
        let frame = match polled {
            Poll::Pending => {
                let timeout = self.client_timeout;
                if !self.waiting {
                    self.waiting = true;
                    self.progress.moved(true);
                    match self.timer.as_mut() {
                        // `sleep` clamps a timeout too large for the clock; so must the reset.
                        Some(t) => t.as_mut().reset(far_or(tokio::time::Instant::now(), timeout)),
                        None => self.timer = Some(Box::pin(tokio::time::sleep(timeout))),
                    }
                }
                let Some(t) = self.timer.as_mut() else { return Poll::Pending };
                ready!(t.as_mut().poll(cx));
                self.inner = None;
                self.observers.clear();
                return Poll::Ready(Some(Err(BodyError::ClientTimeout(timeout))));
            }
            Poll::Ready(None) => {
                self.waiting = false;
                self.ended();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(Some(Ok(f))) => f,
        };
        self.waiting = false;
        self.progress.moved(false);
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
        if self.inner_done() {
            self.ended();
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(frame) = self.held.pop_front() {
            self.held_bytes -= frame.data_ref().map_or(0, |d| d.len() as u64);
            return Poll::Ready(Some(Ok(frame)));
        }
        self.poll_client(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.inner_done()
    }

    fn size_hint(&self) -> SizeHint {
        // hyper's hint is what is left to read: add what is held.
        let rest =
            self.inner.as_ref().filter(|b| !b.is_end_stream()).map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + self.held_bytes);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + self.held_bytes);
        }
        hint
    }
}

/// `now + timeout`, or about thirty years from now when that does not fit the clock.
fn far_or(now: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400))
}
