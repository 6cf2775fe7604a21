//! A listener's ACME certificate over time: the stored one at startup, an order when there is
//! none, renewal when due (the CA's renewal window when it offers ARI, else 2/3 of the
//! lifetime), retries with doubling delays, and the swap. The served certificate is an
//! `ArcSwap` read by the resolver on each handshake, so a new one applies to the next
//! handshake without a restart, and established connections keep theirs. A failure changes
//! nothing that is served.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use instant_acme::Account;
use rustls::sign::CertifiedKey;

use super::{
    AcmeError, AcmeMetrics, AcmeSpec,
    challenge::Http01Tokens,
    fleet, order,
    store::{Issued, StateDir},
};
use crate::kv::Kv;

/// What the resolver and the renewal task share.
#[derive(Debug)]
pub struct AcmeCertificate {
    pub listener: Arc<str>,
    pub spec: AcmeSpec,
    pub state: StateDir,
    pub tokens: Arc<Http01Tokens>,
    current: ArcSwapOption<Issued>,
    /// tls-alpn-01 certificates of the order in progress, by domain.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    metrics: Arc<AcmeMetrics>,
}

impl AcmeCertificate {
    pub fn new(listener: Arc<str>, spec: AcmeSpec, tokens: Arc<Http01Tokens>, metrics: Arc<AcmeMetrics>) -> Self {
        let state = StateDir::new(&spec);
        AcmeCertificate {
            listener,
            spec,
            state,
            tokens,
            current: ArcSwapOption::empty(),
            alpn: Mutex::default(),
            metrics,
        }
    }

