//! Client certificates: the verifier a listener uses (CA bundles, CRLs, none/optional/required),
//! and why a handshake failed, in the words of `gateway_tls_handshakes_total{result}`.

use std::{io, sync::Arc};

use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore,
    SignatureScheme,
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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
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
        let handshake_verifier: Arc<dyn ClientCertVerifier> = match refusal {
            ClientCertRefusal::Handshake => verifier.clone(),
            ClientCertRefusal::Status => Arc::new(DeferredChainCheck(verifier.clone())),
        };
        Ok(ClientTrust { verifier, handshake_verifier, refusal, cas })
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

/// The handshake side of a `Status` refusal: a certificate is asked for (with the CA names as
/// hints) but not demanded, the client must prove it holds the certificate's key (the handshake
/// signature is checked as usual), and the chain is accepted here to be verified right after
/// the handshake, where a failure can become an HTTP answer. Nothing trusts a certificate on
/// the strength of this verifier alone: `TlsInfo` only records a chain that `verify` passed.
#[derive(Debug)]
struct DeferredChainCheck(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for DeferredChainCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a handshake failed: the `result` label, and a sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub result: &'static str,
    pub detail: String,
}

/// Every `result` label value of `gateway_tls_handshakes_total`.
pub const RESULTS: &[&str] = &[
    "ok",
    "no_client_cert",
    "unknown_ca",
    "expired",
    "revoked",
    "bad_usage",
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
        CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => "bad_usage",
        _ => "other",
    }
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
            (TlsError::InvalidCertificate(CertificateError::UnknownRevocationStatus), "other"),
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
}
