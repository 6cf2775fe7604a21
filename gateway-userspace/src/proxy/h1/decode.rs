//! Parsing what an upstream sends: the response head (httparse, configured as hyper configures it
//! for responses: no obs-fold, no space before the colon, no invalid header skipped), the body's
//! framing by RFC 9112 section 6.3, chunk-size lines and trailers.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header, response};

use super::H1Error;
use crate::request::NameCache;

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

/// Parses one response head from the start of `buf` and takes it off: `Ok(None)` when more
/// bytes are needed (nothing taken).
///
/// The head's bytes are split off the connection's buffer, not copied: the header values are
/// slices of the bytes as they were read (the buffer is shared with the body's chunks already).
///
/// `names`: the connection's names from its last head (`request::NameCache`).
pub fn response_head(buf: &mut BytesMut, method: &Method, names: &mut NameCache) -> Result<Option<Head>, H1Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Where each field's name and value lie in the head, so that the head can be split off
    // once httparse's borrow of the buffer ends.
    let mut spans = [Span::default(); MAX_HEADERS];
    let (len, count, version, status) = {
        // Uninitialised: httparse writes only the fields it finds; initialising all 100 slots
        // cost more than parsing a small head, on every call.
        let mut fields: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
            [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        // The default config, as `Response::parse` uses.
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
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
        let offset = |s: &[u8]| s.as_ptr() as usize - buf.as_ptr() as usize;
        for (span, f) in spans.iter_mut().zip(parsed.headers.iter()) {
            let name = offset(f.name.as_bytes());
            let value = offset(f.value);
            // Within the head, whose length httparse returned as a `usize` too: u32 offsets
            // (a head is at most a few times `MAX_HEAD`) keep the table small.
            *span = Span::new(name, f.name.len(), value, f.value.len());
        }
        (len, parsed.headers.len(), version, status)
    };
    let head = buf.split_to(len).freeze();
    let (headers, hop) = response_fields(&spans[..count], &head, names)?;
    let framing = framing(method, status, &hop)?;
    let keep_alive = framing != Framing::Close && hop.keep_alive(version);
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head { parts, framing, keep_alive }))
}

/// A header field's name and value in its head's bytes (start and end offsets).
#[derive(Debug, Default, Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    fn new(name: usize, name_len: usize, value: usize, value_len: usize) -> Self {
        let at = |start: usize, len: usize| (start as u32, (start + len) as u32);
        Span { name: at(name, name_len), value: at(value, value_len) }
    }

    fn name(self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// What a response head's framing and connection fields said. Those fields describe this hop
/// only (RFC 9110 7.6.1): they are read here, as the map is built, and left out of it, so the
/// client's response does not carry them and nothing removes them from the map afterwards.
#[derive(Default)]
struct HopFields<'a> {
    /// The Content-Length, or why it is invalid (an error only when framing needs it).
    length: Option<Result<u64, &'static str>>,
    /// The last Transfer-Encoding field's value.
    transfer_encoding: Option<&'a [u8]>,
    close: bool,
    keep_alive: bool,
}

impl HopFields<'_> {
    fn keep_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 { self.keep_alive } else { !self.close }
    }

    /// Every Content-Length field and list member must be the same decimal number.
    fn add_length(&mut self, value: &[u8]) {
        for part in value.split(|&b| b == b',') {
            let n = decimal(trim(part)).ok_or("invalid Content-Length");
            self.length = Some(match (self.length, n) {
                (Some(Err(e)), _) | (_, Err(e)) => Err(e),
                (Some(Ok(l)), Ok(n)) if l != n => Err("differing Content-Length values"),
                (_, Ok(n)) => Ok(n),
            });
        }
    }
}

/// The response's end-to-end header fields, their values sharing `head`, and what its
/// hop-by-hop fields said. Fields named in `Connection` go too.
fn response_fields<'a>(
    spans: &[Span],
    head: &'a Bytes,
    names: &mut NameCache,
) -> Result<(HeaderMap, HopFields<'a>), H1Error> {
    // Room for the fields the gateway adds to every response (request id, latency headers,
    // Server-Timing) without growing and rehashing the map.
    let mut headers = HeaderMap::with_capacity(spans.len() + GATEWAY_FIELDS);
    let mut hop = HopFields::default();
    let mut named: Vec<HeaderName> = Vec::new();
    for (i, &span) in spans.iter().enumerate() {
        let name = names.name(i, &head[span.name()]).map_err(|_| H1Error::Malformed("invalid header name"))?;
        let raw = &head[span.value()];
        if name == header::CONTENT_LENGTH {
            hop.add_length(raw);
        } else if name == header::TRANSFER_ENCODING {
            hop.transfer_encoding = Some(raw);
            continue;
        } else if name == header::CONNECTION {
            for token in raw.split(|&b| b == b',').map(trim) {
                // `keep-alive` names a hop-by-hop field left out anyway; any other option is
                // also a field to drop (RFC 9110 7.6.1), `close` included.
                if token.eq_ignore_ascii_case(b"keep-alive") {
                    hop.keep_alive = true;
                    continue;
                }
                hop.close |= token.eq_ignore_ascii_case(b"close");
                if let Ok(n) = HeaderName::from_bytes(token) {
                    named.push(n);
                }
            }
            continue;
        } else if crate::proxy::headers::is_hop_by_hop(&name) {
            continue;
        }
        // httparse checked the value's bytes by `HeaderValue`'s own rule.
        headers.append(name, crate::request::httparse_value(head.slice(span.value())));
    }
    for name in named {
        headers.remove(name);
    }
    Ok((headers, hop))
}

/// The header fields, their values sharing `head` (a copy of the head's bytes in `buf`).
fn header_map(fields: &[httparse::Header<'_>], head: &Bytes, buf: &[u8]) -> Result<HeaderMap, H1Error> {
    let mut headers = HeaderMap::with_capacity(fields.len());
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
fn framing(method: &Method, status: StatusCode, hop: &HopFields<'_>) -> Result<Framing, H1Error> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    let length = hop.length.transpose().map_err(H1Error::Malformed)?;
    if let Some(codings) = hop.transfer_encoding {
        // A message with both is a smuggling attempt or a broken upstream (RFC 9112 6.3 rule 3
        // lets a recipient treat it as an error; a proxy must not forward it as it is).
        if length.is_some() {
            return Err(H1Error::Malformed("both Transfer-Encoding and Content-Length"));
        }
        let last = codings.split(|&b| b == b',').next_back();
        let chunked = last.is_some_and(|c| trim(c).eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked { Framing::Chunked } else { Framing::Close });
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
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
