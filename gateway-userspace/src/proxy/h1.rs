//! The upstream HTTP/1.1 client, run inside the request's own task. hyper's client runs each
//! connection as a separate task fed through a channel: every request paid an mpsc send, a
//! task switch to write, a wakeup to read and a oneshot back. Here the request task writes the
//! head (one reused buffer) and the body itself, parses the response head (`decode`), and the
//! response body (`body`) reads the pooled connection directly; the connection goes back to the
//! pool only when that body was read to its end and the response allowed reuse.
//!
//! Plain TCP and rustls streams alike (`Stream`), so upstream TLS and mTLS use the same code.

mod body;
mod decode;
mod encode;

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::BytesMut;
use http::{Response, StatusCode};
use http_body::Body as _;
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

pub use body::UpstreamBody;
use encode::BodyFraming;
pub use encode::Outgoing;

use super::{BodyError, RequestBody};

/// Most bytes of a response head (and of a trailer section): a larger one is a 502, as with
/// nginx's `proxy_buffer_size`. It is also the read-ahead cap of one upstream connection: body
/// chunks handed to the client are slices of reads of at most this size.
const MAX_HEAD: usize = 32 << 10;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 << 10;
/// Request body bytes gathered before they are written.
const WRITE_HIGH: usize = 64 << 10;

/// What went wrong with the upstream's side of an exchange.
#[derive(Debug, Error)]
pub enum H1Error {
    #[error("upstream connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("upstream closed the connection before the response was complete")]
    Incomplete,
    #[error("malformed response from upstream: {0}")]
    Malformed(&'static str),
    #[error("upstream response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
}

/// Why a request/response exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// The upstream failed; `answered` says whether any byte of a response had arrived.
    Upstream { error: H1Error, answered: bool },
    /// The client's body failed while it was being sent.
    ClientBody(BodyError),
}

/// A connected upstream stream, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One upstream connection and its buffers.
pub struct Conn {
    io: Stream,
    read_buf: BytesMut,
    /// The request head and gathered body bytes; reused across requests.
    write_buf: Vec<u8>,
    written: usize,
    /// The response wait's timer (`proxy::send`), kept with the connection between requests:
    /// moved to a later deadline, a registered tokio timer only updates its expiry, where a new
    /// one per request was registered in the timer wheel and removed again (~500 instructions).
    response_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The upstream's header names from its last response head.
    names: crate::request::NameCache,
}

impl Conn {
    /// Boxed for its whole life (pool, request, response body, pool again): a request moves
    /// its connection through several owners, and a pointer moves for nothing where the
    /// ~100-byte connection was copied each time.
    pub fn new(io: Stream) -> Box<Self> {
        Box::new(Conn {
            io,
            read_buf: BytesMut::new(),
            write_buf: Vec::new(),
            written: 0,
            response_timer: None,
            names: Default::default(),
        })
    }

    /// The response wait's timer this connection keeps between requests, if it has one yet.
    pub fn take_response_timer(&mut self) -> Option<Pin<Box<tokio::time::Sleep>>> {
        self.response_timer.take()
    }

    /// For a connection sitting idle: its response timer, still in the timer wheel, holds the
    /// waker of the client task that last waited on it, which would keep that task's memory
    /// alive after its client left and be woken for nothing when the timer fires. One poll with
    /// a no-op waker swaps that waker out and leaves the timer registered (dropping it would
    /// cost the deregistration that keeping it saves). `unconstrained`: a task whose budget is
    /// spent would otherwise get `Pending` back before the swap.
    pub fn forget_response_waker(&mut self) {
        if let Some(timer) = self.response_timer.as_mut() {
            let mut cx = Context::from_waker(Waker::noop());
            // Ready (elapsed) or not, the timer now holds no task's waker.
            let _ = std::future::Future::poll(Pin::new(&mut tokio::task::unconstrained(timer.as_mut())), &mut cx);
        }
    }

    /// Whether an idle connection can take a request: the upstream has not closed it and sent
    /// nothing unasked. Polls the socket once without waiting.
    pub fn is_reusable(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io).poll_read(&mut cx, &mut probe).is_pending()
    }

    /// Reads more bytes into `read_buf`: `Ok(0)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf)
    }

    /// Writes `write_buf` out; `Ready(Ok)` once all of it went.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write_buf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.write_buf[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.write_buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

