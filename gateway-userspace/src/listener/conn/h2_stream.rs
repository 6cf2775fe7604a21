//! One HTTP/2 request: its stream handed to the pipeline, the response head sent, the response
//! body piped into the stream under h2's flow control.
//!
//! What hyper's `H2Stream` did, on h2's types directly: no conversion of the request into
//! hyper's body, no service future boxed on its own, one pass over the response's names for
//! the connection-specific fields instead of seven hashed removals (the pipeline's responses
//! carry none: the upstream client drops them). Behaviour kept: a client's RST_STREAM while
//! the response is awaited or streamed drops the request (the response body's drop records the
//! client as gone); a `Date` field is added when the response has none; a body of known length
//! gets its `content-length`; a body that fails resets the stream with INTERNAL_ERROR; a
//! response h2 refuses resets it too.

use std::{future::poll_fn, task::ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream, server::SendResponse};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use http_body::Body as _;

use super::{date, *};
use crate::proxy::{ClientBody, H2Body};

/// The fields a response may not carry over HTTP/2 (RFC 9113 §8.2.2): h2 refuses a head with
/// any of them. `te` is allowed in requests only.
static CONNECTION_SPECIFIC: [&HeaderName; 6] =
    [&header::CONNECTION, &KEEP_ALIVE, &PROXY_CONNECTION, &header::TRANSFER_ENCODING, &header::UPGRADE, &header::TE];
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Serves one request that arrived on an HTTP/2 connection, to the end of its response.
pub(super) async fn serve_stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    conn: Rc<ConnInfo>,
    worker: Rc<WorkerLocal>,
) {
    worker.requests_started.set(worker.requests_started.get().wrapping_add(1));
    let (head, recv) = req.into_parts();
    let body = if recv.is_end_stream() {
        // HEADERS with END_STREAM (most requests): no body, as the HTTP/1 codec hands over
        // a bodiless request.
        None
    } else if head.method == Method::CONNECT {
        // CONNECT carries no request body here (no tunnel is opened; the pipeline answers it).
        if H2Body::new(recv, &head.headers).size_hint().exact().is_some_and(|n| n != 0) {
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
        None
    } else {
        Some(ClientBody::Http2(H2Body::new(recv, &head.headers)))
    };
    let mut serving = pin!(pipeline::serve(head, body, conn, worker.snapshot(), worker.pool.clone()));
    // The client may reset the stream while the response is awaited: that drops the request.
    let Some(response) = poll_fn(|cx| {
        if let Poll::Ready(response) = serving.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
    else {
        return;
    };
    let (mut head, body) = response.into_parts();
    strip_connection_specific(&mut head.headers);
    if !head.headers.contains_key(header::DATE) {
        head.headers.insert(header::DATE, date::header_value());
    }
    let end = body.is_end_stream();
    if !end
        && let Some(len) = body.size_hint().exact()
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let Ok(send) = respond.send_response(Response::from_parts(head, ()), end) else {
        respond.send_reset(Reason::INTERNAL_ERROR);
        return;
    };
    if !end {
        let mut pipe = Pipe { body, send, held: None };
        poll_fn(|cx| pipe.poll(cx)).await;
    }
}

/// Removes the fields HTTP/2 forbids in a response, and those a `Connection` field names. One
/// pass over the names first: the pipeline's responses carry none.
fn strip_connection_specific(headers: &mut HeaderMap) {
    if !crate::request::contains_any(headers, &CONNECTION_SPECIFIC) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(CONNECTION_SPECIFIC.iter().copied()) {
        headers.remove(name);
    }
}

/// The response body on its way into the stream.
struct Pipe {
    body: ResponseBody,
    send: SendStream<Bytes>,
    /// A chunk read from the body that waits for stream capacity (and whether it ends it).
    held: Option<(Bytes, bool)>,
}

impl Pipe {
    /// Ready when the body is sent, failed, or the client reset the stream.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Registered while the body or capacity is awaited, so a reset wakes the stream.
            if self.send.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some((data, end)) = self.held.take() {
                // At least some capacity before the chunk goes: a body is read no faster than
                // the client's window takes it (h2 sends what exceeds it as the window opens).
                while self.send.capacity() == 0 {
                    match self.send.poll_capacity(cx) {
                        Poll::Pending => {
                            self.held = Some((data, end));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    }
                }
                if self.send.send_data(data, end).is_err() || end {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.body.is_end_stream();
                        // The last chunk (most bodies' only one) and empty frames need no
                        // capacity wait: nothing more is read behind them.
                        if end || data.is_empty() {
                            if self.send.send_data(data, end).is_err() || end {
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        // A claim on the window, not the chunk's length: capacity reserved for
                        // a body that does not produce it would be pinned on the connection's
                        // window and could stall other streams (as in hyper).
                        self.send.reserve_capacity(1);
                        self.held = Some((data, false));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.send.reserve_capacity(0);
                            let _ = self.send.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body failed; resetting the stream");
                    self.send.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                None => {
                    let _ = self.send.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_specific_fields_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-hop, keep-alive"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("close"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_connection_specific(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn a_head_without_them_is_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::SERVER, HeaderValue::from_static("x"));
        strip_connection_specific(&mut h);
        assert_eq!(h.len(), 2);
    }
}
