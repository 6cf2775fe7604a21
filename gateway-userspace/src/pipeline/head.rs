//! Checks on the request head before routing, in nginx's order (request line, header size,
//! Host, framing, declared body size), and the one authority a request is routed by, sent
//! upstream with (`preserve_host`) and reported in `X-Forwarded-Host`: the request target's
//! authority (absolute-form, HTTP/2 `:authority`) over `Host` (RFC 9112 §3.2.2, RFC 9113 §8.3.1).

use http::{HeaderValue, Method, Version, header, request, uri};

use super::RequestError;
use crate::config::Limits;

/// The request's authority, normalized: host lower-cased, one trailing dot removed
/// (`good.example.` is `good.example`), IPv6 literals in brackets, and the port if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// `host[:port]`.
    text: String,
    host_len: usize,
}

impl Authority {
    /// The host without port: what routes match.
    pub fn host(&self) -> &str {
        &self.text[..self.host_len]
    }

    /// `host[:port]`: the upstream `Host` with `preserve_host`, and `X-Forwarded-Host`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.text).ok()
    }

    /// A Host field's value.
    fn from_host(value: &HeaderValue) -> Result<Authority, RequestError> {
        Self::parse(&uri::Authority::try_from(value.as_bytes()).map_err(|_| RequestError::BadHost)?)
    }

    fn parse(parsed: &uri::Authority) -> Result<Authority, RequestError> {
        // userinfo has no place in a Host (RFC 9110 §4.2.4): `good.example@evil.example`.
        if parsed.as_str().contains('@') {
            return Err(RequestError::BadHost);
        }
        let (host, port) = host_and_port(parsed.as_str());
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.ends_with('.') || host.starts_with('.') {
            return Err(RequestError::BadHost);
        }
        // Built in one allocation (no `format!`, no lower-cased copy first): every request pays.
        let mut text = String::with_capacity(host.len() + 6);
        text.push_str(host);
        text.make_ascii_lowercase();
        if let Some(p) = port {
            text.push(':');
            text.push_str(itoa::Buffer::new().format(p));
        }
        Ok(Authority { host_len: host.len(), text })
    }
}

/// An authority's host and port, as `uri::Authority::host` and `port_u16` give them (for an
/// authority without userinfo): one pass over a few bytes, where those two re-split the text
/// with `str` iterators on every request.
fn host_and_port(authority: &str) -> (&str, Option<u16>) {
    let bytes = authority.as_bytes();
    let host_end = if bytes.first() == Some(&b'[') {
        bytes.iter().position(|&b| b == b']').map_or(bytes.len(), |i| i + 1)
    } else {
        bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len())
    };
    let port = bytes.iter().rposition(|&b| b == b':').and_then(|i| authority[i + 1..].parse::<u16>().ok());
    (&authority[..host_end], port)
}

/// Everything checked on the head before routing; the request's authority when it has one.
pub fn check(head: &request::Parts, limits: &Limits) -> Result<Option<Authority>, RequestError> {
    // The method counts: a 10 KB method is a 10 KB request line (nginx answers 414 too).
    let target_len = head.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if head.method.as_str().len() + target_len > limits.max_request_line {
        return Err(RequestError::UriTooLong { limit: limits.max_request_line });
    }
    // HTTP/2 has no head-size limit in hyper's sense: enforce ours on every version.
    let header_bytes: usize = head.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if header_bytes > limits.max_header_bytes || head.headers.len() > limits.max_headers {
        return Err(RequestError::HeadersTooLarge);
    }
    let authority = authority(head)?;
    check_framing(head)?;
    let declared =
        head.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body) {
        return Err(RequestError::BodyTooLarge { limit: limits.max_request_body });
    }
    Ok(authority)
}

/// One Host at most (any version, as nginx); one in every HTTP/1.1 request (RFC 9112 §3.2).
/// The target's authority wins over `Host`; over HTTP/2 a `Host` that names another authority
/// than `:authority` is malformed (RFC 9113 §8.3.1).
fn authority(head: &request::Parts) -> Result<Option<Authority>, RequestError> {
    let mut hosts = head.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Err(RequestError::DuplicateHost),
        (Some(v), None) => Some(Authority::from_host(v)?),
        (None, None) => None,
    };
    let target = head.uri.authority().map(Authority::parse).transpose()?;
    match (head.version, target, host) {
        (Version::HTTP_2, Some(target), Some(host)) if host != target => Err(RequestError::AuthorityMismatch),
        (Version::HTTP_11, _, None) => Err(RequestError::MissingHost),
        (_, Some(target), _) => Ok(Some(target)),
        (_, None, host) => Ok(host),
    }
}

/// A request body is framed by `chunked` alone or by `Content-Length`. hyper accepts any
/// coding list that ends in `chunked` and would forward the body as plain chunked, silently
/// dropping the other codings: refuse those with 501 (RFC 9112 §6.1, as nginx), and repeated
/// `Transfer-Encoding` fields with 400 (as nginx).
fn check_framing(head: &request::Parts) -> Result<(), RequestError> {
    let mut fields = head.headers.get_all(header::TRANSFER_ENCODING).iter();
    match (fields.next(), fields.next()) {
        (None, _) => Ok(()),
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(()),
        (Some(v), None) => {
            Err(RequestError::UnsupportedTransferCoding(String::from_utf8_lossy(v.as_bytes()).into_owned()))
        }
        (Some(_), Some(_)) => Err(RequestError::RepeatedTransferEncoding),
    }
}

