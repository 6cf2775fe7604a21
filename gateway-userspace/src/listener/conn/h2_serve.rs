//! An HTTP/2 connection served with the h2 crate directly: the handshake, then each request
//! h2 accepts started as a stream (`h2_stream::serve_stream`) in the connection's slots
//! (`h2_exec`), until the client or a graceful shutdown ends the connection.
//!
//! In place of hyper's HTTP/2 server, whose glue around h2 (request conversion into hyper's
//! body, the service call, `H2Stream` and its body pipe) cost every request instructions that
//! h2 itself does not need (`bench/results/h2-profile.md`, h2cpu). h2 is
//! configured as hyper configured it (its defaults, and ours from `Limits`): 1 MiB stream and
//! connection windows, 16 KiB frames, a 400 KiB send buffer, at most 1,024 streams reset for
//! the client's errors; no extended CONNECT.
//!
//! No keep-alive PINGs: with them hyper locked a mutex, read the clock and polled or reset a
//! timer on every connection poll (~1.2k instructions per request). An idle connection is
//! closed by the watchdog (`idle_timeout`), a request in flight by its own timeouts, as over
//! HTTP/1 (which has no PING at all).

use std::cell::Cell;

use h2::server::{Builder, Connection, Handshake};

use super::{drive::GracefulShutdown, h2_exec::StreamExec, h2_stream::serve_stream, *};

const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// h2's settings for every listener.
fn builder(limits: &Limits) -> Builder {
    let mut b = Builder::new();
    b.initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

enum State<I> {
    Handshaking(Handshake<I, Bytes>),
    Serving(Connection<I, Bytes>),
}

/// One HTTP/2 connection; ends with the connection (its streams live on in `ServeH2`).
pub(super) struct H2Conn<I> {
    state: State<I>,
    exec: StreamExec,
    conn: Rc<ConnInfo>,
    worker: Rc<WorkerLocal>,
    /// A graceful shutdown asked for during the handshake, sent once it is done.
    close_pending: bool,
    /// The highest stream id the client has opened a request on, in the bytes h2 has read
    /// (kept by `h2_flood::FloodGuard`, which scans them).
    last_stream: Rc<Cell<u32>>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> H2Conn<I> {
    /// `exec`: where accepted streams go (the `ServeH2` this connection runs in).
    /// `last_stream`: the one `io` (a `FloodGuard`) keeps.
    pub(super) fn new(
        io: I,
        limits: &Limits,
        exec: StreamExec,
        conn: &Rc<ConnInfo>,
        worker: &Rc<WorkerLocal>,
        last_stream: Rc<Cell<u32>>,
    ) -> Self {
        H2Conn {
            state: State::Handshaking(builder(limits).handshake(io)),
            exec,
            conn: conn.clone(),
            worker: worker.clone(),
            close_pending: false,
            last_stream,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Future for H2Conn<I> {
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Handshaking(hs) => {
                    let conn = std::task::ready!(Pin::new(hs).poll(cx))?;
                    this.state = State::Serving(conn);
                }
                State::Serving(h2) => {
                    if std::mem::take(&mut this.close_pending) {
                        h2.graceful_shutdown();
                    }
                    match std::task::ready!(h2.poll_accept(cx)) {
                        Some(Ok((req, respond))) => {
                            let id = u32::from(respond.stream_id());
                            let stream = serve_stream(req, respond, this.conn.clone(), this.worker.clone());
                            this.exec.push(Box::pin(stream));
                            // h2 queues accepted streams in the order their HEADERS came, and
                            // stream ids only grow: once the highest id read so far is accepted,
                            // another `poll_accept` would only poll the connection again to find
                            // nothing (a read that cannot progress, an empty flush; ~1.2k
                            // instructions per request at one stream per connection). The
                            // connection's wakers are registered (the poll that accepted this
                            // stream ended pending), so new frames or a stream's response wake it.
                            if id >= this.last_stream.get() {
                                return Poll::Pending;
                            }
                        }
                        Some(Err(e)) => return Poll::Ready(Err(e)),
                        // The client closed, or a graceful shutdown completed.
                        None => return Poll::Ready(Ok(())),
                    }
                }
            }
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> GracefulShutdown for H2Conn<I> {
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        let this = self.get_mut();
        match &mut this.state {
            State::Handshaking(_) => this.close_pending = true,
            // GOAWAY with the last stream id, then a PING; streams in flight finish.
            State::Serving(h2) => h2.graceful_shutdown(),
        }
    }
}
