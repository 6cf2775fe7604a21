//! Serving one client connection on a worker.
//!
//! hyper's own header-read timer also runs while a keep-alive connection sits idle, so idle
//! and slow-header timeouts are one setting there. We keep them apart: a watchdog closes a
//! connection whose request head is not complete `header_read_timeout` after its first byte
//! (slowloris), and an idle connection after `idle_timeout`.
//!
//! Idle HTTP/1 connections (plain, rustls or kTLS) are *parked*: hyper keeps an 8 KiB read buffer, an 8 KiB write buffer
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
use hyper::{Request, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::{Duration, Sleep, sleep_until},
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

mod date;
mod detect;
mod drive;
mod empty;
mod h1;
mod h2_exec;
mod h2_flood;
mod h2_serve;
mod h2_stream;
mod h2_table_size;
#[cfg(test)]
mod task_size;
mod watchdog;
mod watched_io;

use detect::detect;
pub use drive::h1_builder;
use drive::{End, drive_h2};
use watchdog::wait_parked;
use watched_io::WatchedIo;

use crate::{
    config::{Limits, ListenerSpec},
    metrics::{LabelValue, Labels},
    pipeline,
    proxy::ResponseBody,
    request::{ConnInfo, WatchdogTimer},
    snapshot::LocalSnapshot,
    tls,
};

use super::WorkerLocal;
pub use crate::request::Proto;

/// The future of a connection's task, built without awaiting anything: a box holding either
/// the TLS path or, on a plain listener, `serve_connection` itself (one frame, one copy of its
/// arguments; it sniffs for the HTTP/2 preface in place). Both boxed: the task lives as long as
/// the connection, and inline either path would size every connection of the other kind.
pub(super) fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    spec: ListenerSpec,
    worker: Rc<WorkerLocal>,
    shutdown: watch::Receiver<bool>,
) -> Pin<Box<dyn Future<Output = ()>>> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let snapshot = worker.snapshot();
    let limits = snapshot.config.server.limits;
    // TLS or not is the current snapshot's say: a reload can add or drop a listener's TLS
    // without rebinding its socket.
    if snapshot.tls.listener(&spec.name).is_some() && snapshot.tls.parts().is_some() {
        return Box::pin(tls_task(Box::pin(serve_tls(stream, peer, local, spec, worker, snapshot, shutdown))));
    }
    drop(snapshot);
    let proto = if spec.http2 { None } else { Some(Proto::Http1) };
    let conn = conn_info(&worker, &spec, peer, local, None);
    Box::pin(serve_connection(stream, proto, conn, worker, limits, shutdown))
}

/// A future that serves a connection: `serve_connection`'s, boxed.
type Serving = Pin<Box<dyn Future<Output = ()>>>;

/// A TLS connection's task: the handshake, then the serving. The handshake's box is freed when
/// it ends; for the connection's whole life the task keeps only this small future (two
/// pointers) and the serving future's box.
async fn tls_task(handshake: Pin<Box<dyn Future<Output = Option<Serving>>>>) {
    if let Some(serving) = handshake.await {
        serving.await;
    }
}

/// The TLS handshake, then the future that serves HTTP on the TLS stream (the listener's TLS
/// setup is re-read from the same snapshot `serve_tcp` checked), or `None` when the handshake
/// failed.
///
/// Returned, not awaited: this future holds the handshake's state and its arguments, and it
/// lives only as long as the handshake. Awaiting the serving here kept it (912 bytes in a debug
/// build) for the connection's whole life, a third of what an idle kTLS connection cost
/// (bench/results/tls.md, "kTLS idle memory"). The serving future is boxed on its own, the
/// stream in it too: the ~1.2 KiB rustls stream would size every kTLS connection's future.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    spec: ListenerSpec,
    worker: Rc<WorkerLocal>,
    snapshot: LocalSnapshot,
    shutdown: watch::Receiver<bool>,
) -> Option<Serving> {
    let limits = snapshot.config.server.limits;
    let Some(accepted) = handshake(stream, peer, &spec, &worker, snapshot).await else {
        if !*shutdown.borrow() {
            empty::report(&worker, peer);
        }
        return None;
    };
    let conn = conn_info(&worker, &spec, peer, local, Some(accepted.info));
    let io = Box::new(accepted.io);
    Some(Box::pin(serve_connection(io, Some(accepted.proto), conn, worker, limits, shutdown)))
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    spec: &ListenerSpec,
    worker: &WorkerLocal,
    snapshot: LocalSnapshot,
) -> Option<tls::Accepted> {
    let limits = snapshot.config.server.limits;
    let (Some(server), Some(parts)) = (snapshot.tls.listener(&spec.name), snapshot.tls.parts()) else { return None };
    let listener = tls::TlsListener { name: &spec.name, server, generation: snapshot.generation, parts };
    tls::accept(stream, peer, listener, &worker.tls_metrics, limits.header_read_timeout).await
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
        watchdog_wake: Default::default(),
        watchdog_timer: WatchdogTimer::default(),
        park: Cell::new(false),
        close_requested: Cell::new(false),
        tls,
    })
}

