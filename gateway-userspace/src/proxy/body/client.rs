//! The client's request body as a listener hands it over: hyper's (HTTP/1 connections hyper
//! serves) or an h2 stream's receive half (HTTP/2, served with the h2 crate directly).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use thiserror::Error;

/// A request body read from the client.
pub enum ClientBody {
    Http1(Incoming),
    Http2(H2Body),
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> Self {
        ClientBody::Http1(body)
    }
}

/// Why reading the client's body failed.
#[derive(Debug, Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    #[error("HTTP/2 stream: {0}")]
    Http2(#[from] h2::Error),
}

/// An HTTP/2 request body: the stream's DATA frames, then its trailers. Each DATA frame's bytes
/// are handed back to h2's flow control as soon as they are read, so the client's window
/// reopens at the pace the body is forwarded (the window is the only buffer).
pub struct H2Body {
    recv: h2::RecvStream,
    /// The declared `content-length`, for the size hint (h2 itself refuses a body that does
    /// not match it).
    content_length: Option<u64>,
    data_done: bool,
}

impl H2Body {
    /// `headers`: the request's, for its declared length.
    pub fn new(recv: h2::RecvStream, headers: &HeaderMap) -> Self {
        H2Body { recv, content_length: content_length(headers), data_done: false }
    }
}

/// The one `content-length` value, when all the fields agree on it.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        let n = value.to_str().ok()?.trim().parse::<u64>().ok()?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// RST_STREAM with NO_ERROR while the body is read is an early response, not a failure
/// (RFC 9113 §8.1): the body ends there.
fn early_end(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::NO_ERROR)
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = self.content_length.as_mut() {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) if early_end(&e) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t)))),
            Err(e) if early_end(&e) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.content_length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ClientBody::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Http1(b) => b.is_end_stream(),
            ClientBody::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Http1(b) => b.size_hint(),
            ClientBody::Http2(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(http::header::CONTENT_LENGTH, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_declared_length_is_the_one_all_fields_agree_on() {
        assert_eq!(content_length(&headers(&[])), None);
        assert_eq!(content_length(&headers(&["12"])), Some(12));
        assert_eq!(content_length(&headers(&["12", " 12 "])), Some(12));
        assert_eq!(content_length(&headers(&["12", "13"])), None);
        assert_eq!(content_length(&headers(&["-1"])), None);
        assert_eq!(content_length(&headers(&["1x"])), None);
    }
}
