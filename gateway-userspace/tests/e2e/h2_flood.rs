//! HTTP/2 frames that carry no request, sent in a loop by a raw client (frames written by hand,
//! h2c prior knowledge and over TLS), end with GOAWAY ENHANCE_YOUR_CALM and a closed connection,
//! counted by frame type; real clients (hyper, h2load, curl) never trip the limits. The same
//! scan caps the response HPACK table at 0 (`listener/conn/h2_table_size.rs`).

use std::{process::Command, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::{pki::*, support::*};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS opening stream 1: `GET http://localhost/`, with or without END_STREAM.
fn request_headers(end_stream: bool) -> Vec<u8> {
    // HPACK: :method GET, :scheme http, :path / (static table), :authority literal.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 9];
    block.extend_from_slice(b"localhost");
    frame(0x1, 0x4 | u8::from(end_stream), 1, &block)
}

/// A flood: what opens the connection, and the frame sent over and over.
struct Flood {
    label: &'static str,
    setup: Vec<u8>,
    frame: Vec<u8>,
}

fn floods() -> Vec<Flood> {
    let settings = frame(0x4, 0, 0, &[]);
    let plain = |label, frame| Flood { label, setup: settings.clone(), frame };
    let with_request = |label, end_stream, frame| Flood {
        label,
        setup: [settings.clone(), request_headers(end_stream)].concat(),
        frame,
    };
    vec![
        plain("ping", frame(0x6, 0, 0, &[7; 8])),
        plain("settings", frame(0x4, 0, 0, &[])),
        plain("priority", frame(0x2, 0, 3, &[0, 0, 0, 0, 16])),
        plain("window_update", frame(0x8, 0, 0, &[0, 0, 0, 1])),
        plain("unknown", frame(0xfa, 0, 0, &[])),
        // RST_STREAM on a stream that is already closed: h2 ignores each one.
        with_request("rst_stream", true, frame(0x3, 0, 1, &[0, 0, 0, 8])),
        // Empty DATA frames on an open request.
        with_request("empty_data", false, frame(0x0, 0, 1, &[])),
    ]
}

/// What the flooding client saw.
#[derive(Debug)]
struct Seen {
    goaway: Option<u32>,
    closed: bool,
}

/// Sends the flood until the server closes (or 15 s pass), reading everything it answers.
async fn run_flood<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S, flood: &Flood) -> Seen {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let reader = tokio::spawn(async move {
        let mut seen = Seen { goaway: None, closed: false };
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    seen.closed = true;
                    return seen;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return seen,
            }
            // Server frames: 9-byte headers; note GOAWAY's error code.
            while buf.len() >= 9 {
                let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == 0x7 && len >= 8 {
                    seen.goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]));
                }
                buf.drain(..9 + len);
            }
        }
    });
    let batch = flood.frame.repeat(256);
    let setup = [PREFACE, &flood.setup].concat();
    let writer = async move {
        if wr.write_all(&setup).await.is_err() {
            return;
        }
        while wr.write_all(&batch).await.is_ok() {}
    };
    let reader = async { reader.await.expect("reader task") };
    tokio::pin!(reader);
    tokio::select! {
        seen = &mut reader => seen,
        () = writer => reader.await,
    }
}

/// The first response header block (HEADERS, type 1) on a raw h2c connection opened with
/// `settings`, or the payload of its first frame of type `until`.
async fn first_response_block(gw: &Gateway, settings: &[u8], until: u8) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(gw.ports.listen).await.expect("connect");
    let hello = [PREFACE, &frame(0x4, 0, 0, settings), &request_headers(true)].concat();
    stream.write_all(&hello).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == until {
                return buf[9..9 + len].to_vec();
            }
            buf.drain(..9 + len);
        }
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await;
        let n = read.expect("a response within 10 s").expect("read");
        assert!(n > 0, "closed before the response\n{}", gw.stderr());
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Browsers announce a header table size, curl and h2load ENABLE_PUSH 0: either way the
/// response's header block opens with a dynamic table size update to 0 (HPACK `001` + 0:
/// `0x20`), so h2 indexes nothing (without the cap it would open with `:status 200`, `0x88`).
#[tokio::test(flavor = "multi_thread")]
async fn response_headers_use_no_hpack_dynamic_table() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let setting = |id: u16, value: u32| [id.to_be_bytes().as_slice(), &value.to_be_bytes()].concat();
    for (name, settings) in [("header table size", setting(0x1, 65536)), ("enable push", setting(0x2, 0))] {
        let block = first_response_block(&gw, &settings, 0x1).await;
        assert_eq!(block.first(), Some(&0x20), "{name}: {block:02x?}");
    }
    // An invalid ENABLE_PUSH is not rewritten: h2 still refuses it (GOAWAY PROTOCOL_ERROR).
    let goaway = first_response_block(&gw, &setting(0x2, 7), 0x7).await;
    assert_eq!(goaway.get(4..8), Some(&1u32.to_be_bytes()[..]), "{goaway:02x?}");
    served(&gw).await;
}