/// Sends `head` and `body` on `conn` and reads the response head. Reads while it writes: an
/// upstream that answers before it took the whole body gets its answer through (and the
/// connection is not reused). Informational responses other than 101 are skipped.
pub async fn exchange(
    mut conn: Box<Conn>,
    out: Outgoing<'_>,
    body: &mut RequestBody,
) -> Result<Response<UpstreamBody>, SendError> {
    conn.write_buf.clear();
    conn.written = 0;
    let framing = encode::request_head(&mut conn.write_buf, out, body);
    let method = &out.head.method;
    let mut body_done = framing == BodyFraming::None;
    let mut sent = false;
    let mut write_error: Option<io::Error> = None;
    let mut answered = false;
    let upstream = |error, answered| SendError::Upstream { error, answered };
    let response = poll_fn(|cx| {
        if !sent && write_error.is_none() {
            match poll_send(&mut conn, body, framing, &mut body_done, cx) {
                Poll::Ready(Ok(())) => sent = true,
                Poll::Ready(Err(Failure::Body(e))) => return Poll::Ready(Err(SendError::ClientBody(e))),
                Poll::Ready(Err(Failure::Io(e))) => write_error = Some(e),
                Poll::Pending => {}
            }
        }
        loop {
            match decode::response_head(&mut conn.read_buf, method, &mut conn.names) {
                Err(e) => return Poll::Ready(Err(upstream(e, true))),
                Ok(Some(parsed)) => {
                    if parsed.parts.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Poll::Ready(Err(upstream(H1Error::Malformed("unrequested protocol switch"), true)));
                    }
                    if parsed.parts.status.is_informational() {
                        continue;
                    }
                    return Poll::Ready(Ok(parsed));
                }
                Ok(None) if conn.read_buf.len() >= MAX_HEAD => {
                    return Poll::Ready(Err(upstream(H1Error::HeadTooLarge, true)));
                }
                Ok(None) => {}
            }
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    let error = write_error.take().map_or(H1Error::Incomplete, H1Error::Io);
                    return Poll::Ready(Err(upstream(error, answered)));
                }
                Poll::Ready(Ok(_)) => answered = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(upstream(H1Error::Io(e), answered))),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await?;
    if conn.write_buf.capacity() > WRITE_HIGH * 2 {
        conn.write_buf = Vec::new();
    }
    // An answer that came before the whole request went leaves the connection mid-message.
    let keep_alive = response.keep_alive && sent;
    let body = UpstreamBody::new(conn, response.framing, keep_alive);
    Ok(Response::from_parts(response.parts, body))
}

enum Failure {
    Body(BodyError),
    Io(io::Error),
}

/// Moves the request body to the upstream: takes what the client has ready (up to
/// `WRITE_HIGH` bytes, so a read-ahead body goes out with the head in one write), writes it,
/// and repeats until the body ended and everything is flushed.
fn poll_send(
    conn: &mut Conn,
    body: &mut RequestBody,
    framing: BodyFraming,
    body_done: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Failure>> {
    loop {
        while !*body_done && conn.write_buf.len() < WRITE_HIGH {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        encode::body_data(&mut conn.write_buf, framing, data);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Failure::Body(e))),
                Poll::Ready(None) => {
                    *body_done = true;
                    encode::body_end(&mut conn.write_buf, framing);
                }
                Poll::Pending => break,
            }
        }
        let pending_bytes = !conn.write_buf.is_empty();
        match conn.poll_write_out(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure::Io(e))),
            Poll::Pending => return Poll::Pending,
        }
        if *body_done {
            return Pin::new(&mut conn.io).poll_flush(cx).map_err(Failure::Io);
        }
        if !pending_bytes {
            // The client owes body bytes; its body wakes us when they come.
            return Poll::Pending;
        }
    }
}

/// Whether a failed exchange on a pooled connection may be sent again on a fresh one: the
/// upstream closed it without a byte of answer (it timed the connection out as we sent), and
/// nothing was consumed that a second attempt would miss.
pub fn stale(error: &SendError) -> bool {
    matches!(error, SendError::Upstream { answered: false, error: H1Error::Incomplete | H1Error::Io(_) })
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests;
