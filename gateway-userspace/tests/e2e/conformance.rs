//! A corpus of tricky HTTP/1.1 requests (RFC 9112 framing and syntax) sent raw to the proxy:
//! each is refused (with the status the RFC or the gateway's policy gives) or served exactly
//! once, and none smuggles a second request to the upstream. Run before and after any change
//! to request parsing or forwarding.

use super::support::*;

/// What the gateway must do with a case.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Answered by the gateway with this status; the upstream sees nothing.
    Refused(u16),
    /// Forwarded once and answered 200 with a body of this length.
    Served(u64),
}

use Expect::*;

/// (name, request, expectation). Every request ends by asking to close, and some carry a
/// second request (`/smuggled`) after what a correct parser takes to be the end of the first.
const CORPUS: &[(&str, &str, Expect)] = &[
    // RFC 9112 §6.1: chunked must be the final coding, else 400.
    (
        "te_chunked_not_final",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n0\r\n\r\n",
        Refused(400),
    ),
    // §6.3: Content-Length and Transfer-Encoding together: chunked wins (the empty body here),
    // Content-Length is not forwarded, and the connection closes after the response, so the
    // bytes after the last chunk are never read as a request (checked below).
    (
        "cl_and_te",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        Served(0),
    ),
    // §6.3 / RFC 9110 §8.6: differing lengths are unrecoverable.
    (
        "two_content_lengths",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
        Refused(400),
    ),
    (
        "content_length_list",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\nConnection: close\r\n\r\nhello!",
        Refused(400),
    ),
    (
        "content_length_sign",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\nConnection: close\r\n\r\nhello",
        Refused(400),
    ),
    (
        "content_length_hex",
        "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\nConnection: close\r\n\r\nhello",
        Refused(400),
    ),
    // §5.2: obs-fold in a request is refused (or replaced by SP; the gateway refuses).
    ("obs_fold", "GET /x HTTP/1.1\r\nHost: h\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n", Refused(400)),
    // §5.1: whitespace between a field name and the colon must be refused.
    ("space_before_colon", "GET /x HTTP/1.1\r\nHost : h\r\nConnection: close\r\n\r\n", Refused(400)),
    // §2.2: a bare CR outside the line ending is invalid.
    ("bare_cr_in_value", "GET /x HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\nConnection: close\r\n\r\n", Refused(400)),
    // §2.2: a recipient MAY take a bare LF as a line ending; the request is forwarded with CRLF
    // (re-serialised), so the upstream cannot read it differently.
    ("bare_lf_head", "GET /x HTTP/1.1\nHost: h\nConnection: close\n\n", Served(0)),
    // §3.2: a request without Host, or with two, is 400.
    ("no_host", "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n", Refused(400)),
    ("two_hosts", "GET /x HTTP/1.1\r\nHost: h\r\nHost: i\r\nConnection: close\r\n\r\n", Refused(400)),
    // §7.1: a chunk size that overflows 64 bits, a negative one, a missing one.
    (
        "chunk_size_overflow",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1000000000000000000005\r\nhello\r\n0\r\n\r\n",
        Refused(400),
    ),
    (
        "chunk_size_negative",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        Refused(400),
    ),
    (
        "chunk_size_missing",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\r\nhello\r\n0\r\n\r\n",
        Refused(400),
    ),
    // A well-formed chunked body, for contrast: served, 5 bytes.
    (
        "chunked_ok",
        "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Served(5),
    ),
];

/// Responses in what the gateway sent back: a second one would answer a smuggled request.
fn status_lines(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count()
}

#[test]
fn tricky_requests_are_refused_or_served_once_and_never_smuggle() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| ConfigBuilder::new(p).catch_all(u.addr).build());
    let mut failures = Vec::new();
    for (name, request, expect) in CORPUS {
        let before = u.requests();
        let text = raw_request(gw.ports.listen, request.as_bytes()).expect("raw request");
        let status: Option<u16> = text.get(9..12).and_then(|s| s.parse().ok());
        let forwarded = u.requests() - before;
        let body_len = text
            .split_once("\r\n\r\n")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(b).ok())
            .and_then(|v| v["body_len"].as_u64());
        let got = match (status, forwarded) {
            (Some(200), 1) => Some(Served(body_len.unwrap_or(u64::MAX))),
            (Some(s), 0) if s != 200 => Some(Refused(s)),
            _ => None,
        };
        // Whatever is served, the upstream never learns a length the gateway did not use.
        let cl_forwarded = text.contains("\"content-length\":");
        if got != Some(*expect) || status_lines(&text) != 1 || (request.contains("Transfer-Encoding") && cl_forwarded) {
            failures
                .push(format!("{name}: expected {expect:?}, got status {status:?}, {forwarded} forwarded:\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), CORPUS.len(), failures.join("\n"));
}
