//! A fleet shares one certificate through Redis (when `[redis]` is configured): the node whose
//! renewal falls due first takes a lock (`SET NX PX`, its own random value, released only by
//! its holder), orders, and publishes chain and key under `<prefix>:acme:cert:<cert id>`;
//! the others find that certificate when theirs falls due, store it in their own state
//! directory and serve it, so a fleet places one order per renewal. Redis being down never
//! stops renewal: each node then orders alone, as without `[redis]`.
//!
//! The key is stored in Redis in the clear: Redis must be as private as the state directory
//! (ACLs, `rediss://`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AcmeSpec, store::Issued};
use crate::kv::{Kv, KvError};

/// Longer than an order may take; a crashed holder's lock expires by itself.
const LOCK_TTL: Duration = Duration::from_secs(300);

#[derive(Serialize, Deserialize)]
struct Shared {
    chain_pem: String,
    key_pem: String,
}

fn cert_key(kv: &Kv, spec: &AcmeSpec) -> String {
    kv.key(format_args!("acme:cert:{}", spec.cert_id()))
}

/// The fleet's certificate, if one is published and usable for these domains.
pub async fn fetch(kv: &Kv, spec: &AcmeSpec) -> Option<Issued> {
    let raw: Option<String> = kv
        .query("acme_get", redis::cmd("GET").arg(cert_key(kv, spec)))
        .await
        .inspect_err(|e| tracing::debug!(error = %e, "cannot read the fleet's ACME certificate"))
        .ok()?;
    let shared: Shared = serde_json::from_str(&raw?).ok()?;
    Issued::parse(shared.chain_pem, shared.key_pem).ok().filter(|i| i.covers(&spec.domains))
}

pub async fn publish(kv: &Kv, spec: &AcmeSpec, issued: &Issued) {
    let shared = Shared { chain_pem: issued.chain_pem.clone(), key_pem: issued.key_pem.clone() };
    let Ok(json) = serde_json::to_string(&shared) else { return };
    let ttl = u64::try_from(issued.not_after - issued.not_before).unwrap_or(0).max(1);
    let set = kv.query::<()>("acme_set", redis::cmd("SET").arg(cert_key(kv, spec)).arg(json).arg("EX").arg(ttl)).await;
    if let Err(e) = set {
        tracing::warn!(error = %e, "cannot share the new ACME certificate through redis; other nodes order their own");
    }
}

/// The fleet's order lock for one certificate.
pub struct Lock {
    kv: Kv,
    key: String,
    token: String,
}

impl Lock {
    /// `Ok(None)`: another node holds it.
    pub async fn acquire(kv: &Kv, spec: &AcmeSpec) -> Result<Option<Lock>, KvError> {
        let key = kv.key(format_args!("acme:lock:{}", spec.cert_id()));
        let mut raw = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut raw);
        let token = crate::cert::hex_lower(&raw);
        let cmd = redis::cmd("SET").arg(&key).arg(&token).arg("NX").arg("PX").arg(LOCK_TTL.as_millis() as u64).clone();
        let set: Option<String> = kv.query("acme_lock", &cmd).await?;
        Ok(set.map(|_| Lock { kv: kv.clone(), key, token }))
    }

    /// Deletes the lock if this node still holds it.
    pub async fn release(self) {
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
        );
        let mut invocation = script.key(&self.key);
        invocation.arg(&self.token);
        if let Err(e) = self.kv.script::<i64>("acme_unlock", &self.key, &invocation).await {
            tracing::debug!(error = %e, "cannot release the ACME lock; it expires by itself");
        }
    }
}
