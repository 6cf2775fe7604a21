//! Client certificates: the verifier a listener uses (CA bundles, CRLs, none/optional/required),
//! and why a handshake failed, in the words of `gateway_tls_handshakes_total{result}`.

use std::{io, sync::Arc};

use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    PeerMisbehaved, RootCertStore, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use serde::Deserialize;

use super::{material::CertFacts, store::NO_CERT_RESOLVED};

/// `client_auth` of a listener.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; a client without one is let in (routes may still require
    /// one). A certificate that is presented must verify.
    Optional,
    /// The handshake fails without a valid certificate.
    Required,
}

/// `client_cert_refusal` of a listener: how a client whose certificate is missing (on a
/// `required` listener) or does not verify is refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertRefusal {
    /// As nginx and Kong do: the handshake completes and every request on the connection is
    /// answered 400 with the reason (`No required SSL certificate was sent`, `The SSL
    /// certificate error: …`), then the connection closes. Nothing reaches an upstream.
    #[default]
    Status,
    /// The handshake fails with a TLS alert: the client sees only a TLS error.
    Handshake,
}

/// How a listener verifies client certificates.
#[derive(Debug)]
pub struct ClientTrust {
    /// Verifies chains: in the handshake (`Handshake` refusals) and after it.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// What rustls is given: `verifier` itself, or for `Status` refusals one that asks for a
    /// certificate, checks the client's proof of its key, and leaves the chain to
    /// [`ClientTrust::verify`] after the handshake.
    pub handshake_verifier: Arc<dyn ClientCertVerifier>,
    pub refusal: ClientCertRefusal,
    /// The CA certificates, for expiry metrics.
    pub cas: Vec<CertFacts>,
    /// Online revocation checks (OCSP, fetched CRLs), if configured.
    pub revocation: Option<super::revocation::Revocation>,
}

impl ClientTrust {
    /// With CRLs, the client certificate's revocation status must be known: a certificate whose
    /// issuer has no CRL here is refused, and so is one checked against a CRL past its
    /// nextUpdate. Only the end-entity certificate is checked (intermediates' CRLs come from
    /// the root's operator, and are rarely at hand).
    pub fn new(
        mode: ClientAuth,
        refusal: ClientCertRefusal,
        roots: RootCertStore,
        cas: Vec<CertFacts>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Self, String> {
        let has_crls = !crls.is_empty();
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::material::provider())
            .with_crls(crls)
            .only_check_end_entity_revocation();
        if has_crls {
            builder = builder.enforce_revocation_expiration();
        }
        if mode == ClientAuth::Optional {
            builder = builder.allow_unauthenticated();
        }
        let verifier = builder.build().map_err(|e| format!("cannot build the client certificate verifier: {e}"))?;
        let handshake_verifier: Arc<dyn ClientCertVerifier> =
            Arc::new(HandshakeVerifier { inner: verifier.clone(), defer_chain: refusal == ClientCertRefusal::Status });
        Ok(ClientTrust { verifier, handshake_verifier, refusal, cas, revocation: None })
    }

    /// Whether chains are checked after the handshake (and refused with a status).
    pub fn deferred(&self) -> bool {
        self.refusal == ClientCertRefusal::Status
    }

    /// Verifies a chain again (after a reload changed CAs or CRLs, or for a resumed session).
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), TlsError> {
        let Some((end_entity, intermediates)) = chain.split_first() else {
            return Err(TlsError::NoCertificatesPresented);
        };
        self.verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()).map(|_| ())
    }
}

/// What rustls is given. The client must prove it holds its certificate's key (the handshake
/// signature is checked as usual; a failure is reported as [`KeyMismatch`], not as the chain
/// problem webpki's error would suggest). For `Status` refusals (`defer_chain`) a certificate is
/// asked for (with the CA names as hints) but not demanded, and the chain is accepted here to be
/// verified right after the handshake, where a failure can become an HTTP answer. Nothing trusts
/// a certificate on the strength of a deferred check alone: `TlsInfo` only records a chain that
/// `verify` passed.
#[derive(Debug)]
struct HandshakeVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    defer_chain: bool,
}

