//! Parsing what an upstream sends: the response head (httparse, configured as hyper configures it
//! for responses: no obs-fold, no space before the colon, no invalid header skipped), the body's
//! framing by RFC 9112 section 6.3, chunk-size lines and trailers.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header, response};

use super::H1Error;

/// Most header fields in a response head or trailer section (hyper's default).
const MAX_HEADERS: usize = 100;

/// How many fields the gateway adds to a response head at most on the common path.
const GATEWAY_FIELDS: usize = 6;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes (RFC 9112 6.3 rule 8); the connection cannot be reused.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub parts: response::Parts,
    pub framing: Framing,
    /// The upstream allows another request on this connection after this response.
    pub keep_alive: bool,
}

/// Parses one response head from the start of `buf`: `Ok(None)` when more bytes are needed,
/// else the head and how many bytes it took.
pub fn response_head(buf: &[u8], method: &Method) -> Result<Option<(Head, usize)>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialised: httparse writes only the fields it finds; initialising all 100 slots cost
    // more than parsing a small head, on every call.
    let mut fields: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    // The default config, as `Response::parse` uses.
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut fields)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Malformed(parse_reason(e))),
    };
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let status =
        parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(H1Error::Malformed("invalid status code"))?;
    let head_bytes = Bytes::copy_from_slice(&buf[..len]);
    let headers = header_map(parsed.headers, &head_bytes, buf)?;
    let framing = framing(method, status, &headers)?;
    let keep_alive = framing != Framing::Close && keep_alive(version, &headers);
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((Head { parts, framing, keep_alive }, len)))
}

/// The header fields, their values sharing `head` (a copy of the head's bytes in `buf`).
fn header_map(fields: &[httparse::Header<'_>], head: &Bytes, buf: &[u8]) -> Result<HeaderMap, H1Error> {
    // Room for the fields the gateway adds to every response (request id, latency headers,
    // Server-Timing) without growing and rehashing the map.
    let mut headers = HeaderMap::with_capacity(fields.len() + GATEWAY_FIELDS);
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| H1Error::Malformed("invalid header name"))?;
        let start = f.value.as_ptr() as usize - buf.as_ptr() as usize;
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + f.value.len()))
            .map_err(|_| H1Error::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// Trailer fields after the last chunk: `Ok(None)` when more bytes are needed.
pub fn trailers(buf: &[u8]) -> Result<Option<(HeaderMap, usize)>, H1Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (len, fields) = match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(done)) => done,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Malformed(parse_reason(e))),
    };
    let head = Bytes::copy_from_slice(&buf[..len]);
    Ok(Some((header_map(fields, &head, buf)?, len)))
}

fn parse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::Status => "invalid status line",
        _ => "invalid response head",
    }
}

/// RFC 9112 6.3, for a response to `method`.
fn framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<Framing, H1Error> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let length = content_length(headers)?;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // A message with both is a smuggling attempt or a broken upstream (RFC 9112 6.3 rule 3
        // lets a recipient treat it as an error; a proxy must not forward it as it is).
        if length.is_some() {
            return Err(H1Error::Malformed("both Transfer-Encoding and Content-Length"));
        }
        return Ok(if last_coding_is_chunked(headers) { Framing::Chunked } else { Framing::Close });
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// The one Content-Length: every field and list member must be the same decimal number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = decimal(trim(part)).ok_or(H1Error::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Malformed("differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    let last_field = headers.get_all(header::TRANSFER_ENCODING).iter().next_back();
    let last = last_field.and_then(|v| v.as_bytes().split(|&b| b == b',').next_back());
    last.is_some_and(|c| trim(c).eq_ignore_ascii_case(b"chunked"))
}

fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| trim(t).eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 { has(b"keep-alive") } else { !has(b"close") }
}

/// Most bytes of chunk extensions accepted on one chunk-size line (hyper allows 16 KiB in all).
const MAX_CHUNK_LINE: usize = 4096;

/// A chunk-size line at the start of `buf` (`hex [BWS] [; ext] CRLF`): `Ok(None)` when more bytes
/// are needed, else the chunk size and the line's length. Like hyper: a bare LF ends no line, a
/// size that does not fit 64 bits is an error.
pub fn chunk_size_line(buf: &[u8]) -> Result<Option<(u64, usize)>, H1Error> {
    let Some(cr) = memchr::memchr(b'\r', &buf[..buf.len().min(MAX_CHUNK_LINE)]) else {
        if buf.len() >= MAX_CHUNK_LINE {
            return Err(H1Error::Malformed("chunk-size line too long"));
        }
        if buf.contains(&b'\n') {
            return Err(H1Error::Malformed("bare LF in chunk-size line"));
        }
        return Ok(None);
    };
    let Some(&lf) = buf.get(cr + 1) else { return Ok(None) };
    if lf != b'\n' {
        return Err(H1Error::Malformed("CR without LF in chunk-size line"));
    }
    let line = &buf[..cr];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(H1Error::Malformed("missing chunk size"));
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !(ext.is_empty() || ext[0] == b';') || rest.contains(&b'\n') {
        return Err(H1Error::Malformed("invalid chunk-size line"));
    }
    let size = line[..digits]
        .iter()
        .try_fold(0u64, |n, &d| n.checked_mul(16).map(|n| n | u64::from(hex(d))))
        .ok_or(H1Error::Malformed("chunk size overflows"))?;
    Ok(Some((size, cr + 2)))
}

fn hex(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

#[cfg(test)]
mod tests;
