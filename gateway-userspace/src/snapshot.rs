//! The immutable state a request runs against: validated config, live services and the
//! ordered phases. Built off the request path, swapped atomically on reload; in-flight
//! requests finish on the snapshot they started with.

mod client_headers;
mod collectors;

use std::sync::Arc;

use crate::{
    access::{LatencyHeaders, RequestMetrics},
    audit::{AuditPhase, AuditSink},
    auth::{IdentifyPhase, OidcLoginPhase},
    budget::BudgetPhase,
    config::Config,
    kv::Kv,
    limits::{LimitState, PhaseConfig},
    ratelimit::RateLimitPhase,
    request::{Phase, Pipeline, SnapshotView},
    tls::{ClientCertPhase, TlsParts, TlsRuntime, UpstreamTls},
    upstream::Service,
};

pub use client_headers::ClientHeaders;
pub use collectors::{ExpiryCollector, UpstreamCollector};

#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every successful reload.
    pub generation: u64,
    pub config: Config,
    /// Running services, indexed like `config.services`.
    pub services: Vec<Service>,
    pub pipeline: Pipeline,
    /// Client header names dropped before routing.
    pub client_headers: ClientHeaders,
    /// The listeners' TLS server configs (the client-certificate phase holds them too).
    pub tls: Arc<TlsRuntime>,
}

/// A worker's handle on a snapshot: cloning it is a non-atomic `Rc` increment, so requests do
/// not bounce the snapshot's shared reference count between CPUs.
pub type LocalSnapshot = std::rc::Rc<SnapshotArc>;

/// The `Arc` a [`LocalSnapshot`] wraps.
#[derive(Debug)]
pub struct SnapshotArc(pub std::sync::Arc<Snapshot>);

impl std::ops::Deref for SnapshotArc {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

/// What a request may see of its snapshot (see `request::SnapshotView`).
impl SnapshotView for SnapshotArc {
    fn pipeline(&self) -> &Pipeline {
        &self.0.pipeline
    }

    fn route_name(&self, route: usize) -> Option<&Arc<str>> {
        self.0.config.routes.get(route).map(|r| &r.name)
    }

    fn service_name(&self, service: usize) -> Option<&Arc<str>> {
        self.0.services.get(service).map(|s| &s.spec.name)
    }

    fn target_label(&self, service: usize, target: usize) -> Option<&Arc<str>> {
        self.0.services.get(service)?.targets.get(target).map(|t| &t.label)
    }
}

/// Long-lived parts a snapshot's phases hold on to (they outlive any one snapshot).
pub struct PhaseParts {
    pub audit: Option<AuditSink>,
    /// The XDP feedback loop, when `[xdp.feedback]` is on.
    pub feedback: Option<std::sync::Arc<crate::ebpf::Offenders>>,
    pub identify: IdentifyPhase,
    /// OIDC login for browsers, when some policy has a `login`.
    pub login: Option<OidcLoginPhase>,
    pub tls: TlsParts,
    /// Rate-limit and budget stores, clock and metrics.
    pub limits: Arc<LimitState>,
    /// The `[redis]` handle, when configured.
    pub kv: Option<Kv>,
}

impl Snapshot {
    pub fn build(generation: u64, config: Config, parts: PhaseParts, previous: Option<&Snapshot>) -> Snapshot {
        let services = config
            .services
            .iter()
            .map(|spec| {
                let old = previous.and_then(|p| p.services.iter().find(|s| s.spec.name == spec.name));
                let mut service = Service::new(spec.clone(), old);
                service.tls =
                    spec.tls.as_ref().map(|t| UpstreamTls::new(t, spec.name.clone(), parts.tls.metrics.clone()));
                service
            })
            .collect();
        let tls = Arc::new(TlsRuntime::build(&config.listener_tls, &parts.tls, parts.kv.as_ref()));
        let pipeline = standard_pipeline(generation, &config, &tls, parts);
        let client_headers = ClientHeaders::new(&config);
        Snapshot { generation, config, services, pipeline, client_headers, tls }
    }
}

/// The phases, in order. Request hooks run in this order; so do response and log hooks.
fn standard_pipeline(generation: u64, config: &Config, tls: &Arc<TlsRuntime>, parts: PhaseParts) -> Pipeline {
    // Client certificate first (consumer by certificate), then identity (tokens, API keys,
    // policies: it reads the certificate's consumer); the limits key on who the client is.
    let client_cert = ClientCertPhase {
        generation,
        tls: tls.clone(),
        requirements: config.routes.routes().iter().map(|r| r.client_cert).collect(),
        consumers: config.consumers.clone(),
    };
    let mut phases: Vec<Box<dyn Phase>> = vec![Box::new(client_cert)];
    // The login phase turns a session into the bearer token identity then checks.
    phases.extend(parts.login.map(|p| Box::new(p) as Box<dyn Phase>));
    phases.push(Box::new(parts.identify));
    let on = PhaseConfig {
        routes: config.routes.routes(),
        workers: config.server.workers,
        api_key_header: &config.auth.api_key_header,
    };
    if !config.rate_limits.is_empty() {
        phases.push(Box::new(RateLimitPhase::new(
            config.rate_limits.clone(),
            &on,
            parts.limits.clone(),
            parts.kv.clone(),
        )));
    }
    if !config.token_budgets.is_empty() {
        phases.push(Box::new(BudgetPhase::new(
            config.token_budgets.clone(),
            &on,
            parts.limits.clone(),
            parts.kv.clone(),
        )));
    }
    phases.push(Box::new(LatencyHeaders));
    phases.push(Box::new(RequestMetrics));
    if let Some(sink) = parts.audit {
        phases.push(Box::new(AuditPhase(sink)));
    }
    if let Some(offenders) = parts.feedback {
        phases.push(Box::new(crate::ebpf::FeedbackPhase(offenders)));
    }
    Pipeline::new(phases)
}
