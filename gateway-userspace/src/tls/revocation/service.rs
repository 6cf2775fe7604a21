//! The process-wide revocation service: one background thread with its own runtime does every
//! fetch (OCSP for client certificates and for stapling, CRLs), so a worker never blocks on a
//! responder; workers wait for a fetch's result at most the configured bound. Answers are
//! cached per certificate until their nextUpdate and refreshed in the background before then,
//! so a certificate with an answer is never held up. It outlives snapshots: a reload keeps
//! what was learnt.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt, future::BoxFuture, future::Shared};
use prometheus_client::registry::Registry;

use super::{
    crl::{self, Crl},
    metrics::{RevocationMetrics, Sources},
};
use crate::{
    metrics::Readiness,
    tls::ocsp::{
        fetch::{FetchError, fetch},
        protocol::{Answer, OcspError, Query},
    },
};

type Pending<T> = Shared<BoxFuture<'static, Result<T, String>>>;

/// A cached OCSP answer (or the fetch under way) for one certificate.
struct OcspEntry {
    answer: Option<Answer>,
    /// Ask again after this (unix seconds).
    refresh_at: i64,
    pending: Option<Pending<Answer>>,
}

struct CrlEntry {
    crl: Option<Arc<Crl>>,
    refresh_at: i64,
    pending: Option<Pending<Arc<Crl>>>,
}

pub struct Service {
    handle: tokio::runtime::Handle,
    ocsp: Mutex<HashMap<Vec<u8>, OcspEntry>>,
    crls: Mutex<HashMap<String, CrlEntry>>,
    /// Bumped whenever an answer says "revoked": connections re-check their certificate.
    epoch: AtomicU64,
    pub(crate) metrics: OnceLock<Arc<RevocationMetrics>>,
    readiness: OnceLock<Arc<Readiness>>,
    sources: Sources,
}

