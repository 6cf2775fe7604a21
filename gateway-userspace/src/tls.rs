//! TLS at the edge: termination with rustls (SNI certificate selection, TLS 1.3 always, TLS 1.2
//! opt-in, ALPN, rotating session tickets), client certificates (CA bundles, CRLs,
//! none/optional/required, precise failure reasons), kernel TLS offload after the handshake,
//! TLS (and mTLS) towards upstreams, handshake and certificate-expiry metrics, the per-route
//! client-certificate phase, and `gatewayd certs init`.
//!
//! Material is read and checked when the config is validated (a bad file fails the reload with
//! a located error and the old material keeps serving); each snapshot then builds one
//! `ServerConfig` per listener around long-lived parts (the session-ticket rotator, the session
//! cache, the kTLS decision), so resumption survives reloads and established connections keep
//! the session they negotiated.

pub mod acme;
pub mod certs;
mod client_auth;
mod handshake;
mod ktls;
mod material;
mod metrics;
pub mod ocsp;
mod phase;
pub mod revocation;
mod rustls_io;
mod store;
mod upstream;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use rustls::{
    ServerConfig,
    server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions},
};
use serde::Deserialize;

pub use client_auth::{
    ClientAuth, ClientCertRefusal, ClientTrust, Failure as HandshakeFailure, KeyMismatch, RESULTS as HANDSHAKE_RESULTS,
};
pub use handshake::{Accepted, TlsIo, TlsListener, accept};
pub use ktls::KtlsSupport;
pub use material::{CertFacts, certified_key, load_certs, load_crls, load_key, load_roots, parse_sha256, provider};
pub use metrics::{TlsMetrics, WorkerTlsMetrics};
pub use phase::{ClientCertError, ClientCertPhase, ClientCertRequirement, identity_headers};
pub use store::{CertStore, ServerCert};
pub use upstream::{
    TlsEndpoint, UpstreamTls, UpstreamTlsError, UpstreamTlsSpec, connect as connect_upstream, tls_error_in,
};

pub use crate::request::{ClientCert, TlsInfo, VerifyStatus};

/// The lowest TLS version a listener accepts. TLS 1.3 is always on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MinVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[default]
    #[serde(rename = "1.3")]
    Tls13,
}

/// A listener's validated TLS settings, with its material loaded.
#[derive(Debug)]
pub struct ServerTlsSpec {
    pub certs: Arc<CertStore>,
    pub min_version: MinVersion,
    pub client_auth: ClientAuth,
    /// Present unless `client_auth = "none"`.
    pub client_trust: Option<ClientTrust>,
    pub session_tickets: bool,
    /// Offload to the kernel after the handshake, where the kernel supports it.
    pub ktls: bool,
    /// Offer `h2` in ALPN (the listener's `http2`).
    pub h2: bool,
    /// The listener's certificate comes from an ACME CA (`acme = { … }`).
    pub acme: Option<acme::AcmeSpec>,
}

impl ServerTlsSpec {
    fn server_config(
        &self,
        sessions: &ListenerSessions,
        ktls: bool,
        acme: Option<Arc<acme::AcmeCertificate>>,
    ) -> Arc<ServerConfig> {
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3");
        let builder = match &self.client_trust {
            Some(trust) => builder.with_client_cert_verifier(trust.handshake_verifier.clone()),
            None => builder.with_no_client_auth(),
        };
        let tls_alpn = acme.as_ref().is_some_and(|a| a.spec.challenge == acme::Challenge::TlsAlpn01);
        let mut config = match acme {
            Some(acme) => builder.with_cert_resolver(Arc::new(acme::AcmeResolver { acme, store: self.certs.clone() })),
            // Stapling covers the configured certificates (not yet ACME ones).
            None => builder.with_cert_resolver(Arc::new(ocsp::StaplingResolver::new(self.certs.clone()))),
        };
        config.alpn_protocols =
            if self.h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
        if tls_alpn {
            // tls-alpn-01 validation handshakes offer only this; the handshake closes them.
            config.alpn_protocols.push(acme::ACME_TLS_ALPN.to_vec());
        }
        match &sessions.ticketer {
            Some(ticketer) if self.session_tickets => config.ticketer = ticketer.clone(),
            _ => config.send_tls13_tickets = 0,
        }
        config.session_storage = sessions.cache.clone();
        config.enable_secret_extraction = self.ktls && ktls;
        Arc::new(config)
    }
}

