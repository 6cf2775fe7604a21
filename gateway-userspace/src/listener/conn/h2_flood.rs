//! Bounds the HTTP/2 frames that cost work but carry no request.
//!
//! h2 already cuts Rapid Reset (`max_pending_accept_reset_streams`), CONTINUATION
//! floods, runs of empty or tiny DATA frames and streams it had to reset itself
//! (`max_local_error_reset_streams`), each with GOAWAY ENHANCE_YOUR_CALM. It answers every PING
//! and SETTINGS and processes every PRIORITY, WINDOW_UPDATE, RST_STREAM on a closed stream and
//! frame of an unknown type, without end, and exposes no limit for them. So the stream
//! h2 reads is read through [`FloodGuard`]: it scans the 9-byte frame headers going both
//! ways (nothing is copied or decoded), counts each such kind per connection per second, and
//! when a kind exceeds its budget it writes GOAWAY ENHANCE_YOUR_CALM itself (between two of
//! h2's frames), shuts the stream down and fails h2's read, which ends the connection.
//!
//! A kind's budget is `h2_control_frames_per_second`, plus [`CREDIT`] for each request the
//! client opens (HEADERS) and each DATA frame it is sent in the same second: real clients send
//! these frames in proportion to the work they ask for (a WINDOW_UPDATE or a BDP PING per DATA
//! frame received, a PRIORITY or RST_STREAM per stream), a flood does not. Empty DATA frames
//! earn nothing (see `Kind::earns_credit`).