impl ClientCertVerifier for HandshakeVerifier {
    fn offer_client_auth(&self) -> bool {
        self.defer_chain || self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.defer_chain && self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        if self.defer_chain {
            return Ok(ClientCertVerified::assertion());
        }
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss).map_err(key_proof_failed)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss).map_err(key_proof_failed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client's handshake signature (CertificateVerify) does not verify with its certificate's
/// public key: it does not hold the certificate's private key (a copied certificate, or a key
/// and certificate mixed up).
#[derive(Debug, thiserror::Error)]
#[error("the client's handshake signature does not match its certificate's public key (wrong private key)")]
pub struct KeyMismatch;

/// webpki reports a bad handshake signature as it reports a bad certificate signature; here it
/// can only be the former.
fn key_proof_failed(e: TlsError) -> TlsError {
    match e {
        TlsError::InvalidCertificate(
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. },
        ) => TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(KeyMismatch)))),
        e => e,
    }
}

/// Why a handshake failed: the `result` label, and a sentence for the log.
pub use crate::request::HandshakeRefusal as Failure;

/// Every `result` label value of `gateway_tls_handshakes_total`.
pub const RESULTS: &[&str] = &[
    "ok",
    "no_client_cert",
    "unknown_ca",
    "expired",
    "revoked",
    "revocation_unknown",
    "bad_usage",
    "key_mismatch",
    "bad_ca",
    "bad_chain",
    "bad_sni",
    "protocol",
    "peer_alert",
    "timeout",
    "other",
];

/// Maps a rustls error (from a failed handshake or a re-verification) to its result.
pub fn classify_tls(e: &TlsError) -> &'static str {
    match e {
        TlsError::NoCertificatesPresented => "no_client_cert",
        TlsError::InvalidCertificate(c) => classify_cert(c),
        TlsError::General(msg) if msg == NO_CERT_RESOLVED => "bad_sni",
        TlsError::AlertReceived(AlertDescription::UnrecognisedName) => "bad_sni",
        // A server name that is not a host name, e.g. `host:port` (Go's `hey` with an explicit
        // port sends that, RFC 6066 forbids it): rustls refuses it with `illegal_parameter`.
        TlsError::PeerMisbehaved(PeerMisbehaved::ServerNameMustContainOneHostName) => "bad_sni",
        TlsError::AlertReceived(_) => "peer_alert",
        TlsError::PeerIncompatible(_)
        | TlsError::PeerMisbehaved(_)
        | TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. }
        | TlsError::PeerSentOversizedRecord
        | TlsError::NoApplicationProtocol
        | TlsError::DecryptError => "protocol",
        _ => "other",
    }
}

fn classify_cert(c: &CertificateError) -> &'static str {
    match c {
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => "expired",
        CertificateError::Revoked => "revoked",
        CertificateError::UnknownRevocationStatus
        | CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => "revocation_unknown",
        CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => "bad_usage",
        CertificateError::Other(other) => classify_other(other),
        _ => "other",
    }
}

/// Errors rustls passes through as webpki's own (or ours).
fn classify_other(other: &OtherError) -> &'static str {
    if other.0.downcast_ref::<KeyMismatch>().is_some() {
        return "key_mismatch";
    }
    match other.0.downcast_ref::<webpki::Error>() {
        // basicConstraints: a CA certificate presented as the client's own, a non-CA
        // certificate issuing another, or a CA's path length exceeded.
        Some(
            webpki::Error::CaUsedAsEndEntity
            | webpki::Error::EndEntityUsedAsCa
            | webpki::Error::PathLenConstraintViolated,
        ) => "bad_ca",
        // A path to a trusted CA exists in principle, but none is acceptable: too long, too
        // many candidates, or outside a CA's name constraints.
        Some(
            webpki::Error::MaximumPathDepthExceeded
            | webpki::Error::MaximumPathBuildCallsExceeded
            | webpki::Error::NameConstraintViolation
            | webpki::Error::MaximumNameConstraintComparisonsExceeded
            | webpki::Error::MalformedNameConstraint,
        ) => "bad_chain",
        _ => "other",
    }
}

