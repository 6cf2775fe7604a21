//! A circuit breaker per issuer, in front of every call to its IdP (key refreshes, unknown-`kid`
//! refetches, introspection).
//!
//! Closed: calls go through; `breaker_failures` consecutive calls that found the IdP unreachable
//! (no answer within the deadline, connection or TLS failure, connection lost) open it. Any
//! HTTP answer, even an error status, shows the IdP is reachable and resets the count. Open: for
//! `breaker_cool_down` no call is made: requests that would wait for the IdP get 503
//! `idp_unavailable` at once, with `Retry-After` the time left. Then half-open: exactly one call
//! goes through, the others still fail fast. That call is the background probe, which fires
//! when the cool-down ends (a breaker without a probe lets the first request through instead):
//! a client request is never the one left waiting for a timeout on an IdP that is still hung.
//! Its success closes the breaker, its failure opens it for another cool-down. So a hung IdP
//! costs at most `breaker_failures` waits for the timeout, then one probe per cool-down, never a
//! wait per request.
//!
//! The state is shared by the workers (a mutex taken only around IdP calls, which are the slow
//! path anyway); the time is passed in, so the state machine is tested with an injected clock.

use std::{
    future::Future,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use thiserror::Error;
use tokio::sync::Notify;

use super::{AuthMetrics, BreakerSpec, idp_http::IdpClient, idp_http::IdpHttpError};

/// What the breaker lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Failing fast until the cool-down ends.
    Open,
    /// Cool-down over: one trial call decides.
    HalfOpen,
}

impl BreakerState {
    /// The `gateway_auth_idp_breaker_state` value and the transitions' `to` label.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Error)]
pub enum BreakerError {
    /// Refused without calling: the IdP was unreachable moments ago.
    #[error("the identity provider is unreachable; not asked again for {0:?}")]
    Open(Duration),
    #[error(transparent)]
    Call(#[from] IdpHttpError),
}

impl BreakerError {
    /// Whole seconds for `Retry-After` (at least one), when the breaker refused.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            BreakerError::Open(d) => Some(retry_after_secs(*d)),
            BreakerError::Call(_) => None,
        }
    }
}

pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

/// Whether a failed call means the IdP cannot be reached (as opposed to a bad URL or an answer
/// we could not use, which only proves it is there).
fn unreachable(e: &IdpHttpError) -> bool {
    matches!(e, IdpHttpError::Timeout(_) | IdpHttpError::Connect(..) | IdpHttpError::Tls(..) | IdpHttpError::Http(_))
}

#[derive(Debug)]
struct State {
    state: BreakerState,
    /// Consecutive unreachable calls while closed.
    failures: u32,
    /// While open: when the trial call may go.
    open_until: Instant,
    /// While half-open: the one trial call is under way.
    trial_taken: bool,
}

pub struct Breaker {
    issuer: Arc<str>,
    spec: BreakerSpec,
    state: Mutex<State>,
    /// Wakes the probe task when the breaker opens (and when it is retired).
    opened: Arc<Notify>,
    /// Woken when the breaker closes (the key refresh task: refresh now, not at its next try).
    on_close: Option<Arc<Notify>>,
    metrics: AuthMetrics,
    /// Replaced by a reload: stops probing and reporting.
    retired: AtomicBool,
    /// A background probe runs: it alone makes the half-open trial call.
    probed: AtomicBool,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("issuer", &self.issuer).field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// Leave to make one call. A trial permit dropped without an outcome (the request went away)
/// gives the trial back.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    trial: bool,
    recorded: bool,
}

impl Permit<'_> {
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// Records the call's outcome: `reachable` when the IdP answered (whatever the status).
    pub fn record(mut self, reachable: bool, now: Instant) {
        self.recorded = true;
        self.breaker.record(self.trial, reachable, now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial && !self.recorded {
            let mut s = self.breaker.lock();
            if s.state == BreakerState::HalfOpen {
                s.trial_taken = false;
            }
        }
    }
}

