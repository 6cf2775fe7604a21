//! Writing a response head for HTTP/1 by hyper's rules (`proto/h1/role.rs`, `Server::encode`,
//! and `Conn::enforce_version`), so that the fast path answers exactly as hyper did: the
//! status line, the fields, `Date`, and the framing — `Content-Length` when the body's size is
//! known, chunked when not (close-delimited for HTTP/1.0 clients), none at all for HEAD, 204
//! and 304 — and whether the connection ends after the response.

use http::{HeaderName, HeaderValue, Method, StatusCode, Version, header, response};

use super::{super::date, read::has_token};

/// What the body says about its length before the first frame (hyper's `BodyLength`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum BodyLength {
    /// The body is already at its end.
    Empty,
    Known(u64),
    Unknown,
}

/// How the body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Framing {
    /// Exactly this many bytes (0: the body is not written at all).
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, a body of unknown length).
    CloseDelimited,
}

pub(super) struct Encoded {
    pub(super) framing: Framing,
    /// The connection ends after this response.
    pub(super) last: bool,
    /// Trailer fields the response announced (`Trailer`); other trailers are dropped, as hyper
    /// drops them.
    pub(super) trailers: Option<Vec<HeaderName>>,
}

/// The request facts the response's encoding depends on.
pub(super) struct Request<'a> {
    pub(super) method: &'a Method,
    pub(super) version: Version,
    /// The client's wish (by hyper's rules) and nothing in the gateway wanting the connection
    /// closed (shutdown, a refused client certificate).
    pub(super) keep_alive: bool,
}

/// Appends `head` to `dst` as hyper would write it.
pub(super) fn head(dst: &mut Vec<u8>, head: &mut response::Parts, req: &Request<'_>, body: BodyLength) -> Encoded {
    let mut keep_alive = req.keep_alive;
    let mut body = body;
    if head.status.is_informational() {
        // hyper sends no 1xx as a final response: 500, empty, and the connection ends.
        head.status = StatusCode::INTERNAL_SERVER_ERROR;
        head.version = Version::HTTP_11;
        head.headers.clear();
        keep_alive = false;
        body = BodyLength::Empty;
    }
    if req.version == Version::HTTP_10 {
        let says_keep_alive =
            head.headers.get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), b"keep-alive"));
        if !says_keep_alive {
            match head.version {
                Version::HTTP_10 => keep_alive = false,
                Version::HTTP_11 if keep_alive => {
                    head.headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
                }
                _ => {}
            }
        }
        head.version = Version::HTTP_10;
    } else if !keep_alive && !head.headers.get_all(header::CONNECTION).iter().any(|v| has_token(v.as_bytes(), b"close"))
    {
        head.headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let mut last = !keep_alive;

    if head.version == Version::HTTP_11 && head.status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if head.version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        dst.extend_from_slice(head.status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(head.status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }

    let is_head = req.method == Method::HEAD;
    let can_chunk = head.version != Version::HTTP_10 && can_have_body(req.method, head.status);
    let mut framing = None;
    let mut wrote_date = false;
    let mut trailers: Option<Vec<HeaderName>> = None;
    let mut te_chunked_last = false;
    let mut wrote_te = false;
    for (name, value) in &head.headers {
        match *name {
            header::CONTENT_LENGTH => {
                if framing.is_some() && !matches!(framing, Some(Framing::Length(_))) {
                    continue;
                }
                let length = match body {
                    BodyLength::Known(n) => n,
                    BodyLength::Unknown => match parse_length(value) {
                        Some(n) => n,
                        None => continue,
                    },
                    // No body, yet a length: only HEAD's is written (hyper's rule).
                    BodyLength::Empty if is_head => 0,
                    BodyLength::Empty => continue,
                };
                if framing.is_some() {
                    continue;
                }
                framing = Some(Framing::Length(length));
            }
            header::TRANSFER_ENCODING => {
                if !can_chunk || matches!(framing, Some(Framing::Length(_))) {
                    continue;
                }
                framing = Some(Framing::Chunked);
                wrote_te = true;
                te_chunked_last = value
                    .as_bytes()
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            header::CONNECTION if has_token(value.as_bytes(), b"close") => last = true,
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if !can_chunk {
                    continue;
                }
                let names = value
                    .to_str()
                    .unwrap_or("")
                    .split(',')
                    .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok());
                trailers.get_or_insert_with(Vec::new).extend(names);
            }
            _ => {}
        }
        field(dst, name, value);
    }
    if wrote_te && !te_chunked_last {
        field(dst, &header::TRANSFER_ENCODING, &HeaderValue::from_static("chunked"));
    }
    let mut framing = match (framing, body) {
        (Some(framing), _) => framing,
        (None, BodyLength::Unknown) if can_chunk => {
            dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
        (None, BodyLength::Unknown) => Framing::CloseDelimited,
        (None, BodyLength::Empty | BodyLength::Known(0)) => {
            if can_have_content_length(req.method, head.status) && !is_head {
                dst.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Length(0)
        }
        (None, BodyLength::Known(n)) => {
            if can_have_content_length(req.method, head.status) {
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                dst.extend_from_slice(b"\r\n");
                Framing::Length(n)
            } else {
                Framing::Length(0)
            }
        }
    };
    if !can_have_body(req.method, head.status) {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        date::extend(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    if framing == Framing::CloseDelimited {
        last = true;
    }
    Encoded { framing, last, trailers: trailers.filter(|_| framing == Framing::Chunked) }
}

/// Appends the last chunk, with the announced trailers among `fields` (hyper's rule: only those
/// named in `Trailer`, and never framing, routing or auth fields).
pub(super) fn last_chunk(dst: &mut Vec<u8>, announced: Option<&[HeaderName]>, fields: Option<&http::HeaderMap>) {
    dst.extend_from_slice(b"0\r\n");
    if let (Some(announced), Some(fields)) = (announced, fields) {
        for (name, value) in fields {
            if announced.contains(name) && valid_trailer(name) {
                field(dst, name, value);
            }
        }
    }
    dst.extend_from_slice(b"\r\n");
}

fn field(dst: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    dst.extend_from_slice(name.as_str().as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value.as_bytes());
    dst.extend_from_slice(b"\r\n");
}

/// hyper's `is_valid_trailer_field`.
fn valid_trailer(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

fn can_have_body(method: &Method, status: StatusCode) -> bool {
    !(method == Method::HEAD
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

fn can_have_content_length(_method: &Method, status: StatusCode) -> bool {
    !(status.is_informational() || matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED))
}

fn parse_length(value: &HeaderValue) -> Option<u64> {
    let text = value.to_str().ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
