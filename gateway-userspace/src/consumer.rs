//! Consumers: the parties that call the gateway (partners, apps), each with a name, an id, and
//! lists of credentials by kind. A credential maps a request to its consumer; removing a
//! consumer (or one of its credentials) from the file and reloading offboards it.
//!
//! Today the credential kind is client certificates (by SHA-256 fingerprint, subject CN or a
//! SAN). API keys and JWT subjects join as further lists and indexes, looked up the same way.

use std::{collections::HashMap, sync::Arc};

use crate::cert::CertFacts;

/// A consumer as requests see it: cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: Arc<str>,
    /// Stable identifier for upstreams and logs (defaults to the name).
    pub id: Arc<str>,
}

/// One way a client certificate identifies a consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertMatch {
    /// SHA-256 of the DER certificate: this exact certificate (strongest; changes on renewal).
    Sha256([u8; 32]),
    /// Subject common name (case-sensitive), from any CA the listener trusts.
    SubjectCn(String),
    /// A subject alternative name written as one item of `X-Client-Cert-San` (`DNS:…`, `URI:…`,
    /// `email:…`, `IP:…`), from any CA the listener trusts.
    San(String),
}

/// All consumers and their credential indexes.
#[derive(Debug, Default)]
pub struct Consumers {
    list: Vec<Consumer>,
    by_cert: HashMap<CertMatch, usize>,
}

/// Two consumers claim the same credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateCredential {
    pub first: usize,
    pub second: usize,
}

impl Consumers {
    /// Adds a consumer with its certificate credentials; a credential another consumer already
    /// has is an error naming that consumer's index.
    pub fn add(&mut self, consumer: Consumer, certs: Vec<CertMatch>) -> Result<(), Vec<(usize, DuplicateCredential)>> {
        let index = self.list.len();
        let mut duplicates = Vec::new();
        for (j, m) in certs.iter().enumerate() {
            if let Some(&first) = self.by_cert.get(m) {
                duplicates.push((j, DuplicateCredential { first, second: index }));
            }
        }
        if !duplicates.is_empty() {
            return Err(duplicates);
        }
        for m in certs {
            self.by_cert.insert(m, index);
        }
        self.list.push(consumer);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether any consumer is identified by client certificates.
    pub fn has_cert_credentials(&self) -> bool {
        !self.by_cert.is_empty()
    }

    pub fn get(&self, index: usize) -> Option<&Consumer> {
        self.list.get(index)
    }

    /// The consumer a verified client certificate belongs to: by fingerprint first, then by
    /// SAN (in certificate order), then by subject CN.
    pub fn by_certificate(&self, facts: &CertFacts) -> Option<&Consumer> {
        if self.by_cert.is_empty() {
            return None;
        }
        let lookup = |m: CertMatch| self.by_cert.get(&m).map(|&i| &self.list[i]);
        lookup(CertMatch::Sha256(facts.sha256))
            .or_else(|| facts.sans.iter().find_map(|s| lookup(CertMatch::San(s.clone()))))
            .or_else(|| facts.subject_cn.as_ref().and_then(|cn| lookup(CertMatch::SubjectCn(cn.clone()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cn: &str, sans: &[&str], sha: u8) -> CertFacts {
        CertFacts {
            subject: format!("CN={cn}"),
            subject_cn: Some(cn.into()),
            issuer: "CN=ca".into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            dns_names: vec![],
            serial: "01".into(),
            not_after: 0,
            sha256: [sha; 32],
        }
    }

    fn consumer(name: &str) -> Consumer {
        Consumer { name: name.into(), id: name.into() }
    }

    #[test]
    fn lookup_order_is_fingerprint_san_cn() {
        let mut c = Consumers::default();
        c.add(consumer("by-cn"), vec![CertMatch::SubjectCn("client".into())]).unwrap();
        c.add(consumer("by-san"), vec![CertMatch::San("URI:spiffe://a/b".into())]).unwrap();
        c.add(consumer("by-sha"), vec![CertMatch::Sha256([7; 32])]).unwrap();
        let name = |f: &CertFacts| c.by_certificate(f).map(|x| x.name.to_string());
        assert_eq!(name(&facts("client", &[], 1)).as_deref(), Some("by-cn"));
        assert_eq!(name(&facts("client", &["URI:spiffe://a/b"], 1)).as_deref(), Some("by-san"));
        assert_eq!(name(&facts("client", &["URI:spiffe://a/b"], 7)).as_deref(), Some("by-sha"));
        assert_eq!(name(&facts("other", &[], 1)), None);
    }

    #[test]
    fn a_credential_belongs_to_one_consumer() {
        let mut c = Consumers::default();
        c.add(consumer("a"), vec![CertMatch::SubjectCn("x".into())]).unwrap();
        let err = c.add(consumer("b"), vec![CertMatch::San("DNS:y".into()), CertMatch::SubjectCn("x".into())]);
        assert_eq!(err, Err(vec![(1, DuplicateCredential { first: 0, second: 1 })]));
        assert_eq!(c.len(), 1);
    }
}
