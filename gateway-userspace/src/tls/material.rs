//! Reading TLS material from files (PEM certificates, keys, CA bundles, CRLs) and the facts
//! gatewayd needs from a certificate (names, subject, serial, expiry, fingerprint).
//! Every error is a sentence naming the file, for located config errors.

use std::{fmt::Write as _, path::Path, sync::Arc};

use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use x509_parser::{
    certificate::X509Certificate,
    extensions::GeneralName,
    objects::{oid_registry, oid2abbrev},
    prelude::FromDer,
    x509::X509Name,
};

/// The process's crypto provider: rustls's default, aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider())).clone()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no \"BEGIN CERTIFICATE\" block found", path.display()));
    }
    for (i, c) in certs.iter().enumerate() {
        X509Certificate::from_der(c)
            .map_err(|e| format!("{}: certificate #{} is not a valid X.509 certificate: {e}", path.display(), i + 1))?;
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{}: no private key found (expected a \"BEGIN PRIVATE KEY\" block)", path.display())
        }
        e => format!("{}: invalid private key PEM: {e}", path.display()),
    })
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert_path: &Path, key_path: &Path) -> Result<(CertifiedKey, CertFacts), String> {
    let chain = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let facts = CertFacts::parse(&chain[0])
        .map_err(|e| format!("{}: cannot read the certificate: {e}", cert_path.display()))?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} does not match the certificate in {} (wrong key file?)",
            key_path.display(),
            cert_path.display()
        ),
        e => format!("{}: unsupported private key: {e}", key_path.display()),
    })?;
    Ok((ck, facts))
}

/// Trust anchors from CA bundle files, with the facts of each CA (for expiry metrics).
pub fn load_roots(paths: &[impl AsRef<Path>]) -> Result<(RootCertStore, Vec<CertFacts>), String> {
    let mut roots = RootCertStore::empty();
    let mut facts = Vec::new();
    for path in paths {
        let path = path.as_ref();
        for cert in load_certs(path)? {
            facts.push(CertFacts::parse(&cert).map_err(|e| format!("{}: {e}", path.display()))?);
            roots.add(cert).map_err(|e| format!("{}: not usable as a trust anchor: {e}", path.display()))?;
        }
    }
    Ok((roots, facts))
}

/// Certificate revocation lists from a file, PEM (`BEGIN X509 CRL`) or DER.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = read(path)?;
    if bytes.starts_with(b"0") {
        // DER: an ASN.1 SEQUENCE.
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if crls.is_empty() {
        return Err(format!("{}: no \"BEGIN X509 CRL\" block found", path.display()));
    }
    Ok(crls)
}

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
    fn every_supported_key_type_loads_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let algs: [(&str, rcgen::KeyPair); 4] = [
            ("p256", rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()),
            ("p384", rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()),
            ("ed25519", rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()),
            ("rsa", rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap()),
        ];
        for (name, key) in &algs {
            let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")]).unwrap().self_signed(key).unwrap();
            std::fs::write(dir.path().join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
            let (_, facts) =
                certified_key(&dir.path().join(format!("{name}.crt")), &dir.path().join(format!("{name}.key")))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(facts.dns_names, vec![format!("{name}.test")]);
        }
        let err = certified_key(&dir.path().join("p256.crt"), &dir.path().join("p384.key")).unwrap_err();
        assert!(err.contains("does not match the certificate"), "{err}");
        let err = certified_key(&dir.path().join("p256.key"), &dir.path().join("p256.key")).unwrap_err();
        assert!(err.contains("no \"BEGIN CERTIFICATE\" block"), "{err}");
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
