//! Parking idle HTTP/1 connections never loses a request, however close to the park it arrives.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::support::*;

const PARK_AFTER_MS: u64 = 40;
const CONNECTIONS: usize = 16;
const ROUNDS: usize = 60;
/// Idle gaps are swept over `PARK_AFTER_MS` ± this, so many requests land within a
/// millisecond of their connection's park.
const SWEEP_US: i64 = 3_000;

/// Reads one HTTP/1.1 response (Content-Length or chunked); `None` if the connection ended
/// first.
fn read_response(s: &mut TcpStream) -> io::Result<Option<String>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let body = &got[end + 4..];
            let complete = match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                Some(len) => body.len() >= len.trim().parse::<usize>().unwrap_or(0),
                None => body.ends_with(b"0\r\n\r\n"),
            };
            if complete {
                return Ok(Some(String::from_utf8_lossy(&got).into_owned()));
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// One client: a keep-alive connection that sends a request, waits an idle gap around the park
/// interval, and sends the next. A request without a response is counted as lost (and the
/// client reconnects).
fn client(addr: SocketAddr, index: usize, answered: &AtomicUsize, lost: &AtomicUsize) {
    let connect = || {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        s
    };
    let mut s = connect();
    let samples = (CONNECTIONS * ROUNDS) as i64;
    for round in 0..ROUNDS {
        let sample = (round * CONNECTIONS + index) as i64;
        let offset_us = -SWEEP_US + sample * 2 * SWEEP_US / samples;
        let gap_us = (PARK_AFTER_MS as i64 * 1000 + offset_us).max(0) as u64;
        std::thread::sleep(Duration::from_micros(gap_us));
        let request = format!("GET /c{index}/r{round} HTTP/1.1\r\nHost: h\r\n\r\n");
        let answer = s.write_all(request.as_bytes()).and_then(|()| read_response(&mut s));
        match answer {
            Ok(Some(r)) if r.starts_with("HTTP/1.1 200") && r.contains(&format!("/c{index}/r{round}")) => {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            other => {
                eprintln!("client {index} round {round} (gap {gap_us} µs): no response: {other:?}");
                lost.fetch_add(1, Ordering::SeqCst);
                s = connect();
            }
        }
    }
}

#[test]
fn requests_arriving_at_the_park_point_are_all_served() {
    let u = Upstream::start("u");
    let limits = format!("park_after = \"{PARK_AFTER_MS}ms\"\nidle_timeout = \"30s\"");
    let gw = Gateway::start(|p| ConfigBuilder::new(p).limits(&limits).catch_all(u.addr).build());
    let answered = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let (addr, answered, lost) = (gw.ports.listen, answered.clone(), lost.clone());
            std::thread::spawn(move || client(addr, i, &answered, &lost))
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let total = CONNECTIONS * ROUNDS;
    let parked = gw.metric("gateway_connections_parked_total", &[("listener", "public")]);
    assert_eq!(lost.load(Ordering::SeqCst), 0, "requests lost at the park point (parked {parked} times)");
    assert_eq!(answered.load(Ordering::SeqCst), total);
    assert_eq!(u.requests(), total, "the upstream saw every request");
    // The sweep really straddled the park: a good share of the gaps ended parked, and every
    // client kept its one connection.
    assert!(parked >= (total / 8) as f64, "only {parked} parks in {total} idle gaps");
    assert_eq!(gw.metric("gateway_connections_total", &[]), CONNECTIONS as f64, "a connection was lost");
}
