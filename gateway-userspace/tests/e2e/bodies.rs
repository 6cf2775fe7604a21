//! Slow clients on both sides of a body: uploads that stall (client body timeout, request
//! buffering, passive health) and downloads read slowly (response buffering, memory per
//! connection).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use http_body_util::Full;

use super::support::*;

/// A service with short timeouts: `/stream` streams request bodies, `/buffered` reads small
/// ones first (the default); and `/spooled` buffers responses (of a service with the default
/// timeouts: 1 MB answers to many clients take a while on a busy test machine).
fn config(p: &Ports, u: &Upstream) -> String {
    ConfigBuilder::new(p)
        .limits(r#"client_body_timeout = "1s""#)
        .table("[server.buffering]", &format!("request_buffer_size = \"1KiB\"\ntemp_dir = \"{}\"", p.dir.display()))
        .service_with("s", &[u.addr], "read_timeout = \"300ms\"\nmax_fails = 2\nfail_timeout = \"30s\"\nretries = 0")
        .route("stream", "s", "paths = [\"/stream\"]\nstrip_path = true\nrequest_buffering = false")
        .route("buffered", "s", "paths = [\"/buffered\"]\nstrip_path = true")
        .service("big", &[u.addr])
        .route("spooled", "big", "paths = [\"/spooled\"]\nstrip_path = true\nresponse_buffering = true")
        .build()
}

/// Announces 100 bytes, sends 10, then stalls with the connection open.
fn stall_upload(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789");
    s.write_all(head.as_bytes()).expect("send");
    s
}

/// The response a stalled uploader gets, once the gateway gives up on it.
fn answer(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_408(raw: &str) {
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(raw.contains("\"error\":\"client_body_timeout\""), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("connection: close"), "{raw}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_uploads_get_408_and_never_eject_a_healthy_target() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let target = u.addr.to_string();
    let addr = gw.ports.listen;

    // Streamed bodies: the upstream has the stalled requests, and its read_timeout (300 ms) is
    // shorter than the client body timeout (1 s); three stalls used to eject the target.
    let stalled: Vec<TcpStream> = (0..3).map(|_| stall_upload(addr, "/stream/upload")).collect();
    let rt = tokio::runtime::Handle::current();
    let answers = std::thread::spawn(move || stalled.into_iter().map(answer).collect::<Vec<_>>());
    let mut ok = 0;
    while !answers.is_finished() {
        let r = tokio::task::block_in_place(|| rt.block_on(get(&gw.url("/stream/ok"))));
        assert_eq!(r.status.as_u16(), 200, "a normal client was refused while uploads stalled: {:?}", r.body);
        ok += 1;
    }
    for raw in answers.join().expect("stalled clients") {
        assert_408(&raw);
    }
    assert!(ok > 0);
    assert_eq!(gw.metric("gateway_upstream_target_up", &[("service", "s"), ("target", &target)]), 1.0);
    assert_eq!(gw.metric("gateway_http_refusals_total", &[("reason", "client_body_timeout")]), 3.0);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/stream/after")).await.status.as_u16(), 200);
    }

    // An upstream that sits on a complete request is still at fault: two such 504s eject it.
    let client = client();
    for _ in 0..2 {
        let req = req("POST", &gw.url("/stream/slow/2000"), "h").body(Full::from(vec![b'a'; 100])).expect("request");
        let r = send(&client, req).await;
        assert_eq!(r.status.as_u16(), 504);
        assert_eq!(r.json()["error"], "read_timeout");
    }
    assert_eq!(gw.series("gateway_upstream_target_up", &[("service", "s"), ("target", &target)]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn buffered_uploads_take_no_upstream_connection_until_complete() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let addr = gw.ports.listen;
    assert_eq!(get(&gw.url("/buffered/warm")).await.status.as_u16(), 200);
    let (connections, requests) = (u.connections(), u.requests());

    let stalled: Vec<TcpStream> = (0..3).map(|_| stall_upload(addr, "/buffered/upload")).collect();
    for raw in stalled.into_iter().map(answer) {
        assert_408(&raw);
    }
    assert_eq!(u.connections(), connections, "a stalled small upload opened an upstream connection");
    assert_eq!(u.requests(), requests, "a stalled small upload reached the upstream");
    let target = u.addr.to_string();
    assert_eq!(gw.metric("gateway_upstream_target_up", &[("service", "s"), ("target", &target)]), 1.0);

    // Bodies that complete go through whole: one that fits the buffer, one that streams on.
    let client = client();
    for len in [600usize, 5000] {
        let req = req("POST", &gw.url("/buffered/echo"), "h").body(Full::from(vec![b'a'; len])).expect("request");
        let r = send(&client, req).await;
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.json()["body_len"], len);
    }
    let chunked = b"POST /buffered/echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let raw = raw_request(addr, chunked).expect("chunked");
    assert!(raw.starts_with("HTTP/1.1 200") && raw.contains("\"body_len\":11"), "{raw}");
}

const MIB: usize = 1 << 20;

fn vm_rss_kib(pid: nix::unistd::Pid) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS value")
}

/// A client with a tiny receive buffer that asks for `path` and does not read (yet).
fn slow_reader(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let mut s: TcpStream = socket.into();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).expect("send");
    s
}

/// Reads the rest of a slow reader's response and checks the body is the whole pattern.
fn finish_reading(mut s: TcpStream, len: usize) {
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("head byte");
        head.push(byte[0]);
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("whole body");
    assert!(body == pattern(len), "the body came back altered");
}

/// A response no loopback socket can take off the gateway's hands: the kernel grows a
/// connection's send buffer up to `tcp_wmem`'s maximum (4 MiB here), so a 1 MB body would sit
/// in the kernel, not in the gateway, whatever the client reads.
fn large_body() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("tcp_wmem");
    let max: usize = wmem.split_whitespace().nth(2).and_then(|n| n.parse().ok()).expect("tcp_wmem max");
    (2 * max).max(MIB)
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_readers_release_the_upstream_and_memory_stays_bounded() {
    const CLIENTS: usize = 50;
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let addr = gw.ports.listen;
    let len = large_body();
    let path = format!("/spooled/pattern/{len}");
    finish_reading(slow_reader(addr, &path), len);
    let target = u.addr.to_string();
    let before = vm_rss_kib(gw.pid());

    // Every response is read from the upstream whatever the clients do: the upstream
    // connections go back to the pool while the clients still have most of the body to read.
    let readers: Vec<TcpStream> = (0..CLIENTS).map(|_| slow_reader(addr, &path)).collect();
    let released = eventually(Duration::from_secs(30), || {
        let done = gw.metric("gateway_proxy_buffered_responses_total", &[]) >= (CLIENTS + 1) as f64;
        let active = gw.series("gateway_upstream_target_active_requests", &[("target", &target)]);
        (done && active == 0.0).then_some(())
    });
    let grown_kib = vm_rss_kib(gw.pid()).saturating_sub(before);
    eprintln!("RSS {before} KiB -> +{grown_kib} KiB for {CLIENTS} slow readers of {len} bytes");
    assert!(released.is_some(), "upstream requests still in flight while clients read slowly:\n{}", gw.metrics());
    assert!(gw.metric("gateway_proxy_spooled_bytes_total", &[]) > 0.0, "nothing went to the temp file");
    // Each slow reader holds at most the memory buffer (32 KiB), one file read and hyper's
    // write buffer (plus what the allocator keeps); generous: half a megabyte each.
    let bound_kib = CLIENTS * MIB / 2 / 1024;
    assert!(grown_kib < bound_kib, "RSS grew {grown_kib} KiB for {CLIENTS} slow readers (bound {bound_kib} KiB)");

    let readers: Vec<_> = readers.into_iter().map(|s| std::thread::spawn(move || finish_reading(s, len))).collect();
    for r in readers {
        r.join().expect("slow reader");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_temp_file_reads_the_upstream_at_the_clients_pace() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| {
        config(p, &u).replace(
            "request_buffer_size = \"1KiB\"",
            "request_buffer_size = \"1KiB\"\nmax_temp_file_size = \"256KiB\"",
        )
    });
    let len = large_body();
    let reader = slow_reader(gw.ports.listen, &format!("/spooled/pattern/{len}"));
    let active = || gw.series("gateway_upstream_target_active_requests", &[("service", "big")]);
    let filled = eventually(Duration::from_secs(20), || {
        (gw.metric("gateway_proxy_spooled_bytes_total", &[]) >= (128 << 10) as f64).then_some(())
    });
    assert!(filled.is_some(), "the temp file never filled:\n{}", gw.metrics());
    assert_eq!(active(), 1.0, "past max_temp_file_size the upstream waits for the client");

    // The file empties and refills as the client reads; the body arrives whole and in order.
    finish_reading(reader, len);
    assert!(gw.metric("gateway_proxy_spooled_bytes_total", &[]) > (256 << 10) as f64);
    assert!(eventually(Duration::from_secs(5), || (active() == 0.0).then_some(())).is_some());
}
