//! OCSP stapling and online client-certificate revocation against real parts: `openssl ocsp`
//! as the responder (an index file it re-reads when it changes), `openssl s_client -status`
//! as the stapling client, CRLs served over HTTP by a tiny server here, rcgen certificates
//! naming those sources (authorityInfoAccess, CRL distribution points).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, CrlDistributionPoint,
    CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::OffsetDateTime;

use super::{
    dashboards::{dashboard, dashboard_exprs, with_variables},
    pki::Https,
    prometheus::Prometheus,
    support::*,
};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn serial() -> SerialNumber {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).expect("rng");
    b[0] = (b[0] & 0x7f) | 1;
    SerialNumber::from_slice(&b)
}

/// A CA whose key `openssl ocsp` signs with.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

/// A certificate, its key and serial (upper-case hex, as in openssl's index).
struct Cert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    serial: SerialNumber,
    cn: String,
}

/// DER of an authorityInfoAccess extension naming one OCSP responder.
fn aia(url: &str) -> CustomExtension {
    let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01];
    let mut uri = vec![0x86, url.len() as u8];
    uri.extend_from_slice(url.as_bytes());
    let mut desc = vec![0x30, (oid.len() + uri.len()) as u8];
    desc.extend_from_slice(&oid);
    desc.extend_from_slice(&uri);
    let mut seq = vec![0x30, desc.len() as u8];
    seq.extend_from_slice(&desc);
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], seq)
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} CA"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = now() - time::Duration::days(1);
        p.not_after = now() + time::Duration::days(30);
        p.serial_number = Some(serial());
        let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA");
        std::fs::write(dir.join(format!("{name}-ca.crt")), issuer.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.key")), issuer.key().serialize_pem()).unwrap();
        TestCa { issuer, dir: dir.to_owned(), name: name.into() }
    }

    fn crt(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.crt", self.name))
    }

    fn key(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.key", self.name))
    }

    /// A leaf naming `ocsp` (authorityInfoAccess) and `crl` (distribution point) if given.
    fn leaf(&self, cn: &str, server: bool, ocsp: Option<&str>, crl: Option<&str>) -> Cert {
        let names = if server { vec!["localhost".to_string()] } else { vec![] };
        let mut p = CertificateParams::new(names).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = now() - time::Duration::hours(1);
        p.not_after = now() + time::Duration::days(10);
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        if let Some(url) = ocsp {
            p.custom_extensions.push(aia(url));
        }
        if let Some(url) = crl {
            p.crl_distribution_points = vec![CrlDistributionPoint { uris: vec![url.to_owned()] }];
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Cert {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial: p.serial_number.clone().unwrap(),
            cn: cn.into(),
        }
    }

    /// A CRL (DER) revoking `revoked`, current unless `stale`.
    fn crl(&self, revoked: &[&Cert], stale: bool) -> Vec<u8> {
        let (this, next) = if stale {
            (now() - time::Duration::days(2), now() - time::Duration::days(1))
        } else {
            (now() - time::Duration::hours(1), now() + time::Duration::days(1))
        };
        CertificateRevocationListParams {
            this_update: this,
            next_update: next,
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|c| RevokedCertParams {
                    serial_number: c.serial.clone(),
                    revocation_time: now() - time::Duration::minutes(5),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .der()
        .to_vec()
    }
}

impl Cert {
    /// Writes `<name>.crt` (leaf, then `ca`) and `<name>.key`.
    fn write(&self, dir: &Path, name: &str, ca: &TestCa) {
        std::fs::write(dir.join(format!("{name}.crt")), format!("{}{}", self.pem, ca.issuer.pem())).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &self.key_pem).unwrap();
    }

    fn serial_hex(&self) -> String {
        self.serial.as_ref().iter().map(|b| format!("{b:02X}")).collect()
    }
}

/// `openssl ocsp` answering for `ca` from an index of (certificate, revoked) entries.
struct Responder {
    child: Child,
    url: String,
    args: (SocketAddr, PathBuf, PathBuf, PathBuf),
}

impl Responder {
    /// openssl takes a port only (it listens on every address); requests go to loopback.
    fn start(ca: &TestCa, addr: SocketAddr, good: &[&Cert], revoked: &[&Cert]) -> Responder {
        let index = ca.dir.join(format!("{}-index.txt", ca.name));
        let args = (addr, index, ca.crt(), ca.key());
        let child = Responder::spawn(&args, good, revoked);
        Responder { child, url: format!("http://{addr}/"), args }
    }

    fn spawn(args: &(SocketAddr, PathBuf, PathBuf, PathBuf), good: &[&Cert], revoked: &[&Cert]) -> Child {
        let (addr, index, crt, key) = args;
        std::fs::write(index, index_text(good, revoked)).unwrap();
        let log = index.with_extension("log");
        let child = Command::new("openssl")
            .args(["ocsp", "-ignore_err", "-nmin", "5", "-port", &addr.port().to_string(), "-index"])
            .arg(index)
            .arg("-CA")
            .arg(crt)
            .arg("-rsigner")
            .arg(crt)
            .arg("-rkey")
            .arg(key)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("openssl must be installed (cargo xtask deps)");
        // Not probed with a connection: openssl's responder stalls on one that sends nothing.
        let up = eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&log).ok().filter(|l| l.contains("waiting for OCSP client connections"))
        });
        assert!(up.is_some(), "openssl ocsp did not listen on {addr}");
        child
    }

    /// A new index: openssl 3.0's responder reads it once, so it is restarted on the same port.
    fn set(&mut self, good: &[&Cert], revoked: &[&Cert]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Responder::spawn(&self.args, good, revoked);
    }
}