impl Breaker {
    pub fn new(issuer: Arc<str>, spec: BreakerSpec, metrics: AuthMetrics, on_close: Option<Arc<Notify>>) -> Self {
        metrics.set_breaker_state(&issuer, BreakerState::Closed);
        Breaker {
            issuer,
            spec,
            state: Mutex::new(State {
                state: BreakerState::Closed,
                failures: 0,
                open_until: Instant::now(),
                trial_taken: false,
            }),
            opened: Arc::new(Notify::new()),
            on_close,
            metrics,
            retired: AtomicBool::new(false),
            probed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[cfg(test)]
    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Stops the probe task and the reporting (a reload replaced this issuer's cache).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.opened.notify_one();
    }

    /// How long calls are refused from `now` (without claiming anything): `None` when a call
    /// would be let through.
    pub fn refusing(&self, now: Instant) -> Option<Duration> {
        let s = self.lock();
        match s.state {
            BreakerState::Open if now < s.open_until => Some(s.open_until - now),
            BreakerState::HalfOpen if s.trial_taken => Some(Duration::from_secs(1)),
            BreakerState::Open | BreakerState::HalfOpen if self.probed.load(Ordering::Acquire) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// Counts a call refused because of [`Breaker::refusing`].
    pub fn rejected(&self) {
        self.metrics.breaker_rejection(&self.issuer);
    }

    /// Leave to call the IdP now, or how long until the next call may go. `probe`: the caller
    /// is the background probe (which takes the half-open trial when there is one).
    pub fn admit(&self, now: Instant, probe: bool) -> Result<Permit<'_>, Duration> {
        let mut s = self.lock();
        let probe_only = !probe && self.probed.load(Ordering::Acquire);
        let trial = match s.state {
            BreakerState::Closed => false,
            BreakerState::Open if now < s.open_until => return Err(s.open_until - now),
            // The probe is about to make the trial call.
            BreakerState::Open if probe_only => return Err(Duration::from_secs(1)),
            BreakerState::Open => {
                s.state = BreakerState::HalfOpen;
                s.trial_taken = true;
                drop(s);
                self.transition(BreakerState::HalfOpen);
                return Ok(Permit { breaker: self, trial: true, recorded: false });
            }
            BreakerState::HalfOpen if s.trial_taken || probe_only => return Err(Duration::from_secs(1)),
            BreakerState::HalfOpen => {
                s.trial_taken = true;
                true
            }
        };
        Ok(Permit { breaker: self, trial, recorded: false })
    }

    fn record(&self, trial: bool, reachable: bool, now: Instant) {
        let mut s = self.lock();
        let from = s.state;
        if reachable {
            s.failures = 0;
            s.trial_taken = false;
            s.state = BreakerState::Closed;
        } else if trial && from == BreakerState::HalfOpen {
            s.trial_taken = false;
            s.state = BreakerState::Open;
            s.open_until = now + self.spec.cool_down;
        } else if from == BreakerState::Closed {
            s.failures += 1;
            if s.failures >= self.spec.failures {
                s.state = BreakerState::Open;
                s.open_until = now + self.spec.cool_down;
            }
        }
        // (A call admitted before the breaker opened failed too, while it is open or its trial
        // is under way: nothing more to learn; the trial decides.)
        let to = s.state;
        let failures = s.failures;
        drop(s);
        if from == to {
            return;
        }
        self.transition(to);
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        match (from, to) {
            (BreakerState::Closed, BreakerState::Open) => {
                tracing::warn!(issuer = %self.issuer, failures, cool_down = ?self.spec.cool_down, "identity provider unreachable: circuit breaker open, requests that need it fail fast (503) until a probe gets an answer");
                self.opened.notify_one();
            }
            (_, BreakerState::Open) => {
                tracing::debug!(issuer = %self.issuer, "identity provider still unreachable: circuit breaker open again");
                self.opened.notify_one();
            }
            (_, BreakerState::Closed) => {
                tracing::info!(issuer = %self.issuer, "identity provider reachable again: circuit breaker closed");
                if let Some(wake) = &self.on_close {
                    wake.notify_one();
                }
            }
            _ => {}
        }
    }

    fn transition(&self, to: BreakerState) {
        if !self.retired.load(Ordering::Acquire) {
            self.metrics.breaker_transition(&self.issuer, to);
        }
    }

    /// Runs one IdP call through the breaker: refused at once while open, its outcome recorded.
    pub async fn call<T>(&self, call: impl Future<Output = Result<T, IdpHttpError>>) -> Result<T, BreakerError> {
        let permit = self.admit(Instant::now(), false).map_err(|wait| {
            self.rejected();
            BreakerError::Open(wait)
        })?;
        let result = call.await;
        let reachable = !result.as_ref().is_err_and(unreachable);
        permit.record(reachable, Instant::now());
        Ok(result?)
    }

    /// When the next probe is due: `None` while closed.
    fn probe_due(&self) -> Option<Instant> {
        let s = self.lock();
        match s.state {
            BreakerState::Closed => None,
            BreakerState::Open => Some(s.open_until),
            BreakerState::HalfOpen => Some(Instant::now()),
        }
    }

    /// Starts the background probe on the current runtime (the control runtime).
    pub fn start_probe(self: &Arc<Self>, client: IdpClient, url: String, timeout: Duration) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                self.probed.store(true, Ordering::Release);
                rt.spawn(probe_loop(Arc::downgrade(self), self.opened.clone(), client, url, timeout));
            }
            Err(_) => tracing::error!(issuer = %self.issuer, "no runtime to probe the identity provider on"),
        }
    }
}

