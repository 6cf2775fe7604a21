//! Serving one client connection on a worker.
//!
//! hyper's own header-read timer also runs while a keep-alive connection sits idle, so idle
//! and slow-header timeouts are one setting there. We keep them apart: a watchdog closes a
//! connection whose request head is not complete `header_read_timeout` after its first byte
//! (slowloris), and an idle connection after `idle_timeout`.
//!
//! Idle HTTP/1 connections are *parked*: hyper keeps an 8 KiB read buffer, an 8 KiB write buffer
//! and per-request state for as long as a connection lives, so after `park_after` without a
//! request the connection hands hyper an end-of-stream, takes its socket back (hyper's
//! `without_shutdown`), waits for readability holding nothing but the socket, and builds a fresh
//! hyper connection when the next request arrives. Busy connections never park, and a byte that
//! arrives while the park is under way cancels it (see `WatchedIo`).

use std::{
    cell::Cell,
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    rc::Rc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use hyper::{
    Request,
    body::Incoming,
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::{Duration, sleep_until},
};

/// `AsyncWrite::poll_flush` and `poll_shutdown` of a stream wrapper, passed to its `inner`.
macro_rules! forward_flush_and_shutdown {
    () => {
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    };
}

mod h2_flood;

use crate::{
    config::{Limits, ListenerSpec},
    metrics::{LabelValue, Labels},
    pipeline,
    proxy::ResponseBody,
    request::ConnInfo,
    snapshot::LocalSnapshot,
    tls,
};

use super::WorkerLocal;
pub use crate::request::Proto;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(super) async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    spec: ListenerSpec,
    worker: Rc<WorkerLocal>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let snapshot = worker.snapshot();
    let limits = snapshot.config.server.limits;
    // TLS or not is the current snapshot's say: a reload can add or drop a listener's TLS
    // without rebinding its socket.
    if snapshot.tls.listener(&spec.name).is_some() && snapshot.tls.parts().is_some() {
        // Boxed as a whole: the handshake and the accepted TLS stream (held across awaits) would
        // otherwise size every plain connection's task, for the connection's whole life.
        return Box::pin(serve_tls(stream, peer, local, spec, worker, snapshot, shutdown)).await;
    }
    drop(snapshot);
    let proto = if spec.http2 { detect(&stream, limits.header_read_timeout).await } else { Proto::Http1 };
    let conn = conn_info(&worker, &spec, peer, local, None);
    serve_connection(stream, proto, conn, worker, limits, shutdown).await;
}

/// The TLS handshake, then HTTP on the TLS stream (the listener's TLS setup is re-read from the
/// same snapshot `serve_tcp` checked).
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    spec: ListenerSpec,
    worker: Rc<WorkerLocal>,
    snapshot: LocalSnapshot,
    shutdown: watch::Receiver<bool>,
) {
    let limits = snapshot.config.server.limits;
    let (Some(server), Some(parts)) = (snapshot.tls.listener(&spec.name), snapshot.tls.parts()) else { return };
    let listener = tls::TlsListener { name: &spec.name, server, generation: snapshot.generation, parts };
    let accepted = tls::accept(stream, peer, listener, &worker.tls_metrics, limits.header_read_timeout).await;
    let Some(accepted) = accepted else { return };
    drop(snapshot);
    let conn = conn_info(&worker, &spec, peer, local, Some(accepted.info));
    serve_connection(accepted.io, accepted.proto, conn, worker, limits, shutdown).await;
}

fn conn_info(
    worker: &WorkerLocal,
    spec: &ListenerSpec,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<tls::TlsInfo>,
) -> Rc<ConnInfo> {
    Rc::new(ConnInfo {
        worker_id: worker.id,
        metrics: worker.metrics.clone(),
        listener: spec.name.clone(),
        peer,
        local,
        scheme: if tls.is_some() { "https" } else { "http" },
        active: Cell::new(0),
        last_active: Cell::new(Instant::now()),
        head_started: Cell::new(None),
        watchdog_wake: tokio::sync::Notify::new(),
        park: Cell::new(false),
        close_requested: Cell::new(false),
        tls,
    })
}

