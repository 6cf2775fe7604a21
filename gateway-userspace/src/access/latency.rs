//! The latency headers phase: how long the upstream and the gateway took, on every response.

use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, response};

use crate::request::{Phase, RequestCtx};

static UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-gateway-upstream-latency");
static PROXY_LATENCY: HeaderName = HeaderName::from_static("x-gateway-proxy-latency");
static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

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
        // One buffer for the three values, split off in turn: one allocation (and its shared
        // count) where a value each cost one or two.
        let mut buf = BytesMut::with_capacity(96);
        let upstream = ctx.timings.upstream();
        if let Some(upstream) = upstream {
            push_ms(&mut buf, upstream);
            put(&mut head.headers, &UPSTREAM_LATENCY, buf.split(), false);
        }
        push_ms(&mut buf, gateway);
        put(&mut head.headers, &PROXY_LATENCY, buf.split(), false);
        if let Some(upstream) = upstream {
            buf.extend_from_slice(b"upstream;dur=");
            push_ms_3(&mut buf, upstream);
            buf.extend_from_slice(b", ");
        }
        buf.extend_from_slice(b"gateway;dur=");
        push_ms_3(&mut buf, gateway);
        // Appended: an upstream's own Server-Timing entries stay.
        put(&mut head.headers, &SERVER_TIMING, buf, true);
    }
}

fn put(headers: &mut HeaderMap, name: &HeaderName, value: BytesMut, append: bool) {
    let Ok(value) = HeaderValue::from_maybe_shared(value.freeze()) else { return };
    if append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
}

/// A duration's nanoseconds in 64 bits (584 years): `u128` division is a library call.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole milliseconds, rounded half up.
fn rounded_ms(d: Duration) -> u64 {
    nanos(d).saturating_add(500_000) / 1_000_000
}

fn push_ms(out: &mut BytesMut, d: Duration) {
    out.extend_from_slice(itoa::Buffer::new().format(rounded_ms(d)).as_bytes());
}

/// Milliseconds with three decimals (`12.345`), rounded half up to the microsecond.
fn push_ms_3(out: &mut BytesMut, d: Duration) {
    let micros = nanos(d).saturating_add(500) / 1_000;
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(micros / 1_000).as_bytes());
    let frac = (micros % 1_000) as u16;
    out.extend_from_slice(&[b'.', b'0' + (frac / 100) as u8, b'0' + (frac / 10 % 10) as u8, b'0' + (frac % 10) as u8]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_3(d: Duration) -> String {
        let mut v = BytesMut::new();
        push_ms_3(&mut v, d);
        String::from_utf8(v.to_vec()).unwrap()
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
        }
    }
}