use std::{
    cell::Cell,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_table_size::HeaderTableCap;
use crate::{
    metrics::{LabelValue, Labels},
    request::ConnInfo,
};

/// Extra frames of each kind allowed per request opened and per DATA frame sent.
pub const CREDIT: u32 = 10;
const WINDOW: Duration = Duration::from_secs(1);
const PREFACE_LEN: usize = 24;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Frames that carry no request, as counted (and named in `gateway_http2_flood_closes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ping,
    Settings,
    Priority,
    WindowUpdate,
    RstStream,
    EmptyData,
    GoAway,
    Unknown,
}

impl Kind {
    const COUNT: usize = 8;

    /// Whether requests and DATA sent earn more of this kind. Not empty DATA frames: a request
    /// has no use for them, and h2 closes at 100 of them (per connection) on its own; counted
    /// from the first, ours trips first and the close is counted.
    fn earns_credit(self) -> bool {
        self != Kind::EmptyData
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::Settings => "settings",
            Kind::Priority => "priority",
            Kind::WindowUpdate => "window_update",
            Kind::RstStream => "rst_stream",
            Kind::EmptyData => "empty_data",
            Kind::GoAway => "goaway",
            Kind::Unknown => "unknown",
        }
    }
}

/// A frame header (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;

impl FrameHead {
    fn parse(b: &[u8; 9]) -> FrameHead {
        FrameHead {
            len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    /// What this frame counts as, if it carries no request.
    fn no_request_kind(self) -> Option<Kind> {
        Some(match self.kind {
            DATA if self.len == 0 && self.flags & END_STREAM == 0 => Kind::EmptyData,
            // Requests, their bodies and header continuations (h2 bounds CONTINUATION itself);
            // PUSH_PROMISE from a client is a protocol error h2 closes on.
            DATA | HEADERS | 0x5 | 0x9 => return None,
            0x2 => Kind::Priority,
            0x3 => Kind::RstStream,
            0x4 => Kind::Settings,
            0x6 => Kind::Ping,
            0x7 => Kind::GoAway,
            0x8 => Kind::WindowUpdate,
            _ => Kind::Unknown,
        })
    }
}

/// Finds frame headers in a byte stream fed in arbitrary pieces.
#[derive(Debug, Default)]
struct FrameScanner {
    /// Bytes still to pass over (a payload, or the client preface).
    skip: usize,
    head: [u8; 9],
    have: usize,
}

impl FrameScanner {
    fn after(skip: usize) -> FrameScanner {
        FrameScanner { skip, ..FrameScanner::default() }
    }

    /// Calls `on_frame` with each frame header completed in `bytes` and the offset in `bytes`
    /// where its payload starts (`bytes.len()` when it starts in the next piece).
    fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(FrameHead, usize)) {
        let total = bytes.len();
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                self.have = 0;
                let head = FrameHead::parse(&self.head);
                self.skip = head.len;
                on_frame(head, total - bytes.len());
            }
        }
    }

    /// Between two frames: a frame written now would not split one of h2's.
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0
    }
}

/// Per-kind counts in the current one-second window.
#[derive(Debug)]
struct Budget {
    per_second: u32,
    window_start: Instant,
    counts: [u32; Kind::COUNT],
    credit: u32,
}

impl Budget {
    fn new(per_second: u32) -> Budget {
        Budget { per_second, window_start: Instant::now(), counts: [0; Kind::COUNT], credit: 0 }
    }

    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window_start) >= WINDOW {
            self.window_start = now;
            self.counts = [0; Kind::COUNT];
            self.credit = 0;
        }
    }

    fn earn(&mut self, now: Instant) {
        self.roll(now);
        self.credit = self.credit.saturating_add(CREDIT);
    }

    /// Counts one frame; true when its kind is over budget.
    fn spend(&mut self, kind: Kind, now: Instant) -> bool {
        self.roll(now);
        let count = &mut self.counts[kind as usize];
        *count = count.saturating_add(1);
        let credit = if kind.earns_credit() { self.credit } else { 0 };
        *count > self.per_second.saturating_add(credit)
    }
}

/// The client stream as the HTTP/2 connection (h2) sees it (see the module docs).
pub struct FloodGuard<I> {
    inner: I,
    conn: Rc<ConnInfo>,
    inbound: FrameScanner,
    outbound: FrameScanner,
    budget: Budget,
    /// The highest stream a request was opened on (GOAWAY's last stream id), shared with the
    /// connection that accepts the streams (`h2_serve`: whether h2 can have more queued).
    last_stream: Rc<Cell<u32>>,
    flooded: Option<Kind>,
    /// The client's SETTINGS_HEADER_TABLE_SIZE, rewritten to 0 (`h2_table_size`).
    table_cap: HeaderTableCap,
}

impl<I> FloodGuard<I> {
    pub fn new(inner: I, conn: Rc<ConnInfo>, per_second: u32, last_stream: Rc<Cell<u32>>) -> FloodGuard<I> {
        FloodGuard {
            inner,
            conn,
            inbound: FrameScanner::after(PREFACE_LEN),
            outbound: FrameScanner::default(),
            budget: Budget::new(per_second),
            last_stream,
            flooded: None,
            table_cap: HeaderTableCap::default(),
        }
    }

    /// Scans bytes the client sent, and rewrites the header table size in the SETTINGS frames
    /// among them; the first kind over budget, if any.
    fn scan_inbound(&mut self, bytes: &mut [u8]) -> Option<Kind> {
        let (budget, last_stream) = (&mut self.budget, &self.last_stream);
        let mut over = None;
        let now = Instant::now();
        // Where SETTINGS payloads start in `bytes` (rare: no allocation for other frames).
        let mut settings = Vec::new();
        self.inbound.feed(bytes, |head, at| {
            if head.kind == SETTINGS && head.flags & ACK == 0 {
                settings.push((at, head.len));
            }
            if head.kind == HEADERS {
                last_stream.set(last_stream.get().max(head.stream));
                budget.earn(now);
            } else if let Some(kind) = head.no_request_kind()
                && budget.spend(kind, now)
            {
                over = over.or(Some(kind));
            }
        });
        // A payload begun in an earlier read first, then those that begin in this one.
        self.table_cap.patch(bytes);
        for (at, len) in settings {
            self.table_cap.start(len);
            self.table_cap.patch(&mut bytes[at..]);
        }
        over
    }

    fn scan_outbound(&mut self, bytes: &[u8]) {
        let budget = &mut self.budget;
        let mut now = None;
        self.outbound.feed(bytes, |head, _| {
            if head.kind == DATA {
                budget.earn(*now.get_or_insert_with(Instant::now));
            }
        });
    }

    fn goaway(&self) -> [u8; 17] {
        let mut frame = [0u8; 17];
        frame[..9].copy_from_slice(&[0, 0, 8, 0x7, 0, 0, 0, 0, 0]);
        frame[9..13].copy_from_slice(&self.last_stream.get().to_be_bytes());
        frame[13..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        frame
    }
}

impl<I: AsyncWrite + Unpin> FloodGuard<I> {
    /// Counts the flood, tells the client why (when a frame can be written now without
    /// blocking or splitting one of h2's), and shuts the stream down.
    fn close_flooded(&mut self, kind: Kind, cx: &mut Context<'_>) {
        self.flooded = Some(kind);
        let shared = self.conn.metrics.shared();
        shared.http2_flood_closes.get_or_create(&Labels([("frame", LabelValue::Static(kind.label()))])).inc();
        tracing::info!(
            peer = %self.conn.peer,
            frame = kind.label(),
            "closing an HTTP/2 connection that sent too many frames carrying no request (GOAWAY ENHANCE_YOUR_CALM)"
        );
        if self.outbound.at_boundary() {
            let frame = self.goaway();
            let inner = Pin::new(&mut self.inner);
            // Best effort: a client that does not read its socket gets no GOAWAY.
            if let Poll::Ready(Ok(n)) = inner.poll_write(cx, &frame) {
                self.outbound.feed(&frame[..n], |_, _| {});
            }
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        let _ = Pin::new(&mut self.inner).poll_shutdown(cx);
    }

    fn flood_error(kind: Kind) -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionAborted, format!("HTTP/2 {} flood", kind.label()))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.flooded {
            return Poll::Ready(Err(Self::flood_error(kind)));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        match self.scan_inbound(&mut buf.filled_mut()[before..]) {
            None => Poll::Ready(Ok(())),
            Some(kind) => {
                // The bytes just read are not handed on: h2 processes none of the flood.
                self.close_flooded(kind, cx);
                Poll::Ready(Err(Self::flood_error(kind)))
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FloodGuard<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.scan_outbound(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    forward_flush_and_shutdown!();
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        let mut left = written;
        for b in bufs {
            if left == 0 {
                break;
            }
            let taken = left.min(b.len());
            self.scan_outbound(&b[..taken]);
            left -= taken;
        }
        Poll::Ready(Ok(written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn scanner_finds_headers_across_any_split() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(0x4, 0, 0, &[0; 6]));
        stream.extend(frame(0x1, 0x4, 1, b"abc"));
        stream.extend(frame(0x6, 0, 0, &[7; 8]));
        stream.extend(frame(0x0, 0x1, 1, b""));
        for split in 1..stream.len() {
            let mut s = FrameScanner::after(PREFACE_LEN);
            let mut seen = Vec::new();
            for piece in stream.chunks(split) {
                s.feed(piece, |h, _| seen.push((h.kind, h.len, h.stream)));
            }
            assert_eq!(seen, [(0x4, 6, 0), (0x1, 3, 1), (0x6, 8, 0), (0x0, 0, 1)], "split {split}");
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn scanner_says_where_each_payload_starts() {
        let mut stream = frame(0x4, 0, 0, &[0; 6]);
        stream.extend(frame(0x6, 0, 0, &[7; 8]));
        let mut s = FrameScanner::default();
        let mut starts = Vec::new();
        s.feed(&stream[..20], |h, at| starts.push((h.kind, at)));
        s.feed(&stream[20..], |h, at| starts.push((h.kind, at)));
        assert_eq!(starts, [(0x4, 9), (0x6, 9 + 6 + 9 - 20)]);
        for split in 1..stream.len() {
            let mut s = FrameScanner::default();
            let mut ends_at_piece_end = Vec::new();
            for piece in stream.chunks(split) {
                s.feed(piece, |_, at| ends_at_piece_end.push(at <= piece.len()));
            }
            assert!(ends_at_piece_end.iter().all(|&ok| ok), "split {split}");
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn budget_is_per_kind_per_window_plus_credit() {
        let start = Instant::now();
        let mut b = Budget::new(3);
        assert!(!(0..3).any(|_| b.spend(Kind::Ping, start)));
        assert!(!b.spend(Kind::Settings, start), "kinds are counted apart");
        assert!(b.spend(Kind::Ping, start), "the fourth PING in a second is over");
        b.earn(start);
        assert!(!b.spend(Kind::Ping, start), "a request earns more");
        assert!(!b.spend(Kind::Ping, start + WINDOW), "a new second starts afresh");
    }

    #[test]
    fn only_frames_without_a_request_count() {
        let head = |kind, flags, len| FrameHead { len, kind, flags, stream: 1 };
        assert_eq!(head(0x0, 0, 0).no_request_kind(), Some(Kind::EmptyData));
        assert_eq!(head(0x0, END_STREAM, 0).no_request_kind(), None, "an empty DATA ending a body is fine");
        assert_eq!(head(0x0, 0, 10).no_request_kind(), None);
        assert_eq!(head(0x1, 0, 10).no_request_kind(), None);
        assert_eq!(head(0x6, 0, 8).no_request_kind(), Some(Kind::Ping));
        assert_eq!(head(0xfa, 0, 0).no_request_kind(), Some(Kind::Unknown));
    }
}
