//! ACME (RFC 8555) certificates for TLS listeners, the way Caddy and Traefik do it: a listener
//! with `acme = { … }` obtains its certificate at startup when the state directory has none,
//! serves it, renews it ahead of expiry (ARI, RFC 9773, when the CA offers it; else at 2/3 of
//! its lifetime) and swaps it in without a restart. tls-alpn-01 is answered by the listener
//! itself, http-01 by the plain listeners. A fleet with `[redis]` orders once (`fleet`).
//!
//! The protocol (JWS, nonces, polling, ARI) is instant-acme's: a maintained client, async on
//! the tokio/hyper/rustls stack gatewayd already runs.
//!
//! Renewal tasks run on the control runtime, one per listener, kept across reloads while the
//! listener's `acme` settings stay the same (`AcmeRegistry`).

mod challenge;
mod config;
mod fleet;
mod manager;
mod order;
mod store;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

pub use challenge::{ACME_TLS_ALPN, AcmeResolver, HTTP01_PREFIX, Http01Tokens};
pub use config::{AcmeSection, AcmeSpec, Challenge, DEFAULT_STATE_DIR};
pub use manager::AcmeCertificate;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use thiserror::Error;

use crate::{
    kv::Kv,
    metrics::{LabelValue, Labels},
};

#[derive(Debug, Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("the CA refused: {0}")]
    Rejected(String),
    #[error("cannot make the certificate request: {0}")]
    Csr(String),
    #[error("challenge: {0}")]
    Challenge(String),
    #[error("stored certificate: {0}")]
    Stored(String),
    #[error("state directory: {0}")]
    State(String),
}

impl AcmeError {
    /// The CA no longer knows the stored account (deactivated, or a test CA restarted): a new
    /// one must be registered.
    pub fn is_unknown_account(&self) -> bool {
        matches!(self, AcmeError::Protocol(instant_acme::Error::Api(p))
            if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist") || t.ends_with(":unauthorized")))
    }

    /// The CA could not be reached (rather than answering no).
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            AcmeError::Protocol(
                instant_acme::Error::Hyper(_) | instant_acme::Error::Other(_) | instant_acme::Error::Timeout(_)
            )
        )
    }
}

/// `gateway_acme_*`.
#[derive(Debug, Default)]
pub struct AcmeMetrics {
    orders: Family<Labels<2>, Counter>,
    next_renewal: Family<Labels<1>, Gauge>,
    expiry: Family<Labels<1>, Gauge>,
}

impl AcmeMetrics {
    pub fn register(registry: &mut Registry) -> Arc<AcmeMetrics> {
        let m = Arc::new(AcmeMetrics::default());
        registry.register(
            "gateway_acme_orders",
            "ACME certificate orders by listener and result (ok, error)",
            m.orders.clone(),
        );
        registry.register(
            "gateway_acme_next_renewal_timestamp_seconds",
            "When the listener's ACME certificate is next renewed (or its failed order retried), Unix time",
            m.next_renewal.clone(),
        );
        registry.register(
            "gateway_acme_certificate_expiry_timestamp_seconds",
            "notAfter of the ACME certificate the listener serves, Unix time",
            m.expiry.clone(),
        );
        m
    }

    fn order(&self, listener: &Arc<str>, result: &'static str) {
        let labels =
            Labels([("listener", LabelValue::Shared(listener.clone())), ("result", LabelValue::Static(result))]);
        self.orders.get_or_create(&labels).inc();
    }

    fn set_next_renewal(&self, listener: &Arc<str>, at: i64) {
        self.next_renewal.get_or_create(&Labels([("listener", LabelValue::Shared(listener.clone()))])).set(at);
    }

    fn set_expiry(&self, listener: &Arc<str>, at: i64) {
        self.expiry.get_or_create(&Labels([("listener", LabelValue::Shared(listener.clone()))])).set(at);
    }

    fn forget(&self, listener: &Arc<str>) {
        let one = Labels([("listener", LabelValue::Shared(listener.clone()))]);
        self.next_renewal.remove(&one);
        self.expiry.remove(&one);
    }
}

struct Running {
    live: Arc<AcmeCertificate>,
    task: tokio::task::AbortHandle,
    redis: Option<crate::kv::KvSpec>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The listeners' ACME certificates and their renewal tasks, across snapshots.
pub struct AcmeRegistry {
    running: Mutex<HashMap<Arc<str>, Running>>,
    tokens: Arc<Http01Tokens>,
    metrics: Arc<AcmeMetrics>,
}

impl std::fmt::Debug for AcmeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeRegistry").finish_non_exhaustive()
    }
}

impl AcmeRegistry {
    pub fn new(metrics: Arc<AcmeMetrics>) -> Self {
        AcmeRegistry { running: Mutex::default(), tokens: Arc::default(), metrics }
    }

    /// The live certificate of `listener`, its renewal task started when new or when its
    /// settings (or `[redis]`) changed. Without a tokio runtime (config checks, unit tests) no
    /// task starts.
    pub fn certificate(&self, listener: &Arc<str>, spec: &AcmeSpec, kv: Option<&Kv>) -> Arc<AcmeCertificate> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let redis = kv.map(|k| k.spec().clone());
        if let Some(r) = running.get(listener)
            && r.live.spec == *spec
            && r.redis == redis
        {
            return r.live.clone();
        }
        let live =
            Arc::new(AcmeCertificate::new(listener.clone(), spec.clone(), self.tokens.clone(), self.metrics.clone()));
        live.load_stored();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(manager::run(live.clone(), kv.cloned())).abort_handle();
            running.insert(listener.clone(), Running { live: live.clone(), task, redis });
        }
        live
    }

    /// Stops the tasks of listeners no longer configured with ACME.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.retain(|name, _| {
            let kept = keep(name);
            if !kept {
                self.metrics.forget(name);
            }
            kept
        });
    }

    /// The http-01 answer for a request path (`/.well-known/acme-challenge/<token>`).
    pub fn http01_answer(&self, path: &str) -> Option<String> {
        if !path.starts_with(HTTP01_PREFIX) {
            return None;
        }
        self.tokens.answer(path)
    }
}
