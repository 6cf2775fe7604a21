//! Header field helpers every layer may use on a request or response head.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// A header value httparse has already parsed, as a `HeaderValue` without checking its bytes a
/// second time (the check cost ~90 instructions per field, on both heads of every request).
///
/// httparse accepts in a value exactly what `HeaderValue` does: HTAB, `0x20..=0x7e` and
/// `0x80..=0xff` (its `HEADER_VALUE_MAP`; http's `is_valid`: `b >= 32 && b != 127 || b ==
/// b'\t'`), and hyper builds its values from httparse's the same way. `value` must be the
/// bytes of one value httparse returned; debug builds check them anyway (the http crate does).
#[inline]
pub fn httparse_value(value: Bytes) -> HeaderValue {
    // SAFETY: the bytes are a value httparse accepted, which is a valid header value (above);
    // nothing unsafe happens with an invalid one either: `to_str` checks its bytes itself.
    unsafe { HeaderValue::from_maybe_shared_unchecked(value) }
}

/// Removes every field named in `names`, looking up only the names the map holds: one pass
/// over the map's names (a few per request) instead of one hashed `remove` per listed name,
/// which the request path paid for every owned name on every request. `#[inline]`: with the
/// caller's list in view the compiler folds the length mask; called across codegen units
/// without it, the mask was worked out name by name on every call.
#[inline]
pub fn remove_present(headers: &mut HeaderMap, names: &[&HeaderName]) {
    // Names compare by length first (one bit per length): most of a request's names match
    // none of the listed lengths, and comparing them byte by byte was this function's cost.
    let lengths = names.iter().fold(0u64, |mask, n| mask | length_bit(n));
    loop {
        let listed = |k: &&HeaderName| lengths & length_bit(k) != 0 && names.contains(k);
        let Some(name) = headers.keys().find(listed).cloned() else { return };
        headers.remove(&name);
    }
}

/// Whether the map holds any field named in `names` (the same length-first comparison).
#[inline]
pub fn contains_any(headers: &HeaderMap, names: &[&HeaderName]) -> bool {
    let lengths = names.iter().fold(0u64, |mask, n| mask | length_bit(n));
    headers.keys().any(|k| lengths & length_bit(k) != 0 && names.contains(&k))
}

/// A name's length as one bit of a `u64` (lengths from 63 up share the last bit).
fn length_bit(name: &HeaderName) -> u64 {
    1 << name.as_str().len().min(63)
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, header};

    use super::*;

    #[test]
    fn every_listed_field_goes_in_every_value() {
        let [xff, xfh, xfp] = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-port"].map(HeaderName::from_static);
        let mut h = HeaderMap::new();
        h.append(&xff, HeaderValue::from_static("1.2.3.4"));
        h.append(&xff, HeaderValue::from_static("5.6.7.8"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        assert!(contains_any(&h, &[&xfp, &header::TE]) && !contains_any(&h, &[&xfp]));
        remove_present(&mut h, &[&xff, &xfh, &header::TE, &xfp]);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
        // Long names share the last length bit and still compare in full.
        let long = HeaderName::from_static("x-a-very-long-header-name-that-is-longer-than-sixty-four-bytes-x");
        let other = HeaderName::from_static("x-a-very-long-header-name-that-is-longer-than-sixty-four-bytes-yy");
        h.insert(&other, HeaderValue::from_static("1"));
        h.insert(&long, HeaderValue::from_static("1"));
        remove_present(&mut h, &[&long]);
        assert!(h.contains_key(&other) && !h.contains_key(&long));
    }
}
