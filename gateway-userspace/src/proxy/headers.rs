//! Header rewriting between client and upstream: hop-by-hop removal, X-Forwarded-* and
//! Forwarded (believed only from trusted proxies), request ids.

use std::{io::Write as _, net::IpAddr};

use http::{HeaderMap, HeaderName, HeaderValue, header};
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = name::X_FORWARDED_FOR;
pub static X_FORWARDED_PROTO: HeaderName = name::X_FORWARDED_PROTO;
pub static X_FORWARDED_HOST: HeaderName = name::X_FORWARDED_HOST;
pub static X_FORWARDED_PORT: HeaderName = name::X_FORWARDED_PORT;
pub static X_REQUEST_ID: HeaderName = name::X_REQUEST_ID;

/// The same names as constants, for inserting: a constant name is built in place, where a
/// `&HeaderName` is cloned through its `Bytes` vtable on every insert (every request sets
/// these). Never borrowed, so the atomic inside a name's `Bytes` is never shared through them.
#[allow(clippy::declare_interior_mutable_const)]
pub mod name {
    use http::HeaderName;

    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
}

/// The request headers this module sets (part of the gateway's owned names).
pub fn owned_names() -> [&'static HeaderName; 6] {
    [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &X_FORWARDED_PORT, &header::FORWARDED, &X_REQUEST_ID]
}
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop and must not be forwarded (RFC 9110 7.6.1), plus any header
/// the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over the names (standard names compare as enum
    // values) spares nine hashed look-ups on every request.
    if !crate::request::contains_any(headers, &HOP_BY_HOP) {
        return;
    }
    // `Connection: keep-alive` (most upstream responses) names a field removed below anyway:
    // spare the parse of its tokens into names.
    let names_others = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| !t.trim_ascii().eq_ignore_ascii_case(b"keep-alive")));
    let named: Vec<HeaderName> = if !names_others {
        Vec::new()
    } else {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect()
    };
    for name in named {
        headers.remove(name);
    }
    // Most responses carry one of them (`Connection: keep-alive`): remove what is there
    // rather than look up all nine.
    crate::request::remove_present(headers, &HOP_BY_HOP);
}

/// Whether the map holds one of the hop-by-hop fields (fields a `Connection` header names aside).
pub fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    crate::request::contains_any(headers, &HOP_BY_HOP)
}

/// Whether `name` is one of the hop-by-hop fields of RFC 9110 7.6.1 (or a legacy companion);
/// fields a `Connection` header names are the caller's to find.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// The hop-by-hop headers of RFC 9110 7.6.1 and their legacy companions.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
];

/// Whether `ip` is one of the configured trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client address: the peer, or, when the peer is a trusted proxy, the right-most address in
/// X-Forwarded-For that is not itself a trusted proxy (the left part can be forged by anyone).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect();
    hops.iter().rev().copied().find(|ip| !is_trusted(*ip, trusted)).or(hops.first().copied()).unwrap_or(peer)
}

/// What the gateway knows about the hop it received the request on.
pub struct Hop<'a> {
    pub peer: IpAddr,
    pub trusted_peer: bool,
    pub proto: &'static str,
    /// The request's authority, `host[:port]` as routed.
    pub host: Option<&'a str>,
    /// The gateway's port the client connected to (nginx's `$server_port`).
    pub port: u16,
}

