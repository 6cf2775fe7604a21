//! Client header names dropped before routing, so nothing reads them and no upstream sees them.
//!
//! CGI, WSGI and Rack read headers as `HTTP_X_FORWARDED_USER`, where `X-Forwarded-User` and
//! `X_Forwarded_User` are one name: a client that spells a header the gateway owns with `_`
//! would pass for the gateway. Such spellings of every owned name (the one list built in
//! [`ClientHeaders::new`]) are always dropped; with `underscores_in_headers = false` (the
//! default, as nginx) every name with `_` is.

use http::{HeaderMap, HeaderName};

use crate::{
    config::Config,
    metrics::{LabelValue, Labels, WorkerMetrics},
    proxy::headers,
    tls,
};

#[derive(Debug)]
pub struct ClientHeaders {
    /// Every request header the gateway sets, lower-case, `_` read as `-`.
    owned: Vec<String>,
    forward_underscores: bool,
}

impl ClientHeaders {
    /// The gateway's owned names: forwarding headers and request id, client-certificate and
    /// consumer headers, and the configured identity headers.
    pub fn new(config: &Config) -> Self {
        let mut owned: Vec<String> = headers::owned_names()
            .into_iter()
            .chain(tls::identity_headers())
            .chain(config.auth.headers.all())
            .map(|n| n.as_str().replace('_', "-"))
            .collect();
        owned.sort();
        owned.dedup();
        ClientHeaders { owned, forward_underscores: config.server.underscores_in_headers }
    }

    /// Drops what the rules say from a client's request, counted by reason.
    pub fn drop_from(&self, headers: &mut HeaderMap, metrics: &WorkerMetrics) {
        // Eight bytes at a time: a byte search ran byte by byte over every name of every request.
        if !headers.keys().any(|n| has_underscore(n.as_str().as_bytes())) {
            return;
        }
        let doomed: Vec<(HeaderName, &'static str)> = headers
            .keys()
            .filter(|n| has_underscore(n.as_str().as_bytes()))
            .filter_map(|n| self.reason(n.as_str()).map(|r| (n.clone(), r)))
            .collect();
        for (name, reason) in doomed {
            headers.remove(&name);
            tracing::debug!(header = %name, reason, "client header dropped");
            metrics.shared().dropped_headers.get_or_create(&Labels([("reason", LabelValue::Static(reason))])).inc();
        }
    }

    /// Why a name with `_` is dropped, if it is.
    fn reason(&self, name: &str) -> Option<&'static str> {
        let dashed = name.replace('_', "-");
        if self.owned.contains(&dashed) {
            Some("owned_name")
        } else if !self.forward_underscores {
            Some("underscore")
        } else {
            None
        }
    }
}

/// Whether `name` holds a `_`, a word of eight bytes at a time (the "has zero byte" test on the
/// word XOR eight underscores; header names are short, so the tail is padded, not looped over).
fn has_underscore(name: &[u8]) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has = |word: u64| {
        let x = word ^ (LOW * u64::from(b'_'));
        x.wrapping_sub(LOW) & !x & HIGH != 0
    };
    let mut chunks = name.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if has(u64::from_le_bytes(word)) {
            return true;
        }
    }
    // The tail padded with a byte that is not `_`.
    let mut word = [0u8; 8];
    word[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    has(u64::from_le_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscores_are_found_anywhere() {
        for len in 0..40 {
            let clean = "a".repeat(len);
            assert!(!has_underscore(clean.as_bytes()), "{clean}");
            for at in 0..len {
                let mut name = clean.clone().into_bytes();
                name[at] = b'_';
                assert!(has_underscore(&name), "{len} {at}");
            }
        }
        // Bytes next to `_` (0x5e, 0x60) and the high bit do not count.
        assert!(!has_underscore(b"^`\xff\x7f-x-forwarded-for"));
        assert!(has_underscore(b"x-forwarded_for"));
    }

    fn rules(forward_underscores: bool) -> ClientHeaders {
        let mut config = Config::embedded().unwrap();
        config.server.underscores_in_headers = forward_underscores;
        ClientHeaders::new(&config)
    }

    #[test]
    fn owned_names_are_dropped_in_any_spelling() {
        let r = rules(true);
        for name in [
            "x_forwarded_user",
            "x_client_cert_verify",
            "x_consumer_id",
            "x_authenticated_scope",
            "x-forwarded_for",
            "x_request_id",
            "x_forwarded_port",
        ] {
            assert_eq!(r.reason(name), Some("owned_name"), "{name}");
        }
        assert_eq!(r.reason("x_custom_thing"), None);
        assert_eq!(rules(false).reason("x_custom_thing"), Some("underscore"));
    }
}