/// Where one listener's sessions resume: its own ticket keys and session cache. A ticket (or
/// session id) issued by one listener never resumes on another, nor on the same listener after
/// its `client_auth` changed: a resumed session skips the certificate request, so a session
/// without a certificate must not carry over to where one is required.
#[derive(Clone)]
struct ListenerSessions {
    /// The session-ticket key rotator (new keys every 6 hours, tickets accepted for 12); `None`
    /// if the system's random source failed (the listener then issues no tickets).
    ticketer: Option<Arc<dyn ProducesTickets>>,
    /// TLS 1.2 session ids.
    cache: Arc<dyn StoresServerSessions>,
}

impl ListenerSessions {
    fn new(listener: &str) -> ListenerSessions {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .inspect_err(|e| tracing::warn!(listener, error = %e, "cannot make session ticket keys; no tickets"))
            .ok();
        ListenerSessions { ticketer, cache: ServerSessionMemoryCache::new(SESSION_CACHE_SIZE) }
    }
}

/// Per listener name and `client_auth`.
type SessionsByListener = HashMap<(Arc<str>, ClientAuth), ListenerSessions>;

/// TLS parts that outlive snapshots: each listener's sessions (per `client_auth`), the kTLS
/// decision and the metrics.
#[derive(Clone)]
pub struct TlsParts {
    sessions: Arc<Mutex<SessionsByListener>>,
    pub ktls: Arc<KtlsSupport>,
    pub metrics: Arc<TlsMetrics>,
    /// ACME certificates and their renewal tasks.
    pub acme: Arc<acme::AcmeRegistry>,
}

/// TLS 1.2 clients without ticket support resume from this many cached sessions.
const SESSION_CACHE_SIZE: usize = 4096;

impl TlsParts {
    pub fn new(ktls: KtlsSupport, metrics: Arc<TlsMetrics>) -> Result<TlsParts, rustls::Error> {
        metrics.set_ktls_supported(ktls.supported());
        let acme = Arc::new(acme::AcmeRegistry::new(metrics.acme.clone()));
        Ok(TlsParts { sessions: Arc::default(), ktls: Arc::new(ktls), metrics, acme })
    }

    /// The sessions of each listener in `specs`, kept from earlier snapshots; those of removed
    /// listeners (or of a `client_auth` no longer configured) are dropped.
    fn sessions_for(&self, specs: &BTreeMap<Arc<str>, Arc<ServerTlsSpec>>) -> Vec<ListenerSessions> {
        let mut all = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|(name, auth), _| specs.get(name).is_some_and(|s| s.client_auth == *auth));
        specs
            .iter()
            .map(|(name, spec)| {
                all.entry((name.clone(), spec.client_auth)).or_insert_with(|| ListenerSessions::new(name)).clone()
            })
            .collect()
    }
}

impl std::fmt::Debug for TlsParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsParts").field("ktls", &self.ktls.supported()).finish_non_exhaustive()
    }
}

/// A listener's TLS for one snapshot.
#[derive(Debug)]
pub struct ServerTls {
    pub spec: Arc<ServerTlsSpec>,
    pub config: Arc<ServerConfig>,
    /// Offload this listener's connections (configured and supported).
    pub ktls: bool,
}

/// The TLS part of a snapshot: per listener name, its server TLS.
#[derive(Debug, Default)]
pub struct TlsRuntime {
    /// Hashed with `foldhash` (fixed seed), not SipHash: the keys are configured listener names,
    /// never a client's bytes, and the client-certificate phase looks one up per request.
    listeners: HashMap<Arc<str>, Arc<ServerTls>, foldhash::fast::FixedState>,
    parts: Option<TlsParts>,
}

