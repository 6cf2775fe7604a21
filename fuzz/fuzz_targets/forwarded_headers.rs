//! Client address resolution and header rewriting with arbitrary X-Forwarded-* values: never
//! panics, an untrusted peer always ends up as the client address, and the forwarding fields
//! written for the upstream are well-formed field lines.
#![no_main]

use std::net::IpAddr;

use gateway_userspace::proxy::headers::{Hop, X_FORWARDED_FOR, client_ip, remove_hop_by_hop, set_forwarded};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(&X_FORWARDED_FOR, value.clone());
    headers.insert(http::header::CONNECTION, value);
    let peer: IpAddr = "203.0.113.7".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let trusted = ["10.0.0.0/8".parse().expect("cidr")];
    assert_eq!(client_ip(peer, &headers, &trusted), peer);
    remove_hop_by_hop(&mut headers);
    let lines = set_forwarded(&mut headers, &Hop { peer, trusted_peer: false, proto: "http", host: None, port: 80 });
    assert!(!headers.contains_key(&X_FORWARDED_FOR), "the client's X-Forwarded-For is replaced");
    let text = std::str::from_utf8(&lines).expect("field lines are ASCII");
    for line in text.split_terminator("\r\n") {
        let (name, value) = line.split_once(": ").expect("name: value");
        assert!(
            http::HeaderName::from_bytes(name.as_bytes()).is_ok() && HeaderValue::from_str(value).is_ok(),
            "{line:?}"
        );
    }
});