/// Results that are about the client's certificate (what partners ask operators about): logged
/// at info, where other handshake failures (scanners, old clients) are logged at debug.
pub fn is_client_cert_result(result: &str) -> bool {
    matches!(
        result,
        "no_client_cert"
            | "unknown_ca"
            | "expired"
            | "revoked"
            | "revocation_unknown"
            | "bad_usage"
            | "key_mismatch"
            | "bad_ca"
            | "bad_chain"
    )
}

/// Classifies the I/O error a failed handshake returned.
pub fn classify_io(e: &io::Error) -> Failure {
    if let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<TlsError>()) {
        return Failure { result: classify_tls(tls), detail: describe(tls) };
    }
    let result = match e.kind() {
        io::ErrorKind::InvalidData => "protocol",
        _ => "other",
    };
    Failure { result, detail: e.to_string() }
}

/// A log-friendly sentence for the failures users ask about most.
pub fn describe(e: &TlsError) -> String {
    match e {
        TlsError::NoCertificatesPresented => "the client sent no certificate".into(),
        TlsError::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "client certificate is not issued by a trusted CA".into()
        }
        TlsError::InvalidCertificate(CertificateError::UnknownRevocationStatus) => {
            "client certificate's revocation status is unknown (no CRL for its issuer)".into()
        }
        TlsError::InvalidCertificate(
            CertificateError::ExpiredRevocationList | CertificateError::ExpiredRevocationListContext { .. },
        ) => "the CRL for the client certificate's issuer is past its nextUpdate; refresh it".into(),
        TlsError::General(msg) if msg == NO_CERT_RESOLVED => "no certificate for the requested server name".into(),
        TlsError::InvalidCertificate(CertificateError::Other(other)) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => "the client certificate is a CA certificate".into(),
            Some(webpki::Error::EndEntityUsedAsCa) => {
                "an issuer in the client certificate's chain is not a CA (basicConstraints)".into()
            }
            Some(webpki::Error::PathLenConstraintViolated) => {
                "the client certificate's chain exceeds a CA's path length constraint".into()
            }
            Some(webpki::Error::MaximumPathDepthExceeded) => {
                "the client certificate's chain has more intermediates than accepted (6)".into()
            }
            Some(e) => format!("client certificate chain: {e}"),
            None => other.0.to_string(),
        },
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_precise() {
        let cases: Vec<(TlsError, &str)> = vec![
            (TlsError::NoCertificatesPresented, "no_client_cert"),
            (TlsError::InvalidCertificate(CertificateError::Expired), "expired"),
            (TlsError::InvalidCertificate(CertificateError::Revoked), "revoked"),
            (TlsError::InvalidCertificate(CertificateError::UnknownIssuer), "unknown_ca"),
            (TlsError::InvalidCertificate(CertificateError::InvalidPurpose), "bad_usage"),
            (TlsError::InvalidCertificate(CertificateError::UnknownRevocationStatus), "revocation_unknown"),
            (key_proof_failed(TlsError::InvalidCertificate(CertificateError::BadSignature)), "key_mismatch"),
            (TlsError::InvalidCertificate(CertificateError::BadSignature), "unknown_ca"),
            (webpki_error(webpki::Error::CaUsedAsEndEntity), "bad_ca"),
            (webpki_error(webpki::Error::EndEntityUsedAsCa), "bad_ca"),
            (webpki_error(webpki::Error::MaximumPathDepthExceeded), "bad_chain"),
            (TlsError::General(NO_CERT_RESOLVED.into()), "bad_sni"),
            (TlsError::PeerIncompatible(rustls::PeerIncompatible::SupportedVersionsExtensionRequired), "protocol"),
            (TlsError::AlertReceived(AlertDescription::BadCertificate), "peer_alert"),
        ];
        for (e, want) in cases {
            assert_eq!(classify_tls(&e), want, "{e:?}");
            assert!(RESULTS.contains(&want));
            let io = io::Error::new(io::ErrorKind::InvalidData, e);
            assert_eq!(classify_io(&io).result, want);
        }
        assert_eq!(classify_io(&io::Error::from(io::ErrorKind::UnexpectedEof)).result, "other");
    }

    /// As rustls passes webpki's errors it has no variant for.
    fn webpki_error(e: webpki::Error) -> TlsError {
        TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}