/// Sniffs the HTTP/2 prior-knowledge preface without consuming it.
async fn detect(stream: &TcpStream, timeout: Duration) -> Proto {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            // Let the HTTP/1 path (and its watchdog) deal with timeouts and errors.
            _ => return Proto::Http1,
        };
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Proto::Http1;
        }
        if n == H2_PREFACE.len() {
            return Proto::Http2;
        }
        // A preface split across segments: rare, so a short nap instead of a readiness dance.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A client stream. `park_socket` gives the socket to wait on while an idle HTTP/1 connection is
/// parked, for streams that hold no data of their own between requests (plain TCP); streams with
/// userspace buffers (rustls) are never parked.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + 'static {
    fn park_socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl ClientIo for TcpStream {
    fn park_socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl ClientIo for tls::TlsIo {}

/// Serves HTTP on an established (possibly TLS) stream until it closes, times out, or
/// `shutdown` flips and in-flight requests are done.
pub async fn serve_connection<I: ClientIo>(
    io: I,
    proto: Proto,
    conn: Rc<ConnInfo>,
    worker: Rc<WorkerLocal>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let shared = conn.metrics.shared().clone();
    let gauge = shared
        .connections_active
        .get_or_create(&Labels([("listener", LabelValue::Shared(conn.listener.clone()))]))
        .clone();
    gauge.inc();
    worker.open_connections.set(worker.open_connections.get() + 1);
    let w = worker.clone();
    let _open = scopeguard(move || {
        gauge.dec();
        w.open_connections.set(w.open_connections.get() - 1);
        note_released(&w);
    });
    let mut conn_io = Some(WatchedIo {
        inner: io,
        conn: conn.clone(),
        max_request_line: limits.max_request_line,
        prefix: Bytes::new(),
        refusal: Bytes::new(),
    });
    let mut shutdown = shutdown;
    while let Some(io) = conn_io.take() {
        let parkable = proto == Proto::Http1 && io.inner.park_socket().is_some();
        // Boxed, and built inside the box: the hyper connection exists only while the
        // connection is not parked, so neither it nor its construction may take room in this
        // (long-lived) future.
        let ended = match proto {
            Proto::Http1 => Box::pin(drive_h1(io, &conn, &worker, &limits, &mut shutdown, parkable)).await,
            Proto::Http2 => Box::pin(drive_h2(io, &conn, &worker, &limits, &mut shutdown)).await,
        };
        let io = match ended {
            Ok(Some(io)) if conn.park.get() => io,
            Ok(Some(mut io)) => {
                // Ended for good: shut down as hyper would have (TLS close_notify, FIN).
                let _ = tokio::time::timeout(Duration::from_secs(1), io.inner.shutdown()).await;
                return;
            }
            Ok(None) => return,
            Err(End::Error(e)) => {
                connection_error(&conn, &*e);
                return;
            }
            Err(End::SlowHeader) => {
                shared.refused("header_timeout");
                tracing::debug!(peer = %conn.peer, "closing a connection whose request head did not arrive in time");
                return;
            }
        };
        conn.park.set(false);
        note_released(&worker);
        shared
            .connections_parked
            .get_or_create(&Labels([("listener", LabelValue::Shared(conn.listener.clone()))]))
            .inc();
        if io.prefix.is_empty() && !wait_parked(&io, &conn, &limits, &mut shutdown).await {
            return;
        }
        conn_io = Some(io);
    }
}

/// Serves HTTP/1 on `io` until the connection ends or is parked; gives the stream back unless
/// hyper shut it down.
async fn drive_h1<I: ClientIo>(
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

/// Serves HTTP/2 on `io` until the connection ends (hyper shuts the stream down itself), with
/// frames that carry no request bounded (`h2_flood`).
async fn drive_h2<I: ClientIo>(
    io: WatchedIo<I>,
    conn: &Rc<ConnInfo>,
    worker: &Rc<WorkerLocal>,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<WatchedIo<I>>, End> {
    let io = h2_flood::FloodGuard::new(io, conn.clone(), limits.h2_control_frames_per_second);
    let http = h2_builder(limits).serve_connection(TokioIo::new(io), service(conn, worker));
    drive(http, conn, Proto::Http2, limits, shutdown, false).await.map(|()| None)
}

/// Takes the socket (and any read-ahead bytes) out of a finished hyper connection. A function of
/// its own so that `parts` is dropped here: held across the park, its empty `read_buf` would keep
/// hyper's whole 8 KiB read buffer (and the service) alive for as long as the connection idles.
fn take_io<I, S>(parts: http1::Parts<TokioIo<WatchedIo<I>>, S>) -> WatchedIo<I> {
    let mut io = parts.io.into_inner();
    // Read-ahead bytes only: an empty slice would keep the 8 KiB allocation alive too.
    io.prefix = if parts.read_buf.is_empty() { Bytes::new() } else { parts.read_buf };
    io
}

/// Tells the worker that a connection's memory was freed, so it returns free pages soon.
fn note_released(worker: &WorkerLocal) {
    worker.released_connections.set(worker.released_connections.get() + 1);
}

fn service(
    conn: &Rc<ConnInfo>,
    worker: &Rc<WorkerLocal>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = hyper::Response<ResponseBody>,
    Error = Infallible,
    Future = ServeFuture,
> {
    let (conn, worker) = (conn.clone(), worker.clone());
    service_fn(move |req: Request<Incoming>| -> ServeFuture {
        // Boxed: hyper keeps a slot for this future for the connection's whole life, and the
        // request path's state machine is several KiB.
        let (c, w) = (conn.clone(), worker.clone());
        Box::pin(async move { Ok(pipeline::serve(req, c, w.snapshot(), w.pool.clone()).await) })
    })
}

type ServeFuture = Pin<Box<dyn Future<Output = Result<hyper::Response<ResponseBody>, Infallible>>>>;

/// Why `drive` stopped without the connection ending on its own.
enum End {
    Error(Box<dyn std::error::Error + Send + Sync>),
    SlowHeader,
}

/// Graceful shutdown for both hyper connection types.
trait GracefulShutdown {
    fn shutdown_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E> GracefulShutdown for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// An HTTP/1 connection that, when it ends, gives its socket back instead of shutting it down
/// (for parking).
struct Reusable<I, S: hyper::service::HttpService<Incoming>>(Option<http1::Connection<I, S>>);

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
async fn drive<F, T, E>(
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
    let mut timer = pin!(sleep_until(tokio::time::Instant::now() + limits.idle_timeout));
    let mut closing = false;
    loop {
        tokio::select! {
            result = http.as_mut() => return result.map_err(|e| End::Error(e.into())),
            () = timer.as_mut() => {
                match watchdog(conn, proto, limits, parkable && !closing) {
                    Watch::Next(at) => timer.as_mut().reset(at.into()),
                    Watch::SlowHeader => return Err(End::SlowHeader),
                    Watch::Park => {
                        // Wake hyper's read: it sees end-of-stream and finishes without shutdown.
                        conn.park.set(true);
                        timer.as_mut().reset((Instant::now() + limits.idle_timeout).into());
                    }
                    Watch::Idle if !closing => {
                        closing = true;
                        http.as_mut().shutdown_gracefully();
                        timer.as_mut().reset((Instant::now() + Duration::from_secs(1)).into());
                    }
                    Watch::Idle => return Err(End::Error("idle connection did not close".into())),
                }
            }
            () = conn.watchdog_wake.notified() => {
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
                timer.as_mut().reset(deadline.into());
            }
            Ok(()) = shutdown.changed(), if !closing => {
                if *shutdown.borrow() {
                    closing = true;
                    conn.park.set(false);
                    http.as_mut().shutdown_gracefully();
                }
            }
        }
    }
}

/// Waits, holding only the socket, until the parked connection has bytes to read (true), or its
/// idle time is up or the worker drains (false: close it).
async fn wait_parked<I: ClientIo>(
    io: &WatchedIo<I>,
    conn: &ConnInfo,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let Some(socket) = io.inner.park_socket() else { return true };
    let deadline = conn.last_active.get() + limits.idle_timeout;
    loop {
        tokio::select! {
            ready = socket.readable() => return ready.is_ok(),
            () = sleep_until(deadline.into()) => return false,
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return false },
        }
    }
}

enum Watch {
    Next(Instant),
    SlowHeader,
    Park,
    Idle,
}

fn watchdog(conn: &ConnInfo, proto: Proto, limits: &Limits, may_park: bool) -> Watch {
    let now = Instant::now();
    if conn.active.get() > 0 {
        // Requests in flight: their own timeouts apply.
        return Watch::Next(now + limits.idle_timeout);
    }
    if let (Proto::Http1, Some(started)) = (proto, conn.head_started.get()) {
        let deadline = started + limits.header_read_timeout;
        return if now >= deadline { Watch::SlowHeader } else { Watch::Next(deadline) };
    }
    let idle_deadline = conn.last_active.get() + limits.idle_timeout;
    if now >= idle_deadline {
        return Watch::Idle;
    }
    if may_park && !conn.park.get() {
        let park_at = conn.last_active.get() + limits.park_after;
        return if now >= park_at { Watch::Park } else { Watch::Next(park_at.min(idle_deadline)) };
    }
    Watch::Next(idle_deadline)
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

fn h2_builder(limits: &Limits) -> http2::Builder<LocalExec> {
    let mut h2 = http2::Builder::new(LocalExec);
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    h2
}

fn connection_error(conn: &ConnInfo, e: &(dyn std::error::Error + 'static)) {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        tracing::debug!(peer = %conn.peer, error = %e, "connection error");
        return;
    };
    let reason = if h.is_parse_too_large() {
        Some("headers_too_large")
    } else if h.is_parse() || h.is_parse_status() {
        Some("bad_request")
    } else {
        None
    };
    if let Some(reason) = reason {
        conn.metrics.shared().refused(reason);
        tracing::debug!(peer = %conn.peer, reason, error = %h, "request refused by the HTTP parser");
    } else {
        tracing::debug!(peer = %conn.peer, error = %h, "connection error");
    }
}

/// The client stream as hyper sees it: notes when a request head starts arriving on an idle
/// connection, replays bytes a parked hyper connection had read ahead, ends the stream when
/// the connection is to be parked and nothing is waiting to be read, and writes hyper's own
/// parser refusals as JSON (`parse_refusal`).
struct WatchedIo<I> {
    inner: I,
    conn: Rc<ConnInfo>,
    /// For the 414 hyper's parser answers (its JSON rewrite names the limit).
    max_request_line: usize,
    prefix: Bytes,
    /// The JSON refusal written in place of hyper's, while not all of it is written.
    refusal: Bytes,
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            self.note_bytes();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.note_bytes();
        } else if polled.is_pending() && self.conn.park.get() && self.conn.active.get() == 0 {
            // Nothing to read and time to park: end-of-stream ends hyper's connection (without
            // shutting the socket down).
            return Poll::Ready(Ok(()));
        }
        polled
    }
}

impl<I> WatchedIo<I> {
    /// Bytes reached hyper. A park decided before they arrived is called off: they may be a
    /// request whose head hyper has read but not yet handed to the service (`active` is still
    /// 0), and hyper's next read (its check for a client that went away mid-request) must not
    /// see the park's end-of-stream, or the request is lost with the connection.
    fn note_bytes(&self) {
        self.conn.park.set(false);
        self.note_head_start();
    }

    fn note_head_start(&self) {
        if self.conn.active.get() == 0 && self.conn.head_started.get().is_none() {
            self.conn.head_started.set(Some(Instant::now()));
            self.conn.watchdog_wake.notify_one();
        }
    }
}

impl<I: AsyncWrite + Unpin> WatchedIo<I> {
    /// Whether `buf` may be hyper's own refusal: written when no request of ours is in flight.
    fn may_be_refusal(&self, buf: &[u8]) -> bool {
        self.conn.active.get() == 0 && buf.starts_with(b"HTTP/1.1 ")
    }

    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.refusal.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &self.refusal))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.refusal.split_to(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.refusal.is_empty()
            && self.may_be_refusal(buf)
            && let Some(json) = super::parse_refusal::rewrite(buf, self.max_request_line)
        {
            // hyper's bytes count as written; ours go out now or on the next write/flush.
            self.refusal = json;
            return match self.poll_refusal(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        std::task::ready!(self.poll_refusal(cx))?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_refusal(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_refusal(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if let Some(first) = first.filter(|b| !self.refusal.is_empty() || self.may_be_refusal(b)) {
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// hyper's executor for HTTP/2 streams: tasks stay on this worker's thread.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

struct Guard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for Guard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn scopeguard<F: FnOnce()>(f: F) -> Guard<F> {
    Guard(Some(f))
}
