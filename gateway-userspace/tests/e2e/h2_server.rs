//! The HTTP/2 server on h2 directly (`listener/conn/h2_serve.rs`, `h2_stream.rs`): flow control
//! both ways (an upload larger than the server's window, a response larger than the client's),
//! request trailers, a client's RST_STREAM while the response is awaited, and the fields the
//! server adds (`date`, `content-length`) or removes (connection-specific ones).

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
