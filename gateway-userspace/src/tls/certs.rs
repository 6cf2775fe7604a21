//! `gatewayd certs init`: a development PKI in one command — a CA, a server certificate and a
//! client certificate, named like the usual mTLS generator scripts (`ca.crt`/`ca.key`,
//! `server.crt`/`server.key`, `client.crt`/`client.key`, and `client.pem` with both), so the
//! quick start and partner tests need no openssl incantations.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

#[derive(Debug, Error)]
pub enum CertsError {
    #[error("cannot generate {what}: {source}")]
    Generate { what: &'static str, source: rcgen::Error },
    #[error("{path}: already exists (use --force to overwrite)")]
    Exists { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Key algorithm of the generated certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyType {
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    #[value(name = "ecdsa-p384")]
    EcdsaP384,
    #[value(name = "rsa-2048")]
    Rsa2048,
    #[value(name = "ed25519")]
    Ed25519,
}

impl KeyType {
    pub fn generate(self) -> Result<KeyPair, rcgen::Error> {
        match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        }
    }
}

/// What `certs init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub out: PathBuf,
    /// Server certificate common name.
    pub cn: String,
    /// Server certificate names (DNS names or IP addresses).
    pub sans: Vec<String>,
    /// Validity of the server and client certificates, in days (the CA gets at least 10 years).
    pub days: u32,
    /// Client certificate common name.
    pub client_cn: String,
    pub key_type: KeyType,
    /// Overwrite existing files.
    pub force: bool,
}

/// Writes the files and returns their paths. Keys are created with mode 0600.
pub fn init(o: &InitOptions) -> Result<Vec<PathBuf>, CertsError> {
    if o.days == 0 {
        return Err(CertsError::Invalid("--days must be at least 1".into()));
    }
    if o.sans.is_empty() {
        return Err(CertsError::Invalid("at least one --san is required".into()));
    }
    let gen_err = |what| move |source| CertsError::Generate { what, source };
    let now = OffsetDateTime::now_utc();
    // An hour back, for clocks a little behind ours.
    let not_before = now - Duration::hours(1);
    let leaf_until = now + Duration::days(i64::from(o.days));

    let ca_key = o.key_type.generate().map_err(gen_err("the CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&format!("gatewayd development CA ({})", o.cn));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = not_before;
    ca.not_after = now + Duration::days(i64::from(o.days.max(3650)));
    ca.serial_number = Some(random_serial());
    let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(gen_err("the CA certificate"))?;

    let server_key = o.key_type.generate().map_err(gen_err("the server key"))?;
    let mut server = CertificateParams::new(o.sans.clone())
        .map_err(|e| CertsError::Invalid(format!("invalid --san list {:?}: {e}", o.sans)))?;
    server.distinguished_name = name(&o.cn);
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = leaf_usages(o.key_type);
    server.use_authority_key_identifier_extension = true;
    (server.not_before, server.not_after, server.serial_number) = (not_before, leaf_until, Some(random_serial()));
    let server_cert = server.signed_by(&server_key, &ca).map_err(gen_err("the server certificate"))?;

    let client_key = o.key_type.generate().map_err(gen_err("the client key"))?;
    let mut client = CertificateParams::default();
    client.distinguished_name = name(&o.client_cn);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client.key_usages = leaf_usages(o.key_type);
    client.use_authority_key_identifier_extension = true;
    (client.not_before, client.not_after, client.serial_number) = (not_before, leaf_until, Some(random_serial()));
    let client_cert = client.signed_by(&client_key, &ca).map_err(gen_err("the client certificate"))?;

    let files: Vec<(&str, String, u32)> = vec![
        ("ca.crt", ca.pem(), 0o644),
        ("ca.key", ca.key().serialize_pem(), 0o600),
        ("server.crt", server_cert.pem(), 0o644),
        ("server.key", server_key.serialize_pem(), 0o600),
        ("client.crt", client_cert.pem(), 0o644),
        ("client.key", client_key.serialize_pem(), 0o600),
        ("client.pem", format!("{}{}", client_cert.pem(), client_key.serialize_pem()), 0o600),
    ];
    std::fs::create_dir_all(&o.out).map_err(io_err(&o.out))?;
    if !o.force
        && let Some((name, ..)) = files.iter().find(|(name, ..)| o.out.join(name).exists())
    {
        return Err(CertsError::Exists { path: o.out.join(name).display().to_string() });
    }
    let mut written = Vec::new();
    for (name, contents, mode) in files {
        let path = o.out.join(name);
        write(&path, &contents, mode)?;
        written.push(path);
    }
    Ok(written)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf_usages(key: KeyType) -> Vec<KeyUsagePurpose> {
    let mut usages = vec![KeyUsagePurpose::DigitalSignature];
    if key == KeyType::Rsa2048 {
        usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    usages
}

/// 16 random bytes, positive (RFC 5280: unique per CA, at most 20 octets).
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG does not fail on Linux; a zero serial would still be a valid certificate.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io { path: path.display().to_string(), source }
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CertsError> {
    let mut f =
        OpenOptions::new().create(true).write(true).truncate(true).mode(mode).open(path).map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    // An existing file keeps its mode on open: make sure keys end up private.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls::{CertFacts, certified_key, load_certs, load_roots};

    #[test]
    fn init_makes_a_working_pki() {
        let dir = tempfile::tempdir().unwrap();
        let o = InitOptions {
            out: dir.path().to_owned(),
            cn: "dogcatcher-api".into(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            days: 30,
            client_cn: "kong-client".into(),
            key_type: KeyType::EcdsaP256,
            force: false,
        };
        let files = init(&o).unwrap();
        assert_eq!(files.len(), 7);
        let mode = |n: &str| std::fs::metadata(dir.path().join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca.key"), 0o600);
        assert_eq!(mode("client.pem"), 0o600);
        assert_eq!(mode("ca.crt"), 0o644);

        // The server pair loads, the client certificate verifies against the CA.
        let (_, server) = certified_key(&dir.path().join("server.crt"), &dir.path().join("server.key")).unwrap();
        assert_eq!(server.subject_cn.as_deref(), Some("dogcatcher-api"));
        assert_eq!(server.sans, vec!["DNS:localhost", "IP:127.0.0.1"]);
        let (roots, _) = load_roots(&[dir.path().join("ca.crt")]).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(roots.into()).build().unwrap();
        let client = load_certs(&dir.path().join("client.crt")).unwrap();
        verifier.verify_client_cert(&client[0], &[], rustls::pki_types::UnixTime::now()).unwrap();
        assert_eq!(CertFacts::parse(&client[0]).unwrap().subject_cn.as_deref(), Some("kong-client"));
        // client.pem holds both the certificate and the key.
        certified_key(&dir.path().join("client.pem"), &dir.path().join("client.pem")).unwrap();

        // Existing files are kept unless --force.
        assert!(matches!(init(&o), Err(CertsError::Exists { .. })));
        init(&InitOptions { force: true, key_type: KeyType::Rsa2048, ..o }).unwrap();
    }
}