/// While the breaker is open, one call per cool-down to `url`; any HTTP answer closes it. Holds
/// only a weak reference while waiting, so it ends soon after a reload dropped the issuer.
async fn probe_loop(weak: Weak<Breaker>, opened: Arc<Notify>, client: IdpClient, url: String, timeout: Duration) {
    loop {
        let due = {
            let Some(b) = weak.upgrade().filter(|b| !b.retired.load(Ordering::Acquire)) else { return };
            b.probe_due()
        };
        let Some(due) = due else {
            opened.notified().await;
            continue;
        };
        tokio::time::sleep_until(due.into()).await;
        let Some(b) = weak.upgrade().filter(|b| !b.retired.load(Ordering::Acquire)) else { return };
        let busy = match b.admit(Instant::now(), true) {
            // Closed meanwhile (a request's call got an answer).
            Ok(permit) if !permit.is_trial() => None,
            Ok(permit) => {
                let result = client.get(&url, timeout).await;
                let reachable = !result.as_ref().is_err_and(unreachable);
                tracing::debug!(issuer = %b.issuer, reachable, "identity provider probe");
                permit.record(reachable, Instant::now());
                None
            }
            // Not due yet (the clock of `sleep_until` may run a little ahead of this one).
            Err(wait) => Some(wait),
        };
        drop(b);
        if let Some(wait) = busy {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        let spec = BreakerSpec { failures: 3, cool_down: Duration::from_secs(5) };
        Breaker::new("idp".into(), spec, AuthMetrics::default(), None)
    }

    #[test]
    fn opens_after_consecutive_unreachable_calls_and_fails_fast_for_the_cool_down() {
        let b = breaker();
        let t0 = Instant::now();
        for i in 0..2 {
            b.admit(t0, false).unwrap().record(false, t0 + Duration::from_secs(i));
        }
        // An answer (any status) resets the count.
        b.admit(t0, false).unwrap().record(true, t0);
        for _ in 0..2 {
            b.admit(t0, false).unwrap().record(false, t0);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.admit(t0, false).unwrap().record(false, t0);
        assert_eq!(b.state(), BreakerState::Open);
        let wait = b.admit(t0 + Duration::from_secs(2), false).err().expect("open: refused");
        assert_eq!(wait, Duration::from_secs(3));
        assert_eq!(retry_after_secs(wait), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
    }

    #[test]
    fn half_open_lets_one_call_through_and_its_outcome_decides() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.admit(t0, false).unwrap().record(false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        let trial = b.admit(t1, false).expect("cool-down over");
        assert!(trial.is_trial());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.admit(t1, false).is_err(), "only one trial");
        // The trial fails: open for another cool-down.
        trial.record(false, t1);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.admit(t1 + Duration::from_secs(4), false).is_err());
        // A trial whose request went away gives the trial back.
        let t2 = t1 + Duration::from_secs(5);
        drop(b.admit(t2, false).unwrap());
        let trial = b.admit(t2, false).expect("trial given back");
        trial.record(true, t2);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.admit(t2, false).unwrap().is_trial());
    }

    #[test]
    fn with_a_background_probe_no_request_is_the_trial() {
        let b = breaker();
        b.probed.store(true, Ordering::Release);
        let t0 = Instant::now();
        for _ in 0..3 {
            b.admit(t0, false).unwrap().record(false, t0);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(b.refusing(t1), Some(Duration::from_secs(1)));
        assert!(b.admit(t1, false).is_err(), "requests wait for the probe's verdict");
        let trial = b.admit(t1, true).expect("the probe goes");
        assert!(b.admit(t1, false).is_err());
        // A late failure of a call admitted before the breaker opened does not decide.
        b.record(false, false, t1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        trial.record(true, t1);
        assert_eq!((b.state(), b.refusing(t1)), (BreakerState::Closed, None));
    }
}
