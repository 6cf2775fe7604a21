//! The HTTP/2 server on h2 directly (`listener/conn/h2_serve.rs`, `h2_stream.rs`): flow control
//! both ways (an upload larger than the server's window, a response larger than the client's),
//! request trailers, a client's RST_STREAM while the response is awaited, the fields the
//! server adds (`date`, `content-length`) or removes (connection-specific ones), and requests
//! read together accepted at once (raw frames).

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::support::*;

const T: Duration = Duration::from_secs(20);

fn config(p: &Ports, u: &Upstream) -> String {
    ConfigBuilder::new(p).limits(r#"max_request_body = "8MiB""#).catch_all(u.addr).build()
}

type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

/// An h2c connection whose stream window is `window` bytes (the client's flow control).
async fn h2c<B>(gw: &Gateway, window: u32) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(gw.ports.listen).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .adaptive_window(false)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn frames(frames: Vec<Frame<Bytes>>) -> StreamBody<Frames> {
    StreamBody::new(futures_util::stream::iter(frames.into_iter().map(Ok).collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread")]
async fn flow_control_trailers_and_fields_over_h2() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));

    // A response four times the client's 16 KiB window: sent as the window reopens, intact.
    let mut small_window = h2c::<Full<Bytes>>(&gw, 16 * 1024).await;
    let req = http::Request::get("http://h/pattern/65536").body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(T, small_window.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers().get("content-length").map(|v| v.as_bytes()), Some(&b"65536"[..]));
    assert!(resp.headers().contains_key("date"), "{:?}", resp.headers());
    // The upstream's `Connection` and the field it names stay on the upstream's hop.
    assert!(!resp.headers().contains_key("connection") && !resp.headers().contains_key("x-upstream-private"));
    let body = tokio::time::timeout(T, resp.into_body().collect()).await.unwrap().unwrap().to_bytes();
    assert_eq!(body, pattern(65536));

    // An upload three times the server's 1 MiB window, in 64 KiB DATA frames, then trailers:
    // it completes only if the server hands each frame's window back as it forwards it.
    let mut sender = h2c::<StreamBody<Frames>>(&gw, 1024 * 1024).await;
    let mut body: Vec<_> = (0..48).map(|_| Frame::data(Bytes::from(vec![b'a'; 64 * 1024]))).collect();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
    body.push(Frame::trailers(trailers));
    let req = http::Request::post("http://h/upload").body(frames(body)).unwrap();
    let resp = tokio::time::timeout(T, sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = tokio::time::timeout(T, resp.into_body().collect()).await.unwrap().unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"body_len\":3145728"), "{body:?}");

    // A response the gateway makes itself (413, a declared length over the limit) gets its
    // `date` too.
    let req = http::Request::post("http://h/big")
        .header("content-length", "9000000")
        .body(frames(vec![Frame::data(Bytes::from_static(b"x"))]))
        .unwrap();
    let resp = tokio::time::timeout(T, sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert!(resp.headers().contains_key("date"), "{:?}", resp.headers());
}

/// A stream the client resets while the upstream has not answered: the stream ends there
/// (the request is dropped), and the HTTP/2 connection goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_reset_drops_the_request_and_the_connection_goes_on() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let stream = tokio::net::TcpStream::connect(gw.ports.listen).await.unwrap();
    let (h2, conn) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::get("http://h/slow/3000").body(()).unwrap();
    let (response, mut stream) = h2.send_request(req, true).unwrap();
    // The upstream has the request, then the client gives up on it.
    assert!(eventually(T, || (u.requests() == 1).then_some(())).is_some(), "the request never reached the upstream");
    stream.send_reset(h2::Reason::CANCEL);
    assert!(tokio::time::timeout(T, response).await.unwrap().is_err());

    let mut h2 = h2.ready().await.unwrap();
    let (response, _) = h2.send_request(http::Request::get("http://h/after").body(()).unwrap(), true).unwrap();
    let resp = tokio::time::timeout(T, response).await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

/// A raw HTTP/2 frame (RFC 9113 §4.1).
fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS with END_STREAM opening `stream`: `GET http://localhost<path>`.
fn get_headers(stream: u32, path: &str) -> Vec<u8> {
    // HPACK: :method GET, :scheme http (static table), :path and :authority literal (names
    // from the static table, not indexed).
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    raw_frame(0x1, 0x4 | 0x1, stream, &block)
}

/// Reads frames until every stream in `streams` has ended (a frame with END_STREAM, after a
/// response HEADERS frame); the streams in the order they ended.
async fn responses(conn: &mut tokio::net::TcpStream, streams: &[u32]) -> Vec<u32> {
    use tokio::io::AsyncReadExt as _;
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 16 * 1024]);
    let (mut headed, mut ended) = (Vec::new(), Vec::new());
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            assert_ne!(kind, 0x3, "RST_STREAM on stream {stream}");
            assert_ne!(kind, 0x7, "GOAWAY");
            if kind == 0x1 {
                headed.push(stream);
            }
            if (kind == 0x0 || kind == 0x1) && flags & 0x1 != 0 {
                assert!(headed.contains(&stream), "stream {stream} ended without a response head");
                ended.push(stream);
            }
            buf.drain(..9 + len);
        }
        if streams.iter().all(|s| ended.contains(s)) {
            return ended;
        }
        let Ok(read) = tokio::time::timeout(T, conn.read(&mut chunk)).await else {
            panic!("no responses in time for {streams:?}: headed {headed:?}, ended {ended:?}")
        };
        let n = read.expect("read");
        assert!(n > 0, "closed before every response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Requests whose HEADERS arrive in one read are all accepted at once (the connection stops
/// asking h2 for more streams only once the highest stream id read is accepted): behind a slow
/// first request, the others are answered without waiting for it. One request alone is
/// answered too, and the connection keeps accepting after each.
#[tokio::test(flavor = "multi_thread")]
async fn requests_read_together_or_alone_are_all_answered() {
    use tokio::io::AsyncWriteExt as _;
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let mut conn = tokio::net::TcpStream::connect(gw.ports.listen).await.unwrap();
    let preface = [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &raw_frame(0x4, 0, 0, &[])].concat();
    conn.write_all(&[preface, get_headers(1, "/")].concat()).await.unwrap();
    assert_eq!(responses(&mut conn, &[1]).await, [1]);
    // Five in one write, the first slow: the other four end first.
    let batch: Vec<u8> = [(3, "/slow/2000"), (5, "/"), (7, "/"), (9, "/"), (11, "/")]
        .into_iter()
        .flat_map(|(s, p)| get_headers(s, p))
        .collect();
    conn.write_all(&batch).await.unwrap();
    let ended = responses(&mut conn, &[3, 5, 7, 9, 11]).await;
    assert_eq!(ended.last(), Some(&3), "{ended:?}");
    conn.write_all(&get_headers(13, "/")).await.unwrap();
    assert_eq!(responses(&mut conn, &[13]).await, [13]);
    let batch: Vec<u8> = [15, 17, 19].into_iter().flat_map(|s| get_headers(s, "/")).collect();
    conn.write_all(&batch).await.unwrap();
    let mut ended = responses(&mut conn, &[15, 17, 19]).await;
    ended.sort_unstable();
    assert_eq!(ended, [15, 17, 19]);
}
