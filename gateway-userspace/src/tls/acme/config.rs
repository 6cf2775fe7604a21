//! `[listeners.tls] acme = { … }`: the schema (serde) and its validation into an [`AcmeSpec`].
//! The feature owns both; the config validator only calls [`AcmeSection::validate`] and places
//! the problems it returns under `listeners[i].tls.acme`.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// Where accounts and certificates are kept unless `state_dir` or `$STATE_DIRECTORY` says
/// otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gatewayd/acme";

/// `acme/` in systemd's `$STATE_DIRECTORY` (its first entry; `/var/lib/gatewayd` under the
/// packaged unit), else [`DEFAULT_STATE_DIR`].
fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).filter(|s| !s.is_empty()).map(PathBuf::from))
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |dir| dir.join("acme"))
}

/// The file's `acme` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`). Required.
    pub directory: String,
    /// Account contacts (`mailto:ops@example.com`). Default: none.
    #[serde(default)]
    pub contact: Vec<String>,
    /// The names the certificate is ordered for (DNS names, no wildcards: those need dns-01).
    /// Required, at least one.
    pub domains: Vec<String>,
    /// `"tls-alpn-01"` (answered by this TLS listener) or `"http-01"` (answered by the plain
    /// listeners on `/.well-known/acme-challenge/`). Default: `"tls-alpn-01"`.
    #[serde(default)]
    pub challenge: Challenge,
    /// Account key, certificate and key files (mode 0600). Default: `$STATE_DIRECTORY/acme`
    /// (systemd), else `/var/lib/gatewayd/acme`.
    pub state_dir: Option<String>,
    /// PEM root(s) to trust for the directory's own HTTPS (a private or test CA such as
    /// pebble's). Default: the system's roots.
    pub directory_ca: Option<String>,
    /// First delay after a failed order; doubles per failure up to `retry_max`. Default: 1m.
    #[serde(default = "default_retry_min", with = "humantime_serde")]
    pub retry_min: Duration,
    /// Default: 1h.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
}

fn default_retry_min() -> Duration {
    Duration::from_secs(60)
}

fn default_retry_max() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Challenge {
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    #[serde(rename = "http-01")]
    Http01,
}

impl Challenge {
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// A listener's validated ACME settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSpec {
    pub directory: String,
    pub contact: Vec<String>,
    /// Lower case, in the configured order.
    pub domains: Vec<String>,
    pub challenge: Challenge,
    pub state_dir: PathBuf,
    pub directory_ca: Option<PathBuf>,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

impl AcmeSection {
    /// The spec, or the problems as (key under `acme`, reason). `path` resolves a path from the
    /// file (relative to the config file's directory).
    pub fn validate(&self, path: impl Fn(&str) -> PathBuf) -> Result<AcmeSpec, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if !self.directory.starts_with("https://") {
            problems
                .push(("directory", format!("{:?} is not an https:// URL (RFC 8555 requires HTTPS)", self.directory)));
        } else if http::Uri::try_from(self.directory.as_str()).is_err() {
            problems.push(("directory", format!("{:?} is not a valid URL", self.directory)));
        }
        for c in &self.contact {
            if !c.starts_with("mailto:") {
                problems.push(("contact", format!("{c:?} must be a mailto: URL")));
            }
        }
        if self.domains.is_empty() {
            problems.push(("domains", "at least one domain is required".to_owned()));
        }
        let mut domains: Vec<String> = Vec::new();
        for d in &self.domains {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d.starts_with("*.") {
                problems
                    .push(("domains", format!("{d:?}: wildcard names need dns-01, which gatewayd does not answer")));
            } else if d.parse::<std::net::IpAddr>().is_ok() || rustls::pki_types::DnsName::try_from(d.as_str()).is_err()
            {
                problems.push(("domains", format!("{d:?} is not a DNS name")));
            } else if domains.contains(&d) {
                problems.push(("domains", format!("{d:?} is listed twice")));
            } else {
                domains.push(d);
            }
        }
        let directory_ca = self.directory_ca.as_deref().map(&path);
        if let Some(p) = &directory_ca
            && let Err(reason) = super::super::load_certs(p)
        {
            problems.push(("directory_ca", reason));
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            problems.push(("retry_min", "retry_min must be above zero and at most retry_max".to_owned()));
        }
        let state_dir = self.state_dir.as_deref().map_or_else(default_state_dir, &path);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(AcmeSpec {
            directory: self.directory.clone(),
            contact: self.contact.clone(),
            domains,
            challenge: self.challenge,
            state_dir,
            directory_ca,
            retry_min: self.retry_min,
            retry_max: self.retry_max,
        })
    }
}

