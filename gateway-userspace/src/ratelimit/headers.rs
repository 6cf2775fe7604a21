//! Rate-limit response headers, from the decisions taken for the request:
//!
//! - `X-RateLimit-Limit-<Window>` / `X-RateLimit-Remaining-<Window>` (Kong's, as in the seed),
//!   one pair per window length, from the layer with the least left in that window;
//! - `X-RateLimit-Reset`: Unix time (seconds) at which the most constrained layer resets (the
//!   end of its current window, or when a refused request would next be admitted);
//! - the IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-09):
//!   `"<layer>";q=<limit>;w=<window seconds>` and `"<layer>";r=<remaining>;t=<seconds to reset>`,
//!   one item per layer.

use std::{fmt::Write as _, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{policy::Window, window::Outcome};

pub static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn limit_header(w: Window) -> &'static HeaderName {
    static NAMES: [HeaderName; 4] = [
        HeaderName::from_static("x-ratelimit-limit-second"),
        HeaderName::from_static("x-ratelimit-limit-minute"),
        HeaderName::from_static("x-ratelimit-limit-hour"),
        HeaderName::from_static("x-ratelimit-limit-day"),
    ];
    &NAMES[w as usize]
}

fn remaining_header(w: Window) -> &'static HeaderName {
    static NAMES: [HeaderName; 4] = [
        HeaderName::from_static("x-ratelimit-remaining-second"),
        HeaderName::from_static("x-ratelimit-remaining-minute"),
        HeaderName::from_static("x-ratelimit-remaining-hour"),
        HeaderName::from_static("x-ratelimit-remaining-day"),
    ];
    &NAMES[w as usize]
}

/// One layer's verdict on one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub layer: Arc<str>,
    pub window: Window,
    /// The limit that applied (an override, or the layer's).
    pub limit: u64,
    pub outcome: Outcome,
    /// When it was decided (Unix ms), to turn `reset_ms` into a time.
    pub at_ms: u64,
}

impl Decision {
    fn reset_at_s(&self) -> u64 {
        (self.at_ms + self.outcome.reset_ms).div_ceil(1000)
    }

    fn reset_in_s(&self) -> u64 {
        self.outcome.reset_ms.div_ceil(1000)
    }

    /// Orders by how constrained: refused first, then least remaining, then latest reset.
    fn tighter_than(&self, other: &Decision) -> bool {
        let key = |d: &Decision| (d.outcome.allowed, d.outcome.remaining, std::cmp::Reverse(d.outcome.reset_ms));
        key(self) < key(other)
    }
}

/// Sets the headers for `decisions` (nothing when empty).
pub fn apply(decisions: &[Decision], headers: &mut HeaderMap) {
    let Some(tightest) = decisions.iter().reduce(|a, b| if b.tighter_than(a) { b } else { a }) else { return };
    for w in Window::ALL {
        let in_window = decisions.iter().filter(|d| d.window == w);
        if let Some(d) = in_window.reduce(|a, b| if b.tighter_than(a) { b } else { a }) {
            headers.insert(limit_header(w), HeaderValue::from(d.limit));
            headers.insert(remaining_header(w), HeaderValue::from(d.outcome.remaining));
        }
    }
    headers.insert(&RESET, HeaderValue::from(tightest.reset_at_s()));
    let mut policy = String::with_capacity(32 * decisions.len());
    let mut state = String::with_capacity(32 * decisions.len());
    for (i, d) in decisions.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(policy, "{sep}\"{}\";q={};w={}", d.layer, d.limit, d.window.seconds());
        let _ = write!(state, "{sep}\"{}\";r={};t={}", d.layer, d.outcome.remaining, d.reset_in_s());
    }
    // Layer names are validated to be token characters, so these are always valid values.
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(&POLICY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&state) {
        headers.insert(&RATELIMIT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(layer: &str, window: Window, limit: u64, remaining: u64, reset_ms: u64, allowed: bool) -> Decision {
        Decision {
            layer: layer.into(),
            window,
            limit,
            outcome: Outcome { allowed, remaining, reset_ms },
            at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn seed_and_ietf_headers() {
        let mut h = HeaderMap::new();
        apply(
            &[d("ip", Window::Minute, 100, 99, 30_000, true), d("user", Window::Hour, 1000, 999, 1_800_000, true)],
            &mut h,
        );
        assert_eq!(h["x-ratelimit-limit-minute"], "100");
        assert_eq!(h["x-ratelimit-remaining-minute"], "99");
        assert_eq!(h["x-ratelimit-limit-hour"], "1000");
        assert_eq!(h["x-ratelimit-remaining-hour"], "999");
        assert_eq!(h["x-ratelimit-reset"], "1700000030", "the minute layer has the least left");
        assert_eq!(h["ratelimit-policy"], "\"ip\";q=100;w=60, \"user\";q=1000;w=3600");
        assert_eq!(h["ratelimit"], "\"ip\";r=99;t=30, \"user\";r=999;t=1800");
    }

    #[test]
    fn the_tightest_layer_of_a_window_wins() {
        let mut h = HeaderMap::new();
        apply(&[d("a", Window::Minute, 100, 50, 10_000, true), d("b", Window::Minute, 10, 0, 12_500, false)], &mut h);
        assert_eq!(h["x-ratelimit-limit-minute"], "10");
        assert_eq!(h["x-ratelimit-remaining-minute"], "0");
        assert_eq!(h["x-ratelimit-reset"], "1700000013");
        assert_eq!(h["ratelimit"], "\"a\";r=50;t=10, \"b\";r=0;t=13");
    }
}