/// A client stream. `parkable`: an idle HTTP/1 connection on it may be parked; `park_socket`
/// gives the socket to wait on while parked, when the stream holds no data of its own (plain
/// TCP always; TLS when nothing is buffered, see `tls::TlsIo::park_socket`).
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + 'static {
    fn parkable(&self) -> bool {
        self.park_socket().is_some()
    }
    fn park_socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl ClientIo for TcpStream {
    fn park_socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl ClientIo for Box<tls::TlsIo> {
    fn parkable(&self) -> bool {
        tls::TlsIo::parkable(self)
    }
    fn park_socket(&self) -> Option<&TcpStream> {
        tls::TlsIo::park_socket(self)
    }
}

/// Serves HTTP on an established (possibly TLS) stream until it closes, times out, or
/// `shutdown` flips and in-flight requests are done; a connection that ends before a request
/// arrived is reported as empty (`empty`). `proto`: `None` sniffs for the HTTP/2 preface first.
///
/// One async fn, not several nested ones: this future lives as long as the connection (parked
/// or not), and each nested async fn would keep its own copy of the arguments in it.
pub async fn serve_connection<I: ClientIo>(
    io: I,
    proto: Option<Proto>,
    conn: Rc<ConnInfo>,
    worker: Rc<WorkerLocal>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let served = empty::Served::watch(&conn);
    let shared = conn.metrics.shared().clone();
    let gauge = shared
        .connections_active
        .get_or_create(&Labels([("listener", LabelValue::Shared(conn.listener.clone()))]))
        .clone();
    gauge.inc();
    worker.open_connections.set(worker.open_connections.get() + 1);
    let w = worker.clone();
    let open = scopeguard(move || {
        gauge.dec();
        w.open_connections.set(w.open_connections.get() - 1);
        note_released(&w);
    });
    let proto = match (proto, io.park_socket()) {
        (Some(proto), _) => proto,
        (None, Some(socket)) => detect(socket, limits.header_read_timeout).await,
        (None, None) => Proto::Http1,
    };
    let mut io = WatchedIo {
        inner: io,
        conn: conn.clone(),
        max_request_line: limits.max_request_line,
        prefix: Bytes::new(),
        refusal: Bytes::new(),
    };
    loop {
        let parkable = proto == Proto::Http1 && io.inner.parkable();
        // Boxed, and built inside the box: the hyper connection exists only while the
        // connection is not parked, so neither it nor its construction may take room in this
        // (long-lived) future.
        let ended = match proto {
            Proto::Http1 => Box::pin(h1::serve_h1(io, &conn, &worker, &limits, &mut shutdown, parkable)).await,
            Proto::Http2 => Box::pin(drive_h2(io, &conn, &worker, &limits, &mut shutdown)).await,
        };
        io = match ended {
            Ok(Some(io)) if conn.park.get() => io,
            Ok(Some(mut io)) => {
                // Ended for good: shut down as hyper would have (TLS close_notify, FIN).
                let _ = tokio::time::timeout(Duration::from_secs(1), io.inner.shutdown()).await;
                break;
            }
            Ok(None) => break,
            Err(End::Error(e)) => {
                connection_error(&conn, &*e);
                break;
            }
            Err(End::SlowHeader) => {
                shared.refused("header_timeout");
                tracing::debug!(peer = %conn.peer, "closing a connection whose request head did not arrive in time");
                break;
            }
        };
        conn.park.set(false);
        note_released(&worker);
        shared
            .connections_parked
            .get_or_create(&Labels([("listener", LabelValue::Shared(conn.listener.clone()))]))
            .inc();
        if io.prefix.is_empty() && !wait_parked(&io, &conn, &limits, &mut shutdown).await {
            break;
        }
    }
    drop(open);
    if !served.any(&conn) && !*shutdown.borrow() {
        empty::report(&worker, conn.peer);
    }
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
        w.requests_started.set(w.requests_started.get().wrapping_add(1));
        Box::pin(async move {
            let (head, body) = req.into_parts();
            Ok(pipeline::serve(head, Some(body.into()), c, w.snapshot(), w.pool.clone()).await)
        })
    })
}

type ServeFuture = Pin<Box<dyn Future<Output = Result<hyper::Response<ResponseBody>, Infallible>>>>;

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
