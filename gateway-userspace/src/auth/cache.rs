//! The per-worker validated-token cache: SHA-256 of the token → what validating it found, until
//! the token expires. A repeated token costs a hash and a lookup instead of a signature check.
//! Each worker thread has its own (no lock, no shared cache line); a reload starts fresh ones.
//!
//! Keyed by a collision-resistant hash, so the cache never holds tokens and no crafted token can
//! land on another's entry. Only outcomes that hold for the token's life are cached: valid
//! tokens (with the key-set version they were checked against, re-checked after a rotation) and
//! inactive introspection answers (briefly). Revocation, certificate binding and scopes are
//! checked on every request.

use std::{cell::RefCell, num::NonZeroUsize, rc::Rc};

use aws_lc_rs::digest;
use lru::LruCache;

use super::jwt::Claims;

/// A token that validated.
#[derive(Debug)]
pub struct Validated {
    /// Index of the issuer (in the phase's issuer list).
    pub issuer: usize,
    /// The issuer's key-set version at validation (0: not key-based, i.e. introspected).
    pub keys_version: u64,
    /// Unix seconds until which this result may be reused.
    pub valid_until: u64,
    pub claims: Claims,
    /// `"jwt"` or `"introspection"`.
    pub credential: &'static str,
}

#[derive(Debug, Clone)]
pub enum Entry {
    Valid(Rc<Validated>),
    /// Introspection said `active: false`.
    Inactive {
        until: u64,
    },
}

pub type TokenHash = [u8; 32];

pub fn hash(token: &str) -> TokenHash {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// One worker's identity state for one identify phase (i.e. one snapshot).
pub struct WorkerCache {
    phase: u64,
    tokens: LruCache<TokenHash, Entry>,
    /// jti → unix ms until which the shared revocation store's "not revoked" may be reused.
    not_revoked: LruCache<Box<str>, u64>,
}

thread_local! {
    static CACHE: RefCell<Option<WorkerCache>> = const { RefCell::new(None) };
}

impl WorkerCache {
    /// Runs `f` on this worker's cache for `phase`, replacing a cache left by an older phase.
    pub fn with<R>(phase: u64, capacity: usize, f: impl FnOnce(&mut WorkerCache) -> R) -> R {
        CACHE.with_borrow_mut(|slot| {
            if slot.as_ref().is_some_and(|c| c.phase != phase) {
                *slot = None;
            }
            let cache = slot.get_or_insert_with(|| {
                let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
                WorkerCache { phase, tokens: LruCache::new(cap), not_revoked: LruCache::new(cap) }
            });
            f(cache)
        })
    }

    pub fn get(&mut self, hash: &TokenHash) -> Option<Entry> {
        self.tokens.get(hash).cloned()
    }

    pub fn put(&mut self, hash: TokenHash, entry: Entry) {
        self.tokens.put(hash, entry);
    }

    pub fn not_revoked_until(&mut self, jti: &str) -> Option<u64> {
        self.not_revoked.get(jti).copied()
    }

    pub fn set_not_revoked(&mut self, jti: &str, until_ms: u64) {
        self.not_revoked.put(jti.into(), until_ms);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_reset_per_phase() {
        let claims = Claims {
            expires: Some(10),
            user: None,
            workspace: None,
            scopes: Vec::new(),
            scope_header: None,
            jti: None,
            cert_thumbprint: None,
        };
        let v = Rc::new(Validated { issuer: 0, keys_version: 1, valid_until: 10, claims, credential: "jwt" });
        WorkerCache::with(1, 2, |c| {
            for t in ["a", "b", "c"] {
                c.put(hash(t), Entry::Valid(v.clone()));
            }
            assert_eq!(c.len(), 2, "bounded");
            assert!(c.get(&hash("a")).is_none(), "least recently used went first");
            assert!(c.get(&hash("c")).is_some());
        });
        WorkerCache::with(1, 2, |c| assert!(c.get(&hash("c")).is_some(), "same phase, same cache"));
        WorkerCache::with(2, 2, |c| assert_eq!(c.len(), 0, "a new phase starts empty"));
        assert_ne!(hash("a"), hash("b"));
    }
}
