//! Writing a request to an upstream: the head into one reused buffer, the body's framing.

use std::io::Write as _;

use http::{HeaderMap, HeaderValue, Method, header, request};
use http_body::Body;

/// A request head on its way out, with what the gateway adds to it as it is written rather
/// than inserted into its map first: every insert hashed and probed the map and validated the
/// value once more, for fields that are only ever written.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub head: &'a request::Parts,
    /// Written first, in place of the head's own Host fields.
    pub host: Option<&'a HeaderValue>,
    /// Whole field lines (`name: value\r\n`) written after the head's fields (the forwarding
    /// fields, see `proxy::headers::set_forwarded`).
    pub fields: &'a [u8],
}

#[cfg(test)]
impl<'a> Outgoing<'a> {
    /// The head as it is.
    pub fn new(head: &'a request::Parts) -> Self {
        Outgoing { head, host: None, fields: &[] }
    }
}

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length,
    Chunked,
}

/// Appends the request head to `buf` and says how the body follows. The pipeline has already
/// removed hop-by-hop fields and set `Transfer-Encoding: chunked` where it wants chunked framing;
/// as hyper's client does, a body of known size without a length gets `Content-Length` and any
/// other body is chunked.
pub fn request_head(buf: &mut Vec<u8>, out: Outgoing<'_>, body: &impl Body) -> BodyFraming {
    let head = out.head;
    let target = head.uri.path_and_query().map_or("/", |p| p.as_str());
    buf.extend_from_slice(head.method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = out.host {
        buf.extend_from_slice(b"host: ");
        buf.extend_from_slice(host.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    write_fields(buf, &head.headers, out.host.is_some());
    buf.extend_from_slice(out.fields);
    let framing = if head.headers.contains_key(header::TRANSFER_ENCODING) {
        BodyFraming::Chunked
    } else if head.headers.contains_key(header::CONTENT_LENGTH) {
        BodyFraming::Length
    } else if body.is_end_stream() {
        BodyFraming::None
    } else if let Some(n) = body.size_hint().exact() {
        let _ = write!(buf, "content-length: {n}\r\n");
        BodyFraming::Length
    } else if matches!(head.method, Method::GET | Method::HEAD | Method::CONNECT) {
        // As hyper: these almost never have bodies, so an unknown one is taken as none.
        BodyFraming::None
    } else {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
        BodyFraming::Chunked
    };
    buf.extend_from_slice(b"\r\n");
    framing
}

/// `skip_host`: the Host was written already.
fn write_fields(buf: &mut Vec<u8>, headers: &HeaderMap, skip_host: bool) {
    for (name, value) in headers {
        if skip_host && name == header::HOST {
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// Appends one body chunk in `framing`.
pub fn body_data(buf: &mut Vec<u8>, framing: BodyFraming, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if framing == BodyFraming::Chunked {
        let _ = write!(buf, "{:x}\r\n", data.len());
        buf.extend_from_slice(data);
        buf.extend_from_slice(b"\r\n");
    } else {
        buf.extend_from_slice(data);
    }
}

/// Appends the end of the body (the last chunk; request trailers are not forwarded).
pub fn body_end(buf: &mut Vec<u8>, framing: BodyFraming) {
    if framing == BodyFraming::Chunked {
        buf.extend_from_slice(b"0\r\n\r\n");
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::{Empty, Full, StreamBody};

    use super::*;

    fn parts(req: http::request::Builder) -> request::Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn heads_and_framing() {
        let mut buf = Vec::new();
        let head = parts(Request::get("/a?b=1").header("host", "up").header("x-a", "1"));
        assert_eq!(request_head(&mut buf, Outgoing::new(&head), &Empty::<Bytes>::new()), BodyFraming::None);
        assert_eq!(buf, b"GET /a?b=1 HTTP/1.1\r\nhost: up\r\nx-a: 1\r\n\r\n");

        buf.clear();
        let head = parts(Request::post("/p"));
        assert_eq!(request_head(&mut buf, Outgoing::new(&head), &Full::new(Bytes::from("abc"))), BodyFraming::Length);
        assert_eq!(buf, b"POST /p HTTP/1.1\r\ncontent-length: 3\r\n\r\n");

        buf.clear();
        let head = parts(Request::post("/p").header("content-length", "3"));
        assert_eq!(request_head(&mut buf, Outgoing::new(&head), &Full::new(Bytes::from("abc"))), BodyFraming::Length);
        assert_eq!(buf, b"POST /p HTTP/1.1\r\ncontent-length: 3\r\n\r\n");

        buf.clear();
        let unknown = StreamBody::new(futures_util::stream::iter([Ok::<_, std::io::Error>(http_body::Frame::data(
            Bytes::new(),
        ))]));
        let head = parts(Request::put("/p"));
        assert_eq!(request_head(&mut buf, Outgoing::new(&head), &unknown), BodyFraming::Chunked);
        assert_eq!(buf, b"PUT /p HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");

        buf.clear();
        let head = parts(Request::get("/a").header("x-a", "1").header("host", "client").header("x-b", "2"));
        let host = HeaderValue::from_static("up");
        let out = Outgoing { head: &head, host: Some(&host), fields: b"x-forwarded-for: 1.2.3.4\r\n" };
        assert_eq!(request_head(&mut buf, out, &Empty::<Bytes>::new()), BodyFraming::None);
        assert_eq!(buf, b"GET /a HTTP/1.1\r\nhost: up\r\nx-a: 1\r\nx-b: 2\r\nx-forwarded-for: 1.2.3.4\r\n\r\n");

        buf.clear();
        body_data(&mut buf, BodyFraming::Chunked, &[b'x'; 26]);
        body_data(&mut buf, BodyFraming::Chunked, b"");
        body_end(&mut buf, BodyFraming::Chunked);
        assert_eq!(buf, [&b"1a\r\n"[..], &[b'x'; 26], b"\r\n0\r\n\r\n"].concat());
    }
}
