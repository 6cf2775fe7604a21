//! The same JSON refusal for requests hyper's HTTP/1 parser refuses.
//!
//! hyper answers a request head it cannot parse (400), one larger than its read buffer (431)
//! or one whose target is past its URI limit (414) itself, with an empty body, before any
//! service sees the request, and has no option to change that answer. Every other refusal is
//! JSON from `error.rs`. So the client stream recognizes hyper's automatic answer as it is
//! written — its exact shape: the status line, `connection: close`, `content-length: 0`, a
//! `date`, nothing else (every response of ours carries `x-request-id`) — and writes the
//! refusal from the one table instead. The parser error itself is counted and logged where the
//! connection ends (`conn::connection_error`).

use bytes::{BufMut, Bytes, BytesMut};
use http::Response;

use crate::{error::GatewayError, pipeline::RequestError, proxy::headers};

/// `HTTP/1.1 NNN Reason\r\n` is followed by exactly this, a 29-byte IMF-fixdate and the end of
/// the head.
const AUTOMATIC_HEADERS: &[u8] = b"connection: close\r\ncontent-length: 0\r\ndate: ";
const DATE_AND_END: usize = 29 + 4;

/// The JSON response to write instead of `written`, when `written` is hyper's automatic answer.
pub(super) fn rewrite(written: &[u8], max_request_line: usize) -> Option<Bytes> {
    let rest = written.strip_prefix(b"HTTP/1.1 ")?;
    let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
    let after = rest[line_end + 2..].strip_prefix(AUTOMATIC_HEADERS)?;
    if after.len() != DATE_AND_END || !after.ends_with(b"\r\n\r\n") {
        return None;
    }
    let error: GatewayError = match rest.get(..4)? {
        b"400 " => RequestError::Unparseable,
        b"431 " => RequestError::HeadersTooLarge,
        b"414 " => RequestError::UriTooLong { limit: max_request_line },
        _ => return None,
    }
    .into();
    let request_id = headers::request_id(&http::HeaderMap::new());
    let mut response = error.response(request_id.to_str().unwrap_or(""));
    response.headers_mut().insert(&headers::X_REQUEST_ID, request_id);
    Some(encode(response))
}

/// An HTTP/1.1 response with a complete body, as bytes.
fn encode(response: Response<Bytes>) -> Bytes {
    let (head, body) = response.into_parts();
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(head.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(head.status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in &head.headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(&body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_refusals_are_complete_http_messages() {
        let mut response = GatewayError::from(RequestError::Unparseable).response("rid");
        response.headers_mut().insert("x-request-id", http::HeaderValue::from_static("rid"));
        let bytes = encode(response);
        let text = std::str::from_utf8(&bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close") && head.contains("\r\nx-request-id: rid"), "{head}");
        assert!(head.ends_with(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!((v["error"].as_str(), v["status"].as_u64()), (Some("bad_request"), Some(400)));
    }
}
