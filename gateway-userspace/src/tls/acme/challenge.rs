//! Answering challenges: http-01 on the plain listeners (`/.well-known/acme-challenge/<token>`,
//! ahead of every user route) and tls-alpn-01 (RFC 8737) on the TLS listener itself, through its
//! certificate resolver: a handshake that offers only the `acme-tls/1` protocol gets the
//! self-signed challenge certificate for its SNI name; every other handshake gets the served
//! certificate.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use rustls::{
    pki_types::PrivateKeyDer,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::{AcmeError, manager::AcmeCertificate};
use crate::tls::{CertStore, material::provider, store::Selection};

/// The ALPN protocol of tls-alpn-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where http-01 challenges are fetched.
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending http-01 answers of every listener: token → key authorization.
#[derive(Debug, Default)]
pub struct Http01Tokens(Mutex<HashMap<String, String>>);

impl Http01Tokens {
    pub fn insert(&self, token: String, key_authorization: String) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(token, key_authorization);
    }

    pub fn remove(&self, token: &str) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(token);
    }

    /// The answer for a request path, when it asks for a pending token.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(token).cloned()
    }
}

/// The tls-alpn-01 certificate for `domain`: self-signed, the domain as its only SAN, and the
/// critical `id-pe-acmeIdentifier` extension holding SHA-256 of the key authorization.
pub fn alpn_certificate(domain: &str, key_authorization_digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let fail = |e: rcgen::Error| AcmeError::Challenge(format!("tls-alpn-01 certificate for {domain}: {e}"));
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(key_authorization_digest)];
    let cert = params.self_signed(&key).map_err(fail)?;
    let der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| AcmeError::Challenge(format!("tls-alpn-01 key: {e}")))?;
    // Not `from_der`: its key check parses the certificate with webpki, which refuses the
    // critical acmeIdentifier extension that this certificate exists to carry.
    let signer = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| AcmeError::Challenge(format!("tls-alpn-01 key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer)))
}

/// A TLS listener's resolver when it has an ACME certificate: challenge certificates for
/// `acme-tls/1` handshakes; the configured certificates for the names they cover; else the
/// ACME certificate (it is the listener's default; with `strict_sni`, for its own domains only).
#[derive(Debug)]
pub struct AcmeResolver {
    pub acme: Arc<AcmeCertificate>,
    pub store: Arc<CertStore>,
}

impl ResolvesServerCert for AcmeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let alpn_only = hello.alpn().is_some_and(|mut p| p.next() == Some(ACME_TLS_ALPN) && p.next().is_none());
        if alpn_only {
            // RFC 8737 §3: answer with the challenge certificate or not at all.
            return hello.server_name().and_then(|name| self.acme.alpn_challenge(name));
        }
        let sni = hello.server_name();
        match self.store.select(sni, Some(hello.signature_schemes())) {
            Selection::Exact(i) | Selection::Wildcard(i) => return Some(self.store.certs()[i].key.clone()),
            // `strict_sni`: only the ACME certificate's own names get it.
            Selection::Refused if !sni.is_some_and(|n| self.acme.covers(n)) => return None,
            Selection::Refused | Selection::Default(_) => {}
        }
        self.acme.current().map(|c| c.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http01_answers_only_pending_tokens() {
        let tokens = Http01Tokens::default();
        tokens.insert("tok".into(), "tok.thumb".into());
        assert_eq!(tokens.answer("/.well-known/acme-challenge/tok").as_deref(), Some("tok.thumb"));
        assert_eq!(tokens.answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(tokens.answer("/tok"), None);
        tokens.remove("tok");
        assert_eq!(tokens.answer("/.well-known/acme-challenge/tok"), None);
    }

    #[test]
    fn the_alpn_certificate_carries_the_acme_identifier() {
        let ck = alpn_certificate("a.test", &[7; 32]).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&ck.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("id-pe-acmeIdentifier");
        assert!(ext.critical);
    }
}
