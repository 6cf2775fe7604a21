//! Certificates for TLS tests (rcgen): CAs, server and client certificates (good, expired,
//! wrong usage), CRLs; rustls clients; and a TLS upstream that may require client certificates.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName},
};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::support::Reply;

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pub pem: String,
    der: CertificateDer<'static>,
    key_pem: String,
}

/// A certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    pub serial: SerialNumber,
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand_bytes();
    b[0] = (b[0] & 0x7f) | 1;
    SerialNumber::from_slice(&b)
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).expect("rng");
    b
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "gatewayd tests");
    d.push(DnType::CommonName, cn);
    d
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = now() - time::Duration::days(1);
        p.not_after = now() + time::Duration::days(365);
        p.serial_number = Some(serial());
        let key = KeyPair::generate().expect("key");
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(p, key).expect("CA");
        Ca { pem: issuer.pem(), der: issuer.der().clone(), issuer, key_pem }
    }

    /// A certificate signed by this CA that signs others: an intermediate CA, or with
    /// `is_ca = false` one without the CA bit (basicConstraints) that issues certificates anyway.
    pub fn intermediate(&self, cn: &str, is_ca: bool) -> Ca {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn);
        p.is_ca = if is_ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = now() - time::Duration::days(1);
        p.not_after = now() + time::Duration::days(365);
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("key");
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::signed_by(p, key, &self.issuer).expect("intermediate");
        Ca { pem: issuer.pem(), der: issuer.der().clone(), issuer, key_pem }
    }

    /// This CA's own certificate and key, as a client presenting it would hold them.
    pub fn as_leaf(&self) -> Leaf {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.der).expect("CA certificate");
        Leaf {
            cert_pem: self.pem.clone(),
            key_pem: self.key_pem.clone(),
            der: self.der.clone(),
            serial: SerialNumber::from_slice(cert.raw_serial()),
        }
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    fn leaf(&self, p: CertificateParams, key: KeyPair) -> Leaf {
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial: p.serial_number.clone().expect("serial"),
        }
    }

    fn params(&self, cn: &str, names: &[&str], eku: ExtendedKeyUsagePurpose) -> CertificateParams {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("names");
        p.distinguished_name = dn(cn);
        p.extended_key_usages = vec![eku];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = now() - time::Duration::hours(1);
        p.not_after = now() + time::Duration::days(30);
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        p
    }

    /// A server certificate for `names` (CN = the first name).
    pub fn server(&self, names: &[&str]) -> Leaf {
        self.leaf(self.params(names[0], names, ExtendedKeyUsagePurpose::ServerAuth), KeyPair::generate().expect("key"))
    }

    /// A server certificate with an RSA-2048 key.
    pub fn server_rsa(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("rsa key");
        self.leaf(self.params(names[0], names, ExtendedKeyUsagePurpose::ServerAuth), key)
    }

    /// A client certificate (clientAuth), with `sans` (e.g. `spiffe://…` URIs, as DNS names here).
    pub fn client(&self, cn: &str) -> Leaf {
        self.leaf(self.params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth), KeyPair::generate().expect("key"))
    }

    /// A client certificate with URI SANs (`spiffe://…`), verbatim.
    pub fn client_with_uris(&self, cn: &str, uris: &[&str]) -> Leaf {
        let mut p = self.params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth);
        p.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).expect("IA5 URI")))
            .collect();
        self.leaf(p, KeyPair::generate().expect("key"))
    }

    /// A client certificate that expired yesterday.
    pub fn expired_client(&self, cn: &str) -> Leaf {
        let mut p = self.params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth);
        p.not_before = now() - time::Duration::days(10);
        p.not_after = now() - time::Duration::days(1);
        self.leaf(p, KeyPair::generate().expect("key"))
    }

    /// A certificate for servers only, used as a client certificate.
    pub fn server_only_client(&self, cn: &str) -> Leaf {
        self.leaf(self.params(cn, &[], ExtendedKeyUsagePurpose::ServerAuth), KeyPair::generate().expect("key"))
    }

    /// A CRL (PEM) revoking `revoked`, valid for a day.
    pub fn crl(&self, number: u64, revoked: &[&Leaf]) -> String {
        let params = CertificateRevocationListParams {
            this_update: now() - time::Duration::hours(1),
            next_update: now() + time::Duration::days(1),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|l| RevokedCertParams {
                    serial_number: l.serial.clone(),
                    revocation_time: now() - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).expect("crl").pem().expect("crl pem")
    }

    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.crt"));
        std::fs::write(&p, &self.pem).expect("write CA");
        p
    }

    pub fn roots(&self) -> RootCertStore {
        let mut r = RootCertStore::empty();
        r.add(self.der.clone()).expect("root");
        r
    }
}