    /// The certificate being served, if there is one yet.
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.current.load_full()
    }

    /// `sni` is one of the configured domains.
    pub fn covers(&self, sni: &str) -> bool {
        let name = sni.trim_end_matches('.');
        self.spec.domains.iter().any(|d| d.eq_ignore_ascii_case(name))
    }

    pub fn alpn_challenge(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        self.alpn.lock().unwrap_or_else(PoisonError::into_inner).get(&name).cloned()
    }

    pub fn set_alpn_challenge(&self, domain: &str, key: Option<Arc<CertifiedKey>>) {
        let mut alpn = self.alpn.lock().unwrap_or_else(PoisonError::into_inner);
        match key {
            Some(k) => alpn.insert(domain.to_owned(), k),
            None => alpn.remove(domain),
        };
    }

    /// Serves the certificate in the state directory, if it covers the configured domains
    /// (a restart serves it at once and orders nothing).
    pub fn load_stored(&self) {
        if let Some(issued) = self.state.load_cert().filter(|i| i.covers(&self.spec.domains)) {
            self.install(issued, "state directory");
        }
    }

    fn install(&self, issued: Issued, source: &'static str) {
        tracing::info!(listener = %self.listener, domains = ?self.spec.domains, source,
            not_after = issued.not_after, "ACME certificate in service");
        self.metrics.set_expiry(&self.listener, issued.not_after);
        self.current.store(Some(Arc::new(issued)));
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The renewal task of one listener; runs until aborted (listener removed or its `acme`
/// changed on reload).
pub async fn run(live: Arc<AcmeCertificate>, kv: Option<Kv>) {
    let mut account: Option<Account> = None;
    let mut failures = 0u32;
    loop {
        let (due, recheck, ari) = renewal_time(&live, &mut account).await;
        live.metrics.set_next_renewal(&live.listener, due);
        let at = due.min(recheck);
        if at > now() {
            tokio::time::sleep(Duration::from_secs(u64::try_from(at - now()).unwrap_or(0))).await;
            if due > now() {
                continue;
            }
        }
        // Another node of the fleet may have renewed it already.
        if let Some(kv) = &kv
            && let Some(shared) = fleet::fetch(kv, &live.spec).await
            && shared.renew_at() > now()
            && live.current().is_none_or(|c| shared.not_after > c.not_after)
        {
            if let Err(e) = live.state.store_cert(&shared) {
                tracing::warn!(listener = %live.listener, error = %e, "cannot keep the fleet's ACME certificate on disk");
            }
            live.install(shared, "redis");
            continue;
        }
        let lock = match &kv {
            Some(kv) => match fleet::Lock::acquire(kv, &live.spec).await {
                Ok(Some(lock)) => Some(lock),
                Ok(None) => {
                    // Another node orders: look for its certificate again a little later.
                    tracing::info!(listener = %live.listener, "another node holds the ACME order lock; waiting for its certificate");
                    tokio::time::sleep(live.spec.retry_min.min(Duration::from_secs(30))).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(listener = %live.listener, error = %e, "redis unavailable for the ACME lock; ordering alone");
                    None
                }
            },
            None => None,
        };
        let result = attempt(&live, &mut account, ari).await;
        match result {
            Ok(issued) => {
                failures = 0;
                live.metrics.order(&live.listener, "ok");
                if let Err(e) = live.state.store_cert(&issued) {
                    // Served anyway; a restart orders again.
                    tracing::error!(listener = %live.listener, error = %e, "cannot store the new ACME certificate");
                }
                if let Some(kv) = &kv {
                    fleet::publish(kv, &live.spec, &issued).await;
                }
                live.install(issued, "order");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                live.metrics.order(&live.listener, "error");
                let delay = backoff(&live.spec, failures);
                tracing::warn!(listener = %live.listener, error = %e, retry_in = ?delay, failures,
                    serving = if live.current().is_some() { "the previous certificate" } else { "nothing yet" },
                    "ACME order failed");
                if let Some(lock) = lock {
                    lock.release().await;
                }
                live.metrics.set_next_renewal(&live.listener, now() + i64::try_from(delay.as_secs()).unwrap_or(0));
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        if let Some(lock) = lock {
            lock.release().await;
        }
    }
}

/// `retry_min`, doubling per consecutive failure, at most `retry_max`.
fn backoff(spec: &AcmeSpec, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    spec.retry_min.saturating_mul(factor).min(spec.retry_max)
}

/// `ari`: the CA answered renewal information for the current certificate, so the order names
/// the certificate it replaces.
async fn attempt(live: &Arc<AcmeCertificate>, account: &mut Option<Account>, ari: bool) -> Result<Issued, AcmeError> {
    let acct = match account {
        Some(a) => a.clone(),
        None => {
            let a = order::account(live).await?;
            *account = Some(a.clone());
            a
        }
    };
    let replaces = live.current().filter(|_| ari).and_then(|c| order::identifier(&c));
    order::order(&acct, live, replaces).await.inspect_err(|e| {
        if e.is_unknown_account() {
            tracing::warn!(listener = %live.listener, "the CA does not know the stored ACME account; registering a new one");
            live.state.forget_account();
            *account = None;
        } else if e.is_transport() {
            // The directory may have moved (or the CA restarted): look it up again next time.
            *account = None;
        }
    })
}

/// (when to renew, when to ask again, whether the CA offers ARI): nothing served yet → now;
/// with ARI, a time in the CA's suggested window (asked again after its Retry-After); else 2/3
/// of the lifetime.
async fn renewal_time(live: &Arc<AcmeCertificate>, account: &mut Option<Account>) -> (i64, i64, bool) {
    let Some(current) = live.current() else { return (now(), now(), false) };
    let fallback = current.renew_at();
    if account.is_none() {
        *account = order::account(live).await.ok();
    }
    let (Some(acct), Some(id)) = (account.as_ref(), order::identifier(&current)) else {
        return (fallback, fallback, false);
    };
    match acct.renewal_info(&id).await {
        Ok((info, retry_after)) => {
            let start = info.suggested_window.start.unix_timestamp();
            let end = info.suggested_window.end.unix_timestamp().max(start);
            // A random point in the window spreads a fleet's (and the CA's) load (RFC 9773 §4.2).
            let pick = start + i64::from(rand_u32()) % (end - start + 1);
            let recheck = now() + i64::try_from(retry_after.as_secs().clamp(60, 6 * 3600)).unwrap_or(3600);
            (pick, recheck, true)
        }
        Err(instant_acme::Error::Unsupported(_)) => (fallback, fallback, false),
        Err(e) => {
            tracing::debug!(listener = %live.listener, error = %e, "ACME renewal information unavailable; renewing at 2/3 of the lifetime");
            (fallback, fallback, false)
        }
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap() {
        let spec = AcmeSpec {
            directory: "https://ca.test/dir".into(),
            contact: vec![],
            domains: vec!["a.test".into()],
            challenge: super::super::Challenge::Http01,
            state_dir: "/nonexistent".into(),
            directory_ca: None,
            retry_min: Duration::from_secs(2),
            retry_max: Duration::from_secs(10),
        };
        let delays: Vec<u64> = (1..=5).map(|f| backoff(&spec, f).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 10, 10]);
    }
}
