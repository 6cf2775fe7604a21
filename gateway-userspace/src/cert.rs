//! What gatewayd reads from an X.509 certificate (subject, SANs, serial, fingerprint, expiry):
//! for SNI, identity headers, consumer mapping, the audit log and expiry metrics. A leaf module:
//! the TLS feature, the consumer model and the connection facts all read certificates.

use std::fmt::Write as _;

use rustls::pki_types::CertificateDer;
use x509_parser::{
    certificate::X509Certificate,
    extensions::GeneralName,
    objects::{oid_registry, oid2abbrev},
    prelude::FromDer,
    x509::X509Name,
};

/// What gatewayd reads from a certificate: for SNI, identity headers, consumer mapping, the
/// audit log and expiry metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject distinguished name, RFC 4514 (`CN=client,O=Partner A`).
    pub subject: String,
    /// The subject's (last) common name.
    pub subject_cn: Option<String>,
    /// Issuer distinguished name, RFC 4514.
    pub issuer: String,
    /// Subject alternative names as `DNS:…`, `URI:…`, `email:…`, `IP:…`.
    pub sans: Vec<String>,
    /// DNS names (lower case), wildcards included (`*.example.com`).
    pub dns_names: Vec<String>,
    /// Serial number, upper-case hex without separators.
    pub serial: String,
    /// notAfter, seconds since the epoch.
    pub not_after: i64,
    /// SHA-256 of the DER certificate (what `cnf.x5t#S256` binds to, RFC 8705).
    pub sha256: [u8; 32],
}

impl CertFacts {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("invalid certificate: {e}"))?;
        let mut sans = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => {
                        sans.push(format!("DNS:{d}"));
                        dns_names.push(d.to_ascii_lowercase());
                    }
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    GeneralName::RFC822Name(m) => sans.push(format!("email:{m}")),
                    GeneralName::IPAddress(ip) => {
                        if let Some(ip) = ip_from_bytes(ip) {
                            sans.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        let subject_cn = cert.subject().iter_common_name().last().and_then(|a| a.as_str().ok()).map(str::to_owned);
        Ok(CertFacts {
            subject: rfc4514(cert.subject()),
            subject_cn,
            issuer: rfc4514(cert.issuer()),
            sans,
            dns_names,
            serial: hex_upper(cert.raw_serial()),
            not_after: cert.validity().not_after.timestamp(),
            sha256: sha256(der),
        })
    }

    /// The name a certificate is known by in logs and metrics: its first DNS name, else its CN.
    pub fn display_name(&self) -> &str {
        self.dns_names.first().map(String::as_str).or(self.subject_cn.as_deref()).unwrap_or(&self.subject)
    }

    /// Lower-case hex of the SHA-256 fingerprint.
    pub fn sha256_hex(&self) -> String {
        hex_lower(&self.sha256)
    }
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub fn hex_lower(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn hex_upper(bytes: &[u8]) -> String {
    // DER integers carry a leading zero byte when the high bit is set; it is not part of the serial.
    let trimmed = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    hex_lower(trimmed).to_ascii_uppercase()
}

/// Parses a SHA-256 fingerprint written as hex, with or without `:` separators, any case.
pub fn parse_sha256(raw: &str) -> Result<[u8; 32], String> {
    let hex: String = raw.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("invalid SHA-256 fingerprint {raw:?}: expected 64 hex digits (colons allowed)"));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// A distinguished name as RFC 4514 writes it: most specific RDN first, `,` between RDNs, `+`
/// inside one, special characters escaped, non-string values as `#hex`.
fn rfc4514(name: &X509Name<'_>) -> String {
    let registry = oid_registry();
    let mut out = String::new();
    for (i, rdn) in name.iter_rdn().collect::<Vec<_>>().into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match oid2abbrev(attr.attr_type(), registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_dn_value(&mut out, v),
                Err(_) => {
                    out.push('#');
                    out.push_str(&hex_lower(attr.as_slice()));
                }
            }
        }
    }
    out
}

fn escape_dn_value(out: &mut String, v: &str) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            let _ = write!(out, "\\{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_sha256(&hex).unwrap(), [0xab; 32]);
        assert_eq!(parse_sha256(&colons).unwrap(), [0xab; 32]);
        assert!(parse_sha256("abcd").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn dn_values_are_escaped() {
        let mut s = String::new();
        escape_dn_value(&mut s, " a,b+c ");
        assert_eq!(s, "\\ a\\,b\\+c\\ ");
    }

    #[test]
    fn facts_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["API.example.com".into(), "10.0.0.1".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Partner, Inc");
        params.distinguished_name.push(rcgen::DnType::CommonName, "client-a");
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x8f, 0x01]));
        let cert = params.self_signed(&key).unwrap();
        let facts = CertFacts::parse(cert.der()).unwrap();
        assert_eq!(facts.subject, "CN=client-a,O=Partner\\, Inc");
        assert_eq!(facts.subject_cn.as_deref(), Some("client-a"));
        assert_eq!(facts.dns_names, vec!["api.example.com"]);
        assert_eq!(facts.sans, vec!["DNS:API.example.com", "IP:10.0.0.1"]);
        assert_eq!(facts.serial, "8F01");
        assert_eq!(facts.sha256, sha256(cert.der()));
        assert_eq!(facts.display_name(), "api.example.com");
    }
}