impl Leaf {
    /// Writes `<name>.crt` and `<name>.key`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, &self.cert_pem).expect("write cert");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c, k)
    }

    pub fn sha256_hex(&self) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.der);
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key pem")
    }
}

/// A rustls client trusting `ca`, presenting `cert` if given, offering `alpn`.
pub fn client_config(ca: &Ca, cert: Option<&Leaf>, alpn: &[&str]) -> Arc<ClientConfig> {
    let b = ClientConfig::builder().with_root_certificates(ca.roots());
    let mut c = match cert {
        Some(l) => b.with_client_auth_cert(vec![l.der.clone()], l.key()).expect("client cert"),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(c)
}

/// A rustls client trusting `ca` that presents `chain` (end entity first) and signs the handshake
/// with `key`'s private key, whether or not it belongs to the end entity (rustls' own builder
/// refuses a mismatch; a misconfigured or dishonest client does not).
pub fn client_config_presenting(ca: &Ca, chain: Vec<CertificateDer<'static>>, key: &Leaf) -> Arc<ClientConfig> {
    #[derive(Debug)]
    struct Presents(Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Presents {
        fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider.key_provider.load_private_key(key.key()).expect("signing key");
    let presented = Presents(Arc::new(rustls::sign::CertifiedKey::new(chain, signer)));
    Arc::new(ClientConfig::builder().with_root_certificates(ca.roots()).with_client_cert_resolver(Arc::new(presented)))
}

/// A server config for test upstreams: `cert`, and client certificates from `client_ca`
/// required when given.
pub fn server_config(cert: &Leaf, client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let b = rustls::ServerConfig::builder();
    let b = match client_ca {
        Some(ca) => b.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(Arc::new(ca.roots())).build().expect("verifier"),
        ),
        None => b.with_no_client_auth(),
    };
    Arc::new(b.with_single_cert(vec![cert.der.clone()], cert.key()).expect("server cert"))
}

pub async fn tls_connect(
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// One HTTPS connection (HTTP/2 if ALPN chose it, else HTTP/1.1), kept open across requests.
pub struct Https {
    send: Sender,
    pub alpn: Option<Vec<u8>>,
    pub resumed: bool,
    pub version: Option<rustls::ProtocolVersion>,
    pub peer_cn: Option<String>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Https {
    pub async fn connect(addr: std::net::SocketAddr, sni: &str, config: Arc<ClientConfig>) -> std::io::Result<Https> {
        let tls = tls_connect(addr, sni, config).await?;
        let (_, conn) = tls.get_ref();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let version = conn.protocol_version();
        let peer_cn = conn.peer_certificates().and_then(|c| c.first()).map(|c| {
            let (_, x) = x509_parser::parse_x509_certificate(c).expect("peer cert");
            x.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_owned()
        });
        let io = hyper_util::rt::TokioIo::new(tls);
        let send = if alpn.as_deref() == Some(b"h2") {
            let (s, c) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(c);
            Sender::H2(s)
        } else {
            let (s, c) = hyper::client::conn::http1::handshake(io).await.map_err(std::io::Error::other)?;
            tokio::spawn(c);
            Sender::H1(s)
        };
        Ok(Https { send, alpn, resumed, version, peer_cn })
    }

    /// Whether the server ended the connection (HTTP/2: after GOAWAY and the last stream).
    pub fn is_closed(&self) -> bool {
        match &self.send {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// GET `path` with extra headers; `Err` when the connection fails (e.g. the server refused
    /// our certificate: in TLS 1.3 that shows on the first read).
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        let mut b = Request::get(path).header("host", "localhost");
        if matches!(self.send, Sender::H2(_)) {
            b = Request::get(format!("https://localhost{path}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::<Bytes>::default()).expect("request");
        let resp = async {
            match &mut self.send {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
            }
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .map_err(|_| "request timed out".to_owned())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }
}

/// One GET on a new connection.
pub async fn https_get(addr: std::net::SocketAddr, config: Arc<ClientConfig>, path: &str) -> Result<Reply, String> {
    let mut c = Https::connect(addr, "localhost", config).await.map_err(|e| e.to_string())?;
    c.get(path, &[]).await
}
