//! CRLs fetched from distribution points: verified against the issuing CA (its name and its
//! signature), read into the serials they revoke, and kept in the state directory so a restart
//! while the distribution point is down still knows them (until their nextUpdate).

use std::{collections::HashSet, path::PathBuf};

use x509_parser::{certificate::X509Certificate, prelude::FromDer, revocation_list::CertificateRevocationList};

/// A verified CRL.
#[derive(Debug, Clone)]
pub struct Crl {
    /// DER subject of the CA that issued (and signed) it.
    pub issuer: Vec<u8>,
    /// Revoked serials, without leading zero bytes.
    pub revoked: HashSet<Vec<u8>>,
    pub this_update: i64,
    /// Past this the CRL no longer counts (a CRL without nextUpdate is refused).
    pub next_update: i64,
    pub der: Vec<u8>,
}

pub fn trim_serial(s: &[u8]) -> Vec<u8> {
    let mut s = s;
    while s.len() > 1 && s[0] == 0 {
        s = &s[1..];
    }
    s.to_vec()
}

/// Reads `der` (or PEM) and verifies it was signed by one of `cas` (DER certificates) and is
/// current at `now`. Errors are sentences for logs.
pub fn verify(bytes: &[u8], cas: &[Vec<u8>], now: i64) -> Result<Crl, String> {
    let der = if bytes.starts_with(b"-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(bytes).map_err(|e| format!("invalid PEM: {e}"))?;
        pem.contents
    } else {
        bytes.to_vec()
    };
    let (_, crl) = CertificateRevocationList::from_der(&der).map_err(|e| format!("not a CRL: {e}"))?;
    let issuer = crl.issuer().as_raw().to_vec();
    let signer = cas.iter().find_map(|ca| {
        let (_, ca) = X509Certificate::from_der(ca).ok()?;
        (ca.subject().as_raw() == issuer.as_slice() && crl.verify_signature(ca.public_key()).is_ok()).then_some(())
    });
    if signer.is_none() {
        return Err("the CRL is not signed by a configured client CA (issuer name or signature differ)".into());
    }
    let this_update = crl.last_update().timestamp();
    let next_update = crl.next_update().map(|t| t.timestamp()).ok_or("the CRL has no nextUpdate")?;
    if next_update <= now {
        return Err("the CRL is past its nextUpdate (stale)".into());
    }
    let revoked = crl.iter_revoked_certificates().map(|r| trim_serial(r.raw_serial())).collect();
    Ok(Crl { issuer, revoked, this_update, next_update, der: der.clone() })
}

/// Where a distribution point's last good CRL is kept.
pub fn state_file(url: &str) -> PathBuf {
    let dir = std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/gatewayd"));
    let name = crate::cert::hex_lower(&crate::cert::sha256(url.as_bytes())[..12]);
    dir.join("crls").join(format!("{name}.crl"))
}

/// Keeps the CRL for restarts; a failure is logged, not fatal (the CRL is still used).
pub fn persist(url: &str, crl: &Crl) {
    let path = state_file(url);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &crl.der)?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!(url, file = %path.display(), error = %e, "cannot keep the fetched CRL in the state directory");
    }
}

/// The CRL kept for `url`, if it still verifies and is current.
pub fn restore(url: &str, cas: &[Vec<u8>], now: i64) -> Option<Crl> {
    let bytes = std::fs::read(state_file(url)).ok()?;
    verify(&bytes, cas, now).ok()
}