impl AcmeSpec {
    /// Names this certificate's files and Redis keys: its first domain and a hash of the CA and
    /// all domains, so a changed domain list or CA orders anew instead of serving a certificate
    /// that does not cover it.
    pub fn cert_id(&self) -> String {
        let mut seed = self.directory.clone();
        for d in &self.domains {
            seed.push('\n');
            seed.push_str(d);
        }
        let hash = crate::cert::hex_lower(&crate::cert::sha256(seed.as_bytes()));
        format!("{}-{}", self.domains.first().map_or("cert", String::as_str), &hash[..12])
    }

    /// Names the account file: one account per CA directory.
    pub fn account_id(&self) -> String {
        let hash = crate::cert::hex_lower(&crate::cert::sha256(self.directory.as_bytes()));
        format!("account-{}", &hash[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(toml: &str) -> AcmeSection {
        toml::from_str(toml).unwrap()
    }

    #[test]
    fn defaults_and_problems() {
        let s = section("directory = \"https://ca.test/dir\"\ndomains = [\"A.example.com\"]");
        let spec = s.validate(|s| PathBuf::from(s)).unwrap();
        assert_eq!(spec.domains, ["a.example.com"]);
        assert_eq!(spec.challenge, Challenge::TlsAlpn01);
        assert_eq!(spec.state_dir, default_state_dir());
        let bad = section(
            "directory = \"http://ca.test/dir\"\ndomains = [\"*.example.com\", \"1.2.3.4\"]\ncontact = [\"ops@x\"]",
        );
        let keys: Vec<_> = bad.validate(|s| PathBuf::from(s)).unwrap_err().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["directory", "contact", "domains", "domains"]);
    }

    #[test]
    fn mistakes_are_located_in_the_file() {
        let text = "[[listeners]]\nname = \"tls\"\nbind = \"127.0.0.1:8443\"\n\n[listeners.tls]\n\
                    acme = { directory = \"https://ca.test/dir\", domains = [\"*.example.com\"] }\n\n\
                    [metrics]\nbind = \"127.0.0.1:9090\"\n";
        let problems = match crate::config::Config::load_str(text, "test.toml") {
            Err(crate::config::ConfigError::Invalid(p)) => p,
            other => panic!("expected problems, got {other:?}"),
        };
        let p = problems.iter().find(|p| p.key == "listeners[0].tls.acme.domains").expect("located");
        assert_eq!(p.line, 6, "{p}");
        assert!(p.reason.contains("dns-01"), "{p}");
        // Without `acme`, certificates are required.
        let bare = text.replace("acme = { directory = \"https://ca.test/dir\", domains = [\"*.example.com\"] }", "");
        match crate::config::Config::load_str(&bare, "test.toml") {
            Err(crate::config::ConfigError::Invalid(p)) => {
                assert!(p.iter().any(|p| p.key == "listeners[0].tls.certificates"), "{p:?}")
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn the_id_follows_domains_and_ca() {
        let a = section("directory = \"https://ca.test/dir\"\ndomains = [\"a.test\"]")
            .validate(|s| PathBuf::from(s))
            .unwrap();
        let b = section("directory = \"https://ca.test/dir\"\ndomains = [\"a.test\", \"b.test\"]")
            .validate(|s| PathBuf::from(s))
            .unwrap();
        assert_ne!(a.cert_id(), b.cert_id());
        assert!(a.cert_id().starts_with("a.test-"));
        assert_eq!(a.account_id(), b.account_id());
    }
}