fn flood_closes(gw: &Gateway, frame: &str) -> f64 {
    gw.metric("gateway_http2_flood_closes_total", &[("frame", frame)])
}

fn config(p: &Ports, u: &Upstream) -> String {
    ConfigBuilder::new(p).catch_all(u.addr).build()
}

/// A normal h2c client keeps being served.
async fn served(gw: &Gateway) {
    let client = h2c_client();
    for i in 0..5 {
        let req = http::Request::get(gw.url(&format!("/ok/{i}"))).body(Full::<Bytes>::default()).expect("request");
        assert_eq!(send(&client, req).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_floods_of_frames_without_requests_get_goaway_and_are_closed() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    for flood in floods() {
        let before = flood_closes(&gw, flood.label);
        let stream = tokio::net::TcpStream::connect(gw.ports.listen).await.expect("connect");
        let seen = run_flood(stream, &flood).await;
        assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{}: {seen:?}\n{}", flood.label, gw.stderr());
        assert!(seen.closed, "{}: the connection stayed open", flood.label);
        let counted = eventually(Duration::from_secs(5), || (flood_closes(&gw, flood.label) > before).then_some(()));
        assert!(counted.is_some(), "{}: not counted\n{}", flood.label, gw.metrics());
        served(&gw).await;
    }
    assert!(gw.stderr().contains("too many frames carrying no request"), "the close is logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_over_tls_are_cut_too() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let server = ca.server(&["localhost"]);
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        let tls = "\n[listeners.tls]\ncertificates = [{ cert = \"server.crt\", key = \"server.key\" }]\n";
        config(p, &u).replacen(&format!("bind = \"{}\"\n", p.listen), &format!("bind = \"{}\"\n{tls}", p.listen), 1)
    });
    let flood = floods().into_iter().next().expect("ping flood");
    let stream = tls_connect(gw.ports.listen, "localhost", client_config(&ca, None, &["h2"])).await.expect("tls");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let seen = run_flood(stream, &flood).await;
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}\n{}", gw.stderr());
    assert!(seen.closed);
    assert!(eventually(Duration::from_secs(5), || (flood_closes(&gw, "ping") >= 1.0).then_some(())).is_some());
    let mut ok = Https::connect(gw.ports.listen, "localhost", client_config(&ca, None, &["h2"])).await.expect("h2");
    assert_eq!(ok.get("/after", &[]).await.expect("served").status, 200);
}

/// h2load (many streams, and large downloads that make it send a WINDOW_UPDATE per few DATA
/// frames) and curl never trip the limits.
#[test]
fn real_h2_clients_never_trip_the_limits() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let h2load = |args: &[&str], path: &str| {
        let out = Command::new("h2load")
            .args(args)
            .arg(gw.url(path))
            .output()
            .expect("h2load must be installed (cargo xtask deps: nghttp2-client)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "h2load failed: {text}");
        text
    };
    let small = h2load(&["-n", "4000", "-c", "4", "-m", "32"], "/small");
    assert!(small.contains("4000 succeeded, 0 failed, 0 errored"), "{small}");
    let large = h2load(&["-n", "200", "-c", "2", "-m", "8", "-w", "16"], "/bytes/1000000");
    assert!(large.contains("200 succeeded, 0 failed, 0 errored"), "{large}");
    for _ in 0..3 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(gw.url("/curl"))
            .output()
            .expect("curl must be installed (cargo xtask deps)");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    assert_eq!(gw.metric("gateway_http2_flood_closes_total", &[]), 0.0, "{}", gw.metrics());
    let m = gw.metrics();
    assert!(metric_value(&m, "gateway_http_requests_total", &[]) >= 4203.0, "{m}");
}
