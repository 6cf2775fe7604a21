//! A listener's server certificates and SNI selection: exact names, then single-label
//! wildcards (`*.example.com` matches `a.example.com`, not `a.b.example.com` — what clients
//! accept), then the default certificate. Several certificates may share a name (an ECDSA and
//! an RSA one): the first the client can verify is chosen.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

use super::material::CertFacts;

/// One configured certificate.
#[derive(Debug)]
pub struct ServerCert {
    pub key: Arc<CertifiedKey>,
    pub facts: CertFacts,
    /// The names it is selected for (lower case; `*.example.com` for wildcards).
    pub names: Vec<String>,
    pub file: PathBuf,
    /// Where its OCSP staple comes from (`None`: not stapled).
    pub stapling: Option<super::ocsp::StapleSource>,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Exact(usize),
    Wildcard(usize),
    Default(usize),
    /// `strict_sni` and no certificate for the name (or no name at all).
    Refused,
}

#[derive(Debug)]
pub struct CertStore {
    certs: Vec<ServerCert>,
    exact: HashMap<String, Vec<usize>>,
    /// `example.com` → certificates for `*.example.com`.
    wildcard: HashMap<String, Vec<usize>>,
    default: usize,
    strict_sni: bool,
}

impl CertStore {
    /// `default`: index of the certificate served when no name matches (or none was sent).
    pub fn new(certs: Vec<ServerCert>, default: usize, strict_sni: bool) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, c) in certs.iter().enumerate() {
            for name in &c.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_default().push(i),
                    None => exact.entry(name.clone()).or_default().push(i),
                }
            }
        }
        CertStore { certs, exact, wildcard, default, strict_sni }
    }

    pub fn certs(&self) -> &[ServerCert] {
        &self.certs
    }

    /// The certificate for `sni` whose key can sign with one of `schemes` (any key if `None`).
    pub fn select(&self, sni: Option<&str>, schemes: Option<&[rustls::SignatureScheme]>) -> Selection {
        let usable = |i: &&usize| schemes.is_none_or(|s| self.certs[**i].key.key.choose_scheme(s).is_some());
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(&i) = self.exact.get(&name).and_then(|v| v.iter().find(usable)) {
                return Selection::Exact(i);
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(&i) = self.wildcard.get(parent).and_then(|v| v.iter().find(usable))
            {
                return Selection::Wildcard(i);
            }
        }
        if self.strict_sni { Selection::Refused } else { Selection::Default(self.default) }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.select(hello.server_name(), Some(hello.signature_schemes())) {
            Selection::Exact(i) | Selection::Wildcard(i) | Selection::Default(i) => Some(self.certs[i].key.clone()),
            // rustls answers with an alert; the handshake is counted as `bad_sni`.
            Selection::Refused => None,
        }
    }
}

/// The error text rustls reports when the resolver found nothing.
pub const NO_CERT_RESOLVED: &str = "no server certificate chain resolved";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::material::{CertFacts, provider};

    fn cert(names: &[&str]) -> ServerCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let c = params.self_signed(&key).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let ck = CertifiedKey::from_der(vec![c.der().clone()], der, &provider()).unwrap();
        ServerCert {
            key: Arc::new(ck),
            facts: CertFacts::parse(c.der()).unwrap(),
            names: names.iter().map(|s| s.to_ascii_lowercase()).collect(),
            file: PathBuf::new(),
            stapling: None,
        }
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let store = CertStore::new(
            vec![cert(&["default.test"]), cert(&["api.example.com"]), cert(&["*.example.com"])],
            0,
            false,
        );
        assert_eq!(store.select(Some("api.example.com"), None), Selection::Exact(1));
        assert_eq!(store.select(Some("API.Example.com."), None), Selection::Exact(1));
        assert_eq!(store.select(Some("www.example.com"), None), Selection::Wildcard(2));
        // A wildcard covers one label only.
        assert_eq!(store.select(Some("a.b.example.com"), None), Selection::Default(0));
        assert_eq!(store.select(Some("example.com"), None), Selection::Default(0));
        assert_eq!(store.select(None, None), Selection::Default(0));
    }

    #[test]
    fn strict_sni_refuses_unknown_and_missing_names() {
        let store = CertStore::new(vec![cert(&["a.test"])], 0, true);
        assert_eq!(store.select(Some("a.test"), None), Selection::Exact(0));
        assert_eq!(store.select(Some("b.test"), None), Selection::Refused);
        assert_eq!(store.select(None, None), Selection::Refused);
    }

    #[test]
    fn the_key_must_suit_the_client() {
        let store = CertStore::new(vec![cert(&["a.test"]), cert(&["a.test"])], 0, false);
        let ecdsa = [rustls::SignatureScheme::ECDSA_NISTP256_SHA256];
        assert_eq!(store.select(Some("a.test"), Some(&ecdsa)), Selection::Exact(0));
        let rsa_only = [rustls::SignatureScheme::RSA_PSS_SHA256];
        // Neither (P-256) key can sign for an RSA-only client: fall back to the default.
        assert_eq!(store.select(Some("a.test"), Some(&rsa_only)), Selection::Default(0));
    }
}