/// Asks the responder at `url` about `cert` with `openssl ocsp` and keeps the DER answer in `out`.
fn respout(ca: &TestCa, cert: &Path, url: &str, out: &Path) {
    let done = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(ca.crt())
        .arg("-cert")
        .arg(cert)
        .args(["-url", url, "-respout"])
        .arg(out)
        .output()
        .expect("openssl must be installed (cargo xtask deps)");
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
}

/// openssl's index: `V` (valid) and `R` (revoked) lines; serials not listed are unknown.
fn index_text(good: &[&Cert], revoked: &[&Cert]) -> String {
    let stamp = |t: OffsetDateTime| {
        let (h, m, sec) = t.to_hms();
        format!("{:02}{:02}{:02}{h:02}{m:02}{sec:02}Z", t.year() % 100, u8::from(t.month()), t.day())
    };
    let (exp, rev) = (stamp(now() + time::Duration::days(10)), stamp(now() - time::Duration::minutes(5)));
    let mut out = String::new();
    for c in good {
        out.push_str(&format!("V\t{exp}\t\t{}\tunknown\t/CN={}\n", c.serial_hex(), c.cn));
    }
    for c in revoked {
        out.push_str(&format!("R\t{exp}\t{rev}\t{}\tunknown\t/CN={}\n", c.serial_hex(), c.cn));
    }
    out
}

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP server answering every request with the current body (a CRL, or a canned
/// OCSP response); `None` answers 404.
struct Blob {
    addr: SocketAddr,
    body: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Blob {
    fn start() -> Blob {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let shared = body.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = match shared.lock().unwrap().clone() {
                    Some(b) => {
                        let mut r =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", b.len())
                                .into_bytes();
                        r.extend_from_slice(&b);
                        r
                    }
                    None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                };
                let _ = s.write_all(&reply);
            }
        });
        Blob { addr, body }
    }

    fn url(&self) -> String {
        format!("http://{}/ca.crl", self.addr)
    }

    fn set(&self, body: Option<Vec<u8>>) {
        *self.body.lock().unwrap() = body;
    }
}

fn client(ca: &TestCa, cert: &Cert) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.issuer.der().clone()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert.der.clone()], key)
            .unwrap(),
    )
}

/// Status of one GET on a new connection presenting `cert` to listener `addr`.
async fn status(addr: SocketAddr, ca: &TestCa, cert: &Cert) -> u16 {
    let mut c = Https::connect(addr, "localhost", client(ca, cert)).await.expect("connect");
    c.get("/x", &[]).await.map(|r| r.status.as_u16()).unwrap_or(0)
}

