//! The upstream's response body, read from the connection as the client takes it: by
//! Content-Length, chunked (with trailers), or until the upstream closes.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes};
use http_body::{Body, Frame, SizeHint};

use super::{Conn, H1Error, MAX_HEAD, decode, decode::Framing};

enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// A response body that owns its upstream connection until it ends.
pub struct UpstreamBody {
    conn: Option<Box<Conn>>,
    state: State,
    keep_alive: bool,
}

impl UpstreamBody {
    pub(super) fn new(conn: Box<Conn>, framing: Framing, keep_alive: bool) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::UntilClose,
        };
        UpstreamBody { conn: Some(conn), state, keep_alive }
    }

    /// The connection, when the body was read to its end, the response allowed another request
    /// and the upstream sent nothing beyond it; `None` otherwise (then it closes when dropped).
    pub fn take_reusable(&mut self) -> Option<Box<Conn>> {
        let clean = matches!(self.state, State::Done)
            && self.keep_alive
            && self.conn.as_ref().is_some_and(|c| c.read_buf.is_empty());
        if clean { self.conn.take() } else { None }
    }

    /// Gives the response wait's timer back to the connection (see `Conn::take_response_timer`).
    pub fn keep_response_timer(&mut self, timer: Pin<Box<tokio::time::Sleep>>) {
        if let Some(conn) = self.conn.as_mut() {
            conn.response_timer = Some(timer);
        }
    }

    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            let buf = &mut conn.read_buf;
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) | State::ChunkData(left) if !buf.is_empty() => {
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    this.state = match this.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(buf.split().freeze()))));
                }
                State::ChunkSize => match decode::chunk_size_line(buf) {
                    Err(e) => return this.fail(e),
                    Ok(Some((size, len))) => {
                        buf.advance(len);
                        this.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                        continue;
                    }
                    Ok(None) => {}
                },
                State::ChunkEnd if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return this.fail(H1Error::Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    this.state = State::ChunkSize;
                    continue;
                }
                State::Trailers => match decode::trailers(buf) {
                    Err(e) => return this.fail(e),
                    Ok(Some((trailers, len))) => {
                        buf.advance(len);
                        this.state = State::Done;
                        if trailers.is_empty() {
                            return Poll::Ready(None);
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(None) if buf.len() >= MAX_HEAD => {
                        return this.fail(H1Error::Malformed("trailer section too large"));
                    }
                    Ok(None) => {}
                },
                _ => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(H1Error::Incomplete),
                Ok(_) => {}
                Err(e) => return this.fail(H1Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
