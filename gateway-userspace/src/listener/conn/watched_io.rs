//! The client stream as hyper sees it: replays bytes read while parking, calls a park off when a
//! byte arrives under way, notes when a request head starts, and writes the JSON refusal in
//! place of hyper's own automatic 400/414/431.

use super::*;

/// The client stream as hyper sees it: notes when a request head starts arriving on an idle
/// connection, replays bytes a parked hyper connection had read ahead, ends the stream when
/// the connection is to be parked and nothing is waiting to be read, and writes hyper's own
/// parser refusals as JSON (`parse_refusal`).
pub(super) struct WatchedIo<I> {
    pub(super) inner: I,
    pub(super) conn: Rc<ConnInfo>,
    /// For the 414 hyper's parser answers (its JSON rewrite names the limit).
    pub(super) max_request_line: usize,
    pub(super) prefix: Bytes,
    /// The JSON refusal written in place of hyper's, while not all of it is written.
    pub(super) refusal: Bytes,
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
            self.conn.note_head_started(Instant::now());
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
            && let Some(json) = super::super::parse_refusal::rewrite(buf, self.max_request_line)
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
