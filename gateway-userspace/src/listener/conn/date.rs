//! The `Date` field of responses, formatted once per second per worker thread (as hyper caches
//! it): one clock read per response, no formatting on the hot path. Both server codecs use it:
//! the HTTP/1 fast path writes the text, the HTTP/2 server adds the field to heads without one.

use std::{cell::RefCell, time::SystemTime};

use http::HeaderValue;

/// An IMF-fixdate is always this long (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(super) const LEN: usize = 29;

struct Cached {
    second: u64,
    text: [u8; LEN],
    /// `text` as a field value, made on the first `header_value` of each second.
    value: Option<HeaderValue>,
}

thread_local! {
    static CACHED: RefCell<Cached> =
        const { RefCell::new(Cached { second: u64::MAX, text: [b' '; LEN], value: None }) };
}

/// Runs `f` on the current second's cache entry.
fn with_current<R>(f: impl FnOnce(&mut Cached) -> R) -> R {
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.second != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == LEN {
                c.text.copy_from_slice(text.as_bytes());
                c.second = second;
                c.value = None;
            }
        }
        f(&mut c)
    })
}

/// Appends the current date (IMF-fixdate) to `dst`.
pub(super) fn extend(dst: &mut Vec<u8>) {
    with_current(|c| dst.extend_from_slice(&c.text));
}

/// The current date as a `Date` field value (a shared copy of the second's value).
pub(super) fn header_value() -> HeaderValue {
    with_current(|c| {
        c.value
            .get_or_insert_with(|| {
                // An IMF-fixdate is visible ASCII: never refused.
                HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&c.text))
                    .unwrap_or_else(|_| HeaderValue::from_static(""))
            })
            .clone()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_date_is_an_imf_fixdate() {
        let mut out = Vec::new();
        super::extend(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }

    #[test]
    fn the_field_value_is_the_same_date() {
        let value = super::header_value();
        assert!(httpdate::parse_http_date(value.to_str().unwrap()).is_ok(), "{value:?}");
    }
}
