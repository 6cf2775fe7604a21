//! The latency headers phase: how long the upstream and the gateway took, on every response.

use std::fmt::Write as _;

use http::{HeaderName, HeaderValue, response};

use crate::request::{Phase, RequestCtx};

static UPSTREAM_LATENCY: HeaderName = HeaderName::from_static("x-gateway-upstream-latency");
static PROXY_LATENCY: HeaderName = HeaderName::from_static("x-gateway-proxy-latency");
static SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");

/// Kong's latency headers, named for us: `X-Gateway-Upstream-Latency` (ms waiting for the
/// upstream's response head, connect included), `X-Gateway-Proxy-Latency` (ms the gateway
/// itself spent), and the same as `Server-Timing` for browsers' dev tools.
pub struct LatencyHeaders;

impl Phase for LatencyHeaders {
    fn name(&self) -> &'static str {
        "latency-headers"
    }

    fn on_response(&self, ctx: &mut RequestCtx, head: &mut response::Parts) {
        let gateway = ctx.timings.gateway().as_secs_f64() * 1e3;
        let mut timing = String::with_capacity(48);
        if let Some(upstream) = ctx.timings.upstream() {
            let upstream = upstream.as_secs_f64() * 1e3;
            set(head, &UPSTREAM_LATENCY, &format!("{}", upstream.round() as u64));
            let _ = write!(timing, "upstream;dur={upstream:.3}, ");
        }
        set(head, &PROXY_LATENCY, &format!("{}", gateway.round() as u64));
        let _ = write!(timing, "gateway;dur={gateway:.3}");
        // Appended: an upstream's own Server-Timing entries stay.
        if let Ok(v) = HeaderValue::from_str(&timing) {
            head.headers.append(SERVER_TIMING.clone(), v);
        }
    }
}

fn set(head: &mut response::Parts, name: &HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        head.headers.insert(name.clone(), v);
    }
}
