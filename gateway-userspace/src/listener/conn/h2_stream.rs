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

use std::future::poll_fn;

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
    let present = Present::of(&head.headers);
    if present.connection_specific {
        strip_connection_specific(&mut head.headers);
    }
    if !present.date {
        head.headers.insert(header::DATE, date::header_value());
    }
    let end = body.is_end_stream();
    if !end
        && !present.content_length
        && let Some(len) = body.size_hint().exact()
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

/// What a response head holds of the fields the server adds or removes: one pass over the
/// names (standard names compare as enum values) instead of a hashed look-up for each.
struct Present {
    date: bool,
    content_length: bool,
    connection_specific: bool,
}

impl Present {
    fn of(headers: &HeaderMap) -> Self {
        let mut p = Present { date: false, content_length: false, connection_specific: false };
        for name in headers.keys() {
            if name == header::DATE {
                p.date = true;
            } else if name == header::CONTENT_LENGTH {
                p.content_length = true;
            } else if CONNECTION_SPECIFIC.contains(&name) {
                p.connection_specific = true;
            }
        }
        p
    }
}

/// Removes the fields HTTP/2 forbids in a response, and those a `Connection` field names (the
/// pipeline's responses carry none: called only when `Present` found one).
fn strip_connection_specific(headers: &mut HeaderMap) {
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
            if let Some((data, end)) = self.held.take() {
                // At least some capacity before the chunk goes: a body is read no faster than
                // the client's window takes it (h2 sends what exceeds it as the window opens).
                while self.send.capacity() == 0 {
                    match self.send.poll_capacity(cx) {
                        Poll::Pending => {
                            self.held = Some((data, end));
                            return self.pending_unless_reset(cx);
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
            let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) else {
                return self.pending_unless_reset(cx);
            };
            match frame {
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

    /// Pending, with the client's RST_STREAM registered to wake the stream while the body or
    /// capacity is awaited (a reset that comes while frames flow fails their `send_data`).
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.send.poll_reset(cx).is_ready() { Poll::Ready(()) } else { Poll::Pending }
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
    fn one_pass_finds_what_the_server_adds_or_removes() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert("x-request-id", HeaderValue::from_static("1"));
        let p = Present::of(&h);
        assert!(!p.date && !p.content_length && !p.connection_specific);
        h.insert(header::DATE, HeaderValue::from_static("Sat, 05 Dec 2026 22:00:00 GMT"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        let p = Present::of(&h);
        assert!(p.date && p.content_length && p.connection_specific);
    }
}
