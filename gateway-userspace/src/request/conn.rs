//! Facts about the client connection a request arrived on: addresses, the worker it runs on,
//! the watchdog's state, and what the TLS handshake established.

use std::{
    any::Any,
    cell::{Cell, OnceCell, RefCell},
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::pki_types::CertificateDer;

use crate::{cert::CertFacts, metrics::WorkerMetrics};

mod wake;
pub use wake::ConnWake;

/// The HTTP version a connection speaks (ALPN, or the HTTP/2 preface on plain TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Facts about the client connection a request arrived on.
pub struct ConnInfo {
    /// The worker (thread) serving the connection: phases with per-worker state index by it.
    pub worker_id: usize,
    /// The worker's metric shards.
    pub metrics: Rc<WorkerMetrics>,
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// `"http"` or `"https"`.
    pub scheme: &'static str,
    /// Requests in flight on this connection (the idle watchdog reads it).
    pub active: Cell<u32>,
    /// When the last request finished (or the connection was accepted).
    pub last_active: Cell<Instant>,
    /// When the first byte of a not-yet-complete request head arrived.
    pub head_started: Cell<Option<Instant>>,
    /// Wakes the connection watchdog when a head starts or the last request ends, so its
    /// deadlines (slow header, park, idle) are exact. Only when the new deadline comes before
    /// the one its timer is armed for (`watchdog_timer`): otherwise the timer fires first and the
    /// watchdog re-reads the state then, which spares a wake-up and two timer re-registrations
    /// per request on a busy keep-alive connection.
    pub watchdog_wake: ConnWake,
    /// The watchdog's armed timer and how soon after a head start or an idle start its deadline
    /// can fall (set by the watchdog).
    pub watchdog_timer: WatchdogTimer,
    /// Set while an idle HTTP/1 connection is being parked (see `listener::conn`).
    pub park: Cell<bool>,
    /// Set (with `watchdog_wake`) when the connection must end once its requests in flight are
    /// answered: HTTP/2 sends GOAWAY, so the client opens no more streams on it.
    pub close_requested: Cell<bool>,
    /// The TLS session (version, SNI, client certificate), on TLS listeners.
    pub tls: Option<TlsInfo>,
}

/// What the watchdog told the connection about its timer, so that events wake it only when it
/// must act sooner than it would anyway.
#[derive(Debug)]
pub struct WatchdogTimer {
    /// When the timer fires next (`None`: not known, every event wakes the watchdog).
    pub armed_at: Cell<Option<Instant>>,
    /// How long after a request head starts the watchdog may have to act (`None`: never).
    pub head_within: Cell<Option<Duration>>,
    /// How long after the last request ends the watchdog may have to act (park or idle).
    pub idle_within: Cell<Duration>,
}

impl Default for WatchdogTimer {
    /// Not armed yet: every event wakes the watchdog.
    fn default() -> Self {
        WatchdogTimer {
            armed_at: Cell::new(None),
            head_within: Cell::new(Some(Duration::ZERO)),
            idle_within: Cell::new(Duration::ZERO),
        }
    }
}

impl ConnInfo {
    /// A request head started arriving at `now` on an idle connection.
    pub fn note_head_started(&self, now: Instant) {
        self.head_started.set(Some(now));
        if let Some(within) = self.watchdog_timer.head_within.get() {
            self.wake_watchdog_before(now + within);
        }
    }

    /// The last request in flight ended at `now`.
    pub fn note_idle(&self, now: Instant) {
        self.last_active.set(now);
        self.wake_watchdog_before(now + self.watchdog_timer.idle_within.get());
    }

    fn wake_watchdog_before(&self, deadline: Instant) {
        if self.watchdog_timer.armed_at.get().is_none_or(|armed| deadline < armed) {
            self.watchdog_wake.notify();
        }
    }
}

/// What the TLS handshake of a client connection established. Read by phases through
/// `ConnInfo::tls` (identity, certificate-bound tokens).
#[derive(Debug)]
pub struct TlsInfo {
    /// `"TLSv1.3"` or `"TLSv1.2"`.
    pub version: &'static str,
    /// IANA-style suite name, e.g. `"TLS13_AES_128_GCM_SHA256"`.
    pub cipher: &'static str,
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<Box<str>>,
    /// The ALPN protocol agreed on (`"h2"`, `"http/1.1"`), if any.
    pub alpn: Option<&'static str>,
    pub resumed: bool,
    /// The session runs in the kernel (kTLS).
    pub ktls: bool,
    /// The certificate the client presented and that verified at handshake time. Boxed, as is
    /// `refusal`: most connections have neither, and every connection keeps its `TlsInfo` for
    /// its whole life (inline they made `ConnInfo` 608 bytes instead of ~300).
    pub client_cert: Option<Box<ClientCert>>,
    /// Set when the listener refuses this client with a status (`client_cert_refusal =
    /// "status"`): why its certificate is missing or does not verify. Every request on the
    /// connection is answered 400.
    pub refusal: Option<Box<HandshakeRefusal>>,
}

/// Why a handshake failed (or a certificate was refused): the `result` label of
/// `gateway_tls_handshakes_total`, and a sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRefusal {
    pub result: &'static str,
    pub detail: String,
}

