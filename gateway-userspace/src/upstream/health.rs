//! Passive health: a target is ejected after `max_fails` consecutive failures, left alone for
//! `fail_timeout`, then given one probe request; success brings it back, failure ejects it again.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[derive(Debug, Default)]
pub struct TargetState {
    active: AtomicU32,
    consecutive_failures: AtomicU32,
    /// 0 when in service; otherwise the `now_ms` at which a probe may be sent.
    ejected_until: AtomicU64,
    /// Set while the single probe request after a cool-down is in flight.
    probing: AtomicBool,
    /// Taken out of rotation by an operator (`drain_target`): no new requests, in-flight ones
    /// finish. Kept across reloads with the rest of the state.
    drained: AtomicBool,
}

impl TargetState {
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// True when the target is in service (not ejected).
    pub fn is_up(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) == 0
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains (`true`) or returns the target to rotation; returns the previous setting.
    pub fn set_drained(&self, drained: bool) -> bool {
        self.drained.swap(drained, Ordering::Relaxed)
    }

    /// Not ejected (drained or not): `is_available` and `claim` do not look at the time.
    pub(super) fn in_service(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) == 0
    }

    pub(super) fn is_available(&self, now: u64) -> bool {
        if self.drained.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || (now >= until && !self.probing.load(Ordering::Relaxed))
    }

    /// Claims a target chosen by `pick`: always succeeds when in service; for an ejected target
    /// past its cool-down, only one caller wins the probe.
    pub(super) fn claim(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0
            || (now >= until && self.probing.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    }

    /// Counts a request in flight (for least-connections) until the guard drops.
    pub fn begin(self: &std::sync::Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("upstream target back in service after a successful probe");
        }
        self.probing.store(false, Ordering::Relaxed);
    }

    /// Returns true when this failure ejected the target.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        self.record_failure_at(now_ms(), max_fails, fail_timeout)
    }

    /// `record_failure` at a given `now_ms` time (tests drive the clock by hand).
    pub(super) fn record_failure_at(&self, now: u64, max_fails: u32, fail_timeout: Duration) -> bool {
        let fails = self.consecutive_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let was_probe = self.probing.swap(false, Ordering::Relaxed);
        if fails >= max_fails || was_probe {
            self.ejected_until.store(now + fail_timeout.as_millis() as u64, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// Decrements the in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<TargetState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
