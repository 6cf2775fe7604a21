//! Reading a request head: httparse (hyper's own parser, with its default strictness) over the
//! connection's read buffer, and the decision whether the request is *plain* — complete, valid,
//! HTTP/1.0 or 1.1, without a body, an upgrade or an expectation — and so served here, or
//! anything else, left to hyper with every byte read so far.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::{HeaderMap, Method, Uri, Version, request};

use crate::request::NameCache;

/// hyper's limit on a request target (it answers 414 past it).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// Header fields parsed on the stack; a head with more is hyper's (it knows `max_headers`).
const MAX_FIELDS: usize = 100;

// Returned once per request straight into a match: boxing the head would add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Parsed {
    /// The head is not all here yet.
    Partial,
    /// A request the fast path serves.
    Plain(Head),
    /// Anything else, for hyper: a body, an upgrade, `Expect`, CONNECT, a parse error, too many
    /// fields, a target hyper would refuse.
    Other,
}

pub(super) struct Head {
    pub(super) parts: request::Parts,
    /// What the request says about the connection, by hyper's rules: HTTP/1.1 keeps it unless
    /// a `Connection` field says `close`; HTTP/1.0 only when one says `keep-alive` (and none
    /// says `close`).
    pub(super) keep_alive: bool,
}

/// Where a field's name and value sit in the head (byte offsets).
#[derive(Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses the head at the start of `buf`; when it is plain, takes its bytes out of `buf` (the
/// head's fields and target share them, as hyper's do).
///
/// `names`: the connection's names from its last head (`request::NameCache`).
pub(super) fn parse(buf: &mut BytesMut, max_headers: usize, names: &mut NameCache) -> Parsed {
    let mut fields = [Field { name: (0, 0), value: (0, 0) }; MAX_FIELDS];
    let mut seen_length = false;
    let (len, method, target, version, count, keep_alive) = {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            bytes,
            &mut headers[..max_headers.clamp(1, MAX_FIELDS)],
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Other,
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Parsed::Other;
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::Other };
        let version = match version {
            0 => Version::HTTP_10,
            1 => Version::HTTP_11,
            _ => return Parsed::Other,
        };
        if path.len() > MAX_URI_LEN || method == Method::CONNECT {
            return Parsed::Other;
        }
        let base = bytes.as_ptr() as usize;
        let offsets = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            (start as u32, (start + s.len()) as u32)
        };
        let mut keep_alive = version == Version::HTTP_11;
        let mut saw_close = false;
        for (field, header) in fields.iter_mut().zip(req.headers.iter()) {
            let (name, value) = (header.name.as_bytes(), header.value);
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("transfer-encoding") || is("upgrade") || is("expect") {
                return Parsed::Other;
            }
            // A single `0`: anything else (a second one too) is hyper's to judge.
            if is("content-length") && (value != b"0" || std::mem::replace(&mut seen_length, true)) {
                return Parsed::Other;
            }
            if is("connection") {
                if has_token(value, b"upgrade") {
                    return Parsed::Other;
                } else if saw_close || has_token(value, b"close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !keep_alive {
                    keep_alive = has_token(value, b"keep-alive");
                }
            }
            *field = Field { name: offsets(name), value: offsets(value) };
        }
        (len, method, offsets(path.as_bytes()), version, req.headers.len(), keep_alive)
    };
    let head = buf.split_to(len).freeze();
    let slice = |(start, end): (u32, u32)| head.slice(start as usize..end as usize);
    // With the room the pipeline adds to every request: its reserve then finds it, where a map
    // sized for the client's fields alone was grown and rehashed on every request.
    let mut headers = HeaderMap::with_capacity(count + crate::pipeline::UPSTREAM_FIELDS);
    let mut valid = true;
    for (i, field) in fields[..count].iter().enumerate() {
        let Ok(name) = names.name(i, &head[field.name.0 as usize..field.name.1 as usize]) else {
            valid = false;
            break;
        };
        // httparse checked the value's bytes by `HeaderValue`'s own rule.
        headers.append(name, crate::request::httparse_value(slice(field.value)));
    }
    let uri = Uri::from_maybe_shared(slice(target));
    let (true, Ok(uri)) = (valid, uri) else {
        // Put the head back in front of what follows it: hyper answers it.
        let mut back = BytesMut::with_capacity(head.len() + buf.len());
        back.extend_from_slice(&head);
        back.extend_from_slice(buf);
        *buf = back;
        return Parsed::Other;
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Parsed::Plain(Head { parts, keep_alive })
}

/// Whether a comma-separated field value lists `token` (ASCII case-insensitive).
pub(super) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}