/// Sets X-Forwarded-For/-Proto/-Host/-Port and Forwarded. From a trusted peer the existing
/// values are extended (For, Forwarded) or kept (Proto, Host, Port); from anyone else they are
/// replaced, so clients cannot inject them. The client's values that are replaced go from
/// `headers`; the new fields come back as field lines (`name: value\r\n`) for the upstream
/// request's encoder to write after the head's own fields (`Forward::forwarding`): built as
/// bytes into one buffer, without `format!`, and never inserted into the map (five inserts,
/// each hashing and probing it and validating its value, cost more than writing them).
pub fn set_forwarded(headers: &mut HeaderMap, hop: &Hop<'_>) -> Vec<u8> {
    let peer = hop.peer.to_canonical();
    let host_len = hop.host.map_or(0, str::len);
    let mut out = Vec::with_capacity(FORWARDED_ROOM + 2 * host_len);
    // What a trusted proxy set stays; from anyone else it is replaced.
    let kept = |name: &HeaderName| hop.trusted_peer && headers.contains_key(name);
    let (keep_proto, keep_host, keep_port) =
        (kept(&X_FORWARDED_PROTO), kept(&X_FORWARDED_HOST), kept(&X_FORWARDED_PORT));
    out.extend_from_slice(b"x-forwarded-for: ");
    if hop.trusted_peer {
        push_joined(&mut out, headers, &X_FORWARDED_FOR);
    }
    push_ip(&mut out, peer);
    out.extend_from_slice(b"\r\n");
    if !keep_proto {
        push_line(&mut out, b"x-forwarded-proto: ", hop.proto.as_bytes());
    }
    if let (false, Some(h)) = (keep_host, hop.host) {
        push_line(&mut out, b"x-forwarded-host: ", h.as_bytes());
    }
    if !keep_port {
        push_line(&mut out, b"x-forwarded-port: ", itoa::Buffer::new().format(hop.port).as_bytes());
    }
    out.extend_from_slice(b"forwarded: ");
    if hop.trusted_peer {
        push_joined(&mut out, headers, &header::FORWARDED);
    }
    out.extend_from_slice(b"for=");
    match peer {
        IpAddr::V4(_) => push_ip(&mut out, peer),
        IpAddr::V6(_) => {
            out.extend_from_slice(b"\"[");
            push_ip(&mut out, peer);
            out.extend_from_slice(b"]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(hop.proto.as_bytes());
    if let Some(h) = hop.host {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b"\"");
    }
    out.extend_from_slice(b"\r\n");
    // One pass over the names for those that go (most requests carry none of them).
    if hop.trusted_peer {
        crate::request::remove_present(headers, &[&X_FORWARDED_FOR, &header::FORWARDED]);
    } else {
        crate::request::remove_present(headers, &FORWARDING);
    }
    out
}

/// The forwarding fields `set_forwarded` writes.
static FORWARDING: [&HeaderName; 5] =
    [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST, &X_FORWARDED_PORT, &header::FORWARDED];

/// Room in `set_forwarded`'s buffer besides the host (twice): the five field names, an IPv6
/// address twice, the Forwarded syntax and a short chain from a trusted proxy. A longer chain
/// grows it.
const FORWARDED_ROOM: usize = 256;

/// `name` (with its `: `), `value`, CRLF. The values written are valid field values: an
/// address, a port, a scheme, the request's validated authority, or a trusted proxy's values
/// that are visible ASCII (`push_joined`).
fn push_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the header's values, joined with `, `, and a `, ` before what follows (nothing when
/// the header is absent).
fn push_joined(out: &mut Vec<u8>, headers: &HeaderMap, name: &HeaderName) {
    for v in headers.get_all(name).iter().filter(|v| v.to_str().is_ok()) {
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b", ");
    }
}

/// An address as text: IPv4 digit by digit (the common case, no `core::fmt`), IPv6 through its
/// `Display` (the compressed form is not worth re-implementing).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Digits stored one by one into a stack buffer, appended once: a copy call per
            // octet and per dot was most of this.
            let mut text = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            out.extend_from_slice(&text[..n]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A client-supplied request id is kept when it is reasonable (visible ASCII, at most 128
/// bytes); otherwise a new UUID is generated.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    /// `set_forwarded`, its field lines read back into the map (as the upstream would).
    fn forwarded(h: &mut HeaderMap, hop: &Hop<'_>) {
        let lines = set_forwarded(h, hop);
        let text = std::str::from_utf8(&lines).unwrap();
        assert!(text.ends_with("\r\n"), "{text:?}");
        for line in text.split_terminator("\r\n") {
            let (name, value) = line.split_once(": ").unwrap();
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn keep_alive_alone_still_clears_every_hop_field() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn untrusted_clients_cannot_inject_forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &trusted()), peer);
        h.insert(&X_FORWARDED_PORT, HeaderValue::from_static("1"));
        let hop = Hop { peer, trusted_peer: false, proto: "http", host: Some("api.example.com:8080"), port: 8080 };
        forwarded(&mut h, &hop);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com:8080");
        assert_eq!(h[&X_FORWARDED_PORT], "8080");
        assert_eq!(h[header::FORWARDED], "for=203.0.113.9;proto=http;host=\"api.example.com:8080\"");
        for name in FORWARDING {
            assert_eq!(h.get_all(name).iter().count(), 1, "{name}: the client's value is gone");
        }
    }

    #[test]
    fn trusted_proxies_are_extended() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.7, 10.1.1.1"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_PORT, HeaderValue::from_static("443"));
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &trusted()), "198.51.100.7".parse::<IpAddr>().unwrap());
        forwarded(&mut h, &Hop { peer, trusted_peer: true, proto: "http", host: None, port: 8080 });
        assert_eq!(h[&X_FORWARDED_FOR], "198.51.100.7, 10.1.1.1, 10.0.0.2");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_PORT], "443");
    }

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for ip in ["0.0.0.0", "1.2.3.4", "9.10.99.100", "255.255.255.255", "10.0.200.7"] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(&out[..], ip.as_bytes());
        }
    }

    #[test]
    fn ipv6_forwarded_nodes_are_quoted() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        let peer: IpAddr = "2001:db8::1".parse().unwrap();
        forwarded(&mut h, &Hop { peer, trusted_peer: false, proto: "http", host: None, port: 80 });
        assert_eq!(h[header::FORWARDED], "for=\"[2001:db8::1]\";proto=http");
        assert!(!h.contains_key(&X_FORWARDED_HOST), "no authority: the client's X-Forwarded-Host goes");
    }

    #[test]
    fn request_ids_are_kept_or_generated() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 36);
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }
}
