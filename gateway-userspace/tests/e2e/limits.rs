use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use super::support::*;

fn config(p: &Ports, u: &Upstream) -> String {
    ConfigBuilder::new(p)
        .limits(
            r#"
max_request_body = "1KiB"
max_header_bytes = "4KiB"
max_headers = 20
max_request_line = 1024
header_read_timeout = "1s"
idle_timeout = "1500ms"
"#,
        )
        .service("s", &[u.addr])
        .route("r", "s", "")
        .build()
}

fn status(raw: &str) -> u16 {
    raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {raw:?}"))
}

#[test]
fn oversized_requests_get_their_statuses() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let addr = gw.ports.listen;

    // 413: declared too large, refused before reading
    let r = raw_request(addr, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n").unwrap();
    assert_eq!(status(&r), 413, "{r}");
    assert!(r.contains("body_too_large"));

    // 413: chunked, found too large while streaming
    let mut chunked = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'a'; 0x200]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = raw_request(addr, &chunked).unwrap();
    assert_eq!(status(&r), 413, "{r}");

    // a body under the limit passes
    let r =
        raw_request(addr, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc").unwrap();
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("\"body_len\":3"), "{r}");

    // 414: request target too long
    let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "a".repeat(2000));
    let r = raw_request(addr, long.as_bytes()).unwrap();
    assert_eq!(status(&r), 414, "{r}");

    // 431: too many header fields
    let mut many = String::from("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n");
    for i in 0..30 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status(&raw_request(addr, many.as_bytes()).unwrap()), 431);

    // 431: one huge header field
    let big = format!("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nx-big: {}\r\n\r\n", "b".repeat(6000));
    assert_eq!(status(&raw_request(addr, big.as_bytes()).unwrap()), 431);

    // Small bodies are read before forwarding (request buffering): the chunked request grew too
    // large before it reached the upstream. Nothing refused on its head did either.
    assert_eq!(u.requests(), 1, "only the small POST reached the upstream");
    let m = gw.metrics();
    assert!(metric_value(&m, "gateway_http_refusals_total", &[("reason", "body_too_large")]) >= 2.0, "{m}");
    assert!(metric_value(&m, "gateway_http_refusals_total", &[("reason", "uri_too_long")]) >= 1.0);
    assert!(metric_value(&m, "gateway_http_refusals_total", &[("reason", "headers_too_large")]) >= 2.0);
}

/// Reads until EOF (true) or `limit` passes without one (false).
fn closes_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn slowloris_and_idle_connections_are_closed() {
    let u = Upstream::start("u");
    // A head that never completes is closed by header_read_timeout (1 s), not idle_timeout: with
    // the idle timeout at 60 s, a close within the 20 s wait can only be the header timer (and
    // the refusal reason says which timer fired).
    let slow_gw = Gateway::start(|p| config(p, &u).replace("idle_timeout = \"1500ms\"", "idle_timeout = \"60s\""));
    let mut slow = TcpStream::connect(slow_gw.ports.listen).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").unwrap();
    assert!(closes_within(&mut slow, Duration::from_secs(20)), "slow client was not closed by the header timer");
    assert!(
        eventually(Duration::from_secs(5), || (slow_gw
            .metric("gateway_http_refusals_total", &[("reason", "header_timeout")])
            >= 1.0)
            .then_some(()))
        .is_some()
    );
    drop(slow_gw);

    let gw = Gateway::start(|p| config(p, &u));

    // An idle keep-alive connection is closed after idle_timeout (1.5 s): not at the end of a
    // response (a second request right after the first is served on it), then by the idle timer
    // (nothing else closes a connection without a request within the 5 s wait).
    let mut idle = TcpStream::connect(gw.ports.listen).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        idle.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let mut buf = [0u8; 4096];
        let n = idle.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "keep-alive connection closed early");
    }
    assert!(closes_within(&mut idle, Duration::from_secs(5)), "idle connection was not closed");
}

/// An idle HTTP/1 connection gives hyper's buffers back (it is parked) and still serves the next
/// request on the same socket, including bytes that arrive while it is parked.
#[test]
fn idle_connections_park_and_keep_serving() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u).replace("idle_timeout = \"1500ms\"", "idle_timeout = \"30s\""));
    // What parked connections free must not be hidden in 2 MiB huge pages (worker/huge_pages.rs).
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    assert!(status.contains("THP_enabled:\t0"), "transparent huge pages are on for gatewayd");
    let mut s = TcpStream::connect(gw.ports.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let exchange = |s: &mut TcpStream, path: &str| {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(exchange(&mut s, "/one").starts_with("HTTP/1.1 200"));
    let parked = eventually(Duration::from_secs(5), || {
        (gw.metric("gateway_connections_parked_total", &[("listener", "public")]) >= 1.0).then_some(())
    });
    assert!(parked.is_some(), "the idle connection was not parked");
    let r = exchange(&mut s, "/two");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"path\":\"/two\""), "{r}");
    // Two requests in one write after another park: the second is replayed from the read-ahead.
    assert!(
        eventually(Duration::from_secs(5), || (gw.metric("gateway_connections_parked_total", &[]) >= 2.0)
            .then_some(()))
        .is_some()
    );
    s.write_all(b"GET /three HTTP/1.1\r\nHost: h\r\n\r\nGET /four HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let mut got = String::new();
    let mut buf = vec![0u8; 8192];
    while !got.contains("/four") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("/three"));
    assert_eq!(gw.metric("gateway_connections_total", &[]), 1.0, "one client connection throughout");
}
