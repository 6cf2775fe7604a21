//! The state directory: the ACME account's credentials and each certificate with its key,
//! written whole (temp file, fsync, rename) with mode 0600 in a 0700 directory, so a crash
//! never leaves half a key and no other user reads one.
//!
//! Layout: `<state_dir>/account-<hash of directory>.json` and
//! `<state_dir>/<first domain>-<hash of directory and domains>/{cert.pem,key.pem}`.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    sign::CertifiedKey,
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use super::{AcmeError, AcmeSpec};
use crate::tls::material::provider;

/// A certificate gatewayd holds for a listener, ready to serve.
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    /// The chain (leaf first) and the key, PEM, as stored.
    pub chain_pem: String,
    pub key_pem: String,
    /// Validity of the leaf, seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The leaf's DNS names (lower case).
    pub names: Vec<String>,
}

/// Never the key: snapshots (and so these) may be printed with `{:?}`.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Parses a chain and key (PEM) and checks that they belong together.
    pub fn parse(chain_pem: String, key_pem: String) -> Result<Issued, AcmeError> {
        let bad = |why: String| AcmeError::Stored(why);
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("certificate PEM: {e}")))?;
        let leaf = chain.first().ok_or_else(|| bad("no certificate in the chain".to_owned()))?;
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| bad(format!("certificate: {e}")))?;
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let names = crate::tls::CertFacts::parse(leaf).map_err(bad)?.dns_names;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(format!("key PEM: {e}")))?;
        let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| bad(format!("key: {e}")))?;
        Ok(Issued { key: Arc::new(key), chain_pem, key_pem, not_before, not_after, names })
    }

    /// Covers every configured domain.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.names.contains(d))
    }

    /// When to renew without renewal information from the CA: at 2/3 of the lifetime (what
    /// Let's Encrypt recommends, and certbot and Caddy do).
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

/// The state directory of one listener's ACME certificate.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    cert_dir: PathBuf,
    account_file: PathBuf,
}

impl StateDir {
    pub fn new(spec: &AcmeSpec) -> StateDir {
        StateDir {
            root: spec.state_dir.clone(),
            cert_dir: spec.state_dir.join(spec.cert_id()),
            account_file: spec.state_dir.join(format!("{}.json", spec.account_id())),
        }
    }

    pub fn cert_file(&self) -> PathBuf {
        self.cert_dir.join("cert.pem")
    }

    pub fn key_file(&self) -> PathBuf {
        self.cert_dir.join("key.pem")
    }

    /// The stored certificate, if there is one that parses. A damaged one is reported and
    /// treated as absent (a new order replaces it).
    pub fn load_cert(&self) -> Option<Issued> {
        let chain = std::fs::read_to_string(self.cert_file()).ok()?;
        let key = match std::fs::read_to_string(self.key_file()) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(file = %self.key_file().display(), error = %e, "ACME certificate without a readable key; ordering anew");
                return None;
            }
        };
        Issued::parse(chain, key)
            .inspect_err(|e| tracing::warn!(dir = %self.cert_dir.display(), error = %e, "stored ACME certificate unusable; ordering anew"))
            .ok()
    }

    /// Key first, then certificate: a reader never pairs a new certificate with an old key.
    pub fn store_cert(&self, issued: &Issued) -> Result<(), AcmeError> {
        write_private(&self.root, &self.cert_dir, "key.pem", issued.key_pem.as_bytes())?;
        write_private(&self.root, &self.cert_dir, "cert.pem", issued.chain_pem.as_bytes())
    }

    pub fn load_account(&self) -> Option<String> {
        std::fs::read_to_string(&self.account_file).ok()
    }

    pub fn forget_account(&self) {
        if let Err(e) = std::fs::remove_file(&self.account_file) {
            tracing::warn!(file = %self.account_file.display(), error = %e, "cannot remove the stale ACME account");
        }
    }

    pub fn store_account(&self, json: &str) -> Result<(), AcmeError> {
        let name = self.account_file.file_name().and_then(|n| n.to_str()).unwrap_or("account.json");
        write_private(&self.root, &self.root, name, json.as_bytes())
    }
}

/// Writes `dir/name` with mode 0600 through a temp file and a rename.
fn write_private(root: &Path, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AcmeError> {
    let io = |what: &str, path: &Path, e: std::io::Error| AcmeError::State(format!("{what} {}: {e}", path.display()));
    for d in [root, dir] {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d).map_err(|e| io("cannot create", d, e))?;
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("cannot write", &tmp, e))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|e| io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| io("cannot rename into", &target, e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn files_are_private_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let spec = AcmeSpec {
            directory: "https://ca.test/dir".into(),
            contact: vec![],
            domains: vec!["a.test".into()],
            challenge: super::super::Challenge::Http01,
            state_dir: dir.path().join("acme"),
            directory_ca: None,
            retry_min: std::time::Duration::from_secs(1),
            retry_max: std::time::Duration::from_secs(2),
        };
        let state = StateDir::new(&spec);
        assert!(state.load_cert().is_none());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap().self_signed(&key).unwrap();
        let issued = Issued::parse(cert.pem(), key.serialize_pem()).unwrap();
        assert!(issued.covers(&spec.domains));
        assert!(!issued.covers(&["b.test".to_owned()]));
        state.store_cert(&issued).unwrap();
        state.store_account("{}").unwrap();
        for f in
            [state.cert_file(), state.key_file(), dir.path().join("acme").join(format!("{}.json", spec.account_id()))]
        {
            assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
        }
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"), "no key in Debug output");
        let back = state.load_cert().unwrap();
        assert_eq!(back.not_after, issued.not_after);
        assert!(back.renew_at() > back.not_before && back.renew_at() < back.not_after);
    }
}
