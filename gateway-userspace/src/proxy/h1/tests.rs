//! The client against scripted upstreams on real sockets.

use std::time::Duration;

use http::{HeaderMap, Request};
use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;

/// An upstream that reads one request head, answers `answer`, then closes when `close`, else
/// stays open until the test ends; yields the request head it read.
async fn upstream(answer: &'static [u8], close: bool) -> (Box<Conn>, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer).await.unwrap();
        if !close {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        got
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    (Conn::new(Stream::Plain(stream)), task)
}

fn get() -> http::request::Parts {
    Request::get("/x?y=1").header("host", "up").body(()).unwrap().into_parts().0
}

/// Reads the whole body: its data and its trailers.
async fn read_all(body: &mut UpstreamBody) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
    let (mut data, mut trailers) = (Vec::new(), None);
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((data, trailers))
}

#[tokio::test]
async fn content_length_response_and_the_connection_is_reusable() {
    let (conn, up) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok", false).await;
    let response = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap();
    let (parts, mut body) = response.into_parts();
    assert_eq!((parts.status, parts.headers["x-a"].as_bytes()), (StatusCode::OK, &b"1"[..]));
    assert_eq!(read_all(&mut body).await.unwrap(), (b"ok".to_vec(), None));
    assert!(body.take_reusable().is_some());
    up.abort();
}

/// A waker that only counts its clones, standing in for a client task.
struct TaskWaker;
impl std::task::Wake for TaskWaker {
    fn wake(self: std::sync::Arc<Self>) {}
}

#[tokio::test]
async fn a_pooled_connection_keeps_its_timer_but_not_the_last_clients_waker() {
    let (conn, up) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
    let response = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap();
    let (_, mut body) = response.into_parts();
    // The response wait's timer, as `proxy::send` leaves it: polled by the client's task.
    let client = std::sync::Arc::new(TaskWaker);
    let mut timer = Box::pin(tokio::time::sleep(Duration::from_secs(60)));
    let waker = std::task::Waker::from(client.clone());
    assert!(timer.as_mut().poll(&mut std::task::Context::from_waker(&waker)).is_pending());
    drop(waker);
    assert_eq!(std::sync::Arc::strong_count(&client), 2, "the timer holds the client's waker");
    body.keep_response_timer(timer);
    assert_eq!(read_all(&mut body).await.unwrap(), (b"ok".to_vec(), None));
    let mut conn = body.take_reusable().expect("reusable");
    // What the pool's sweep does to each connection it keeps.
    conn.forget_response_waker();
    assert_eq!(std::sync::Arc::strong_count(&client), 1, "the idle connection let the client's task go");
    let timer = conn.take_response_timer().expect("the timer stays with the connection");
    assert!(!timer.is_elapsed());
    up.abort();
}

#[tokio::test]
async fn the_request_goes_out_as_one_head() {
    let (conn, up) = upstream(b"HTTP/1.1 204 No Content\r\n\r\n", true).await;
    let response = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(up.await.unwrap(), b"GET /x?y=1 HTTP/1.1\r\nhost: up\r\n\r\n");
}

#[tokio::test]
async fn chunked_with_trailers_and_informational_responses_skipped() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
        HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n";
    let (conn, up) = upstream(answer, false).await;
    let response = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("link"));
    let mut body = response.into_body();
    let (data, trailers) = read_all(&mut body).await.unwrap();
    assert_eq!((data.as_slice(), trailers.unwrap()["x-sum"].as_bytes()), (&b"abcde"[..], &b"5"[..]));
    assert!(body.take_reusable().is_some());
    up.abort();
}

#[tokio::test]
async fn close_delimited_bodies_end_at_close_and_are_not_reused() {
    let (conn, _up) = upstream(b"HTTP/1.1 200 OK\r\n\r\nuntil close", true).await;
    let mut body = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap().into_body();
    assert_eq!(read_all(&mut body).await.unwrap().0, b"until close");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn connection_close_and_truncated_bodies_are_not_reused() {
    let (conn, up) = upstream(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx", false).await;
    let mut body = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap().into_body();
    assert_eq!(read_all(&mut body).await.unwrap().0, b"x");
    assert!(body.take_reusable().is_none());
    up.abort();

    let (conn, _up) = upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true).await;
    let mut body = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap().into_body();
    assert!(matches!(read_all(&mut body).await, Err(H1Error::Incomplete)));
    assert!(body.take_reusable().is_none());

    let (conn, _up) = upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab\r\n", true).await;
    let mut body = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap().into_body();
    assert!(read_all(&mut body).await.is_err());
}

#[tokio::test]
async fn bad_chunk_framing_fails_the_body() {
    let (conn, up) = upstream(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n", false).await;
    let mut body = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await.unwrap().into_body();
    assert!(matches!(read_all(&mut body).await, Err(H1Error::Malformed(_))));
    assert!(body.take_reusable().is_none());
    up.abort();
}

#[tokio::test]
async fn a_close_without_answer_is_stale_and_a_bad_head_is_not() {
    let (conn, _up) = upstream(b"", true).await;
    let Err(error) = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await else {
        panic!("an answer")
    };
    assert!(stale(&error), "{error:?}");

    let (conn, _up) =
        upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n", true).await;
    let Err(error) = exchange(conn, Outgoing::new(&get()), &mut RequestBody::empty()).await else {
        panic!("an answer")
    };
    assert!(matches!(error, SendError::Upstream { error: H1Error::Malformed(_), answered: true }), "{error:?}");
    assert!(!stale(&error));
}

#[tokio::test]
async fn idle_connections_closed_by_the_upstream_are_not_reusable() {
    let (mut conn, up) = upstream(b"", false).await;
    assert!(conn.is_reusable());
    up.abort();
    let _ = up.await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while conn.is_reusable() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a closed connection is seen as closed");
}
