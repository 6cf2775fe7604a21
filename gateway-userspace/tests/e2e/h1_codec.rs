//! The gateway's own HTTP/1 codec (`listener/conn/h1`): what it must do for the plain requests
//! it serves itself — pipelining, HTTP/1.0 keep-alive rules, bodiless responses, framing of a
//! body of unknown length, `Connection: close`, `Date` — and the handover of a request with a
//! body to hyper and back, on raw sockets so every byte on the wire is checked.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use super::support::*;

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// One response from a keep-alive connection: head and body. `bodiless`: the
/// response to HEAD (its Content-Length announces a body that is not sent). `None`: the
/// connection ended first.
fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>, bodiless: bool) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let original = String::from_utf8_lossy(&pending[..end]).into_owned();
            let head = original.to_ascii_lowercase();
            let body_at = end + 4;
            let length =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap());
            let chunked = head.contains("\r\ntransfer-encoding: chunked");
            let status = head.split(' ').nth(1).unwrap_or("");
            let body_len = if bodiless || status == "204" || status == "304" {
                Some(0)
            } else if chunked {
                decode_chunked(&pending[body_at..]).map(|(_, used)| used)
            } else {
                length.filter(|&n| pending.len() - body_at >= n)
            };
            if let Some(n) = body_len {
                let raw: Vec<u8> = pending.drain(..body_at + n).collect();
                let body = if chunked { decode_chunked(&raw[body_at..]).unwrap().0 } else { raw[body_at..].to_vec() };
                return Ok(Some((original, body)));
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// A response that arrived, its head lowercased.
fn lowered(response: io::Result<Option<(String, Vec<u8>)>>) -> (String, Vec<u8>) {
    let (head, body) = response.unwrap().expect("a response");
    (head.to_ascii_lowercase(), body)
}

/// A complete chunked body at the start of `bytes`: (data, bytes used).
fn decode_chunked(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let (mut data, mut at) = (Vec::new(), 0);
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[at..line_end]).ok()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers from these upstreams: the empty line ends the body.
            return bytes[at..].starts_with(b"\r\n").then_some((data, at + 2));
        }
        data.extend_from_slice(bytes.get(at..at + size)?);
        at += size + 2;
        if bytes.len() < at {
            return None;
        }
    }
}

fn gateway(u: &Upstream, limits: &str) -> Gateway {
    Gateway::start(|p| ConfigBuilder::new(p).limits(limits).catch_all(u.addr).build())
}

#[test]
fn pipelined_gets_in_one_write_are_answered_in_order_with_a_date() {
    let u = Upstream::start("u");
    let gw = gateway(&u, "");
    let mut s = connect(gw.ports.listen);
    s.write_all(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\nGET /three HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let mut pending = Vec::new();
    for path in ["/one", "/two", "/three"] {
        let (head, body) = read_response(&mut s, &mut pending, false).unwrap().expect("a response");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let date = head.lines().find_map(|l| l.strip_prefix("date: ")).expect("a date field");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["path"], path, "answered out of order");
    }
    assert_eq!(u.requests(), 3);
}

#[test]
fn http_1_0_keeps_the_connection_only_when_asked() {
    let u = Upstream::start("u");
    let gw = gateway(&u, "");
    // Asked: `Connection: keep-alive` comes back and a second request is served on it.
    let mut s = connect(gw.ports.listen);
    let mut pending = Vec::new();
    for path in ["/a", "/b"] {
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n").as_bytes()).unwrap();
        let (head, _) = lowered(read_response(&mut s, &mut pending, false));
        assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: keep-alive"), "{head}");
    }
    // Not asked: the response says HTTP/1.0 and the gateway closes after it.
    let reply = raw_request(gw.ports.listen, b"GET /c HTTP/1.0\r\nHost: h\r\n\r\n").unwrap();
    assert!(reply.starts_with("HTTP/1.0 200 OK\r\n"), "{reply}");
    assert!(!reply.to_ascii_lowercase().contains("connection: keep-alive"), "{reply}");
    assert!(reply.contains("\"path\":\"/c\""), "{reply}");
}

