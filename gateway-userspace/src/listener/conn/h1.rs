//! Our own HTTP/1 server codec for the common request: a *plain* one (complete and valid head,
//! HTTP/1.0 or 1.1, no body, no upgrade, no `Expect`) is read, handed to the pipeline and
//! answered here, without hyper's dispatcher; anything else — a body, an upgrade, a parse error,
//! a head too large — goes to hyper (`drive_h1`) with every byte already read, so its checks,
//! its refusals and its RFC 9112 rules stay the one implementation for those. hyper serves that
//! connection until it parks or ends; after a park the fast path serves again.
//!
//! Why: hyper's server role (its head buffer and parser, its encoder, the dispatcher's poll
//! loop, a `select!` that polled every timer on every wake-up) was the largest part of the
//! gateway's CPU per proxied keep-alive request (`bench/results/callgrind.md`).
//!
//! One poll loop per state: while a request is served only its future (and, as hyper does, a
//! read that notices a client that went away) is polled; the watchdog timer and the shutdown
//! watch are polled only while the connection waits for a head, and the timer is moved only when
//! it fires or a slow head brings its deadline forward.

mod read;
mod write;

use std::{future::poll_fn, io::Write as _};

use bytes::BytesMut;
use http_body::Body as _;
use tokio_util::io::poll_read_buf;

use super::{
    drive::{End, drive_h1},
    watchdog::{Watch, watchdog},
    *,
};
use read::Parsed;
use write::{BodyLength, Framing};

/// Bytes asked of the socket per read (hyper starts at 8 KiB and grows; a plain head is a few
/// hundred bytes).
const READ_CHUNK: usize = 4096;
/// Body data up to this size is copied behind the head (one write); larger frames are written
/// as they are.
const COPY_MAX: usize = 16 * 1024;

/// How the fast path stopped.
enum Exit {
    /// A request for hyper is in the read buffer.
    Handover,
    /// Idle long enough: park (the buffer is empty).
    Park,
    /// The connection ends (client closed, `Connection: close`, idle, shutdown).
    Close,
    Failed(End),
}

/// Serves HTTP/1 on `io` until the connection ends or is parked (as `drive_h1`, which it hands
/// any request that is not plain).
pub(super) async fn serve_h1<I: ClientIo>(
    mut io: WatchedIo<I>,
    conn: &Rc<ConnInfo>,
    worker: &Rc<WorkerLocal>,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
    parkable: bool,
) -> Result<Option<WatchedIo<I>>, End> {
    let mut buf = BytesMut::new();
    let exit = serve_plain(&mut io, &mut buf, conn, worker, limits, shutdown, parkable).await;
    match exit {
        Exit::Handover => {
            // Every byte read goes back in front of the stream, ahead of what is still queued.
            if !io.prefix.is_empty() {
                buf.extend_from_slice(&io.prefix);
            }
            io.prefix = buf.freeze();
            drive_h1(io, conn, worker, limits, shutdown, parkable).await
        }
        Exit::Park => {
            conn.park.set(true);
            Ok(Some(io))
        }
        Exit::Close => {
            conn.park.set(false);
            Ok(Some(io))
        }
        Exit::Failed(end) => Err(end),
    }
}

/// What woke a connection waiting for a head.
enum Wake {
    Read(io::Result<usize>),
    Timer,
    Shutdown,
}