/// The service (started on first use).
pub fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(Service::start)
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Service {
    fn start() -> Service {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("gatewayd-revocation".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(rt) => {
                    let _ = tx.send(Some(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the revocation runtime");
                    let _ = tx.send(None);
                }
            }
        });
        let handle = spawned.ok().and_then(|_| rx.recv().ok().flatten()).unwrap_or_else(|| {
            // Without its own thread the service shares whatever runtime exists; fetches still
            // have deadlines. Building a runtime on this thread cannot fail where the other did
            // not, so this is the last resort before giving up.
            tokio::runtime::Handle::try_current().unwrap_or_else(|_| {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
                let h = rt.handle().clone();
                std::mem::forget(rt);
                h
            })
        });
        Service {
            handle,
            ocsp: Mutex::default(),
            crls: Mutex::default(),
            epoch: AtomicU64::new(0),
            metrics: OnceLock::new(),
            readiness: OnceLock::new(),
            sources: Sources::default(),
        }
    }

    /// Registers the metrics and where /readyz details go (once, at daemon start).
    pub fn attach(&self, registry: &mut Registry, readiness: Arc<Readiness>) {
        let _ = self.metrics.set(RevocationMetrics::register(registry));
        let _ = self.readiness.set(readiness);
    }

    pub fn metrics(&self) -> Option<&RevocationMetrics> {
        self.metrics.get().map(|m| &**m)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(f);
    }

    fn report(&self, kind: &'static str, url: &str, error: Option<&str>) {
        self.sources.report(self.metrics(), self.readiness.get().map(|r| &**r), kind, url, error);
    }

    /// One OCSP exchange (no cache): fetch, verify, count (`source` is the metric label).
    pub async fn ask(
        &'static self,
        source: &'static str,
        url: &str,
        query: &Query,
        timeout: Duration,
        default_validity: i64,
    ) -> Result<Answer, String> {
        let fetched = fetch(url, Some(&query.request), timeout).await;
        let result = match fetched {
            Ok(body) => query.verify(&body, now(), default_validity).map_err(|e| (invalid_kind(&e), e.to_string())),
            Err(e) => Err((fetch_kind(&e), e.to_string())),
        };
        match &result {
            Ok(_) => {
                self.metrics().inspect(|m| m.fetch(source, "ok"));
                self.report("ocsp", url, None);
            }
            Err((kind, e)) => {
                self.metrics().inspect(|m| m.fetch(source, kind));
                self.report("ocsp", url, Some(e));
            }
        }
        result.map_err(|(_, e)| e)
    }

    /// The cached answer about `query`'s certificate, refreshed in the background when due;
    /// without one, a fetch waited for at most `timeout`.
    pub async fn ocsp(
        &'static self,
        url: &str,
        query: &Query,
        timeout: Duration,
        max_age: i64,
    ) -> Result<Answer, String> {
        let pending = {
            let mut cache = self.ocsp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let t = now();
            let entry =
                cache.entry(query.request.clone()).or_insert(OcspEntry { answer: None, refresh_at: 0, pending: None });
            let current = entry.answer.as_ref().filter(|a| a.expires > t).cloned();
            if entry.pending.is_none() && (current.is_none() || entry.refresh_at <= t) {
                entry.pending = Some(self.start_ocsp(url.to_owned(), query.clone(), timeout, max_age));
            }
            if let Some(answer) = current {
                return Ok(answer);
            }
            entry.pending.clone()
        };
        match pending {
            Some(p) => {
                tokio::time::timeout(timeout, p).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
            }
            None => Err("no answer".into()),
        }
    }

    /// The cached answer only (per request on an established connection: never waits); starts
    /// a refresh when one is due.
    pub fn ocsp_cached(&'static self, url: &str, query: &Query, timeout: Duration, max_age: i64) -> Option<Answer> {
        let mut cache = self.ocsp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = now();
        let entry = cache.get_mut(&query.request)?;
        if entry.pending.is_none() && entry.refresh_at <= t {
            entry.pending = Some(self.start_ocsp(url.to_owned(), query.clone(), timeout, max_age));
        }
        entry.answer.as_ref().filter(|a| a.expires > t).cloned()
    }

    fn start_ocsp(&'static self, url: String, query: Query, timeout: Duration, max_age: i64) -> Pending<Answer> {
        let key = query.request.clone();
        let task = self.handle.spawn(async move {
            let result = self.ask("ocsp", &url, &query, timeout.max(Duration::from_secs(5)), max_age).await;
            let mut cache = self.ocsp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(entry) = cache.get_mut(&key) {
                entry.pending = None;
                let t = now();
                match &result {
                    Ok(a) => {
                        let was_revoked =
                            entry.answer.as_ref().is_some_and(|old| matches!(old.status, super::Status::Revoked(_)));
                        if matches!(a.status, super::Status::Revoked(_)) && !was_revoked {
                            self.epoch.fetch_add(1, Ordering::AcqRel);
                        }
                        entry.answer = Some(a.clone());
                        entry.refresh_at = refresh_time(t, a.this_update, a.expires, max_age);
                    }
                    // Retry soon, keeping a still-valid answer meanwhile.
                    Err(_) => entry.refresh_at = t + retry_after(max_age),
                }
            }
            result
        });
        async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }.boxed().shared()
    }

    /// The CRL of distribution point `url` (verified against `cas`), from the cache, the state
    /// directory, or a fetch waited for at most `timeout`.
    pub async fn crl(
        &'static self,
        url: &str,
        cas: &Arc<Vec<Vec<u8>>>,
        timeout: Duration,
        max_age: i64,
    ) -> Result<Arc<Crl>, String> {
        let pending = {
            let mut cache = self.crls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let t = now();
            let entry = cache.entry(url.to_owned()).or_insert_with(|| CrlEntry {
                crl: crl::restore(url, cas, t).map(Arc::new),
                refresh_at: 0,
                pending: None,
            });
            let current = entry.crl.as_ref().filter(|c| c.next_update > t).cloned();
            if entry.pending.is_none() && (current.is_none() || entry.refresh_at <= t) {
                entry.pending = Some(self.start_crl(url.to_owned(), cas.clone(), max_age));
            }
            if let Some(c) = current {
                return Ok(c);
            }
            entry.pending.clone()
        };
        match pending {
            Some(p) => {
                tokio::time::timeout(timeout, p).await.unwrap_or_else(|_| Err(format!("no CRL within {timeout:?}")))
            }
            None => Err("no CRL".into()),
        }
    }

    pub fn crl_cached(&'static self, url: &str, cas: &Arc<Vec<Vec<u8>>>, max_age: i64) -> Option<Arc<Crl>> {
        let mut cache = self.crls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = now();
        let entry = cache.get_mut(url)?;
        if entry.pending.is_none() && entry.refresh_at <= t {
            entry.pending = Some(self.start_crl(url.to_owned(), cas.clone(), max_age));
        }
        entry.crl.as_ref().filter(|c| c.next_update > t).cloned()
    }

    fn start_crl(&'static self, url: String, cas: Arc<Vec<Vec<u8>>>, max_age: i64) -> Pending<Arc<Crl>> {
        let task = self.handle.spawn(async move {
            let fetched = fetch(&url, None, Duration::from_secs(10)).await;
            let result = match fetched {
                Ok(body) => crl::verify(&body, &cas, now()).map_err(|e| ("invalid", e)),
                Err(e) => Err((fetch_kind(&e), e.to_string())),
            };
            match &result {
                Ok(_) => {
                    self.metrics().inspect(|m| m.fetch("crl", "ok"));
                    self.report("crl", &url, None);
                }
                Err((kind, e)) => {
                    self.metrics().inspect(|m| m.fetch("crl", kind));
                    self.report("crl", &url, Some(e));
                }
            }
            let result = result.map(Arc::new).map_err(|(_, e)| e);
            let mut cache = self.crls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(entry) = cache.get_mut(&url) {
                entry.pending = None;
                let t = now();
                match &result {
                    Ok(c) => {
                        let newer = entry.crl.as_ref().is_none_or(|old| old.der != c.der);
                        if newer {
                            crl::persist(&url, c);
                            self.epoch.fetch_add(1, Ordering::AcqRel);
                        }
                        entry.crl = Some(c.clone());
                        entry.refresh_at = refresh_time(t, c.this_update, c.next_update, max_age);
                    }
                    Err(_) => entry.refresh_at = t + retry_after(max_age),
                }
            }
            result
        });
        async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }.boxed().shared()
    }
}

/// Half way to nextUpdate, at most `max_age` after now, at least a second from now.
pub fn refresh_time(now: i64, this_update: i64, expires: i64, max_age: i64) -> i64 {
    let half = this_update + (expires - this_update).max(0) / 2;
    half.min(now + max_age).max(now + 1)
}

/// After a failed fetch: try again soon, not in a tight loop.
fn retry_after(max_age: i64) -> i64 {
    max_age.clamp(1, 30)
}

fn fetch_kind(e: &FetchError) -> &'static str {
    match e {
        FetchError::Timeout(_) => "timeout",
        FetchError::Status(_) | FetchError::Http(_) => "http_error",
        FetchError::Url(_) | FetchError::Connect(..) => "unreachable",
    }
}

fn invalid_kind(_: &OcspError) -> &'static str {
    "invalid"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_half_way_bounded_by_max_age() {
        assert_eq!(refresh_time(1000, 1000, 2000, 3600), 1500);
        assert_eq!(refresh_time(1000, 1000, 2000, 60), 1060);
        assert_eq!(refresh_time(1000, 1000, 1000, 60), 1001);
    }
}