impl TlsRuntime {
    /// `kv`: `[redis]`, through which ACME listeners share their certificates.
    pub fn build(
        specs: &BTreeMap<Arc<str>, Arc<ServerTlsSpec>>,
        parts: &TlsParts,
        kv: Option<&crate::kv::Kv>,
    ) -> TlsRuntime {
        let sessions = parts.sessions_for(specs);
        parts.acme.retain(|name| specs.get(name).is_some_and(|s| s.acme.is_some()));
        let listeners = specs
            .iter()
            .zip(sessions)
            .map(|((name, spec), sessions)| {
                let acme = spec.acme.as_ref().map(|a| parts.acme.certificate(name, a, kv));
                let server = ServerTls {
                    spec: spec.clone(),
                    config: spec.server_config(&sessions, parts.ktls.supported(), acme),
                    ktls: spec.ktls && parts.ktls.supported(),
                };
                (name.clone(), Arc::new(server))
            })
            .collect();
        TlsRuntime { listeners, parts: Some(parts.clone()) }
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ServerTls>> {
        self.listeners.get(name)
    }

    pub fn parts(&self) -> Option<&TlsParts> {
        self.parts.as_ref()
    }
}

/// The client certificate's status for a request on the config of `generation`, and why it
/// fails when it does: a reload that changed the listener's CAs or CRLs (a partner's
/// certificate revoked) re-verifies it once per connection, so established connections are
/// held to the new rules.
pub fn client_status(
    info: &TlsInfo,
    tls: &TlsRuntime,
    generation: u64,
    listener: &str,
) -> (VerifyStatus, Option<&'static str>) {
    let failure = client_failure(info, tls, generation, listener);
    let status = match failure {
        Some(_) => VerifyStatus::Failed,
        None if info.client_cert.is_some() => VerifyStatus::Success,
        None => VerifyStatus::Absent,
    };
    (status, failure)
}

/// Why a presented client certificate does not verify (a `gateway_tls_handshakes_total`
/// result: `revoked`, `unknown_ca`, …): refused at the handshake, or since a reload.
fn client_failure(info: &TlsInfo, tls: &TlsRuntime, generation: u64, listener: &str) -> Option<&'static str> {
    match (&info.client_cert, &info.refusal) {
        (Some(c), _) => reverify(c, tls, generation, listener),
        (None, Some(refused)) if refused.result != "no_client_cert" => Some(refused.result),
        (None, _) => None,
    }
}

/// What a client certificate's last verdict is keyed on: the config generation and the
/// revocation epoch (bumped when an online source learns of a revocation), so either change
/// re-checks it. The generation takes the low 40 bits; an epoch that wraps only costs a re-check.
pub fn check_stamp(generation: u64) -> u64 {
    (generation & ((1 << 40) - 1)) | (revocation::service().epoch() << 40)
}

fn reverify(cert: &ClientCert, tls: &TlsRuntime, generation: u64, listener: &str) -> Option<&'static str> {
    let stamp = check_stamp(generation);
    let (checked_on, failure) = cert.checked();
    let trust = tls.listener(listener).and_then(|s| s.spec.client_trust.as_ref());
    let failure = if checked_on == stamp {
        failure
    } else {
        match trust {
            Some(t) => match t.verify(&cert.chain) {
                Ok(()) => None,
                Err(e) => {
                    let reason = client_auth::classify_tls(&e);
                    tracing::info!(listener, reason, error = %client_auth::describe(&e),
                        "a client certificate accepted earlier no longer verifies after the reload");
                    Some(reason)
                }
            },
            // The listener no longer verifies client certificates: nothing vouches for it.
            None => Some("other"),
        }
    };
    // Online answers: the cache only, never a wait (this also starts a refresh that is due,
    // so a long-lived connection learns of a revocation).
    let failure = failure.or_else(|| {
        let revocation = trust?.revocation.as_ref()?;
        let lookup = cert.derived(generation, || revocation.lookup(&cert.chain));
        lookup.as_ref().as_ref().is_some_and(|l| revocation.revoked_now(l)).then(|| {
            tracing::info!(listener, "a client certificate was found revoked during its connection (OCSP/CRL)");
            "revoked"
        })
    });
    cert.set_checked(stamp, failure);
    failure
}