async fn serve_plain<I: ClientIo>(
    io: &mut WatchedIo<I>,
    buf: &mut BytesMut,
    conn: &Rc<ConnInfo>,
    worker: &Rc<WorkerLocal>,
    limits: &Limits,
    shutdown: &watch::Receiver<bool>,
    parkable: bool,
) -> Exit {
    // The head bytes hyper would hold before answering 431 (its `max_buf_size`).
    let max_head = limits.max_header_bytes.max(8192);
    // Events never need to wake a watchdog here (this loop reads the state itself): an armed
    // instant in the past keeps `ConnInfo::note_*` from notifying.
    let entered = Instant::now();
    conn.watchdog_timer.armed_at.set(Some(entered));
    let mut armed = match watchdog(conn, Proto::Http1, limits, parkable) {
        Watch::Next(at) => at,
        _ => entered,
    };
    let mut timer = pin!(sleep_until(armed.into()));
    let mut closing = *shutdown.borrow();
    // A receiver of its own, so `shutdown` can still be read while this one waits for a change.
    let mut watching = shutdown.clone();
    let mut changed = pin!(watching.changed());
    let (mut timer_registered, mut watch_registered) = (false, false);
    let mut wbuf = Vec::new();
    // Dropped with this loop's frame when the connection parks: an idle connection keeps none.
    let mut names = crate::request::NameCache::default();
    loop {
        if !buf.is_empty() {
            match read::parse(buf, limits.max_headers, &mut names) {
                Parsed::Plain(head) => match serve_one(io, buf, &mut wbuf, head, conn, worker, shutdown).await {
                    Ok(true) => {
                        // The timer may be armed later than this request's park deadline (a head
                        // that arrived as a parked connection woke moved it to the header
                        // timeout): bring it forward, or the connection would idle unparked, with
                        // its buffers, until then. No clock read: the common case compares only.
                        let park_at = conn.last_active.get() + limits.park_after;
                        if parkable && park_at < armed {
                            armed = park_at;
                            timer.as_mut().reset(armed.into());
                        }
                        continue;
                    }
                    Ok(false) => return Exit::Close,
                    Err(e) => return Exit::Failed(e),
                },
                Parsed::Other => return Exit::Handover,
                Parsed::Partial if buf.len() >= max_head => return Exit::Handover,
                Parsed::Partial => {
                    // Bytes read while a request was in flight did not note a head start.
                    let started = conn.head_started.get().unwrap_or_else(|| {
                        conn.note_head_started(Instant::now());
                        Instant::now()
                    });
                    let deadline = started + limits.header_read_timeout;
                    if deadline < armed {
                        armed = deadline;
                        timer.as_mut().reset(armed.into());
                        timer_registered = false;
                    }
                }
            }
        }
        if closing || conn.close_requested.get() {
            return Exit::Close;
        }
        if wbuf.capacity() > COPY_MAX {
            wbuf = Vec::new();
        }
        reserve(buf);
        let wake = poll_fn(|cx| {
            if let Poll::Ready(read) = poll_read_buf(Pin::new(&mut *io), cx, &mut *buf) {
                return Poll::Ready(Wake::Read(read));
            }
            // The timer and the watch keep the task's waker once polled (it does not change
            // for the task's life), so after that a cheap look at their state is enough: they
            // are polled again only after the timer moved (~350 instructions per request less).
            let fired = if timer_registered { timer.is_elapsed() } else { timer.as_mut().poll(cx).is_ready() };
            timer_registered = true;
            if fired {
                return Poll::Ready(Wake::Timer);
            }
            let changed_now = if watch_registered {
                shutdown.has_changed().unwrap_or(true)
            } else {
                changed.as_mut().poll(cx).is_ready()
            };
            watch_registered = true;
            if changed_now { Poll::Ready(Wake::Shutdown) } else { Poll::Pending }
        })
        .await;
        match wake {
            Wake::Read(Ok(0)) => return Exit::Close,
            Wake::Read(Ok(_)) => {}
            Wake::Read(Err(e)) => return Exit::Failed(End::Error(e.into())),
            Wake::Timer => match watchdog(conn, Proto::Http1, limits, parkable) {
                Watch::Next(at) => {
                    armed = at;
                    timer.as_mut().reset(at.into());
                    timer_registered = false;
                }
                Watch::SlowHeader => return Exit::Failed(End::SlowHeader),
                Watch::Park if buf.is_empty() => return Exit::Park,
                Watch::Park => {
                    armed = Instant::now() + limits.header_read_timeout;
                    timer.as_mut().reset(armed.into());
                    timer_registered = false;
                }
                Watch::Idle => return Exit::Close,
            },
            // Shutdown (or the daemon dropped the sender, which ends the worker anyway).
            Wake::Shutdown => closing = true,
        }
    }
}

