//! `max_request_body` over HTTP/2 (h2c prior knowledge), as over HTTP/1.1 (`limits.rs`): a
//! declared length over the limit is refused before the body is read, and a body without a
//! declared length that grows past the limit mid-stream is cut with 413 too.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::support::*;

fn config(p: &Ports, u: &Upstream) -> String {
    ConfigBuilder::new(p).limits(r#"max_request_body = "1KiB""#).catch_all(u.addr).build()
}

type Chunks = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;
type Body = StreamBody<tokio_stream_shim::Receiver>;

/// A minimal `Stream` over an mpsc receiver (tokio-stream is not a dependency).
mod tokio_stream_shim {
    use std::{
        convert::Infallible,
        pin::Pin,
        task::{Context, Poll},
    };

    use bytes::Bytes;
    use hyper::body::Frame;

    pub struct Receiver(pub tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

    impl futures_util::Stream for Receiver {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

/// An h2c connection to the gateway that sends request bodies chunk by chunk.
async fn h2c(gw: &Gateway) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(gw.ports.listen).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn streaming(path: &str, length: Option<u64>) -> (http::Request<Body>, Chunks) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut req = http::Request::post(format!("http://h{path}"));
    if let Some(n) = length {
        req = req.header(http::header::CONTENT_LENGTH, n);
    }
    (req.body(StreamBody::new(tokio_stream_shim::Receiver(rx))).unwrap(), tx)
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_are_refused_over_http2() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let mut sender = h2c(&gw).await;

    // Declared too large: 413 before any byte of the body is read or forwarded.
    let (req, _tx) = streaming("/declared", Some(5000));
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("body_too_large"), "{body:?}");

    // No declared length: DATA frames of 512 bytes until the limit is crossed mid-stream.
    let (req, tx) = streaming("/streamed", None);
    let pending = tokio::spawn({
        let mut sender = sender.clone();
        async move { sender.send_request(req).await }
    });
    for _ in 0..4 {
        // The stream may be reset once the limit is crossed: later sends can fail.
        if tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 512])))).await.is_err() {
            break;
        }
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), pending).await.unwrap().unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 413, "a body that grew past the limit over h2");
    drop(tx);

    // The connection still serves a body under the limit.
    let (req, tx) = streaming("/small", Some(3));
    tx.send(Ok(Frame::data(Bytes::from_static(b"abc")))).await.unwrap();
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"body_len\":3"), "{body:?}");
    assert!(gw.metric("gateway_http_refusals_total", &[("reason", "body_too_large")]) >= 2.0, "{}", gw.metrics());
}
