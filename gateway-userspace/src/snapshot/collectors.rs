//! Gauges read from the live snapshot at scrape time, so whatever a reload removed disappears
//! with it: target health and in-flight counts, certificate expiry.

use std::{collections::BTreeMap, fmt, sync::Arc};

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
};

use super::Snapshot;
use crate::metrics::{LabelValue, Labels};

/// `gateway_upstream_target_up{service,target}` and in-flight counts, read from the live
/// snapshot at scrape so removed targets disappear with the reload that removed them.
pub struct UpstreamCollector(pub Arc<ArcSwap<Snapshot>>);

impl fmt::Debug for UpstreamCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UpstreamCollector")
    }
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let snapshot = self.0.load();
        let up = |t: &crate::upstream::Target| i64::from(t.state.is_up());
        let active = |t: &crate::upstream::Target| i64::from(t.state.active());
        for (name, help, value) in [
            (
                "gateway_upstream_target_up",
                "1 when the target is in service, 0 while ejected by passive health checks",
                &up as &dyn Fn(&crate::upstream::Target) -> i64,
            ),
            ("gateway_upstream_target_active_requests", "Requests in flight to the target", &active),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for s in &snapshot.services {
                for t in &s.targets {
                    let labels = Labels([
                        ("service", LabelValue::Shared(s.spec.name.clone())),
                        ("target", LabelValue::Shared(t.label.clone())),
                    ]);
                    ConstGauge::new(value(t)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// `gateway_tls_certificate_expiry_timestamp_seconds{listener,name}` (server certificates and
/// client CAs, `name` = `ca:<CN>` for the latter) and
/// `gateway_upstream_tls_certificate_expiry_timestamp_seconds{service,name}` (the client
/// certificates gatewayd presents upstream), from the live snapshot: a reload that replaces a
/// certificate changes the gauge. When two certificates share a name, the earlier expiry is shown.
pub struct ExpiryCollector(pub Arc<ArcSwap<Snapshot>>);

impl fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let snapshot = self.0.load();
        let mut server: BTreeMap<(String, String), i64> = BTreeMap::new();
        let earliest = |map: &mut BTreeMap<(String, String), i64>, k: (String, String), t: i64| {
            let v = map.entry(k).or_insert(t);
            *v = (*v).min(t);
        };
        for (listener, spec) in &snapshot.config.listener_tls {
            for c in spec.certs.certs() {
                earliest(&mut server, (listener.to_string(), c.facts.display_name().to_owned()), c.facts.not_after);
            }
            for ca in spec.client_trust.iter().flat_map(|t| &t.cas) {
                earliest(&mut server, (listener.to_string(), format!("ca:{}", ca.display_name())), ca.not_after);
            }
        }
        let mut upstream: BTreeMap<(String, String), i64> = BTreeMap::new();
        for s in &snapshot.config.services {
            if let Some(facts) = s.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
                earliest(&mut upstream, (s.name.to_string(), facts.display_name().to_owned()), facts.not_after);
            }
        }
        for (metric, label, help, values) in [
            (
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "listener",
                "notAfter of listener certificates and client CAs (unix seconds)",
                &server,
            ),
            (
                "gateway_upstream_tls_certificate_expiry_timestamp_seconds",
                "service",
                "notAfter of the client certificates presented to upstreams (unix seconds)",
                &upstream,
            ),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for ((owner, name), t) in values {
                let labels =
                    Labels([(label, LabelValue::Owned(owner.clone())), ("name", LabelValue::Owned(name.clone()))]);
                ConstGauge::new(*t).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
