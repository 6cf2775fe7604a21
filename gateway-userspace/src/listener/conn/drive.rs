//! Driving one connection: hyper's HTTP/1 (reusable across parks, its builder with the
//! configured limits) or our HTTP/2 server (`h2_serve`), and `drive`, which runs a connection
//! until it ends, its watchdog fires, it parks, or the worker shuts down (gracefully: in-flight
//! requests finish).

use std::future::poll_fn;

use super::{
    watchdog::{Watch, watchdog},
    *,
};

/// Serves HTTP/1 on `io` until the connection ends or is parked; gives the stream back unless
/// hyper shut it down.
pub(super) async fn drive_h1<I: ClientIo>(
    io: WatchedIo<I>,
    conn: &Rc<ConnInfo>,
    worker: &Rc<WorkerLocal>,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
    parkable: bool,
) -> Result<Option<WatchedIo<I>>, End> {
    let http = Reusable(Some(h1_builder(limits).serve_connection(TokioIo::new(io), service(conn, worker))));
    Ok(drive(http, conn, Proto::Http1, limits, shutdown, parkable).await?.map(take_io))
}

/// Serves HTTP/2 on `io` (h2 directly, `h2_serve`) until the connection ends (h2 shuts the
/// stream down itself), with frames that carry no request bounded (`h2_flood`).
pub(super) async fn drive_h2<I: ClientIo>(
    io: WatchedIo<I>,
    conn: &Rc<ConnInfo>,
    worker: &Rc<WorkerLocal>,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<WatchedIo<I>>, End> {
    let last_stream = Rc::new(std::cell::Cell::new(0));
    let io = h2_flood::FloodGuard::new(io, conn.clone(), limits.h2_control_frames_per_second, last_stream.clone());
    let exec = h2_exec::StreamExec::default();
    let http = h2_serve::H2Conn::new(io, limits, exec.clone(), conn, worker, last_stream);
    drive(h2_exec::ServeH2::new(http, exec), conn, Proto::Http2, limits, shutdown, false).await.map(|()| None)
}

/// Takes the socket (and any read-ahead bytes) out of a finished hyper connection. A function of
/// its own so that `parts` is dropped here: held across the park, its empty `read_buf` would keep
/// hyper's whole 8 KiB read buffer (and the service) alive for as long as the connection idles.
pub(super) fn take_io<I, S>(parts: http1::Parts<TokioIo<WatchedIo<I>>, S>) -> WatchedIo<I> {
    let mut io = parts.io.into_inner();
    // Read-ahead bytes only: an empty slice would keep the 8 KiB allocation alive too.
    io.prefix = if parts.read_buf.is_empty() { Bytes::new() } else { parts.read_buf };
    io
}

/// Why `drive` stopped without the connection ending on its own.
pub(super) enum End {
    Error(Box<dyn std::error::Error + Send + Sync>),
    SlowHeader,
}

/// Graceful shutdown for both hyper connection types.
pub(super) trait GracefulShutdown {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

/// An HTTP/1 connection that, when it ends, gives its socket back instead of shutting it down
/// (for parking).
pub(super) struct Reusable<I, S: hyper::service::HttpService<Incoming>>(Option<http1::Connection<I, S>>);

impl<I, S> Future for Reusable<I, S>
where
    S: hyper::service::HttpService<Incoming> + Unpin,
    S::Future: Unpin,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<Option<http1::Parts<I, S>>, hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(conn) = self.0.as_mut() else { return Poll::Ready(Ok(None)) };
        std::task::ready!(conn.poll_without_shutdown(cx))?;
        Poll::Ready(Ok(self.0.take().map(http1::Connection::into_parts)))
    }
}

impl<I, S> GracefulShutdown for Reusable<I, S>
where
    S: hyper::service::HttpService<Incoming> + Unpin,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shutdown_gracefully(mut self: Pin<&mut Self>) {
        if let Some(conn) = self.0.as_mut() {
            Pin::new(conn).graceful_shutdown();
        }
    }
}