#[test]
fn bodiless_responses_keep_their_length_and_send_no_body() {
    let u = Upstream::start("u");
    let gw = gateway(&u, "");
    let mut s = connect(gw.ports.listen);
    let mut pending = Vec::new();
    s.write_all(b"HEAD /bytes/100 HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let (head, _) = lowered(read_response(&mut s, &mut pending, true));
    assert!(head.starts_with("http/1.1 200 ok\r\n") && head.contains("\r\ncontent-length: 100"), "{head}");
    for status in ["204", "304"] {
        s.write_all(format!("GET /status/{status} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).unwrap();
        let (head, _) = lowered(read_response(&mut s, &mut pending, false));
        assert!(head.starts_with(&format!("http/1.1 {status} ")), "{head}");
        assert!(!head.contains("content-length") && !head.contains("transfer-encoding"), "{head}");
    }
    // Had any body bytes been sent, they would be read as the start of this response.
    s.write_all(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let (head, body) = lowered(read_response(&mut s, &mut pending, false));
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("\"path\":\"/after\""));
    assert!(pending.is_empty(), "stray bytes: {:?}", String::from_utf8_lossy(&pending));
}

/// An upstream that answers every request with a chunked body (its length unknown to the
/// gateway).
fn chunked_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        got.drain(..end + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
                        if s.write_all(reply).is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_body_of_unknown_length_reaches_the_client_chunked() {
    let upstream = chunked_upstream();
    let gw = Gateway::start(|p| ConfigBuilder::new(p).catch_all(upstream).build());
    let mut s = connect(gw.ports.listen);
    let mut pending = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let (head, body) = lowered(read_response(&mut s, &mut pending, false));
        assert!(head.contains("\r\ntransfer-encoding: chunked") && !head.contains("content-length"), "{head}");
        assert_eq!(body, b"hello world");
        // This upstream sends no Date: the gateway's own is there.
        let date = head.lines().find_map(|l| l.strip_prefix("date: ")).expect("a date field");
        assert!(date.ends_with(" gmt") && date.len() == 29, "{date}");
    }
    // An HTTP/1.0 client cannot read chunks: the body ends with the connection.
    let reply = raw_request(gw.ports.listen, b"GET /stream HTTP/1.0\r\nHost: h\r\n\r\n").unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 OK") && !head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
    assert_eq!(body, "hello world");
}

#[test]
fn a_request_with_a_body_goes_to_hyper_and_the_connection_comes_back_after_a_park() {
    let u = Upstream::start("u");
    let gw = gateway(&u, "park_after = \"100ms\"\nidle_timeout = \"30s\"");
    let parked = || gw.metric("gateway_connections_parked_total", &[("listener", "public")]);
    let mut s = connect(gw.ports.listen);
    let mut pending = Vec::new();
    let mut exchange = |s: &mut TcpStream, request: &[u8]| {
        s.write_all(request).unwrap();
        let (head, body) = lowered(read_response(s, &mut pending, false));
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    exchange(&mut s, b"GET /before HTTP/1.1\r\nHost: h\r\n\r\n");
    let echo = exchange(&mut s, b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((echo["path"].as_str(), echo["body_len"].as_u64()), (Some("/upload"), Some(5)), "{echo}");
    let echo = exchange(&mut s, b"GET /between HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(echo["path"], "/between");
    let before = parked();
    eventually(Duration::from_secs(5), || (parked() > before).then_some(())).expect("the idle connection parks");
    let echo = exchange(&mut s, b"GET /after-park HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(echo["path"], "/after-park");
    assert_eq!(u.requests(), 4);
    assert_eq!(gw.metric("gateway_connections_total", &[]), 1.0, "one connection throughout");
}

#[test]
fn connection_close_is_honoured() {
    let u = Upstream::start("u");
    let gw = gateway(&u, "");
    // The request after the one that says `close` is never served, and the gateway closes.
    let mut s = connect(gw.ports.listen);
    s.write_all(b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("the gateway closes the connection");
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("\r\nconnection: close"), "{head}");
    assert!(body.contains("\"path\":\"/last\""), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1 200 OK\r\n").count(), 1, "{reply}");
    assert_eq!(u.requests(), 1);
}

/// Every request served by the codec is followed by a park once the connection idles for
/// `park_after`: the first request of a connection that stayed silent past its park deadline
/// (protocol detection waits for its first bytes unparked), requests that woke a parked
/// connection, and 200 connections doing that at once. Timeouts far away (header 60 s, idle
/// 120 s) so that a timer left at one of them shows as a missing park. (The 10,000-connection
/// idle bench round that idled unparked before 34e0935 is not reproduced at this scale: it is
/// guarded by `cargo xtask bench proxy --idle-only`.)
#[test]
fn a_connection_parks_again_after_each_request() {
    let u = Upstream::start("u");
    let gw = gateway(&u, "park_after = \"200ms\"\nheader_read_timeout = \"60s\"\nidle_timeout = \"120s\"");
    let parked = || gw.metric("gateway_connections_parked_total", &[("listener", "public")]);
    let mut s = connect(gw.ports.listen);
    let mut pending = Vec::new();
    // Silent past its park deadline before the first request.
    std::thread::sleep(Duration::from_millis(600));
    for round in 1..=3 {
        let path = format!("/round-{round}");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).unwrap();
        let (head, body) = lowered(read_response(&mut s, &mut pending, false));
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["path"], path.as_str());
        // Far sooner than the header (60 s) or idle (120 s) timeouts.
        let want = round as f64;
        eventually(Duration::from_secs(5), || (parked() >= want).then_some(()))
            .unwrap_or_else(|| panic!("not parked again after request {round}: {} parks", parked()));
    }
    assert_eq!(gw.metric("gateway_connections_total", &[]), 1.0, "one connection throughout");
    // Many at once, each silent past its park deadline, then one request each.
    let mut many: Vec<TcpStream> = (0..200).map(|_| connect(gw.ports.listen)).collect();
    std::thread::sleep(Duration::from_millis(600));
    for (i, s) in many.iter_mut().enumerate() {
        s.write_all(format!("GET /many-{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).unwrap();
    }
    for s in many.iter_mut() {
        let mut pending = Vec::new();
        let (head, _) = lowered(read_response(s, &mut pending, false));
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    }
    eventually(Duration::from_secs(5), || (parked() >= 203.0).then_some(()))
        .unwrap_or_else(|| panic!("not all parked: {} parks", parked()));
}
