//! `GET /metrics` on the admin socket: the same exposition as the metrics listener, for local
//! tools (`gatewayd top`) that know the admin socket but not where metrics are bound (which
//! may be another address, or firewalled).

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use prometheus_client::registry::Registry;

pub(super) fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    // OpenMetrics: `gatewayd top` reads either format; this one carries units and `# EOF`.
    crate::metrics::server::exposition(registry, crate::metrics::exposition::Format::OpenMetrics)
}
