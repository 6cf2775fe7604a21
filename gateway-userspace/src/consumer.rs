//! Consumers: the parties that call the gateway (partners, apps), each with a name, an id, and
//! lists of credentials by kind. A credential maps a request to its consumer; removing a
//! consumer (or one of its credentials) from the file and reloading offboards it.
//!
//! This is the one consumer model: client certificates (by SHA-256 fingerprint, subject CN or a
//! SAN) and API keys (by digest, see `api_key`) resolve to the same [`Consumer`] value, which
//! carries what identifying it asserts upstream and grants ([`Profile`]).

mod api_key;

use std::{collections::HashMap, sync::Arc};

use http::HeaderValue;

pub use api_key::{ApiKeyDigest, ApiKeys};

use crate::cert::CertFacts;

/// A consumer as requests see it: cheap to clone, the same value whichever credential
/// identified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: Arc<str>,
    /// Stable identifier for upstreams and logs (defaults to the name).
    pub id: Arc<str>,
    pub profile: Arc<Profile>,
}

/// What identifying a consumer asserts upstream and grants. Its names are interned as
/// `'static` header values (see `auth::interned`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// `X-Consumer-Username`.
    pub name: Named,
    /// `X-Consumer-Id`, and the user id of requests authenticated with its API keys.
    pub id: Named,
    /// Scopes its credentials grant.
    pub scopes: Vec<Arc<str>>,
    pub scope_header: Option<HeaderValue>,
    pub workspace: Option<Named>,
}

/// An identity value, as text (audit, `RequestCtx`) and as the header value sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub text: Arc<str>,
    pub header: HeaderValue,
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
    by_api_key: ApiKeys,
}

/// Two consumers (or one, twice) claim the same credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateCredential {
    pub first: usize,
    pub second: usize,
}

/// Which of a consumer's credentials another consumer already has (by its position in the list
/// handed to [`Consumers::add`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialAt {
    Cert(usize),
    ApiKey(usize),
}

impl Consumers {
    /// Adds a consumer with its credentials; a credential another consumer already has (or an
    /// API key listed twice) is an error naming the consumer that has it.
    pub fn add(
        &mut self,
        consumer: Consumer,
        certs: Vec<CertMatch>,
        api_keys: Vec<ApiKeyDigest>,
    ) -> Result<(), Vec<(CredentialAt, DuplicateCredential)>> {
        let index = self.list.len();
        let mut duplicates = Vec::new();
        for (j, m) in certs.iter().enumerate() {
            if let Some(&first) = self.by_cert.get(m) {
                duplicates.push((CredentialAt::Cert(j), DuplicateCredential { first, second: index }));
            }
        }
        let mut keys = ApiKeys::default();
        for (j, d) in api_keys.iter().enumerate() {
            let first = if keys.insert(*d, index) { self.by_api_key.owner(d) } else { Some(index) };
            if let Some(first) = first {
                duplicates.push((CredentialAt::ApiKey(j), DuplicateCredential { first, second: index }));
            }
        }
        if !duplicates.is_empty() {
            return Err(duplicates);
        }
        for m in certs {
            self.by_cert.insert(m, index);
        }
        for d in api_keys {
            self.by_api_key.insert(d, index);
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

    /// The consumer a presented API key belongs to (compared in constant time, see `api_key`).
    pub fn by_api_key(&self, presented: &str) -> Option<&Consumer> {
        self.by_api_key.find(presented).map(|i| &self.list[i])
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
        let named = Named { text: name.into(), header: HeaderValue::from_static("x") };
        let profile = Profile { name: named.clone(), id: named, scopes: vec![], scope_header: None, workspace: None };
        Consumer { name: name.into(), id: name.into(), profile: Arc::new(profile) }
    }

    #[test]
    fn lookup_order_is_fingerprint_san_cn() {
        let mut c = Consumers::default();
        c.add(consumer("by-cn"), vec![CertMatch::SubjectCn("client".into())], vec![]).unwrap();
        c.add(consumer("by-san"), vec![CertMatch::San("URI:spiffe://a/b".into())], vec![]).unwrap();
        c.add(consumer("by-sha"), vec![CertMatch::Sha256([7; 32])], vec![]).unwrap();
        let name = |f: &CertFacts| c.by_certificate(f).map(|x| x.name.to_string());
        assert_eq!(name(&facts("client", &[], 1)).as_deref(), Some("by-cn"));
        assert_eq!(name(&facts("client", &["URI:spiffe://a/b"], 1)).as_deref(), Some("by-san"));
        assert_eq!(name(&facts("client", &["URI:spiffe://a/b"], 7)).as_deref(), Some("by-sha"));
        assert_eq!(name(&facts("other", &[], 1)), None);
    }

    #[test]
    fn a_credential_belongs_to_one_consumer() {
        let mut c = Consumers::default();
        let key = |k: &str| ApiKeyDigest::of(k);
        c.add(consumer("a"), vec![CertMatch::SubjectCn("x".into())], vec![key("k1")]).unwrap();
        let certs = vec![CertMatch::San("DNS:y".into()), CertMatch::SubjectCn("x".into())];
        let err = c.add(consumer("b"), certs, vec![key("k2"), key("k1"), key("k2")]);
        let dup = |first| DuplicateCredential { first, second: 1 };
        let expected =
            vec![(CredentialAt::Cert(1), dup(0)), (CredentialAt::ApiKey(1), dup(0)), (CredentialAt::ApiKey(2), dup(1))];
        assert_eq!(err, Err(expected));
        assert_eq!(c.len(), 1);
        assert_eq!(c.by_api_key("k1").map(|x| &*x.name), Some("a"));
        assert_eq!(c.by_api_key("k2"), None, "a refused consumer's keys are not kept");
    }
}
