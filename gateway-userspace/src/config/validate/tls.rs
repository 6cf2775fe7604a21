//! Validation of TLS settings: listener certificates and client authentication, upstream TLS,
//! consumers and their certificate credentials, and routes' client-certificate requirements.
//! Material is read here, so a missing or broken file is a located config error (and a reload
//! with one changes nothing).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::ServerName;

use super::{Validator, root};
use crate::{
    config::schema::{ClientCertCredential, FileConfig, ListenerTlsSection, ServiceSection},
    consumer::{CertMatch, Consumers},
    tls::{
        CertStore, ClientAuth, ClientCertRequirement, ClientTrust, ServerCert, ServerTlsSpec, UpstreamTlsSpec,
        certified_key, load_certs, load_crls, load_key, load_roots,
        ocsp::staple_source,
        parse_sha256,
        revocation::{Revocation, crl_files},
    },
};

impl Validator<'_> {
    /// A path from the file, relative to the config file's directory.
    pub(super) fn file_path(&self, raw: &str) -> PathBuf {
        let p = Path::new(raw);
        if p.is_absolute() || self.file.starts_with('<') {
            return p.to_owned();
        }
        Path::new(self.file).parent().map_or_else(|| p.to_owned(), |dir| dir.join(p))
    }

    pub(super) fn listener_tls(&mut self, f: &FileConfig) -> BTreeMap<Arc<str>, Arc<ServerTlsSpec>> {
        let mut out = BTreeMap::new();
        for (i, l) in f.listeners.iter().enumerate() {
            if let Some(t) = &l.tls
                && let Some(spec) = self.server_tls(t, i, l.http2)
            {
                out.insert(Arc::from(l.name.as_str()), Arc::new(spec));
            }
        }
        out
    }

    fn server_tls(&mut self, t: &ListenerTlsSection, i: usize, h2: bool) -> Option<ServerTlsSpec> {
        let at = || root("listeners").index(i).key("tls");
        if t.certificates.is_empty() && t.acme.is_none() {
            self.problem(at().key("certificates"), "at least one certificate is required (or `acme`)");
            return None;
        }
        let before = self.problems.len();
        let acme = t.acme.as_ref().and_then(|a| match a.validate(|raw| self.file_path(raw)) {
            Ok(spec) => Some(spec),
            Err(problems) => {
                for (key, reason) in problems {
                    self.problem(at().key("acme").key(key), reason);
                }
                None
            }
        });
        let mut certs = Vec::new();
        let mut default = None;
        for (j, c) in t.certificates.iter().enumerate() {
            let cat = || at().key("certificates").index(j);
            let (cert_path, key_path) = (self.file_path(&c.cert), self.file_path(&c.key));
            let (key, facts) = match certified_key(&cert_path, &key_path) {
                Ok(x) => x,
                Err(reason) => {
                    let key_problem = reason.starts_with(&key_path.display().to_string()) && cert_path != key_path;
                    self.problem(cat().key(if key_problem { "key" } else { "cert" }), reason);
                    continue;
                }
            };
            if facts.not_after < now_secs() {
                tracing::warn!(file = %cert_path.display(), name = facts.display_name(), "server certificate has expired; clients will refuse it");
            }
            let names: Vec<String> = if c.names.is_empty() {
                facts.dns_names.clone()
            } else {
                let mut names = Vec::new();
                for (k, n) in c.names.iter().enumerate() {
                    match sni_name(n) {
                        Ok(n) => names.push(n),
                        Err(reason) => self.problem(cat().key("names").index(k), reason),
                    }
                }
                names
            };
            if names.is_empty() && !c.default && t.certificates.len() > 1 {
                self.problem(
                    cat(),
                    format!(
                        "{} has no DNS names, so SNI never selects it: set `names`, or make it the `default`",
                        cert_path.display()
                    ),
                );
            }
            if c.default {
                if default.is_some() {
                    self.problem(cat().key("default"), "only one certificate can be the default");
                }
                default = Some(certs.len());
            }
            let file = c.ocsp_response_file.as_deref().map(|f| self.file_path(f));
            let stapling = match staple_source(&key.cert, c.ocsp_stapling, file.as_deref()) {
                Ok(s) => s,
                Err(reason) => {
                    let key = if file.is_some() { "ocsp_response_file" } else { "cert" };
                    self.problem(cat().key(key), reason);
                    None
                }
            };
            certs.push(ServerCert { key: Arc::new(key), facts, names, file: cert_path, stapling });
        }
        let client_trust = self.client_trust(t, i);
        if self.problems.len() > before {
            return None;
        }
        Some(ServerTlsSpec {
            certs: Arc::new(CertStore::new(certs, default.unwrap_or(0), t.strict_sni)),
            min_version: t.min_version,
            client_auth: t.client_auth,
            client_trust,
            session_tickets: t.session_tickets,
            ktls: t.ktls,
            h2,
            acme,
        })
    }

    fn client_trust(&mut self, t: &ListenerTlsSection, i: usize) -> Option<ClientTrust> {
        let at = || root("listeners").index(i).key("tls");
        if t.client_auth == ClientAuth::None {
            if !t.client_ca.is_empty() || !t.client_crl.is_empty() || t.revocation.is_some() {
                self.problem(
                    at().key("client_auth"),
                    "client_ca/client_crl/revocation are set but client_auth is \"none\": set \"optional\" or \"required\"",
                );
            }
            return None;
        }
        if t.client_ca.is_empty() {
            self.problem(at().key("client_ca"), "client certificates need at least one CA bundle");
            return None;
        }
        let mut paths = Vec::new();
        for (j, raw) in t.client_ca.iter().enumerate() {
            let p = self.file_path(raw);
            if let Err(reason) = load_certs(&p) {
                self.problem(at().key("client_ca").index(j), reason);
            }
            paths.push(p);
        }
        let (roots, cas) = match load_roots(&paths) {
            Ok(x) => x,
            Err(reason) => {
                self.problem(at().key("client_ca"), reason);
                return None;
            }
        };
        let mut crls = Vec::new();
        for (j, raw) in t.client_crl.iter().enumerate() {
            match load_crls(&self.file_path(raw)) {
                Ok(c) => crls.extend(c),
                Err(reason) => self.problem(at().key("client_crl").index(j), reason),
            }
        }
        let mut revocation = None;
        if let Some(r) = &t.revocation {
            for (j, path) in crl_files(r, |f| self.file_path(f)).iter().enumerate() {
                match load_crls(path) {
                    Ok(c) => crls.extend(c),
                    Err(reason) => self.problem(at().key("revocation").key("crl_files").index(j), reason),
                }
            }
            let ca_ders = paths.iter().filter_map(|p| load_certs(p).ok()).flatten().collect();
            match Revocation::new(r, ca_ders) {
                Ok(x) => revocation = x,
                Err(reason) => self.problem(at().key("revocation"), reason),
            }
        }
        match ClientTrust::new(t.client_auth, t.client_cert_refusal, roots, cas, crls) {
            Ok(trust) => Some(ClientTrust { revocation, ..trust }),
            Err(reason) => {
                self.problem(at().key(if t.client_crl.is_empty() { "client_ca" } else { "client_crl" }), reason);
                None
            }
        }
    }

    /// `hosts`: (index in `targets`, as written) of the targets that resolved.
    pub(super) fn service_tls(
        &mut self,
        s: &ServiceSection,
        i: usize,
        hosts: &[(usize, &str)],
    ) -> Option<Arc<UpstreamTlsSpec>> {
        let at = || root("services").index(i);
        if !s.tls {
            let set = [
                ("tls_ca", !s.tls_ca.is_empty()),
                ("tls_server_name", s.tls_server_name.is_some()),
                ("tls_client_cert", s.tls_client_cert.is_some()),
                ("tls_client_key", s.tls_client_key.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                self.problem(at().key(key), "has no effect without `tls = true`");
            }
            return None;
        }
        let before = self.problems.len();
        let roots = if s.tls_ca.is_empty() {
            let native = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                self.problem(
                    at().key("tls"),
                    "no system CA certificates found (install ca-certificates, or set tls_ca)",
                );
            }
            roots
        } else {
            let paths: Vec<PathBuf> = s.tls_ca.iter().map(|p| self.file_path(p)).collect();
            match load_roots(&paths) {
                Ok((roots, _)) => roots,
                Err(reason) => {
                    self.problem(at().key("tls_ca"), reason);
                    rustls::RootCertStore::empty()
                }
            }
        };
        let client = match (&s.tls_client_cert, &s.tls_client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let (cert_path, key_path) = (self.file_path(cert), self.file_path(key));
                match (load_certs(&cert_path), load_key(&key_path)) {
                    (Ok(chain), Ok(key)) => Some((chain, key)),
                    (Err(reason), _) => {
                        self.problem(at().key("tls_client_cert"), reason);
                        None
                    }
                    (_, Err(reason)) => {
                        self.problem(at().key("tls_client_key"), reason);
                        None
                    }
                }
            }
            (Some(_), None) => {
                self.problem(at().key("tls_client_cert"), "needs tls_client_key");
                None
            }
            (None, Some(_)) => {
                self.problem(at().key("tls_client_key"), "needs tls_client_cert");
                None
            }
        };
        let mut names = Vec::new();
        match &s.tls_server_name {
            Some(n) => match ServerName::try_from(n.clone()) {
                Ok(name) => names = vec![name; hosts.len()],
                Err(_) => self.problem(at().key("tls_server_name"), format!("invalid server name {n:?}")),
            },
            None => {
                for (j, raw) in hosts {
                    let host =
                        raw.rsplit_once(':').map_or(*raw, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
                    match ServerName::try_from(host.to_owned()) {
                        Ok(name) => names.push(name),
                        Err(_) => self.problem(
                            at().key("targets").index(*j),
                            format!("{host:?} cannot be verified as a TLS server name; set tls_server_name"),
                        ),
                    }
                }
            }
        }
        if self.problems.len() > before {
            return None;
        }
        match UpstreamTlsSpec::new(roots, client, names) {
            Ok(spec) => Some(Arc::new(spec)),
            Err(reason) => {
                self.problem(at().key("tls_client_cert"), reason);
                None
            }
        }
    }

    pub(super) fn route_client_certs(
        &mut self,
        f: &FileConfig,
        listener_tls: &BTreeMap<Arc<str>, Arc<ServerTlsSpec>>,
        consumers: &Consumers,
    ) {
        let asks = listener_tls.values().any(|t| t.client_auth != ClientAuth::None)
            || f.listeners.iter().any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth != ClientAuth::None));
        for (i, r) in f.routes.iter().enumerate() {
            let at = || root("routes").index(i).key("client_cert");
            if r.client_cert == ClientCertRequirement::Optional {
                continue;
            }
            if !asks {
                self.problem(
                    at(),
                    "no listener asks for client certificates (set client_auth on a TLS listener), so this route would refuse every request",
                );
            }
            if r.client_cert == ClientCertRequirement::Consumer && !consumers.has_cert_credentials() {
                self.problem(at(), "no [[consumers]] entry has client_certs, so this route would refuse every request");
            }
        }
    }
}

