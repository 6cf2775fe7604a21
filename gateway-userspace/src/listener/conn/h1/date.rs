//! The `Date` field of responses, formatted once per second per worker thread (as hyper caches
//! it): one clock read per response, no formatting on the hot path.

use std::{cell::RefCell, time::SystemTime};

/// An IMF-fixdate is always this long (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(super) const LEN: usize = 29;

struct Cached {
    second: u64,
    text: [u8; LEN],
}

thread_local! {
    static CACHED: RefCell<Cached> = const { RefCell::new(Cached { second: u64::MAX, text: [b' '; LEN] }) };
}

/// Appends the current date (IMF-fixdate) to `dst`.
pub(super) fn extend(dst: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.second != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == LEN {
                c.text.copy_from_slice(text.as_bytes());
                c.second = second;
            }
        }
        dst.extend_from_slice(&c.text);
    });
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
}