/// Room for the next read.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Serves one plain request and writes its response. `Ok(true)`: the connection may serve
/// another request.
async fn serve_one<I: ClientIo>(
    io: &mut WatchedIo<I>,
    buf: &mut BytesMut,
    wbuf: &mut Vec<u8>,
    head: read::Head,
    conn: &Rc<ConnInfo>,
    worker: &Rc<WorkerLocal>,
    shutdown: &watch::Receiver<bool>,
) -> Result<bool, End> {
    let read::Head { parts, keep_alive } = head;
    let (method, version) = (parts.method.clone(), parts.version);
    worker.requests_started.set(worker.requests_started.get().wrapping_add(1));
    // Boxed, as the service boxes it for hyper: the request path's state machine is several KiB.
    let mut serving = Box::pin(pipeline::serve(parts, None, conn.clone(), worker.snapshot(), worker.pool.clone()));
    // As hyper does, a read while the response is awaited notices a client that went away
    // (end-of-stream on an empty buffer); pipelined bytes stay in the buffer for later.
    let response = poll_fn(|cx| {
        if let Poll::Ready(response) = serving.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        if buf.is_empty() {
            reserve(buf);
            match poll_read_buf(Pin::new(&mut *io), cx, &mut *buf) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) | Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await;
    drop(serving);
    let Some(response) = response else { return Ok(false) };
    let (mut parts, mut body) = response.into_parts();
    let length = if body.is_end_stream() {
        BodyLength::Empty
    } else {
        body.size_hint().exact().map_or(BodyLength::Unknown, BodyLength::Known)
    };
    // As after hyper's graceful shutdown: a response written once the worker drains (or the
    // connection is to end) says `Connection: close`.
    let keep_alive = keep_alive && !conn.close_requested.get() && !*shutdown.borrow();
    let request = write::Request { method: &method, version, keep_alive };
    let encoded = write::head(wbuf, &mut parts, &request, length);
    drop(parts);
    let sent = match encoded.framing {
        // hyper does not poll a body it will not send: dropping it ends the request.
        Framing::Length(0) => {
            drop(body);
            write_out(io, wbuf).await
        }
        framing => stream_body(io, wbuf, &mut body, framing, encoded.trailers.as_deref()).await,
    };
    let complete = sent?;
    io.flush().await.map_err(|e| End::Error(e.into()))?;
    Ok(complete && !encoded.last)
}

/// Writes the body's frames behind the head already in `wbuf`, at the client's pace (each write
/// completes before the next frame is asked for). `Ok(false)`: the body ended short of its
/// length or failed, so the connection cannot carry another response.
async fn stream_body<I: ClientIo>(
    io: &mut WatchedIo<I>,
    wbuf: &mut Vec<u8>,
    body: &mut ResponseBody,
    framing: Framing,
    trailers: Option<&[http::HeaderName]>,
) -> Result<bool, End> {
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // A frame that is ready goes out with what is buffered; otherwise the buffer goes out
        // first, then the frame is awaited.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                write_out(io, wbuf).await?;
                poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                // What is written so far goes out; the client sees the body cut short.
                write_out(io, wbuf).await?;
                tracing::debug!(error = %e, "response body failed; closing the connection");
                return Ok(false);
            }
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if framing == Framing::Chunked {
                    write::last_chunk(wbuf, trailers, frame.trailers_ref());
                    write_out(io, wbuf).await?;
                    return Ok(true);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        let data = match framing {
            Framing::Length(_) => {
                let take = remaining.min(data.len() as u64);
                remaining -= take;
                data.slice(..take as usize)
            }
            _ => data,
        };
        if framing == Framing::Chunked {
            let _ = write!(wbuf, "{:x}\r\n", data.len());
        }
        if wbuf.len() + data.len() <= COPY_MAX {
            wbuf.extend_from_slice(&data);
        } else {
            write_out(io, wbuf).await?;
            io.write_all(&data).await.map_err(|e| End::Error(e.into()))?;
        }
        if framing == Framing::Chunked {
            wbuf.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Chunked => write::last_chunk(wbuf, None, None),
        Framing::Length(_) if remaining > 0 => {
            write_out(io, wbuf).await?;
            return Ok(false);
        }
        _ => {}
    }
    write_out(io, wbuf).await?;
    Ok(framing != Framing::CloseDelimited)
}

async fn write_out<I: ClientIo>(io: &mut WatchedIo<I>, wbuf: &mut Vec<u8>) -> Result<bool, End> {
    if !wbuf.is_empty() {
        io.write_all(wbuf).await.map_err(|e| End::Error(e.into()))?;
        wbuf.clear();
    }
    Ok(true)
}
