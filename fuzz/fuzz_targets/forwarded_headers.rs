//! Client address resolution and header rewriting with arbitrary X-Forwarded-* values: never
//! panics, and an untrusted peer always ends up as the client address.
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
    set_forwarded(&mut headers, &Hop { peer, trusted_peer: false, proto: "http", host: None, port: 80 });
});
