//! Stapling: per server certificate a slot holding the current response, filled by a
//! background refresher (or from `ocsp_response_file`), and the certificate resolver that
//! hands rustls the stapled key while the response is current.

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use rustls::{
    pki_types::CertificateDer,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::protocol::{Answer, Query, Status};
use crate::tls::{
    revocation::service,
    store::{CertStore, Selection, ServerCert},
};

/// A response without nextUpdate is stapled for this long after its thisUpdate.
const DEFAULT_VALIDITY: i64 = 3600;

/// Where a certificate's staple comes from.
#[derive(Debug)]
pub enum StapleSource {
    /// Fetched from the responder the certificate names.
    Responder { url: String, query: Query },
    /// `ocsp_response_file`, read and verified when the config was loaded.
    File(Answer),
}

/// The staple source of a chain (leaf first, issuer second): `None` when stapling is off or
/// the certificate names no responder (a note is logged then). Errors are config errors.
pub fn staple_source(
    chain: &[CertificateDer<'static>],
    enabled: bool,
    file: Option<&Path>,
) -> Result<Option<StapleSource>, String> {
    let issuer = chain.get(1);
    if let Some(path) = file {
        let issuer = issuer.ok_or("ocsp_response_file needs the issuer certificate after the leaf in the cert file")?;
        let query = Query::new(&chain[0], issuer).map_err(|e| e.to_string())?;
        let der = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let answer =
            query.verify(&der, service::now(), DEFAULT_VALIDITY).map_err(|e| format!("{}: {e}", path.display()))?;
        if answer.status != Status::Good {
            return Err(format!("{}: the response says the certificate is {}", path.display(), answer.status.as_str()));
        }
        return Ok(Some(StapleSource::File(answer)));
    }
    if !enabled {
        return Ok(None);
    }
    let Some(issuer) = issuer else {
        return Ok(None);
    };
    let query = Query::new(&chain[0], issuer).map_err(|e| e.to_string())?;
    Ok(query.url.clone().map(|url| StapleSource::Responder { url, query }))
}

/// The current staple of one certificate.
struct Slot {
    stapled: ArcSwapOption<CertifiedKey>,
    /// nextUpdate of the stapled response (unix seconds).
    expires: AtomicI64,
    key: Arc<CertifiedKey>,
    name: String,
}

impl Slot {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        (service::now() < self.expires.load(Ordering::Acquire)).then(|| self.stapled.load_full()).flatten()
    }

    fn set(&self, answer: &Answer) {
        let mut key = (*self.key).clone();
        key.ocsp = Some(answer.der.clone());
        self.stapled.store(Some(Arc::new(key)));
        self.expires.store(answer.expires, Ordering::Release);
        service::service().metrics().inspect(|m| m.staple(&self.name, answer.expires, false));
    }

    fn clear(&self) {
        self.stapled.store(None);
        self.expires.store(0, Ordering::Release);
    }
}

/// Slots by certificate fingerprint: a reload that keeps a certificate keeps its staple and
/// its refresher; the last snapshot dropping a certificate ends its refresher.
fn slots() -> &'static Mutex<HashMap<[u8; 32], Weak<Slot>>> {
    static SLOTS: OnceLock<Mutex<HashMap<[u8; 32], Weak<Slot>>>> = OnceLock::new();
    SLOTS.get_or_init(Mutex::default)
}

fn slot_for(cert: &ServerCert, source: &StapleSource) -> Arc<Slot> {
    let mut all = slots().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    all.retain(|_, w| w.strong_count() > 0);
    let existing = all.get(&cert.facts.sha256).and_then(Weak::upgrade);
    let slot = existing.unwrap_or_else(|| {
        let slot = Arc::new(Slot {
            stapled: ArcSwapOption::empty(),
            expires: AtomicI64::new(0),
            key: cert.key.clone(),
            name: cert.facts.display_name().to_owned(),
        });
        all.insert(cert.facts.sha256, Arc::downgrade(&slot));
        if let StapleSource::Responder { url, query } = source {
            service::service().spawn(refresh(Arc::downgrade(&slot), url.clone(), query.clone()));
        }
        slot
    });
    if let StapleSource::File(answer) = source {
        slot.set(answer);
    }
    slot
}

