//! Online revocation of client certificates: OCSP (RFC 6960) and CRLs fetched from
//! distribution points, per listener, with an explicit mode for when neither can be reached.
//!
//! A certificate is checked right after the handshake. An answer already known (cached until
//! its nextUpdate) decides at once; otherwise the check waits at most `timeout` for a fetch, and
//! an unreachable, slow or invalid source is decided by `on_unavailable`. Every decision is
//! counted in `gateway_tls_revocation_checks_total{source,result}`. On an established
//! connection each request looks at the cache only (never waits): an answer learnt later that
//! says "revoked" refuses the next request, as a CRL reload does.

mod crl;
mod metrics;
pub(crate) mod service;

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

pub use metrics::RevocationMetrics;
pub use service::{Service, service};

use super::{
    ClientCert,
    client_auth::Failure,
    ocsp::protocol::{Query, Status, crl_distribution_points},
};

/// `[listeners.tls.revocation]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationSection {
    /// CRL files (PEM or DER), as `client_crl`: checked in the handshake. Default: none.
    #[serde(default)]
    pub crl_files: Vec<String>,
    /// CRLs to fetch: `"from_certificate"` (each certificate's CRL distribution points) or a
    /// list of `http://` URLs. Default: none.
    #[serde(default)]
    pub crl_urls: CrlUrls,
    /// `"off"`, `"prefer"` (ask the responder a certificate names; a certificate naming none
    /// is left to CRLs) or `"require"` (a certificate must have an OCSP answer). Default: "off".
    #[serde(default)]
    pub ocsp: OcspMode,
    /// When no source can say (unreachable, too slow, invalid answer): `"fail_open"` lets the
    /// certificate in, `"fail_closed"` refuses it. Default: "fail_closed".
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// How long a new connection waits for a fetch when nothing is cached. Default: "2s".
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest an answer is used before asking again (sooner: half way to its
    /// nextUpdate); also the life of an OCSP answer without nextUpdate. Default: "1h".
    #[serde(default = "default_cache", with = "humantime_serde")]
    pub cache: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_cache() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CrlUrls {
    #[default]
    #[serde(skip)]
    None,
    Keyword(CrlKeyword),
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CrlKeyword {
    FromCertificate,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OcspMode {
    #[default]
    Off,
    Prefer,
    Require,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    FailOpen,
    #[default]
    FailClosed,
}

/// A listener's validated online revocation settings.
#[derive(Debug)]
pub struct Revocation {
    crl_urls: CrlUrls,
    ocsp: OcspMode,
    on_unavailable: OnUnavailable,
    timeout: Duration,
    max_age: i64,
    /// The client CAs (DER): issuers for OCSP queries, signers of CRLs.
    cas: Arc<Vec<Vec<u8>>>,
}

/// What the sources say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Good {
        source: &'static str,
    },
    Revoked {
        source: &'static str,
    },
    /// The OCSP responder does not know the certificate.
    Unknown,
    /// No source could say.
    Unavailable(String),
    /// Nothing is configured to check it (OCSP "prefer", no responder named, no CRL URLs).
    Unchecked,
}

impl Revocation {
    /// `None` when the section asks for nothing online. `paths` resolves config paths.
    pub fn new(section: &RevocationSection, cas: Vec<CertificateDer<'static>>) -> Result<Option<Revocation>, String> {
        if let CrlUrls::List(urls) = &section.crl_urls {
            if let Some(bad) = urls.iter().find(|u| !u.starts_with("http://")) {
                return Err(format!(
                    "crl_urls: {bad:?} is not an http:// URL (CRLs are signed; fetch them over plain HTTP)"
                ));
            }
            if urls.is_empty() {
                return Err("crl_urls: empty list (leave it out, or name URLs)".into());
            }
        }
        if section.timeout.is_zero() || section.cache.as_secs() == 0 {
            return Err("timeout and cache must be positive (cache at least 1s)".into());
        }
        if section.crl_urls == CrlUrls::None && section.ocsp == OcspMode::Off {
            return Ok(None);
        }
        Ok(Some(Revocation {
            crl_urls: section.crl_urls.clone(),
            ocsp: section.ocsp,
            on_unavailable: section.on_unavailable,
            timeout: section.timeout,
            max_age: section.cache.as_secs() as i64,
            cas: Arc::new(cas.into_iter().map(|c| c.to_vec()).collect()),
        }))
    }

    /// The certificate's issuer: the next certificate of the chain, or a configured CA.
    fn issuer<'a>(&'a self, chain: &'a [CertificateDer<'static>]) -> Option<&'a [u8]> {
        let (_, leaf) = X509Certificate::from_der(chain.first()?).ok()?;
        let issuer = leaf.issuer().as_raw();
        let named = |der: &&[u8]| X509Certificate::from_der(der).is_ok_and(|(_, c)| c.subject().as_raw() == issuer);
        chain.iter().skip(1).map(|c| c.as_ref()).find(named).or_else(|| self.cas.iter().map(Vec::as_slice).find(named))
    }

    fn crl_urls(&self, leaf: &[u8]) -> Vec<String> {
        match &self.crl_urls {
            CrlUrls::None => Vec::new(),
            CrlUrls::List(urls) => urls.clone(),
            CrlUrls::Keyword(CrlKeyword::FromCertificate) => X509Certificate::from_der(leaf)
                .map(|(_, c)| crl_distribution_points(&c).into_iter().filter(|u| u.starts_with("http://")).collect())
                .unwrap_or_default(),
        }
    }

    /// Asks the sources (waiting at most `timeout` per source without a cached answer).
    pub async fn check(&self, chain: &[CertificateDer<'static>]) -> Verdict {
        let Some(leaf) = chain.first() else { return Verdict::Unavailable("no certificate".into()) };
        let Some(issuer) = self.issuer(chain) else {
            return Verdict::Unavailable("the issuer of the certificate is not at hand".into());
        };
        let query = match Query::new(leaf, issuer) {
            Ok(q) => q,
            Err(e) => return Verdict::Unavailable(e.to_string()),
        };
        let svc = service();
        let mut why = Vec::new();
        if self.ocsp != OcspMode::Off {
            match &query.url {
                Some(url) => match svc.ocsp(url, &query, self.timeout, self.max_age).await {
                    Ok(a) => return ocsp_verdict(a.status),
                    Err(e) => why.push(format!("OCSP {url}: {e}")),
                },
                None if self.ocsp == OcspMode::Require => {
                    why.push("the certificate names no OCSP responder".into());
                }
                None => {}
            }
        }
        let urls = self.crl_urls(leaf);
        let serial = crl::trim_serial(X509Certificate::from_der(leaf).map(|(_, c)| c.raw_serial()).unwrap_or_default());
        let issuer_name =
            X509Certificate::from_der(issuer).map(|(_, c)| c.subject().as_raw().to_vec()).unwrap_or_default();
        for url in &urls {
            match svc.crl(url, &self.cas, self.timeout, self.max_age).await {
                Ok(c) if c.issuer == issuer_name => {
                    return if c.revoked.contains(&serial) {
                        Verdict::Revoked { source: "crl" }
                    } else {
                        Verdict::Good { source: "crl" }
                    };
                }
                Ok(_) => why.push(format!("CRL {url}: issued by another CA")),
                Err(e) => why.push(format!("CRL {url}: {e}")),
            }
        }
        if why.is_empty() { Verdict::Unchecked } else { Verdict::Unavailable(why.join("; ")) }
    }

    /// What the per-request check needs from a chain: parsed and hashed once (per connection
    /// and config generation, see `tls::reverify`), not on every request. `None`: the chain
    /// cannot be looked up (no issuer at hand, unparseable), so no cached answer can refuse it.
    pub fn lookup(&self, chain: &[CertificateDer<'static>]) -> Option<Lookup> {
        let (leaf, issuer) = (chain.first()?, self.issuer(chain)?);
        let query = Query::new(leaf, issuer).ok()?;
        let serial = crl::trim_serial(X509Certificate::from_der(leaf).map(|(_, c)| c.raw_serial()).unwrap_or_default());
        Some(Lookup { query, serial, crl_urls: self.crl_urls(leaf) })
    }

    /// What the cache says now about `lookup`'s certificate (never waits; refreshes in the
    /// background when due): a certificate learnt to be revoked since the connection was checked.
    pub fn revoked_now(&self, lookup: &Lookup) -> bool {
        let svc = service();
        if self.ocsp != OcspMode::Off
            && let Some(url) = &lookup.query.url
            && let Some(a) = svc.ocsp_cached(url, &lookup.query, self.timeout, self.max_age)
        {
            return matches!(a.status, Status::Revoked(_));
        }
        lookup
            .crl_urls
            .iter()
            .filter_map(|u| svc.crl_cached(u, &self.cas, self.max_age))
            .any(|c| c.revoked.contains(&lookup.serial))
    }

    /// The handshake's decision: `Err` refuses the certificate (as `revoked` or
    /// `revocation_unknown`), counted either way.
    pub async fn screen(&self, chain: &[CertificateDer<'static>]) -> Result<(), Failure> {
        let verdict = self.check(chain).await;
        let metrics = service().metrics();
        let count = |source, result| metrics.inspect(|m| m.check(source, result));
        match verdict {
            Verdict::Good { source } => {
                count(source, "good");
                Ok(())
            }
            Verdict::Unchecked => {
                count("none", "good");
                Ok(())
            }
            Verdict::Revoked { source } => {
                count(source, "revoked");
                Err(Failure { result: "revoked", detail: format!("the client certificate is revoked ({source})") })
            }
            Verdict::Unknown => {
                count("ocsp", "unknown");
                Err(Failure {
                    result: "revocation_unknown",
                    detail: "the OCSP responder does not know the client certificate (status unknown)".into(),
                })
            }
            Verdict::Unavailable(why) => match self.on_unavailable {
                OnUnavailable::FailOpen => {
                    count(self.source_label(), "fail_open");
                    tracing::debug!(reason = %why, "revocation status unavailable; let in (on_unavailable = fail_open)");
                    Ok(())
                }
                OnUnavailable::FailClosed => {
                    count(self.source_label(), "fail_closed");
                    Err(Failure {
                        result: "revocation_unknown",
                        detail: format!("revocation status unavailable (on_unavailable = fail_closed): {why}"),
                    })
                }
            },
        }
    }

    fn source_label(&self) -> &'static str {
        if self.ocsp != OcspMode::Off { "ocsp" } else { "crl" }
    }
}

fn ocsp_verdict(status: Status) -> Verdict {
    match status {
        Status::Good => Verdict::Good { source: "ocsp" },
        Status::Revoked(_) => Verdict::Revoked { source: "ocsp" },
        Status::Unknown => Verdict::Unknown,
    }
}

/// A certificate's keys into the revocation caches (see `Revocation::lookup`).
pub struct Lookup {
    query: Query,
    /// The serial as CRLs list it.
    serial: Vec<u8>,
    crl_urls: Vec<String>,
}

/// After the handshake: a verified client certificate is checked online when the listener
/// asks for it.
pub async fn screen_client_cert(
    revocation: Option<&Revocation>,
    verified: Result<Option<ClientCert>, Failure>,
) -> Result<Option<ClientCert>, Failure> {
    match (revocation, verified) {
        (Some(r), Ok(Some(cert))) => r.screen(&cert.chain).await.map(|()| Some(cert)),
        (_, other) => other,
    }
}

/// Paths of `crl_files`, for the config validator.
pub fn crl_files(section: &RevocationSection, resolve: impl Fn(&str) -> PathBuf) -> Vec<PathBuf> {
    section.crl_files.iter().map(|f| resolve(f)).collect()
}
