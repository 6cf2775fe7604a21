//! The latency headers phase: how long the upstream and the gateway took, on every response.

use std::{sync::LazyLock, time::Duration};

use http::{HeaderName, HeaderValue, response};

use crate::request::{Phase, RequestCtx};

// Constants, not statics: inserted as built, where a `&HeaderName` is cloned through its `Bytes`
// vtable on every insert. Never borrowed (the atomic inside a name's `Bytes` is not shared).
#[allow(clippy::declare_interior_mutable_const)]
const UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-gateway-upstream-latency");
#[allow(clippy::declare_interior_mutable_const)]
const PROXY_LATENCY: HeaderName = HeaderName::from_static("x-gateway-proxy-latency");
#[allow(clippy::declare_interior_mutable_const)]
const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Whole-millisecond values below this come from `SMALL_MS`; most requests take less.
const SMALL_MS_COUNT: usize = 1000;

/// `0` … `999` as static header values: a latency header then costs a clone of a static
/// `Bytes` (no allocation, no formatting, no validation, nothing to free). Built once per
/// process from one leaked string of ~2.9 KB.
static SMALL_MS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    let mut digits = String::with_capacity(SMALL_MS_COUNT * 3);
    let mut ends = Vec::with_capacity(SMALL_MS_COUNT);
    for n in 0..SMALL_MS_COUNT {
        digits.push_str(itoa::Buffer::new().format(n));
        ends.push(digits.len());
    }
    let digits: &'static str = digits.leak();
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let v = HeaderValue::from_static(&digits[start..end]);
            start = end;
            v
        })
        .collect()
});

/// Kong's latency headers, named for us: `X-Gateway-Upstream-Latency` (ms waiting for the
/// upstream's response head, connect included), `X-Gateway-Proxy-Latency` (ms the gateway
/// itself spent), and the same as `Server-Timing` for browsers' dev tools.
///
/// Written with integer arithmetic (`itoa`), not float formatting: this runs on every
/// response, and `{:.3}` of an `f64` was a visible share of the request's CPU.
pub struct LatencyHeaders;

impl Phase for LatencyHeaders {
    fn name(&self) -> &'static str {
        "latency-headers"
    }

    fn on_response(&self, ctx: &mut RequestCtx, head: &mut response::Parts) {
        let gateway = ctx.timings.gateway();
        let upstream = ctx.timings.upstream();
        if let Some(upstream) = upstream {
            head.headers.insert(UPSTREAM_LATENCY, ms_value(upstream));
        }
        head.headers.insert(PROXY_LATENCY, ms_value(gateway));
        let mut buf = Text::default();
        if let Some(upstream) = upstream {
            buf.push(b"upstream;dur=");
            push_ms_3(&mut buf, upstream);
            buf.push(b", ");
        }
        buf.push(b"gateway;dur=");
        push_ms_3(&mut buf, gateway);
        // Appended: an upstream's own Server-Timing entries stay.
        if let Ok(v) = HeaderValue::from_bytes(buf.as_bytes()) {
            head.headers.append(SERVER_TIMING, v);
        }
    }
}

/// A header value's bytes gathered on the stack, then copied once into a value of exactly
/// their length (one allocation; a `BytesMut` with room to spare cost a second one when it
/// became the value). Long enough for both entries with the largest durations (75 bytes).
struct Text {
    buf: [u8; 96],
    len: usize,
}

impl Default for Text {
    fn default() -> Self {
        Text { buf: [0; 96], len: 0 }
    }
}

impl Text {
    fn push(&mut self, bytes: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Whole milliseconds as a header value.
fn ms_value(d: Duration) -> HeaderValue {
    let ms = rounded_ms(d);
    usize::try_from(ms).ok().and_then(|i| SMALL_MS.get(i)).cloned().unwrap_or_else(|| HeaderValue::from(ms))
}

/// A duration's nanoseconds in 64 bits (584 years): `u128` division is a library call.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole milliseconds, rounded half up.
fn rounded_ms(d: Duration) -> u64 {
    nanos(d).saturating_add(500_000) / 1_000_000
}

/// Milliseconds with three decimals (`12.345`), rounded half up to the microsecond.
fn push_ms_3(out: &mut Text, d: Duration) {
    let micros = nanos(d).saturating_add(500) / 1_000;
    let mut buf = itoa::Buffer::new();
    out.push(buf.format(micros / 1_000).as_bytes());
    let frac = (micros % 1_000) as u16;
    out.push(&[b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_3(d: Duration) -> String {
        let mut v = Text::default();
        push_ms_3(&mut v, d);
        String::from_utf8(v.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn milliseconds_are_written_as_float_formatting_would() {
        // Exact halves left out: an f64 cannot hold most of them, so `{:.3}` rounds whichever
        // way the nearest double lies; integers round them up.
        for nanos in [0u64, 499, 501, 1_000, 999_499, 999_501, 1_234_567, 12_000_000, 3_600_000_000_000] {
            let d = Duration::from_nanos(nanos);
            let ms = d.as_secs_f64() * 1e3;
            assert_eq!(ms_3(d), format!("{ms:.3}"), "{nanos} ns");
            assert_eq!(rounded_ms(d), ms.round() as u64, "{nanos} ns");
            assert_eq!(ms_value(d), ms.round().to_string().as_str(), "{nanos} ns");
        }
    }

    #[test]
    fn the_longest_server_timing_fits() {
        let mut v = Text::default();
        v.push(b"upstream;dur=");
        push_ms_3(&mut v, Duration::MAX);
        v.push(b", gateway;dur=");
        push_ms_3(&mut v, Duration::MAX);
        assert_eq!(v.as_bytes(), b"upstream;dur=18446744073709.551, gateway;dur=18446744073709.551");
    }

    #[test]
    fn every_small_value_is_its_number() {
        for (n, v) in SMALL_MS.iter().enumerate() {
            assert_eq!(v, n.to_string().as_str());
        }
        assert_eq!(ms_value(Duration::from_millis(999)), "999");
        assert_eq!(ms_value(Duration::from_millis(1000)), "1000");
    }
}