/// Keeps a certificate's staple current while a snapshot uses the certificate.
async fn refresh(slot: Weak<Slot>, url: String, query: Query) {
    let svc = service::service();
    let mut backoff = Duration::from_secs(2);
    loop {
        let Some(s) = slot.upgrade() else { return };
        let wait = match svc.ask("staple", &url, &query, Duration::from_secs(10), DEFAULT_VALIDITY).await {
            Ok(answer) => {
                backoff = Duration::from_secs(2);
                match answer.status {
                    Status::Good => s.set(&answer),
                    Status::Revoked(at) => {
                        if s.expires.load(Ordering::Acquire) != -1 {
                            tracing::error!(certificate = %s.name, revoked_at = at, responder = %url,
                                "the OCSP responder says our server certificate is REVOKED: replace it; no longer stapling");
                        }
                        s.clear();
                        s.expires.store(-1, Ordering::Release);
                        svc.metrics().inspect(|m| m.staple(&s.name, 0, true));
                    }
                    Status::Unknown => {
                        tracing::warn!(certificate = %s.name, responder = %url,
                            "the OCSP responder does not know our server certificate; not stapling its answer");
                    }
                }
                let now = service::now();
                Duration::from_secs(
                    (service::refresh_time(now, answer.this_update, answer.expires, DEFAULT_VALIDITY) - now).max(1)
                        as u64,
                )
            }
            Err(_) => {
                // Logged once per outage by the service; the current staple serves until it
                // expires.
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(300));
                wait
            }
        };
        drop(s);
        tokio::time::sleep(wait).await;
    }
}

/// A listener's certificate resolver: SNI selection by the [`CertStore`], then the stapled
/// key when the certificate has a current staple.
#[derive(Debug)]
pub struct StaplingResolver {
    store: Arc<CertStore>,
    slots: Vec<Option<Arc<Slot>>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("name", &self.name).finish_non_exhaustive()
    }
}

impl StaplingResolver {
    pub fn new(store: Arc<CertStore>) -> StaplingResolver {
        let slots = store.certs().iter().map(|c| c.stapling.as_ref().map(|s| slot_for(c, s))).collect();
        StaplingResolver { store, slots }
    }

    fn key(&self, i: usize) -> Arc<CertifiedKey> {
        self.slots[i].as_ref().and_then(|s| s.current()).unwrap_or_else(|| self.store.certs()[i].key.clone())
    }
}

impl ResolvesServerCert for StaplingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.store.select(hello.server_name(), Some(hello.signature_schemes())) {
            Selection::Exact(i) | Selection::Wildcard(i) | Selection::Default(i) => Some(self.key(i)),
            Selection::Refused => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::material::{CertFacts, provider};

    #[test]
    fn an_expired_staple_is_not_served() {
        let key = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let ck = Arc::new(CertifiedKey::from_der(vec![c.der().clone()], der, &provider()).unwrap());
        let slot = Slot {
            stapled: ArcSwapOption::empty(),
            expires: AtomicI64::new(0),
            key: ck,
            name: CertFacts::parse(c.der()).unwrap().display_name().to_owned(),
        };
        let now = service::now();
        let answer = |expires| Answer { status: Status::Good, this_update: now - 10, expires, der: vec![1, 2, 3] };
        slot.set(&answer(now + 60));
        assert_eq!(slot.current().unwrap().ocsp.as_deref(), Some(&[1u8, 2, 3][..]));
        slot.set(&answer(now - 1));
        assert!(slot.current().is_none(), "a response past its nextUpdate must not be stapled");
    }
}