pub(super) fn cert_match(c: &ClientCertCredential) -> Result<CertMatch, String> {
    match (&c.sha256, &c.subject_cn, &c.san) {
        (Some(h), None, None) => parse_sha256(h).map(CertMatch::Sha256),
        (None, Some(cn), None) if !cn.is_empty() => Ok(CertMatch::SubjectCn(cn.clone())),
        (None, None, Some(san)) => {
            let known = ["DNS:", "URI:", "email:", "IP:"].iter().any(|p| san.starts_with(p) && san.len() > p.len());
            if known {
                Ok(CertMatch::San(san.clone()))
            } else {
                Err(format!("invalid san {san:?}: write it as \"DNS:name\", \"URI:…\", \"email:…\" or \"IP:…\""))
            }
        }
        _ => Err("set exactly one of sha256, subject_cn or san".into()),
    }
}

/// A certificate's SNI name: a DNS name, or `*.` and a DNS name.
fn sni_name(raw: &str) -> Result<String, String> {
    let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let base = name.strip_prefix("*.").unwrap_or(&name);
    let ok = !base.is_empty()
        && base
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(name)
    } else {
        Err(format!("invalid server name {raw:?}: expected e.g. \"api.example.com\" or \"*.example.com\""))
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_names() {
        assert_eq!(sni_name("API.Example.com.").unwrap(), "api.example.com");
        assert_eq!(sni_name("*.example.com").unwrap(), "*.example.com");
        assert!(sni_name("a.*.example.com").is_err());
        assert!(sni_name("").is_err());
    }

    #[test]
    fn credentials_need_exactly_one_key() {
        let c = |sha: Option<&str>, cn: Option<&str>, san: Option<&str>| ClientCertCredential {
            sha256: sha.map(Into::into),
            subject_cn: cn.map(Into::into),
            san: san.map(Into::into),
        };
        assert!(cert_match(&c(None, Some("a"), None)).is_ok());
        assert!(cert_match(&c(None, None, Some("URI:spiffe://x"))).is_ok());
        assert!(cert_match(&c(None, None, Some("spiffe://x"))).is_err());
        assert!(cert_match(&c(None, Some("a"), Some("DNS:a"))).is_err());
        assert!(cert_match(&c(None, None, None)).is_err());
    }
}