/// Runs a hyper connection under the watchdog until it ends, the client is too slow, or it goes
/// idle long enough to park (then it is made to end, with `conn.park` set).
pub(super) async fn drive<F, T, E>(
    http: F,
    conn: &ConnInfo,
    proto: Proto,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
    parkable: bool,
) -> Result<T, End>
where
    F: Future<Output = Result<T, E>> + GracefulShutdown,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = pin!(http);
    // One timer for the connection's life, moved when the watchdog runs; events (a head starts,
    // the last request ends) wake the watchdog only when they bring its deadline forward.
    let armed = &conn.watchdog_timer;
    armed.head_within.set((proto == Proto::Http1).then_some(limits.header_read_timeout));
    armed.idle_within.set(if parkable { limits.park_after.min(limits.idle_timeout) } else { limits.idle_timeout });
    let first = Instant::now() + limits.idle_timeout;
    armed.armed_at.set(Some(first));
    let mut timer = pin!(sleep_until(first.into()));
    let arm = |timer: Pin<&mut Sleep>, at: Instant| {
        armed.armed_at.set(Some(at));
        timer.reset(at.into());
    };
    let mut closing = false;
    // A receiver of its own, so `shutdown` can still be read while this one waits for a change
    // (the sender only ever sends `true`: one change is all there is to watch for).
    let mut watching = shutdown.clone();
    let mut changed = pin!(watching.changed());
    let (mut timer_registered, mut watch_registered, mut watch_ended) = (false, false, false);
    loop {
        // In this order: the hyper connection is what is ready nearly every time. The timer and
        // the watch keep the task's waker once polled (it does not change for the task's life),
        // so after that a look at their state is enough (~950 instructions per HTTP/2 request
        // less than polling the three futures of a `select!` on each of its two wake-ups).
        let event = poll_fn(|cx| {
            if let Poll::Ready(result) = http.as_mut().poll(cx) {
                return Poll::Ready(Event::Done(result));
            }
            let fired = if timer_registered { timer.is_elapsed() } else { timer.as_mut().poll(cx).is_ready() };
            timer_registered = true;
            if fired {
                return Poll::Ready(Event::Timer);
            }
            if conn.watchdog_wake.poll_notified(cx).is_ready() {
                return Poll::Ready(Event::Wake);
            }
            if closing || watch_ended {
                return Poll::Pending;
            }
            let change = if watch_registered {
                match shutdown.has_changed() {
                    Ok(false) => None,
                    Ok(true) => Some(true),
                    Err(_) => Some(false),
                }
            } else {
                match changed.as_mut().poll(cx) {
                    Poll::Pending => None,
                    Poll::Ready(changed) => Some(changed.is_ok()),
                }
            };
            watch_registered = true;
            match change {
                None => Poll::Pending,
                // The sender went away (the worker is ending): nothing more to watch, as before.
                Some(false) => {
                    watch_ended = true;
                    Poll::Pending
                }
                Some(true) => Poll::Ready(Event::Shutdown),
            }
        })
        .await;
        match event {
            Event::Done(result) => return result.map_err(|e| End::Error(e.into())),
            Event::Timer => {
                timer_registered = false;
                match watchdog(conn, proto, limits, parkable && !closing) {
                    Watch::Next(at) => arm(timer.as_mut(), at),
                    Watch::SlowHeader => return Err(End::SlowHeader),
                    Watch::Park => {
                        // Wake hyper's read: it sees end-of-stream and finishes without shutdown.
                        conn.park.set(true);
                        arm(timer.as_mut(), Instant::now() + limits.idle_timeout);
                    }
                    Watch::Idle if !closing => {
                        closing = true;
                        http.as_mut().shutdown_gracefully();
                        arm(timer.as_mut(), Instant::now() + Duration::from_secs(1));
                    }
                    Watch::Idle => return Err(End::Error("idle connection did not close".into())),
                }
            }
            Event::Wake => {
                if conn.close_requested.get() && !closing {
                    closing = true;
                    conn.park.set(false);
                    http.as_mut().shutdown_gracefully();
                }
                // Recompute the deadline only; acting on it is the timer's job.
                let deadline = match watchdog(conn, proto, limits, parkable && !closing) {
                    Watch::Next(at) => at,
                    _ => Instant::now(),
                };
                arm(timer.as_mut(), deadline);
                timer_registered = false;
            }
            Event::Shutdown => {
                if *shutdown.borrow() {
                    closing = true;
                    conn.park.set(false);
                    http.as_mut().shutdown_gracefully();
                } else {
                    watch_ended = true;
                }
            }
        }
    }
}

/// What woke `drive`.
enum Event<T> {
    Done(T),
    Timer,
    Wake,
    Shutdown,
}

/// The HTTP/1 server settings of every listener (public for the fuzz targets that drive hyper
/// with them).
pub fn h1_builder(limits: &Limits) -> http1::Builder {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    // hyper answers 431 itself past its buffer; smaller limits are enforced per request.
    h1.max_buf_size(limits.max_header_bytes.max(8192));
    if limits.max_headers != 100 {
        // hyper moves header parsing to the heap when this is set: only pay for it if asked.
        h1.max_headers(limits.max_headers);
    }
    h1
}
