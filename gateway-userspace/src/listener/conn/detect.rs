//! Which HTTP a plain connection speaks: the HTTP/2 connection preface, sniffed without
//! consuming it (ALPN decides on TLS listeners).

use super::*;

pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sniffs the HTTP/2 prior-knowledge preface without consuming it.
pub(super) async fn detect(stream: &TcpStream, timeout: Duration) -> Proto {
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