/// Listeners `open` (fail_open) and `closed` (fail_closed) with client certificates from `ca`
/// checked by `revocation` (a TOML inline-table body without on_unavailable).
fn config(p: &Ports, open: SocketAddr, up: &Upstream, revocation: &str) -> String {
    let tls = |mode: &str| {
        format!(
            r#"
certificates = [{{ cert = "server.crt", key = "server.key" }}]
client_auth = "required"
client_ca = ["clients-ca.crt"]
revocation = {{ {revocation}, on_unavailable = "{mode}" }}
"#
        )
    };
    ConfigBuilder::new(p)
        .drain_timeout("2s")
        .listener("closed", p.listen)
        .listener_tls(&tls("fail_closed"))
        .add_listener("open", open, Some(&tls("fail_open")))
        .catch_all(up.addr)
        .build()
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn checks(gw: &Gateway, source: &str, result: &str) -> f64 {
    gw.metric("gateway_tls_revocation_checks_total", &[("source", source), ("result", result)])
}

fn fetches(gw: &Gateway, source: &str, result: &str) -> f64 {
    gw.metric("gateway_tls_revocation_fetches_total", &[("source", source), ("result", result)])
}

/// Writes the gateway's own server certificate (no responder: not stapled) into `dir`.
fn server_cert(dir: &Path, ca: &TestCa) {
    ca.leaf("gateway", true, None, None).write(dir, "server", ca);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_are_checked_with_an_ocsp_responder_under_each_mode() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "clients");
    let responder_addr = free_port();
    let responder_url = format!("http://{responder_addr}/");
    let down = free_port();
    // Accepts connections (the kernel's backlog) and never answers: a responder that hangs.
    let slow = TcpListener::bind("127.0.0.1:0").unwrap();
    let slow_url = format!("http://{}/", slow.local_addr().unwrap());
    // Answers every query with the (valid, signed) response about another certificate.
    let other = Blob::start();

    let good = ca.leaf("good", false, Some(&responder_url), None);
    let revoked = ca.leaf("revoked", false, Some(&responder_url), None);
    let unknown = ca.leaf("unknown", false, Some(&responder_url), None);
    let unreachable = ca.leaf("unreachable", false, Some(&format!("http://{down}/")), None);
    let hanging = ca.leaf("hanging", false, Some(&slow_url), None);
    let mismatched = ca.leaf("mismatched", false, Some(&format!("http://{}/", other.addr)), None);
    let no_responder = ca.leaf("no-responder", false, None, None);
    let mut responder = Responder::start(&ca, responder_addr, &[&good], &[&revoked]);
    let resp = dir.path().join("good.ocsp");
    good.write(dir.path(), "good", &ca);
    respout(&ca, &dir.path().join("good.crt"), &responder.url, &resp);
    other.set(Some(std::fs::read(&resp).unwrap()));

    let up = Upstream::start("u");
    let open = free_port();
    let gw = Gateway::start(|p| {
        server_cert(&p.dir, &ca);
        std::fs::copy(ca.crt(), p.dir.join("clients-ca.crt")).unwrap();
        config(p, open, &up, r#"ocsp = "require", timeout = "300ms", cache = "1s""#)
    });
    let closed = gw.ports.listen;
    // The dashboard's revocation panels are read from a real Prometheus scraping this gateway.
    let prometheus = Prometheus::start(gw.ports.metrics, &[]);

    assert_eq!(status(closed, &ca, &good).await, 200);
    assert_eq!(checks(&gw, "ocsp", "good"), 1.0);
    assert_eq!(status(closed, &ca, &revoked).await, 400, "revoked");
    assert_eq!(status(open, &ca, &revoked).await, 400, "revoked is refused whatever the mode");
    assert_eq!(checks(&gw, "ocsp", "revoked"), 2.0);
    assert_eq!(status(closed, &ca, &unknown).await, 400, "unknown to the responder");
    assert_eq!(checks(&gw, "ocsp", "unknown"), 1.0);

    // Responder down: the mode decides; counted, and logged once per outage.
    assert_eq!(status(closed, &ca, &unreachable).await, 400);
    assert_eq!(status(open, &ca, &unreachable).await, 200);
    assert_eq!(checks(&gw, "ocsp", "fail_closed"), 1.0);
    assert_eq!(checks(&gw, "ocsp", "fail_open"), 1.0);
    assert!(fetches(&gw, "ocsp", "unreachable") >= 1.0, "{}", gw.metrics());
    let outage = format!("{down}/");
    let logged = eventually(Duration::from_secs(5), || {
        let log = gw.stderr();
        log.contains("revocation source unavailable").then_some(log)
    })
    .unwrap();
    assert_eq!(
        logged.lines().filter(|l| l.contains("revocation source unavailable") && l.contains(&outage)).count(),
        1,
        "logged once per outage:\n{logged}"
    );
    let readyz = raw_get(gw.ports.metrics, "/readyz").unwrap();
    assert!(readyz.contains(&format!("tls_revocation:http://{down}/")), "{readyz}");

    // A responder that never answers: the handshake waits the bounded timeout, then the mode
    // decides (the timeout is the event: a fetch counted as timed out).
    assert_eq!(status(closed, &ca, &hanging).await, 400);
    assert_eq!(status(open, &ca, &hanging).await, 200);
    assert_eq!(checks(&gw, "ocsp", "fail_closed"), 2.0, "{}", gw.metrics());
    assert_eq!(checks(&gw, "ocsp", "fail_open"), 2.0, "{}", gw.metrics());
    assert!(gw.stderr().contains("no answer within 300ms"), "{}", gw.stderr());

    // A signed answer about another certificate is no answer for this one.
    assert_eq!(status(closed, &ca, &mismatched).await, 400);
    assert!(fetches(&gw, "ocsp", "invalid") >= 1.0, "{}", gw.metrics());
    assert!(gw.stderr().contains("about another certificate"), "{}", gw.stderr());

    // "require": a certificate that names no responder has no answer.
    assert_eq!(status(closed, &ca, &no_responder).await, 400);
    assert_eq!(status(open, &ca, &no_responder).await, 200);

    // Revoked during a connection: the next request on it is refused, once the cached answer
    // is refreshed (cache = 1s) and says so.
    let mut conn = Https::connect(closed, "localhost", client(&ca, &good)).await.unwrap();
    assert_eq!(conn.get("/x", &[]).await.unwrap().status, 200);
    responder.set(&[], &[&good]);
    let refused = eventually(Duration::from_secs(15), || {
        let r = futures_block(conn.get("/x", &[]));
        r.ok().filter(|r| r.status != 200)
    });
    assert!(refused.is_some(), "the revoked certificate's connection was still served:\n{}", gw.stderr());
    assert!(gw.stderr().contains("found revoked during its connection"), "{}", gw.stderr());

    prometheus.wait_scrapes(2.0);
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard()["panels"], &mut exprs);
    let panels: Vec<String> =
        exprs.iter().filter(|e| e.contains("gateway_tls_revocation_")).map(|e| with_variables(e)).collect();
    assert!(panels.len() >= 2, "{panels:?}");
    for expr in &panels {
        assert!(!prometheus.query(expr).is_empty(), "no data: {expr}\n{}", prometheus.targets());
    }
    drop(slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn crls_from_distribution_points_are_verified_cached_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "clients");
    let rogue = TestCa::new(dir.path(), "rogue");
    let dp = Blob::start();
    let good = ca.leaf("good", false, None, Some(&dp.url()));
    let revoked = ca.leaf("revoked", false, None, Some(&dp.url()));
    let up = Upstream::start("u");
    let state = tempfile::tempdir().unwrap();
    let start = |open: SocketAddr| {
        Gateway::start_with_env(
            |p| {
                server_cert(&p.dir, &ca);
                std::fs::copy(ca.crt(), p.dir.join("clients-ca.crt")).unwrap();
                config(p, open, &up, r#"crl_urls = "from_certificate", timeout = "2s", cache = "1s""#)
            },
            &[("STATE_DIRECTORY", state.path().display().to_string())],
        )
    };

    // A CRL signed by another CA counts for nothing: fail_closed refuses, fail_open lets in.
    dp.set(Some(rogue.crl(&[&revoked], false)));
    let open = free_port();
    let gw = start(open);
    assert_eq!(status(gw.ports.listen, &ca, &good).await, 400);
    assert_eq!(status(open, &ca, &good).await, 200);
    assert!(fetches(&gw, "crl", "invalid") >= 1.0, "{}", gw.metrics());

    // A stale CRL (past nextUpdate) likewise.
    dp.set(Some(ca.crl(&[&revoked], true)));
    let stale = eventually(Duration::from_secs(10), || (fetches(&gw, "crl", "invalid") >= 2.0).then_some(()));
    assert!(stale.is_some(), "{}", gw.metrics());
    assert_eq!(status(gw.ports.listen, &ca, &good).await, 400);
    assert!(gw.stderr().contains("stale"), "{}", gw.stderr());

    // The CA's current CRL decides.
    dp.set(Some(ca.crl(&[&revoked], false)));
    let fresh = eventually(Duration::from_secs(10), || {
        (futures_block(status(gw.ports.listen, &ca, &good)) == 200).then_some(())
    });
    assert!(fresh.is_some(), "{}", gw.stderr());
    assert_eq!(status(gw.ports.listen, &ca, &revoked).await, 400);
    assert!(checks(&gw, "crl", "revoked") >= 1.0);
    let kept = std::fs::read_dir(state.path().join("crls")).unwrap().count();
    assert_eq!(kept, 1, "the CRL is kept in the state directory");
    drop(gw);

    // Restart with the distribution point gone: the kept CRL still decides.
    dp.set(None);
    let open = free_port();
    let gw = start(open);
    assert_eq!(status(gw.ports.listen, &ca, &good).await, 200);
    assert_eq!(status(gw.ports.listen, &ca, &revoked).await, 400);
}

/// The status `openssl s_client -status` reports for the gateway's certificate.
fn s_client_status(addr: SocketAddr, ca: &Path) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-status", "-servername", "localhost", "-connect", &addr.to_string(), "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (cargo xtask deps)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn staple_config(p: &Ports, cert: &str) -> String {
    ConfigBuilder::new(p)
        .drain_timeout("2s")
        .listener("tls", p.listen)
        .listener_tls(&format!("certificates = [{cert}]"))
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn our_certificate_is_stapled_from_the_responder_or_a_file_and_a_revoked_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "server");
    let responder_addr = free_port();
    let cert = ca.leaf("gateway", true, Some(&format!("http://{responder_addr}/")), None);
    let mut responder = Responder::start(&ca, responder_addr, &[&cert], &[]);

    let gw = Gateway::start(|p| {
        cert.write(&p.dir, "server", &ca);
        staple_config(p, r#"{ cert = "server.crt", key = "server.key" }"#)
    });
    let stapled = eventually(Duration::from_secs(10), || {
        let out = s_client_status(gw.ports.listen, &ca.crt());
        out.contains("Cert Status: good").then_some(out)
    });
    assert!(stapled.is_some(), "no good staple:\n{}\n{}", s_client_status(gw.ports.listen, &ca.crt()), gw.stderr());
    assert!(gw.series("gateway_tls_ocsp_staple_expiry_timestamp_seconds", &[("name", "localhost")]) > 0.0);
    assert!(gw.series("gateway_tls_revocation_fetches_total", &[("source", "staple"), ("result", "ok")]) >= 1.0);

    // ocsp_response_file: the operator's response is stapled, no responder needed.
    let resp = dir.path().join("server.ocsp");
    cert.write(dir.path(), "server", &ca);
    respout(&ca, &dir.path().join("server.crt"), &responder.url, &resp);

    // Our certificate revoked: logged, shown by a metric, and no longer stapled.
    responder.set(&[], &[&cert]);
    drop(gw);
    let gw = Gateway::start(|p| {
        cert.write(&p.dir, "server", &ca);
        staple_config(p, r#"{ cert = "server.crt", key = "server.key" }"#)
    });
    let revoked = eventually(Duration::from_secs(10), || {
        (gw.metric("gateway_tls_ocsp_certificate_revoked", &[("name", "localhost")]) == 1.0).then_some(())
    });
    assert!(revoked.is_some(), "{}", gw.metrics());
    assert!(gw.stderr().contains("REVOKED"), "{}", gw.stderr());
    let out = s_client_status(gw.ports.listen, &ca.crt());
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    drop(gw);
    drop(responder);

    let gw = Gateway::start(|p| {
        cert.write(&p.dir, "server", &ca);
        std::fs::copy(&resp, p.dir.join("server.ocsp")).unwrap();
        staple_config(p, r#"{ cert = "server.crt", key = "server.key", ocsp_response_file = "server.ocsp" }"#)
    });
    let out = s_client_status(gw.ports.listen, &ca.crt());
    assert!(out.contains("Cert Status: good"), "{out}");
}
