//! The `jti` denylist. Every token with a `jti` is checked on every request, cached or not.
//!
//! The local denylist is a copy-on-write map read lock-free by the workers (`ArcSwap`): a check
//! is one atomic load and a hash lookup. Revocations are rare, so a write copies the map (and
//! drops entries whose token has expired anyway). With `store = "memory"` this is the whole
//! story: revocations apply to this process, at once, and are lost at restart.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;
use thiserror::Error;

use super::{AuthMetrics, RevocationSpec, unix_now};

/// Longest jti accepted for revocation.
const MAX_JTI: usize = 256;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RevocationError {
    #[error("invalid jti: {0}")]
    InvalidJti(&'static str),
    #[error("until ({until}) is not in the future: a token expired by then needs no revocation")]
    InThePast { until: u64 },
    #[error("the revocation store failed: {0}")]
    Store(String),
}

pub struct Revocations {
    spec: RevocationSpec,
    /// jti → unix seconds until which it is revoked (the token's expiry).
    denylist: ArcSwap<HashMap<Box<str>, u64>>,
    write: Mutex<()>,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("spec", &self.spec).field("local", &self.denylist.load().len()).finish()
    }
}

impl Revocations {
    pub fn new(spec: RevocationSpec, metrics: AuthMetrics) -> Self {
        Revocations { spec, denylist: ArcSwap::from_pointee(HashMap::new()), write: Mutex::new(()), metrics }
    }

    pub fn spec(&self) -> &RevocationSpec {
        &self.spec
    }

    /// Whether `jti` is on the local denylist (at unix time `now`).
    pub fn is_revoked_locally(&self, jti: &str, now: u64) -> bool {
        let list = self.denylist.load();
        !list.is_empty() && list.get(jti).is_some_and(|until| *until > now)
    }

    /// Revokes `jti` until `until` (unix seconds, normally the token's `exp`).
    pub async fn revoke(&self, jti: &str, until: u64, source: &'static str) -> Result<(), RevocationError> {
        validate(jti, until)?;
        self.insert_local(jti, until);
        self.metrics.revoked(source);
        tracing::info!(jti, until, source, "token revoked");
        Ok(())
    }

    /// Adds to the local denylist only (also used for revocations heard from other nodes).
    pub fn insert_local(&self, jti: &str, until: u64) {
        let _guard = self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = unix_now();
        let current = self.denylist.load();
        let mut next: HashMap<Box<str>, u64> =
            current.iter().filter(|(_, u)| **u > now).map(|(k, u)| (k.clone(), *u)).collect();
        let entry = next.entry(jti.into()).or_insert(until);
        *entry = (*entry).max(until);
        self.denylist.store(Arc::new(next));
    }

    /// Entries on the local denylist (expired ones included until the next write).
    pub fn local_len(&self) -> usize {
        self.denylist.load().len()
    }
}

/// Checks what `gatewayd revoke` and the admin endpoint accept.
pub fn validate(jti: &str, until: u64) -> Result<(), RevocationError> {
    if jti.is_empty() || jti.len() > MAX_JTI {
        return Err(RevocationError::InvalidJti("must be 1 to 256 bytes"));
    }
    if jti.chars().any(char::is_control) {
        return Err(RevocationError::InvalidJti("must not contain control characters"));
    }
    if until <= unix_now() {
        return Err(RevocationError::InThePast { until });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn revoked_until_expiry() {
        let r = Revocations::new(RevocationSpec::default(), AuthMetrics::default());
        let now = unix_now();
        assert!(!r.is_revoked_locally("a", now));
        block_on(r.revoke("a", now + 60, "admin")).unwrap();
        assert!(r.is_revoked_locally("a", now));
        assert!(!r.is_revoked_locally("a", now + 61), "an entry lapses with the token");
        assert!(!r.is_revoked_locally("b", now));
        assert_eq!(
            block_on(r.revoke("", now + 60, "admin")),
            Err(RevocationError::InvalidJti("must be 1 to 256 bytes"))
        );
        assert!(matches!(block_on(r.revoke("c", now - 1, "admin")), Err(RevocationError::InThePast { .. })));
        // A shorter revocation never shortens a longer one.
        r.insert_local("a", now + 10);
        assert!(r.is_revoked_locally("a", now + 30));
    }
}
