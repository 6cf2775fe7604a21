//! Upstream services: their targets, load balancing, passive health, and (per worker) pooled
//! keep-alive connections.
//!
//! Target state (in-flight count, consecutive failures, ejection) is shared by all workers
//! through atomics and survives config reloads, so a reload neither forgets that a target is
//! down nor resets least-connections counts.

pub mod health;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

pub use health::{InFlight, TargetState};

/// How to reach one target.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Option<Arc<crate::tls::TlsEndpoint>>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Self {
        Endpoint { addr, tls: None }
    }

    pub(crate) fn key(&self) -> (SocketAddr, u64) {
        (self.addr, self.tls.as_ref().map_or(0, |t| t.pool_key))
    }
}

/// A service as configured (validated, not yet running).
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: Arc<str>,
    pub targets: Vec<SocketAddr>,
    pub lb: LbAlgorithm,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub retries: u32,
    pub max_idle_per_target: usize,
    pub idle_timeout: Duration,
    /// TLS towards the targets (`tls = true`).
    pub tls: Option<Arc<crate::tls::UpstreamTlsSpec>>,
}

/// A running service: its spec plus live target state.
#[derive(Debug)]
pub struct Service {
    pub spec: ServiceSpec,
    pub targets: Vec<Target>,
    /// The service's upstream TLS, per target (set by the snapshot, which owns the metrics).
    pub tls: Option<crate::tls::UpstreamTls>,
    cursor: AtomicUsize,
}

#[derive(Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `ip:port`, precomputed for labels and logs.
    pub label: Arc<str>,
    /// `label` as the upstream request's `Host` (when the route does not preserve the
    /// client's): built once here, not copied into a new value on every request.
    pub host: Option<http::HeaderValue>,
    pub state: Arc<TargetState>,
}

impl Service {
    /// How to reach target `i`: its address, and its TLS endpoint for a TLS service.
    pub fn endpoint(&self, i: usize) -> Endpoint {
        Endpoint { addr: self.targets[i].addr, tls: self.tls.as_ref().and_then(|t| t.endpoints.get(i).cloned()) }
    }
}

/// Why no target could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Every target not yet tried is ejected.
    NoHealthyTarget,
    /// Every target was tried already.
    Exhausted,
}

impl Service {
    /// Builds a running service, keeping the state of targets it shares with `previous`.
    pub fn new(spec: ServiceSpec, previous: Option<&Service>) -> Self {
        let targets = spec
            .targets
            .iter()
            .map(|&addr| {
                let state = previous
                    .and_then(|p| p.targets.iter().find(|t| t.addr == addr))
                    .map_or_else(|| Arc::new(TargetState::default()), |t| t.state.clone());
                let label: Arc<str> = addr.to_string().into();
                let host = http::HeaderValue::from_str(&label).ok();
                Target { addr, label, host, state }
            })
            .collect();
        Service { spec, targets, tls: None, cursor: AtomicUsize::new(0) }
    }

    /// Chooses a target not in `tried` (a bit set of target indexes), honouring ejections.
    pub fn pick(&self, tried: u64) -> Result<usize, PickError> {
        // The time matters only for a target out of service (its cool-down); most picks find
        // none and read no clock. 0 is before any cool-down ends: a target ejected meanwhile
        // is taken as still cooling down.
        let now = if self.targets.iter().all(|t| t.state.in_service()) { 0 } else { health::now_ms() };
        self.pick_at(tried, now)
    }

    /// `pick` at a given `health::now_ms` time (tests drive the clock by hand).
    fn pick_at(&self, tried: u64, now: u64) -> Result<usize, PickError> {
        let n = self.targets.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u32)> = None;
        let mut untried = false;
        for k in 0..n {
            let i = (start + k) % n;
            if i < 64 && tried & (1 << i) != 0 {
                continue;
            }
            untried = true;
            let state = &self.targets[i].state;
            if !state.is_available(now) {
                continue;
            }
            match self.spec.lb {
                LbAlgorithm::RoundRobin => {
                    best = Some((i, 0));
                    break;
                }
                LbAlgorithm::LeastConn => {
                    let active = state.active();
                    if best.is_none_or(|(_, a)| active < a) {
                        best = Some((i, active));
                    }
                }
            }
        }
        match best {
            // An ejected target whose cool-down is over gets exactly one probe request.
            Some((i, _)) if self.targets[i].state.claim(now) => Ok(i),
            Some(_) => Err(PickError::NoHealthyTarget),
            None if untried => Err(PickError::NoHealthyTarget),
            None => Err(PickError::Exhausted),
        }
    }
}

#[cfg(test)]
mod tests;

/// A service's `load_balancing`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LbAlgorithm {
    #[default]
    RoundRobin,
    LeastConn,
}
