//! Accounting for every request: the request metrics phase (every finished request counted by
//! route, service, method, status and, opt-in, consumer, with its total, upstream and
//! gateway-overhead durations, into the worker's metric shards) and the latency headers
//! (`latency`).

mod latency;

pub use latency::LatencyHeaders;

use crate::{
    metrics::RequestSample,
    request::{Phase, RequestCtx},
};

/// The log phase that records request metrics.
pub struct RequestMetrics;

impl Phase for RequestMetrics {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn on_log(&self, ctx: &RequestCtx) {
        ctx.conn.metrics.record(&RequestSample {
            route: ctx.route_name(),
            service: ctx.service_name(),
            method: &ctx.method,
            status: ctx.status,
            consumer: ctx.identity.consumer.as_ref().map(|c| &c.id),
            total: ctx.timings.total(),
            upstream: ctx.timings.upstream(),
            gateway: ctx.timings.gateway(),
            refused: ctx.error,
        });
    }
}
