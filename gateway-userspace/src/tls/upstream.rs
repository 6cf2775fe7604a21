//! TLS towards upstreams: a rustls client config per service (its CAs, or the system's; the
//! client certificate gatewayd presents for upstream mTLS), the name each target is verified
//! against, and what went wrong when a handshake fails.

use std::{
    error::Error as _,
    hash::{Hash, Hasher},
    io,
    net::SocketAddr,
    sync::Arc,
};

use rustls::{
    AlertDescription, CertificateError, ClientConfig, Error as TlsError, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{CertFacts, TlsMetrics, provider};

/// A service's validated upstream TLS settings.
#[derive(Debug)]
pub struct UpstreamTlsSpec {
    pub config: Arc<ClientConfig>,
    /// Per target (indexed like the service's targets): the name sent as SNI and verified.
    pub names: Vec<ServerName<'static>>,
    /// The client certificate presented upstream (for expiry metrics).
    pub client_cert: Option<CertFacts>,
    /// Equal for equal settings and file contents, so pooled connections survive a reload that
    /// changed nothing; TLS and plain connections (and different TLS settings) never mix.
    pub pool_key: u64,
}

impl UpstreamTlsSpec {
    /// `roots`: the CA certificates to verify targets with; `client`: gatewayd's certificate
    /// chain and key for upstream mTLS.
    pub fn new(
        roots: RootCertStore,
        client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
        names: Vec<ServerName<'static>>,
    ) -> Result<Self, String> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for ta in roots.roots.iter() {
            ta.subject.as_ref().hash(&mut hasher);
            ta.subject_public_key_info.as_ref().hash(&mut hasher);
        }
        for n in &names {
            n.to_str().hash(&mut hasher);
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let (mut config, client_cert) = match client {
            Some((chain, key)) => {
                let facts = CertFacts::parse(&chain[0])?;
                facts.sha256.hash(&mut hasher);
                key.secret_der().hash(&mut hasher);
                let config = builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client certificate and key cannot be used: {e}"))?;
                (config, Some(facts))
            }
            None => (builder.with_no_client_auth(), None),
        };
        // The pool speaks HTTP/1.1 to upstreams.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTlsSpec { config: Arc::new(config), names, client_cert, pool_key: hasher.finish() | 1 })
    }
}

/// How the pool reaches one TLS target.
#[derive(Debug)]
pub struct TlsEndpoint {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
    pub pool_key: u64,
}

/// A service's upstream TLS in a snapshot: one endpoint per target, and where errors count.
#[derive(Debug)]
pub struct UpstreamTls {
    pub endpoints: Vec<Arc<TlsEndpoint>>,
    service: Arc<str>,
    metrics: Arc<TlsMetrics>,
}

impl UpstreamTls {
    pub fn new(spec: &UpstreamTlsSpec, service: Arc<str>, metrics: Arc<TlsMetrics>) -> Self {
        let endpoints = spec
            .names
            .iter()
            .map(|name| {
                Arc::new(TlsEndpoint { config: spec.config.clone(), name: name.clone(), pool_key: spec.pool_key })
            })
            .collect();
        UpstreamTls { endpoints, service, metrics }
    }

    /// Counts a handshake failure: `gateway_upstream_tls_errors_total{service,reason}`.
    pub fn count(&self, e: &UpstreamTlsError) {
        self.metrics.upstream_error(&self.service, e.reason);
    }
}

/// A failed TLS handshake with an upstream target.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {addr} failed ({reason}): {detail}")]
pub struct UpstreamTlsError {
    pub addr: SocketAddr,
    /// `unknown_ca`, `bad_name`, `expired`, `revoked`, `bad_cert`, `client_cert_required`,
    /// `client_cert_rejected`, `protocol`, `other`.
    pub reason: &'static str,
    pub detail: String,
}

impl UpstreamTlsError {
    fn from_tls(addr: SocketAddr, e: &TlsError) -> Self {
        let reason = match e {
            TlsError::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => "bad_name",
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => "expired",
                CertificateError::Revoked => "revoked",
                _ => "bad_cert",
            },
            TlsError::AlertReceived(AlertDescription::CertificateRequired) => "client_cert_required",
            TlsError::AlertReceived(
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied,
            ) => "client_cert_rejected",
            TlsError::AlertReceived(_)
            | TlsError::PeerIncompatible(_)
            | TlsError::PeerMisbehaved(_)
            | TlsError::InvalidMessage(_)
            | TlsError::InappropriateMessage { .. }
            | TlsError::InappropriateHandshakeMessage { .. } => "protocol",
            _ => "other",
        };
        UpstreamTlsError { addr, reason, detail: e.to_string() }
    }
}

/// The TLS error somewhere in an error's source chain (hyper → io → rustls), if any. In TLS
/// 1.3 an upstream that rejects our client certificate says so after our side of the handshake
/// is done, on the first read: this finds that alert in the request's error.
pub fn tls_error_in(addr: SocketAddr, e: &(dyn std::error::Error + 'static)) -> Option<UpstreamTlsError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<TlsError>() {
            return Some(UpstreamTlsError::from_tls(addr, tls));
        }
        if let Some(tls) = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<TlsError>()) {
            return Some(UpstreamTlsError::from_tls(addr, tls));
        }
        cur = err.source();
    }
    None
}

/// The TLS handshake on a connected socket.
pub async fn connect(
    stream: TcpStream,
    addr: SocketAddr,
    ep: &TlsEndpoint,
) -> Result<TlsStream<TcpStream>, UpstreamTlsError> {
    TlsConnector::from(ep.config.clone()).connect(ep.name.clone(), stream).await.map_err(|e| {
        tls_error_in(addr, &e).unwrap_or_else(|| {
            let reason = if e.kind() == io::ErrorKind::UnexpectedEof { "protocol" } else { "other" };
            let detail = e.source().map_or_else(|| e.to_string(), |s| s.to_string());
            UpstreamTlsError { addr, reason, detail }
        })
    })
}
