//! Serving one client connection on a worker.
//!
//! hyper's own header-read timer also runs while a keep-alive connection sits idle, so idle
//! and slow-header timeouts are one setting there. We keep them apart: a watchdog closes a
//! connection whose request head is not complete `header_read_timeout` after its first byte
//! (slowloris), and an idle connection after `idle_timeout`.

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

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::{Duration, sleep_until},
};

use crate::{
    config::{Limits, ListenerSpec},
    metrics::{LabelValue, Labels},
    pipeline::{self, ConnInfo},
    tls,
    worker::WorkerLocal,
};

/// The HTTP version a connection speaks, decided before hyper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

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
    if let (Some(server), Some(parts)) = (snapshot.tls.listener(&spec.name), snapshot.tls.parts()) {
        let listener = tls::TlsListener { name: &spec.name, server, generation: snapshot.generation, parts };
        let accepted = tls::accept(stream, peer, listener, &worker.tls_metrics, limits.header_read_timeout).await;
        let Some(accepted) = accepted else { return };
        drop(snapshot);
        let conn = conn_info(worker, &spec, peer, local, Some(accepted.info));
        return serve_connection(accepted.io, accepted.proto, conn, limits, shutdown).await;
    }
    drop(snapshot);
    let proto = if spec.http2 { detect(&stream, limits.header_read_timeout).await } else { Proto::Http1 };
    let conn = conn_info(worker, &spec, peer, local, None);
    serve_connection(stream, proto, conn, limits, shutdown).await;
}

fn conn_info(
    worker: Rc<WorkerLocal>,
    spec: &ListenerSpec,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<tls::TlsInfo>,
) -> Rc<ConnInfo> {
    Rc::new(ConnInfo {
        worker,
        listener: spec.name.clone(),
        peer,
        local,
        scheme: if tls.is_some() { "https" } else { "http" },
        active: Cell::new(0),
        last_active: Cell::new(Instant::now()),
        head_started: Cell::new(None),
        head_notify: tokio::sync::Notify::new(),
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

/// Serves HTTP on an established (possibly TLS) stream until it closes, times out, or
/// `shutdown` flips and in-flight requests are done.
pub async fn serve_connection<I>(
    io: I,
    proto: Proto,
    conn: Rc<ConnInfo>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let shared = conn.worker.metrics.shared().clone();
    let gauge = shared
        .connections_active
        .get_or_create(&Labels([("listener", LabelValue::Shared(conn.listener.clone()))]))
        .clone();
    gauge.inc();
    let worker = conn.worker.clone();
    worker.open_connections.set(worker.open_connections.get() + 1);
    let _open = scopeguard(move || {
        gauge.dec();
        worker.open_connections.set(worker.open_connections.get() - 1);
    });
    let builder = builder(proto, &limits);
    let svc_conn = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let c = svc_conn.clone();
        async move { Ok::<_, Infallible>(pipeline::serve(req, c).await) }
    });
    let io = TokioIo::new(WatchedIo { inner: io, conn: conn.clone() });
    let mut http = pin!(builder.serve_connection(io, service));
    let mut timer = pin!(sleep_until(tokio::time::Instant::now() + limits.idle_timeout));
    let mut closing = false;
    loop {
        tokio::select! {
            result = http.as_mut() => {
                if let Err(e) = result {
                    connection_error(&conn, &*e);
                }
                return;
            }
            () = timer.as_mut() => {
                match watchdog(&conn, proto, &limits) {
                    Watch::Next(at) => timer.as_mut().reset(at.into()),
                    Watch::SlowHeader => {
                        shared.refused("header_timeout");
                        tracing::debug!(peer = %conn.peer, "closing a connection whose request head did not arrive in time");
                        return;
                    }
                    Watch::Idle if !closing => {
                        closing = true;
                        http.as_mut().graceful_shutdown();
                        timer.as_mut().reset((Instant::now() + Duration::from_secs(1)).into());
                    }
                    Watch::Idle => return,
                }
            }
            () = conn.head_notify.notified() => {
                if let Watch::Next(at) = watchdog(&conn, proto, &limits) {
                    timer.as_mut().reset(at.into());
                }
            }
            Ok(()) = shutdown.changed(), if !closing => {
                if *shutdown.borrow() {
                    closing = true;
                    http.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

enum Watch {
    Next(Instant),
    SlowHeader,
    Idle,
}

fn watchdog(conn: &ConnInfo, proto: Proto, limits: &Limits) -> Watch {
    let now = Instant::now();
    if conn.active.get() > 0 {
        // Requests in flight: their own timeouts apply.
        return Watch::Next(now + limits.idle_timeout);
    }
    if let (Proto::Http1, Some(started)) = (proto, conn.head_started.get()) {
        let deadline = started + limits.header_read_timeout;
        return if now >= deadline { Watch::SlowHeader } else { Watch::Next(deadline) };
    }
    let deadline = conn.last_active.get() + limits.idle_timeout;
    if now >= deadline { Watch::Idle } else { Watch::Next(deadline) }
}

fn builder(proto: Proto, limits: &Limits) -> auto::Builder<LocalExec> {
    let mut b = auto::Builder::new(LocalExec);
    b = match proto {
        Proto::Http1 => b.http1_only(),
        Proto::Http2 => b.http2_only(),
    };
    let mut h1 = b.http1();
    h1.timer(TokioTimer::new()).header_read_timeout(None).keep_alive(true);
    // hyper answers 431 itself past its buffer; smaller limits are enforced per request.
    h1.max_buf_size(limits.max_header_bytes.max(8192));
    if limits.max_headers != 100 {
        // hyper moves header parsing to the heap when this is set: only pay for it if asked.
        h1.max_headers(limits.max_headers);
    }
    let mut h2 = b.http2();
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
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
        conn.worker.metrics.shared().refused(reason);
        tracing::debug!(peer = %conn.peer, reason, error = %h, "request refused by the HTTP parser");
    } else {
        tracing::debug!(peer = %conn.peer, error = %h, "connection error");
    }
}

/// Notes when a request head starts arriving on an otherwise idle connection.
struct WatchedIo<I> {
    inner: I,
    conn: Rc<ConnInfo>,
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.conn.active.get() == 0 && self.conn.head_started.get().is_none() {
            self.conn.head_started.set(Some(Instant::now()));
            self.conn.head_notify.notify_one();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
