//! Reading TLS material from files (PEM certificates, keys, CA bundles, CRLs); the facts read
//! from a certificate are `crate::cert`'s. Every error is a sentence naming the file, for
//! located config errors.

use std::{path::Path, sync::Arc};

use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};

use x509_parser::{certificate::X509Certificate, prelude::FromDer};

pub use crate::cert::{CertFacts, parse_sha256};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