/// A client certificate chain (end entity first), lazily its facts, and the last verdict on it
/// (the TLS feature re-verifies it once per config generation).
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    facts: OnceCell<Option<CertFacts>>,
    /// (config generation, why it failed) of the last check; `None`: verified.
    checked: Cell<(u64, Option<&'static str>)>,
    /// (config generation, value) a feature derived from the chain for that generation (the
    /// TLS feature's revocation lookup keys), so requests do not re-parse the certificate.
    derived: RefCell<Option<(u64, Rc<dyn Any>)>>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert").field("facts", &self.facts()).finish_non_exhaustive()
    }
}

impl ClientCert {
    /// A chain that verified on the config of `generation`.
    pub fn verified(chain: Vec<CertificateDer<'static>>, generation: u64) -> Self {
        ClientCert {
            chain,
            facts: OnceCell::new(),
            checked: Cell::new((generation, None)),
            derived: RefCell::new(None),
        }
    }

    /// Subject, SANs, fingerprint, serial (parsed on first use).
    pub fn facts(&self) -> Option<&CertFacts> {
        self.facts.get_or_init(|| self.chain.first().and_then(|c| CertFacts::parse(c).ok())).as_ref()
    }

    /// SHA-256 of the end-entity certificate (RFC 8705 `x5t#S256` is its base64url).
    pub fn sha256(&self) -> Option<[u8; 32]> {
        self.facts().map(|f| f.sha256)
    }

    /// The last verdict: (generation it was reached on, failure reason or `None`).
    pub fn checked(&self) -> (u64, Option<&'static str>) {
        self.checked.get()
    }

    pub fn set_checked(&self, generation: u64, failure: Option<&'static str>) {
        self.checked.set((generation, failure));
    }

    /// What `derive` makes of the chain on the config of `generation`: made once per
    /// connection and generation (a reload may change what it depends on), then shared.
    pub fn derived<T: 'static>(&self, generation: u64, derive: impl FnOnce() -> T) -> Rc<T> {
        if let Some((g, value)) = &*self.derived.borrow()
            && *g == generation
            && let Ok(value) = value.clone().downcast::<T>()
        {
            return value;
        }
        let value = Rc::new(derive());
        *self.derived.borrow_mut() = Some((generation, value.clone()));
        value
    }
}

/// The client certificate status of a request, in the vocabulary of nginx's
/// `$ssl_client_verify` as Kong/Cloudflare report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyStatus {
    /// No certificate was presented.
    #[default]
    Absent,
    /// A certificate was presented but does not verify: refused at the handshake, or (now)
    /// revoked by a reload.
    Failed,
    /// A certificate was presented and verified.
    Success,
}

impl VerifyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyStatus::Absent => "absent",
            VerifyStatus::Failed => "failed",
            VerifyStatus::Success => "success",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The revocation lookup keys are made once per connection and config generation, not per
    /// request (a reload may change the CAs or CRL URLs they depend on, so it makes them again).
    #[test]
    fn derived_values_are_made_once_per_generation() {
        let cert = ClientCert::verified(vec![CertificateDer::from(vec![1, 2, 3])], 7);
        let made = Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            made.get()
        };
        assert_eq!(*cert.derived(7, make), 1);
        assert_eq!(*cert.derived(7, make), 1);
        assert_eq!(*cert.derived(7, make), 1);
        assert_eq!(made.get(), 1, "re-derived within a generation");
        assert_eq!(*cert.derived(8, make), 2);
        assert_eq!(*cert.derived(8, make), 2);
        assert_eq!(made.get(), 2);
    }
}