/// Whether the upstream request must be told its body is chunked: hyper's client sends GET,
/// HEAD and CONNECT bodies of unknown length as no body at all. Bodies are forwarded as they
/// came, whatever the method (as nginx does): a GET body is framed like any other.
pub fn needs_chunked_framing(method: &Method, body: &impl http_body::Body) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::CONNECT)
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;
    use crate::config::Config;

    fn head(req: http::request::Builder) -> request::Parts {
        req.body(()).unwrap().into_parts().0
    }

    fn limits() -> Limits {
        Config::embedded().unwrap().server.limits
    }

    #[test]
    fn host_and_port_split_as_the_http_crate_does() {
        for text in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com.:80",
            "127.0.0.1:41123",
            "[::1]",
            "[::1]:443",
            "[2001:db8::1]:99999",
            "h:+80",
            "h:",
            "h:0",
            "h:65536",
        ] {
            let a: uri::Authority = text.parse().unwrap();
            assert_eq!(host_and_port(a.as_str()), (a.host(), a.port_u16()), "{text}");
        }
    }

    fn checked(req: http::request::Builder) -> Result<Option<String>, RequestError> {
        check(&head(req), &limits()).map(|a| a.map(|a| a.as_str().to_owned()))
    }

    #[test]
    fn long_targets_and_methods_get_414() {
        let long = format!("/{}", "a".repeat(9000));
        assert!(matches!(checked(Request::get(long).header("host", "a")), Err(RequestError::UriTooLong { .. })));
        let method = Method::from_bytes("A".repeat(10_240).as_bytes()).unwrap();
        let req = Request::builder().method(method).uri("/").header("host", "a");
        assert!(matches!(checked(req), Err(RequestError::UriTooLong { .. })));
    }

    #[test]
    fn declared_oversized_bodies_get_413_before_reading() {
        let req = Request::post("/").header("host", "a").header("content-length", "999999999");
        assert!(matches!(checked(req), Err(RequestError::BodyTooLarge { .. })));
    }

    #[test]
    fn too_many_headers_get_431() {
        let mut b = Request::get("/").header("host", "a");
        for i in 0..101 {
            b = b.header(format!("x-h{i}"), "v");
        }
        assert!(matches!(checked(b), Err(RequestError::HeadersTooLarge)));
    }

    #[test]
    fn the_target_authority_wins_and_hosts_are_normalized() {
        let abs = Request::get("http://API.Example.com:8443/x").header("host", "other.example");
        assert_eq!(checked(abs).unwrap().as_deref(), Some("api.example.com:8443"));
        let a = check(&head(Request::get("/x").header("host", "Example.org.:80")), &limits()).unwrap().unwrap();
        assert_eq!((a.host(), a.as_str()), ("example.org", "example.org:80"));
        assert_eq!(checked(Request::get("/").header("host", "[::1]:8080")).unwrap().as_deref(), Some("[::1]:8080"));
        for bad in ["bad host", "", "a..", ".", "user@evil.example"] {
            assert!(matches!(checked(Request::get("/").header("host", bad)), Err(RequestError::BadHost)), "{bad}");
        }
    }

    #[test]
    fn host_is_required_once_in_http11() {
        assert!(matches!(checked(Request::get("/x")), Err(RequestError::MissingHost)));
        assert!(matches!(checked(Request::get("http://a.example/x")), Err(RequestError::MissingHost)));
        let two = Request::get("/").header("host", "a").header("host", "a");
        assert!(matches!(checked(two), Err(RequestError::DuplicateHost)));
        let http10 = Request::get("/x").version(Version::HTTP_10);
        assert_eq!(checked(http10).unwrap(), None);
        let http10 = Request::get("/x").version(Version::HTTP_10).header("host", "a").header("host", "b");
        assert!(matches!(checked(http10), Err(RequestError::DuplicateHost)));
    }

    #[test]
    fn h2_authority_wins_and_a_different_host_is_malformed() {
        let h2 = || Request::get("https://good.example/x").version(Version::HTTP_2);
        assert_eq!(checked(h2()).unwrap().as_deref(), Some("good.example"));
        assert_eq!(checked(h2().header("host", "GOOD.example")).unwrap().as_deref(), Some("good.example"));
        assert!(matches!(checked(h2().header("host", "evil.example")), Err(RequestError::AuthorityMismatch)));
        let no_authority = Request::get("/x").version(Version::HTTP_2).header("host", "a.example");
        assert_eq!(checked(no_authority).unwrap().as_deref(), Some("a.example"));
    }

    #[test]
    fn only_chunked_alone_frames_a_body() {
        let te = |v: &str| Request::post("/").header("host", "a").header("transfer-encoding", v);
        assert!(checked(te("chunked")).is_ok());
        assert!(checked(te(" Chunked ")).is_ok());
        for v in ["gzip, chunked", "identity, chunked", "chunked, chunked", "gzip"] {
            assert!(matches!(checked(te(v)), Err(RequestError::UnsupportedTransferCoding(_))), "{v}");
        }
        let twice = te("gzip").header("transfer-encoding", "chunked");
        assert!(matches!(checked(twice), Err(RequestError::RepeatedTransferEncoding)));
    }
}
