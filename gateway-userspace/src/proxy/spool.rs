//! Response buffering, as nginx's `proxy_buffering`: the upstream's body is read as fast as the
//! upstream sends it, into memory up to a limit and then into a temp file, and the connection
//! goes back to the pool as soon as the body is complete, however slowly the client reads.
//!
//! A pump task reads the upstream; the client's [`ResponseBody`](super::ResponseBody) reads the
//! [`Spool`]. Order is kept by one rule: while the file holds unread bytes, new bytes go to the
//! file too. The file is created with `O_TMPFILE` (or unlinked at once), so it never has a
//! name and vanishes with the response; it is emptied whenever the client catches up, and never
//! holds more than `max_file` bytes: past that the upstream is read only as fast as the client
//! reads. File I/O is plain `pwrite`/`pread` on the worker thread (page cache, like nginx
//! without `aio threads`): chunks are at most one upstream read.

use std::{
    cell::RefCell,
    collections::VecDeque,
    fs::File,
    future::poll_fn,
    os::unix::fs::FileExt,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{BodyError, SpoolSpec, UpstreamLease, body::poll_upstream, h1::UpstreamBody};
use crate::metrics::Metrics;

/// Bytes read from the temp file per frame handed to the client.
const FILE_CHUNK: u64 = 16 << 10;

enum End {
    Open,
    Done,
    Failed(Option<BodyError>),
}

struct State {
    memory: VecDeque<Bytes>,
    memory_bytes: u64,
    file: Option<File>,
    /// Creating or writing the temp file failed once: memory only from then on.
    file_failed: bool,
    /// Bytes in the file, and how many of them the client has read.
    written: u64,
    read: u64,
    end: End,
    reader: Option<Waker>,
    writer: Option<Waker>,
    reader_gone: bool,
}

/// The client's side of a spooled response.
pub struct Spool {
    state: Rc<RefCell<State>>,
    /// What is left to hand to the client, when the upstream announced its length.
    remaining: Option<u64>,
}

impl Spool {
    /// Starts reading `body` in the background; `lease` goes back to the pool when it ends.
    pub fn start(
        body: UpstreamBody,
        read_timeout: Duration,
        lease: UpstreamLease,
        spec: Arc<SpoolSpec>,
        metrics: Arc<Metrics>,
    ) -> Spool {
        metrics.buffered_responses.inc();
        let remaining = body.size_hint().exact();
        let state = Rc::new(RefCell::new(State {
            memory: VecDeque::new(),
            memory_bytes: 0,
            file: None,
            file_failed: false,
            written: 0,
            read: 0,
            end: End::Open,
            reader: None,
            writer: None,
            reader_gone: false,
        }));
        tokio::task::spawn_local(pump(body, read_timeout, lease, spec, state.clone(), metrics));
        Spool { state, remaining }
    }

    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = self.state.borrow_mut().take(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(left)) = (&polled, self.remaining.as_mut()) {
            *left = left.saturating_sub(frame.data_ref().map_or(0, |d| d.len() as u64));
        }
        polled
    }

    pub fn is_end_stream(&self) -> bool {
        let s = self.state.borrow();
        s.memory.is_empty() && s.read == s.written && matches!(s.end, End::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        self.remaining.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for Spool {
    /// The client went away: the pump stops, and the unfinished connection is not reused.
    fn drop(&mut self) {
        let mut s = self.state.borrow_mut();
        s.reader_gone = true;
        if let Some(w) = s.writer.take() {
            w.wake();
        }
    }
}

impl State {
    /// The client's next frame: memory first (it is always older than the file's unread
    /// bytes), then the file, then the end.
    fn take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(data) = self.memory.pop_front() {
            self.memory_bytes -= data.len() as u64;
            self.wake_writer();
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if self.read < self.written {
            return Poll::Ready(Some(self.read_file().map(Frame::data)));
        }
        match &mut self.end {
            End::Done => Poll::Ready(None),
            End::Failed(e) => Poll::Ready(e.take().map(Err)),
            End::Open => {
                self.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn read_file(&mut self) -> Result<Bytes, BodyError> {
        let Some(file) = &self.file else { return Err(BodyError::Spool(std::io::ErrorKind::NotFound.into())) };
        let n = FILE_CHUNK.min(self.written - self.read);
        let mut buf = vec![0; n as usize];
        file.read_exact_at(&mut buf, self.read).map_err(BodyError::Spool)?;
        self.read += n;
        if self.read == self.written {
            // The client caught up: start the file over, so it never grows past `max_file`.
            self.read = 0;
            self.written = 0;
            let _ = file.set_len(0);
        }
        self.wake_writer();
        Ok(Bytes::from(buf))
    }

    /// Stores one upstream chunk, or waits for the client to make room. `Ready(false)`: the
    /// client is gone.
    fn put(&mut self, data: &Bytes, spec: &SpoolSpec, metrics: &Metrics, cx: &mut Context<'_>) -> Poll<bool> {
        if self.reader_gone {
            return Poll::Ready(false);
        }
        let len = data.len() as u64;
        let file_unread = self.read < self.written;
        if !file_unread && (self.memory.is_empty() || self.memory_bytes + len <= spec.memory) {
            // A copy: the chunk is a slice of the upstream connection's read buffer, which it
            // would otherwise keep whole for as long as the client takes.
            self.memory.push_back(Bytes::copy_from_slice(data));
            self.memory_bytes += len;
            self.wake_reader();
            return Poll::Ready(true);
        }
        if !self.file_failed && self.written + len <= spec.max_file && self.write_file(data, spec) {
            metrics.spooled_bytes.inc_by(len);
            self.wake_reader();
            return Poll::Ready(true);
        }
        self.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn write_file(&mut self, data: &Bytes, spec: &SpoolSpec) -> bool {
        if self.file.is_none() {
            match tempfile::tempfile_in(&spec.dir) {
                Ok(f) => self.file = Some(f),
                Err(e) => return self.file_error("create", &e, spec),
            }
        }
        let Some(file) = &self.file else { return false };
        match file.write_all_at(data, self.written) {
            Ok(()) => {
                self.written += data.len() as u64;
                true
            }
            Err(e) => self.file_error("write", &e, spec),
        }
    }

    /// A temp file problem is the disk's, not the client's or the upstream's: the response
    /// goes on from memory, at the client's pace.
    fn file_error(&mut self, what: &str, e: &std::io::Error, spec: &SpoolSpec) -> bool {
        tracing::warn!(dir = %spec.dir.display(), error = %e, "cannot {what} a response temp file; reading the upstream at the client's pace");
        self.file_failed = true;
        false
    }

    fn finish(&mut self, end: End) {
        self.end = end;
        self.wake_reader();
    }

    fn wake_reader(&mut self) {
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }
}

/// Reads the upstream body into the spool until it ends, fails, or the client goes away.
async fn pump(
    mut body: UpstreamBody,
    read_timeout: Duration,
    lease: UpstreamLease,
    spec: Arc<SpoolSpec>,
    state: Rc<RefCell<State>>,
    metrics: Arc<Metrics>,
) {
    let mut timer = None;
    loop {
        let polled = poll_fn(|cx| {
            let mut s = state.borrow_mut();
            if s.reader_gone {
                return Poll::Ready(None);
            }
            s.writer = Some(cx.waker().clone());
            drop(s);
            poll_upstream(&mut body, read_timeout, &mut timer, cx).map(Some)
        })
        .await;
        let frame = match polled {
            None => return,
            Some(None) => {
                lease.release(&mut body, std::time::Instant::now());
                return state.borrow_mut().finish(End::Done);
            }
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "buffered response body aborted by the upstream");
                return state.borrow_mut().finish(End::Failed(Some(e)));
            }
            Some(Some(Ok(frame))) => frame,
        };
        // Trailers are not kept: a buffered response is a plain body.
        let Ok(data) = frame.into_data() else { continue };
        if !poll_fn(|cx| state.borrow_mut().put(&data, &spec, &metrics, cx)).await {
            return;
        }
    }
}
