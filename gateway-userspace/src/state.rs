//! Process-wide state shared by the control thread and the workers.

use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::sync::watch;

use crate::{
    audit::{AuditMetrics, AuditSink},
    auth::{AuthEnv, AuthHolder},
    config::Config,
    limits::{LimitMetrics, LimitState, SystemClock},
    metrics::{Metrics, Readiness, host::WorkerThreads},
    snapshot::{PhaseParts, Snapshot},
    tls::TlsParts,
};

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot open audit log {path}: {source}")]
    Audit { path: String, source: std::io::Error },
}

pub struct SharedState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Bumped after every swap; workers watch it to reconcile their listeners.
    pub generation: watch::Sender<u64>,
    pub metrics: Arc<Metrics>,
    pub audit_metrics: AuditMetrics,
    pub readiness: Arc<Readiness>,
    pub worker_threads: Arc<WorkerThreads>,
    pub parts: PartsHolder,
    /// The XDP guard and connection steering, when configured (set once at startup).
    pub ebpf: crate::ebpf::EbpfState,
}

/// Owns the long-lived pieces phases are built from, across snapshots.
pub struct PartsHolder {
    audit: Mutex<Option<AuditSink>>,
    /// Session-ticket keys, the session cache, the kTLS decision and the TLS metrics.
    tls: TlsParts,
    /// Rate-limit and budget stores, clock, metrics and the Redis handle.
    limits: OnceLock<Arc<LimitState>>,
    /// The XDP feedback loop, when the guard runs (its thresholds follow the config).
    offenders: Mutex<Option<Arc<crate::ebpf::Offenders>>>,
    /// Issuers' key caches and the revocation list.
    auth: AuthHolder,
}

impl PartsHolder {
    pub fn new(tls: TlsParts, auth: AuthEnv) -> Self {
        PartsHolder {
            audit: Mutex::new(None),
            tls,
            limits: OnceLock::new(),
            offenders: Mutex::new(None),
            auth: AuthHolder::new(auth),
        }
    }

    pub fn tls(&self) -> &TlsParts {
        &self.tls
    }

    pub fn auth(&self) -> &AuthHolder {
        &self.auth
    }

    /// Uses `limits` (registered with the metrics) for rate limits and budgets.
    pub fn with_limits(self, limits: Arc<LimitState>) -> Self {
        let _ = self.limits.set(limits);
        self
    }

    /// Limiter state kept across reloads (memory counters survive, the Redis handle is reused
    /// while `[redis]` is unchanged).
    pub fn limits(&self) -> &Arc<LimitState> {
        self.limits.get_or_init(|| {
            Arc::new(LimitState::new(Arc::new(SystemClock), Arc::new(LimitMetrics::default()), Default::default()))
        })
    }

    /// The phases' long-lived parts for `config`: the audit writer is reused while its path
    /// stays the same, so a reload neither reorders nor loses lines.
    pub fn phase_parts(&self, config: &Config, audit_metrics: &AuditMetrics) -> Result<PhaseParts, StateError> {
        let mut current = self.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let audit = match &config.audit {
            None => None,
            Some(spec) => match current.as_ref() {
                Some(sink) if sink.path() == spec.path => Some(sink.clone()),
                _ => Some(
                    AuditSink::start(&spec.path, spec.queue_size, audit_metrics.clone())
                        .map_err(|source| StateError::Audit { path: spec.path.display().to_string(), source })?,
                ),
            },
        };
        current.clone_from(&audit);
        drop(current);
        let limits = self.limits().clone();
        let kv = limits.kv_for(config.redis.as_ref());
        let offenders = self.offenders.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let feedback = offenders.clone().filter(|_| config.xdp.feedback.is_some());
        drop(offenders);
        let identify = self.auth.phase(config.auth.clone(), kv.clone());
        let login = self.auth.login_phase(config.auth.clone(), kv.clone());
        Ok(PhaseParts { audit, tls: self.tls.clone(), limits, kv, identify, login, feedback })
    }

    pub fn set_offenders(&self, offenders: Option<Arc<crate::ebpf::Offenders>>) {
        *self.offenders.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = offenders;
    }

    /// The audit writer in use, if the audit log is enabled (operator events go there too).
    pub fn audit(&self) -> Option<AuditSink> {
        self.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn reopen_audit(&self) {
        if let Some(sink) = self.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            sink.reopen();
        }
    }
}

impl SharedState {
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        audit_metrics: AuditMetrics,
        readiness: Arc<Readiness>,
        worker_threads: Arc<WorkerThreads>,
        parts: PartsHolder,
    ) -> Self {
        let generation = snapshot.load().generation;
        SharedState {
            snapshot,
            generation: watch::Sender::new(generation),
            metrics,
            audit_metrics,
            readiness,
            worker_threads,
            parts,
            ebpf: crate::ebpf::EbpfState::default(),
        }
    }

    /// Builds and installs a new snapshot from `config`.
    pub fn install(&self, config: Config) -> Result<Arc<Snapshot>, StateError> {
        let parts = self.parts.phase_parts(&config, &self.audit_metrics)?;
        let previous = self.snapshot.load_full();
        let snapshot = Arc::new(Snapshot::build(previous.generation + 1, config, parts, Some(&previous)));
        self.snapshot.store(snapshot.clone());
        self.generation.send_replace(snapshot.generation);
        Ok(snapshot)
    }
}
