//! Revocation and stapling metrics, /readyz details, and "once per outage" logging of sources.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::metrics::{LabelValue, Labels, Readiness};

/// The metric families; registered once per process.
#[derive(Debug, Default)]
pub struct RevocationMetrics {
    checks: Family<Labels<2>, Counter>,
    fetches: Family<Labels<2>, Counter>,
    source_up: Family<Labels<2>, Gauge>,
    staple_expiry: Family<Labels<1>, Gauge>,
    own_revoked: Family<Labels<1>, Gauge>,
}

impl RevocationMetrics {
    pub fn register(registry: &mut Registry) -> Arc<RevocationMetrics> {
        let m = Arc::new(RevocationMetrics::default());
        registry.register(
            "gateway_tls_revocation_checks",
            "Client certificate revocation decisions by source (ocsp, crl, none) and result (good, revoked, unknown, fail_open, fail_closed)",
            m.checks.clone(),
        );
        registry.register(
            "gateway_tls_revocation_fetches",
            "Fetches of OCSP responses and CRLs by source (ocsp, crl, staple) and result (ok, unreachable, timeout, http_error, invalid)",
            m.fetches.clone(),
        );
        registry.register(
            "gateway_tls_revocation_source_up",
            "1 while the last fetch from an OCSP responder or CRL distribution point succeeded, 0 while it fails",
            m.source_up.clone(),
        );
        registry.register(
            "gateway_tls_ocsp_staple_expiry_timestamp_seconds",
            "nextUpdate of the OCSP response stapled for a server certificate (unix seconds); 0 when none is stapled",
            m.staple_expiry.clone(),
        );
        registry.register(
            "gateway_tls_ocsp_certificate_revoked",
            "1 when the OCSP responder says a server certificate of ours is revoked",
            m.own_revoked.clone(),
        );
        m
    }

    pub fn check(&self, source: &'static str, result: &'static str) {
        self.checks
            .get_or_create(&Labels([("source", LabelValue::Static(source)), ("result", LabelValue::Static(result))]))
            .inc();
    }

    pub fn fetch(&self, source: &'static str, result: &'static str) {
        self.fetches
            .get_or_create(&Labels([("source", LabelValue::Static(source)), ("result", LabelValue::Static(result))]))
            .inc();
    }

    pub fn staple(&self, name: &str, expiry: i64, revoked: bool) {
        let labels = Labels([("name", LabelValue::Owned(name.to_owned()))]);
        self.staple_expiry.get_or_create(&labels).set(expiry);
        self.own_revoked.get_or_create(&labels).set(i64::from(revoked));
    }
}

/// Whether each source (URL) is reachable; transitions are logged once and shown in /readyz.
#[derive(Debug, Default)]
pub struct Sources {
    down: Mutex<HashMap<String, bool>>,
}

impl Sources {
    pub fn report(
        &self,
        metrics: Option<&RevocationMetrics>,
        readiness: Option<&Readiness>,
        kind: &'static str,
        url: &str,
        error: Option<&str>,
    ) {
        let mut down = self.down.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let was_down = down.get(url).copied();
        let is_down = error.is_some();
        down.insert(url.to_owned(), is_down);
        drop(down);
        if let Some(m) = metrics {
            let labels = Labels([("source", LabelValue::Static(kind)), ("url", LabelValue::Owned(url.to_owned()))]);
            m.source_up.get_or_create(&labels).set(i64::from(!is_down));
        }
        let detail = format!("tls_revocation:{url}");
        match (was_down, error) {
            (Some(true), Some(_)) => {}
            (_, Some(e)) => {
                tracing::warn!(
                    source = kind,
                    url,
                    error = e,
                    "revocation source unavailable (logged once until it recovers)"
                );
                if let Some(r) = readiness {
                    r.set_detail(&detail, Some(format!("{kind} unavailable: {e}")));
                }
            }
            (Some(true), None) => {
                tracing::info!(source = kind, url, "revocation source reachable again");
                if let Some(r) = readiness {
                    r.set_detail(&detail, Some("ok".into()));
                }
            }
            (_, None) => {
                if let Some(r) = readiness {
                    r.set_detail(&detail, Some("ok".into()));
                }
            }
        }
    }
}
